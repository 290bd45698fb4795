// Modules, libraries, kernels, functions and __device__ globals.
//
// A loaded image (fatbin wrapper, fatbin, cubin or PTX) is matched to a host kernel
// library: the one whose kernel names all occur in the image bytes, or, when the
// image is compressed, the first library defining the first name asked for. Each
// (image, context) pair gets its own copy of that library, loaded from a memfd, so
// __device__ variables start from their initial values and belong to one context.
#include <dlfcn.h>
#include <elf.h>
#include <link.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <sstream>

#include <dirent.h>

#include "emu.hpp"

#include <ferry_common/settings.hpp>

#include <ferry_common/cuda_image.hpp>

namespace ferry::emu {

namespace {

size_t image_size(const void* image) { return cuda_image::size(image); }

void add_lib_file(Driver& d, const std::string& path) {
  void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    log("kernel library %s: %s", path.c_str(), dlerror());
    return;
  }
  auto fn = reinterpret_cast<ferry_emu_kernel_library_fn>(dlsym(h, FERRY_EMU_KERNEL_LIBRARY_SYMBOL));
  const ferry_emu_kernel_library* lib = fn ? fn() : nullptr;
  if (!lib || lib->abi_version != FERRY_EMU_KERNEL_ABI) {
    log("%s is not a ferry kernel library (or of another ABI version)", path.c_str());
    dlclose(h);
    return;
  }
  KernelLibFile f;
  f.path = path;
  f.probe = h;
  for (uint32_t i = 0; i < lib->kernel_count; i++)
    if (lib->kernels[i].invoke) f.kernels.insert(lib->kernels[i].name);
  log("kernel library %s: %zu kernel(s)", path.c_str(), f.kernels.size());
  d.kernel_libs.push_back(std::move(f));
}

void scan_kernel_libs(Driver& d) {
  if (d.kernel_libs_scanned) return;
  d.kernel_libs_scanned = true;
  const char* env = ferry::settings::raw("FERRY_EMU_KERNELS");
  if (!env) return;
  std::vector<std::string> paths;
  std::stringstream ss(env);
  std::string item;
  while (std::getline(ss, item, ':')) {
    if (item.empty()) continue;
    struct stat st{};
    if (stat(item.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
      if (DIR* dir = opendir(item.c_str())) {
        std::vector<std::string> names;
        while (dirent* e = readdir(dir)) {
          std::string n = e->d_name;
          if (n.size() > 3 && n.compare(n.size() - 3, 3, ".so") == 0) names.push_back(item + "/" + n);
        }
        closedir(dir);
        std::sort(names.begin(), names.end());
        paths.insert(paths.end(), names.begin(), names.end());
      }
    } else {
      paths.push_back(item);
    }
  }
  d.kernel_libs.reserve(paths.size());
  for (auto& p : paths) add_lib_file(d, p);
}

// The library whose kernels all appear in the image, if the image is readable.
const KernelLibFile* match_image(Driver& d, const void* image) {
  scan_kernel_libs(d);
  const void* data = fatbin_wrapper_image(image);
  size_t n = image_size(data);
  const KernelLibFile* best = nullptr;
  size_t best_count = 0;
  for (auto& f : d.kernel_libs) {
    if (f.kernels.empty()) continue;
    bool all = true;
    for (auto& k : f.kernels)
      if (!memmem(data, n, k.c_str(), k.size() + 1)) {
        all = false;
        break;
      }
    if (all && f.kernels.size() > best_count) best = &f, best_count = f.kernels.size();
  }
  return best;
}

const KernelLibFile* lib_with_kernel(Driver& d, const std::string& name) {
  scan_kernel_libs(d);
  for (auto& f : d.kernel_libs)
    if (f.kernels.count(name)) return &f;
  return nullptr;
}

const KernelLibFile* lib_with_global(Driver& d, const std::string& name) {
  scan_kernel_libs(d);
  for (auto& f : d.kernel_libs) {
    void* sym = dlsym(f.probe, name.c_str());
    if (!sym) continue;
    Dl_info info;
    struct link_map* owner = nullptr;
    struct link_map* mine = nullptr;
    dlinfo(f.probe, RTLD_DI_LINKMAP, &mine);
    if (dladdr1(sym, &info, reinterpret_cast<void**>(&owner), RTLD_DL_LINKMAP) && owner == mine) return &f;
  }
  return nullptr;
}

KernelLibInstance* instantiate(const KernelLibFile* f) {
  std::ifstream in(f->path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  int fd = memfd_create("ferry-emu-kernels", MFD_CLOEXEC);
  if (fd < 0 || write(fd, bytes.data(), bytes.size()) != static_cast<ssize_t>(bytes.size())) {
    if (fd >= 0) close(fd);
    return nullptr;
  }
  std::string path = "/proc/self/fd/" + std::to_string(fd);
  void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    log("loading a copy of %s failed: %s", f->path.c_str(), dlerror());
    close(fd);
    return nullptr;
  }
  auto fn = reinterpret_cast<ferry_emu_kernel_library_fn>(dlsym(h, FERRY_EMU_KERNEL_LIBRARY_SYMBOL));
  auto* inst = new KernelLibInstance;
  inst->file = f;
  inst->handle = h;
  inst->memfd = fd;
  inst->lib = fn();
  for (uint32_t i = 0; i < inst->lib->kernel_count; i++)
    if (inst->lib->kernels[i].invoke) inst->by_name[inst->lib->kernels[i].name] = &inst->lib->kernels[i];
  return inst;
}

// Binds the module to a kernel library, choosing by `name` if the image did not decide.
CUresult bind(Module* m, const std::string& name, bool is_kernel) {
  Driver& d = drv();
  if (!m->bound) {
    const KernelLibFile* f = m->library ? m->library->bound : nullptr;
    if (!f) f = is_kernel ? lib_with_kernel(d, name) : lib_with_global(d, name);
    if (!f) return CUDA_ERROR_NOT_FOUND;
    m->bound = f;
    if (m->library && !m->library->bound) m->library->bound = f;
  }
  if (!m->inst) {
    m->inst = instantiate(m->bound);
    if (!m->inst) return CUDA_ERROR_INVALID_IMAGE;
  }
  return CUDA_SUCCESS;
}

Module* new_module(Context* c, const void* image, bool copy_image) {
  Driver& d = drv();
  auto* m = new Module;
  m->ctx = c;
  if (copy_image) {
    const void* data = fatbin_wrapper_image(image);
    m->image_copy.assign(static_cast<const char*>(data), image_size(data));
    m->image = m->image_copy.data();
  } else {
    m->image = image;
  }
  m->bound = match_image(d, m->image);
  d.modules.insert(m);
  c->modules.insert(m);
  return m;
}

Module* as_module(CUmodule h) {
  auto* m = reinterpret_cast<Module*>(h);
  return drv().modules.count(m) ? m : nullptr;
}

Library* as_library(CUlibrary h) {
  auto* l = reinterpret_cast<Library*>(h);
  return drv().libraries.count(l) ? l : nullptr;
}

Kernel* as_kernel(CUkernel h) {
  auto* k = reinterpret_cast<Kernel*>(h);
  return drv().kernel_set.count(k) ? k : nullptr;
}

}  // namespace

const void* fatbin_wrapper_image(const void* image) { return cuda_image::unwrap(image); }

void unload_module(Module* m) {
  Driver& d = drv();
  for (auto& [name, f] : m->functions) d.function_set.erase(f.get());
  if (m->inst) {
    for (uintptr_t g : m->inst->globals) d.ranges.erase(g);
    dlclose(m->inst->handle);
    close(m->inst->memfd);
    delete m->inst;
  }
  if (m->library) m->library->per_ctx.erase(m->ctx);
  m->ctx->modules.erase(m);
  d.modules.erase(m);
  delete m;
}

Function* get_function(Module* m, const std::string& name, CUresult* err) {
  Driver& d = drv();
  auto it = m->functions.find(name);
  if (it != m->functions.end()) return it->second.get();
  *err = bind(m, name, true);
  if (*err) return nullptr;
  auto e = m->inst->by_name.find(name);
  if (e == m->inst->by_name.end()) {
    *err = CUDA_ERROR_NOT_FOUND;
    return nullptr;
  }
  auto f = std::make_unique<Function>();
  f->module = m;
  f->name = name;
  f->entry = e->second;
  Function* raw = f.get();
  m->functions[name] = std::move(f);
  d.function_set.insert(raw);
  return raw;
}

CUresult get_global(Module* m, const std::string& name, CUdeviceptr* dptr, size_t* bytes) {
  Driver& d = drv();
  if (CUresult e = bind(m, name, false)) return e;
  void* sym = dlsym(m->inst->handle, name.c_str());
  if (!sym) return CUDA_ERROR_NOT_FOUND;
  Dl_info info;
  ElfW(Sym)* es = nullptr;
  struct link_map* owner = nullptr;
  struct link_map* mine = nullptr;
  dlinfo(m->inst->handle, RTLD_DI_LINKMAP, &mine);
  if (!dladdr1(sym, &info, reinterpret_cast<void**>(&owner), RTLD_DL_LINKMAP) || owner != mine)
    return CUDA_ERROR_NOT_FOUND;
  if (!dladdr1(sym, &info, reinterpret_cast<void**>(&es), RTLD_DL_SYMENT) || !es ||
      ELF64_ST_TYPE(es->st_info) != STT_OBJECT)
    return CUDA_ERROR_NOT_FOUND;
  uintptr_t base = reinterpret_cast<uintptr_t>(sym);
  if (!d.ranges.count(base)) {
    Range r;
    r.base = base;
    r.size = r.span = es->st_size ? es->st_size : 1;
    r.kind = RangeKind::ModuleGlobal;
    r.dev = m->ctx->dev;
    r.ctx = m->ctx;
    r.id = new_id();
    d.ranges[base] = r;
    m->inst->globals.push_back(base);
  }
  if (dptr) *dptr = base;
  if (bytes) *bytes = es->st_size;
  return CUDA_SUCCESS;
}

Module* library_module(Library* l, Context* c) {
  auto it = l->per_ctx.find(c);
  if (it != l->per_ctx.end()) return it->second;
  Module* m = new_module(c, l->image, false);
  m->library = l;
  if (!m->bound) m->bound = l->bound;
  if (!l->bound) l->bound = m->bound;
  l->per_ctx[c] = m;
  return m;
}

Function* function_for_launch(CUfunction f, Context* c, CUresult* err) {
  Driver& d = drv();
  std::lock_guard lk(d.mu);
  auto* fn = reinterpret_cast<Function*>(f);
  if (d.function_set.count(fn)) return fn;
  auto* k = reinterpret_cast<Kernel*>(f);
  if (!d.kernel_set.count(k)) {
    *err = CUDA_ERROR_INVALID_HANDLE;
    return nullptr;
  }
  return get_function(library_module(k->library, c), k->name, err);
}

}  // namespace ferry::emu

using namespace ferry::emu;

namespace {

bool library_option_preserved(CUlibraryOption* opts, void** vals, unsigned n) {
  for (unsigned i = 0; i < n; i++)
    if (opts && vals && opts[i] == CU_LIBRARY_BINARY_IS_PRESERVED && vals[i]) return true;
  return false;
}

CUresult load_library(CUlibrary* out, const void* image, bool preserved) {
  if (CUresult e = ensure_init()) return e;
  if (!out || !image) return CUDA_ERROR_INVALID_VALUE;
  Driver& d = drv();
  std::lock_guard lk(d.mu);
  auto* l = new Library;
  l->preserved = preserved;
  if (preserved) {
    l->image = image;  // the caller promised the image outlives the library
  } else {
    const void* data = fatbin_wrapper_image(image);
    l->image_copy.assign(static_cast<const char*>(data), image_size(data));
    l->image = l->image_copy.data();
  }
  l->bound = match_image(d, l->image);
  d.libraries.insert(l);
  *out = reinterpret_cast<CUlibrary>(l);
  return CUDA_SUCCESS;
}

std::string read_file(const char* path, bool* ok) {
  std::ifstream in(path, std::ios::binary);
  *ok = static_cast<bool>(in);
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return s;
}

CUresult module_load(CUmodule* out, const void* image) {
  Context* c = nullptr;
  if (CUresult e = current_or_error(&c)) return e;
  if (!out || !image) return CUDA_ERROR_INVALID_VALUE;
  std::lock_guard lk(drv().mu);
  *out = reinterpret_cast<CUmodule>(new_module(c, image, true));
  return CUDA_SUCCESS;
}

}  // namespace

FERRY_EXPORT CUresult cuLibraryLoadData(CUlibrary* library, const void* code, CUjit_option*, void**, unsigned int,
                                        CUlibraryOption* opts, void** vals, unsigned int n) {
  return load_library(library, code, library_option_preserved(opts, vals, n));
}

FERRY_EXPORT CUresult cuLibraryLoadFromFile(CUlibrary* library, const char* fileName, CUjit_option*, void**,
                                            unsigned int, CUlibraryOption*, void**, unsigned int) {
  if (!fileName) return CUDA_ERROR_INVALID_VALUE;
  bool ok = false;
  std::string bytes = read_file(fileName, &ok);
  if (!ok) return CUDA_ERROR_FILE_NOT_FOUND;
  return load_library(library, bytes.data(), false);
}

FERRY_EXPORT CUresult cuLibraryUnload(CUlibrary library) {
  if (CUresult e = ensure_init()) return e;
  Driver& d = drv();
  std::lock_guard lk(d.mu);
  Library* l = as_library(library);
  if (!l) return CUDA_ERROR_INVALID_HANDLE;
  for (auto& [ctx, m] : std::map<Context*, Module*>(l->per_ctx)) unload_module(m);
  for (auto& [name, k] : l->kernels) d.kernel_set.erase(k.get());
  d.libraries.erase(l);
  delete l;
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuLibraryGetKernel(CUkernel* pKernel, CUlibrary library, const char* name) {
  if (CUresult e = ensure_init()) return e;
  if (!pKernel || !name) return CUDA_ERROR_INVALID_VALUE;
  Driver& d = drv();
  std::lock_guard lk(d.mu);
  Library* l = as_library(library);
  if (!l) return CUDA_ERROR_INVALID_HANDLE;
  auto it = l->kernels.find(name);
  if (it == l->kernels.end()) {
    if (!l->bound) l->bound = lib_with_kernel(d, name);
    if (!l->bound || !l->bound->kernels.count(name)) return CUDA_ERROR_NOT_FOUND;
    auto k = std::make_unique<Kernel>();
    k->library = l;
    k->name = name;
    d.kernel_set.insert(k.get());
    it = l->kernels.emplace(name, std::move(k)).first;
  }
  *pKernel = reinterpret_cast<CUkernel>(it->second.get());
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuLibraryGetKernelCount(unsigned int* count, CUlibrary library) {
  if (CUresult e = ensure_init()) return e;
  std::lock_guard lk(drv().mu);
  Library* l = as_library(library);
  if (!l) return CUDA_ERROR_INVALID_HANDLE;
  if (!count) return CUDA_ERROR_INVALID_VALUE;
  *count = l->bound ? static_cast<unsigned>(l->bound->kernels.size()) : 0;
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuLibraryEnumerateKernels(CUkernel* kernels, unsigned int n, CUlibrary library) {
  if (CUresult e = ensure_init()) return e;
  Library* l;
  std::vector<std::string> names;
  {
    std::lock_guard lk(drv().mu);
    l = as_library(library);
    if (!l) return CUDA_ERROR_INVALID_HANDLE;
    if (!kernels) return CUDA_ERROR_INVALID_VALUE;
    if (l->bound) names.assign(l->bound->kernels.begin(), l->bound->kernels.end());
  }
  for (unsigned i = 0; i < n && i < names.size(); i++)
    if (CUresult e = cuLibraryGetKernel(&kernels[i], library, names[i].c_str())) return e;
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuLibraryGetModule(CUmodule* pMod, CUlibrary library) {
  Context* c = nullptr;
  if (CUresult e = current_or_error(&c)) return e;
  if (!pMod) return CUDA_ERROR_INVALID_VALUE;
  std::lock_guard lk(drv().mu);
  Library* l = as_library(library);
  if (!l) return CUDA_ERROR_INVALID_HANDLE;
  *pMod = reinterpret_cast<CUmodule>(library_module(l, c));
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuKernelGetFunction(CUfunction* pFunc, CUkernel kernel) {
  Context* c = nullptr;
  if (CUresult e = current_or_error(&c)) return e;
  if (!pFunc) return CUDA_ERROR_INVALID_VALUE;
  CUresult err = CUDA_SUCCESS;
  Function* f = function_for_launch(reinterpret_cast<CUfunction>(kernel), c, &err);
  if (!f) return err;
  *pFunc = reinterpret_cast<CUfunction>(f);
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuKernelGetLibrary(CUlibrary* pLib, CUkernel kernel) {
  if (CUresult e = ensure_init()) return e;
  std::lock_guard lk(drv().mu);
  Kernel* k = as_kernel(kernel);
  if (!k) return CUDA_ERROR_INVALID_HANDLE;
  if (!pLib) return CUDA_ERROR_INVALID_VALUE;
  *pLib = reinterpret_cast<CUlibrary>(k->library);
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuLibraryGetGlobal(CUdeviceptr* dptr, size_t* bytes, CUlibrary library, const char* name) {
  Context* c = nullptr;
  if (CUresult e = current_or_error(&c)) return e;
  if (!name) return CUDA_ERROR_INVALID_VALUE;
  std::lock_guard lk(drv().mu);
  Library* l = as_library(library);
  if (!l) return CUDA_ERROR_INVALID_HANDLE;
  return get_global(library_module(l, c), name, dptr, bytes);
}

FERRY_EXPORT CUresult cuLibraryGetManaged(CUdeviceptr*, size_t*, CUlibrary library, const char*) {
  if (CUresult e = ensure_init()) return e;
  std::lock_guard lk(drv().mu);
  return as_library(library) ? CUDA_ERROR_NOT_FOUND : CUDA_ERROR_INVALID_HANDLE;
}

FERRY_EXPORT CUresult cuLibraryGetUnifiedFunction(void**, CUlibrary library, const char*) {
  if (CUresult e = ensure_init()) return e;
  std::lock_guard lk(drv().mu);
  return as_library(library) ? CUDA_ERROR_NOT_FOUND : CUDA_ERROR_INVALID_HANDLE;
}

FERRY_EXPORT CUresult cuModuleLoadData(CUmodule* module, const void* image) { return module_load(module, image); }

FERRY_EXPORT CUresult cuModuleLoadDataEx(CUmodule* module, const void* image, unsigned int, CUjit_option*, void**) {
  return module_load(module, image);
}

FERRY_EXPORT CUresult cuModuleLoadFatBinary(CUmodule* module, const void* fatCubin) {
  return module_load(module, fatCubin);
}

FERRY_EXPORT CUresult cuModuleLoad(CUmodule* module, const char* fname) {
  if (!fname) return CUDA_ERROR_INVALID_VALUE;
  bool ok = false;
  std::string bytes = read_file(fname, &ok);
  if (!ok) return CUDA_ERROR_FILE_NOT_FOUND;
  return module_load(module, bytes.data());
}

FERRY_EXPORT CUresult cuModuleUnload(CUmodule hmod) {
  if (CUresult e = ensure_init()) return e;
  std::lock_guard lk(drv().mu);
  Module* m = as_module(hmod);
  if (!m || m->library) return CUDA_ERROR_INVALID_HANDLE;
  unload_module(m);
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuModuleGetFunction(CUfunction* hfunc, CUmodule hmod, const char* name) {
  if (CUresult e = ensure_init()) return e;
  if (!hfunc || !name) return CUDA_ERROR_INVALID_VALUE;
  std::lock_guard lk(drv().mu);
  Module* m = as_module(hmod);
  if (!m) return CUDA_ERROR_INVALID_HANDLE;
  CUresult err = CUDA_SUCCESS;
  Function* f = get_function(m, name, &err);
  if (!f) return err;
  *hfunc = reinterpret_cast<CUfunction>(f);
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuModuleGetGlobal_v2(CUdeviceptr* dptr, size_t* bytes, CUmodule hmod, const char* name) {
  if (CUresult e = ensure_init()) return e;
  if (!name) return CUDA_ERROR_INVALID_VALUE;
  std::lock_guard lk(drv().mu);
  Module* m = as_module(hmod);
  if (!m) return CUDA_ERROR_INVALID_HANDLE;
  return get_global(m, name, dptr, bytes);
}

FERRY_EXPORT CUresult cuModuleGetFunctionCount(unsigned int* count, CUmodule hmod) {
  if (CUresult e = ensure_init()) return e;
  std::lock_guard lk(drv().mu);
  Module* m = as_module(hmod);
  if (!m) return CUDA_ERROR_INVALID_HANDLE;
  if (!count) return CUDA_ERROR_INVALID_VALUE;
  *count = m->bound ? static_cast<unsigned>(m->bound->kernels.size()) : 0;
  return CUDA_SUCCESS;
}

// ---- function and kernel attributes ------------------------------------------------------

namespace {

CUresult func_attribute(int* pi, CUfunction_attribute attrib, int max_dynamic, int carveout) {
  if (!pi) return CUDA_ERROR_INVALID_VALUE;
  switch (attrib) {
    case CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK: *pi = 1024; break;
    case CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES: *pi = 0; break;
    case CU_FUNC_ATTRIBUTE_CONST_SIZE_BYTES: *pi = 0; break;
    case CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES: *pi = 0; break;
    case CU_FUNC_ATTRIBUTE_NUM_REGS: *pi = 32; break;
    case CU_FUNC_ATTRIBUTE_PTX_VERSION: *pi = 90; break;
    case CU_FUNC_ATTRIBUTE_BINARY_VERSION: *pi = 90; break;
    case CU_FUNC_ATTRIBUTE_CACHE_MODE_CA: *pi = 0; break;
    case CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES: *pi = max_dynamic; break;
    case CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT: *pi = carveout; break;
    default: *pi = 0; break;
  }
  return CUDA_SUCCESS;
}

Function* as_function(CUfunction f) {
  auto* fn = reinterpret_cast<Function*>(f);
  return drv().function_set.count(fn) ? fn : nullptr;
}

}  // namespace

FERRY_EXPORT CUresult cuFuncGetAttribute(int* pi, CUfunction_attribute attrib, CUfunction hfunc) {
  if (CUresult e = ensure_init()) return e;
  std::lock_guard lk(drv().mu);
  Function* f = as_function(hfunc);
  if (!f) {
    Kernel* k = as_kernel(reinterpret_cast<CUkernel>(hfunc));
    if (!k) return CUDA_ERROR_INVALID_HANDLE;
    return func_attribute(pi, attrib, k->max_dynamic_smem, -1);
  }
  return func_attribute(pi, attrib, f->max_dynamic_smem, f->preferred_carveout);
}

FERRY_EXPORT CUresult cuFuncSetAttribute(CUfunction hfunc, CUfunction_attribute attrib, int value) {
  if (CUresult e = ensure_init()) return e;
  std::lock_guard lk(drv().mu);
  Function* f = as_function(hfunc);
  Kernel* k = f ? nullptr : as_kernel(reinterpret_cast<CUkernel>(hfunc));
  if (!f && !k) return CUDA_ERROR_INVALID_HANDLE;
  if (attrib == CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES) {
    if (value < 0 || value > 227 * 1024) return CUDA_ERROR_INVALID_VALUE;
    (f ? f->max_dynamic_smem : k->max_dynamic_smem) = value;
  } else if (attrib == CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT) {
    if (f) f->preferred_carveout = value;
  } else if (attrib != CU_FUNC_ATTRIBUTE_CLUSTER_SCHEDULING_POLICY_PREFERENCE &&
             attrib != CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED &&
             attrib != CU_FUNC_ATTRIBUTE_REQUIRED_CLUSTER_WIDTH) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuFuncSetCacheConfig(CUfunction hfunc, CUfunc_cache config) {
  if (CUresult e = ensure_init()) return e;
  std::lock_guard lk(drv().mu);
  Function* f = as_function(hfunc);
  if (!f) return CUDA_ERROR_INVALID_HANDLE;
  f->cache_config = config;
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuFuncSetSharedMemConfig(CUfunction hfunc, CUsharedconfig) {
  if (CUresult e = ensure_init()) return e;
  std::lock_guard lk(drv().mu);
  return as_function(hfunc) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

FERRY_EXPORT CUresult cuFuncGetName(const char** name, CUfunction hfunc) {
  if (CUresult e = ensure_init()) return e;
  std::lock_guard lk(drv().mu);
  Function* f = as_function(hfunc);
  if (!f) return CUDA_ERROR_INVALID_HANDLE;
  if (!name) return CUDA_ERROR_INVALID_VALUE;
  *name = f->name.c_str();
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuFuncGetModule(CUmodule* hmod, CUfunction hfunc) {
  if (CUresult e = ensure_init()) return e;
  std::lock_guard lk(drv().mu);
  Function* f = as_function(hfunc);
  if (!f) return CUDA_ERROR_INVALID_HANDLE;
  if (!hmod) return CUDA_ERROR_INVALID_VALUE;
  *hmod = reinterpret_cast<CUmodule>(f->module);
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuFuncGetParamInfo(CUfunction hfunc, size_t index, size_t* offset, size_t* size) {
  if (CUresult e = ensure_init()) return e;
  std::lock_guard lk(drv().mu);
  Function* f = as_function(hfunc);
  if (!f) return CUDA_ERROR_INVALID_HANDLE;
  if (index >= f->entry->param_count) return CUDA_ERROR_INVALID_VALUE;
  size_t off = 0;
  for (size_t i = 0; i <= index; i++) {
    off = (off + f->entry->param_aligns[i] - 1) / f->entry->param_aligns[i] * f->entry->param_aligns[i];
    if (i < index) off += f->entry->param_sizes[i];
  }
  if (offset) *offset = off;
  if (size) *size = f->entry->param_sizes[index];
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuFuncIsLoaded(CUfunctionLoadingState* state, CUfunction hfunc) {
  if (CUresult e = ensure_init()) return e;
  std::lock_guard lk(drv().mu);
  if (!as_function(hfunc)) return CUDA_ERROR_INVALID_HANDLE;
  if (!state) return CUDA_ERROR_INVALID_VALUE;
  *state = CU_FUNCTION_LOADING_STATE_LOADED;
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuFuncLoad(CUfunction hfunc) {
  if (CUresult e = ensure_init()) return e;
  std::lock_guard lk(drv().mu);
  return as_function(hfunc) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

FERRY_EXPORT CUresult cuKernelGetAttribute(int* pi, CUfunction_attribute attrib, CUkernel kernel, CUdevice dev) {
  if (CUresult e = ensure_init()) return e;
  if (!device(dev)) return CUDA_ERROR_INVALID_DEVICE;
  std::lock_guard lk(drv().mu);
  Kernel* k = as_kernel(kernel);
  if (!k) return CUDA_ERROR_INVALID_HANDLE;
  return func_attribute(pi, attrib, k->max_dynamic_smem, -1);
}

FERRY_EXPORT CUresult cuKernelSetAttribute(CUfunction_attribute attrib, int val, CUkernel kernel, CUdevice dev) {
  if (CUresult e = ensure_init()) return e;
  if (!device(dev)) return CUDA_ERROR_INVALID_DEVICE;
  std::lock_guard lk(drv().mu);
  Kernel* k = as_kernel(kernel);
  if (!k) return CUDA_ERROR_INVALID_HANDLE;
  if (attrib == CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES) {
    if (val < 0 || val > 227 * 1024) return CUDA_ERROR_INVALID_VALUE;
    k->max_dynamic_smem = val;
    for (auto& [ctx, m] : k->library->per_ctx) {
      auto it = m->functions.find(k->name);
      if (it != m->functions.end()) it->second->max_dynamic_smem = val;
    }
  }
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuKernelSetCacheConfig(CUkernel kernel, CUfunc_cache, CUdevice dev) {
  if (CUresult e = ensure_init()) return e;
  if (!device(dev)) return CUDA_ERROR_INVALID_DEVICE;
  std::lock_guard lk(drv().mu);
  return as_kernel(kernel) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

FERRY_EXPORT CUresult cuKernelGetName(const char** name, CUkernel kernel) {
  if (CUresult e = ensure_init()) return e;
  std::lock_guard lk(drv().mu);
  Kernel* k = as_kernel(kernel);
  if (!k) return CUDA_ERROR_INVALID_HANDLE;
  if (!name) return CUDA_ERROR_INVALID_VALUE;
  *name = k->name.c_str();
  return CUDA_SUCCESS;
}

// ---- occupancy: a fixed, plausible answer (one resident block per 1024 threads/SM x2) --

FERRY_EXPORT CUresult cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(int* numBlocks, CUfunction, int blockSize,
                                                                          size_t, unsigned int) {
  if (!numBlocks || blockSize <= 0) return CUDA_ERROR_INVALID_VALUE;
  *numBlocks = std::max(1, std::min(32, 2048 / blockSize));
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuOccupancyMaxActiveBlocksPerMultiprocessor(int* numBlocks, CUfunction f, int blockSize,
                                                                  size_t smem) {
  return cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(numBlocks, f, blockSize, smem, 0);
}

FERRY_EXPORT CUresult cuOccupancyMaxPotentialBlockSizeWithFlags(int* minGridSize, int* blockSize, CUfunction,
                                                                CUoccupancyB2DSize, size_t, int blockSizeLimit,
                                                                unsigned int) {
  if (!minGridSize || !blockSize) return CUDA_ERROR_INVALID_VALUE;
  *blockSize = blockSizeLimit > 0 ? std::min(blockSizeLimit, 1024) : 1024;
  *minGridSize = 2 * 132;
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuOccupancyMaxPotentialBlockSize(int* minGridSize, int* blockSize, CUfunction f,
                                                       CUoccupancyB2DSize fn, size_t smem, int limit) {
  return cuOccupancyMaxPotentialBlockSizeWithFlags(minGridSize, blockSize, f, fn, smem, limit, 0);
}

FERRY_EXPORT CUresult cuOccupancyAvailableDynamicSMemPerBlock(size_t* dynamicSmemSize, CUfunction, int, int) {
  if (!dynamicSmemSize) return CUDA_ERROR_INVALID_VALUE;
  *dynamicSmemSize = 227 * 1024;
  return CUDA_SUCCESS;
}

namespace {
// The cluster queries read the function and the configuration's stream as the driver's
// objects: both must be its own.
CUresult cluster_query(CUfunction f, const CUlaunchConfig* cfg) {
  if (!cfg || !f) return CUDA_ERROR_INVALID_VALUE;
  Context* c = nullptr;
  CUresult err = CUDA_SUCCESS;
  if (!resolve_stream(cfg->hStream, &c, &err)) return err;
  return function_for_launch(f, c, &err) ? CUDA_SUCCESS : err;
}
}  // namespace

FERRY_EXPORT CUresult cuOccupancyMaxActiveClusters(int* numClusters, CUfunction f, const CUlaunchConfig* cfg) {
  if (!numClusters) return CUDA_ERROR_INVALID_VALUE;
  if (CUresult e = cluster_query(f, cfg)) return e;
  *numClusters = 0;
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuOccupancyMaxPotentialClusterSize(int* clusterSize, CUfunction f, const CUlaunchConfig* cfg) {
  if (!clusterSize) return CUDA_ERROR_INVALID_VALUE;
  if (CUresult e = cluster_query(f, cfg)) return e;
  *clusterSize = 1;
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuKernelGetParamInfo(CUkernel kernel, size_t index, size_t* offset, size_t* size) {
  Context* c = nullptr;
  if (CUresult e = current_or_error(&c)) return e;
  CUresult err = CUDA_SUCCESS;
  Function* f = function_for_launch(reinterpret_cast<CUfunction>(kernel), c, &err);
  if (!f) return err;
  return cuFuncGetParamInfo(reinterpret_cast<CUfunction>(f), index, offset, size);
}
