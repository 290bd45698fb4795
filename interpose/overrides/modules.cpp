// Modules, libraries, kernels, functions and globals: virtual handles, recorded
// images (by pointer when the program promised to keep them, else copied), the
// globals the program looked up, and attribute changes to replay.
#include <fstream>
#include <iterator>

#include <ferry_common/cuda_image.hpp>

#include "../contexts.hpp"
#include "../shim.hpp"
#include "shim_decls.hpp"

using namespace ferry;

namespace {

tr::Module* module_rec(CUmodule m) { return vh::rec_of<tr::Module>(m, vh::Kind::Module); }
tr::Library* library_rec(CUlibrary l) { return vh::rec_of<tr::Library>(l, vh::Kind::Library); }
tr::Kernel* kernel_rec(CUkernel k) { return vh::rec_of<tr::Kernel>(k, vh::Kind::Kernel); }
tr::Function* function_rec(CUfunction f) { return vh::rec_of<tr::Function>(f, vh::Kind::Function); }

void record_image(tr::Image& img, const void* image, bool keep_pointer) {
  const void* data = cuda_image::unwrap(image);
  img.ptr = image;
  img.bytes = cuda_image::size(data);
  if (!keep_pointer) img.copy.assign(static_cast<const char*>(data), img.bytes);
}

CUmodule new_module(CUmodule real, const void* image, bool keep_pointer, tr::Library* lib, tr::Ctx* c) {
  auto* m = new tr::Module;
  m->ctx = c;
  m->library = lib;
  if (image) record_image(m->image, image, keep_pointer);
  auto& st = tr::state();
  std::lock_guard lk(st.mu);
  tr::enter(m, vh::Kind::Module, real, &tr::State::modules);
  if (lib) lib->modules[c] = m;
  return vh::as<CUmodule>(m->v);
}

// `real` by reference: written by the call whose result is `r` (argument order).
CUresult load_module(CUmodule* out, const void* image, CUresult r, const CUmodule& real) {
  if (r != CUDA_SUCCESS || !out) return r;
  *out = new_module(real, image, false, nullptr, ctx::current());
  return r;
}

// The module record of a library in the current context (made on first use).
tr::Module* library_module(tr::Library* l) {
  tr::Ctx* c = ctx::current();
  if (!c) return nullptr;
  {
    auto& st = tr::state();
    std::lock_guard lk(st.mu);
    auto it = l->modules.find(c);
    if (it != l->modules.end()) return it->second;
  }
  CUmodule real = nullptr;
  if (real::cuLibraryGetModule(&real, vh::real(vh::as<CUlibrary>(l->v))) != CUDA_SUCCESS) return nullptr;
  return module_rec(new_module(real, nullptr, true, l, c));
}

CUfunction function_handle(tr::Module* m, const std::string& name, CUfunction real) {
  auto& st = tr::state();
  std::lock_guard lk(st.mu);
  auto it = m->functions.find(name);
  if (it != m->functions.end()) {
    it->second->v->real = real;
    return vh::as<CUfunction>(it->second->v);
  }
  auto* f = new tr::Function;
  f->module = m;
  f->name = name;
  f->v = vh::make(vh::Kind::Function, real, f);
  m->functions[name] = f;
  return vh::as<CUfunction>(f->v);
}

void forget_module(tr::Module* m) {
  auto& st = tr::state();
  std::lock_guard lk(st.mu);
  for (auto& [n, f] : m->functions) {
    vh::release(f->v);
    delete f;
  }
  if (m->library) m->library->modules.erase(m->ctx);
  st.modules.erase(m);
  vh::release(m->v);
  delete m;
}

// Records a global the program looked up and returns the address to give it: the one
// it was given first, so an address cudart cached stays the one it knows (remap.hpp
// translates it after a restore moved the global).
CUdeviceptr record_global(tr::Module* m, const char* name, CUdeviceptr addr, size_t size) {
  if (!m || !name) return addr;
  auto& st = tr::state();
  std::lock_guard lk(st.mu);
  auto [it, fresh] = m->globals.try_emplace(name, tr::Global{addr, size});
  return fresh ? addr : it->second.addr;
}

std::string function_name(CUfunction real) {
  const char* n = nullptr;
  real::cuFuncGetName(&n, real);
  return n ? n : "";
}

}  // namespace

CUresult ferry::ov::cuModuleLoadData(CUmodule* module, const void* image) {
  CUmodule real = nullptr;
  return load_module(module, image, real::cuModuleLoadData(&real, image), real);
}

CUresult ferry::ov::cuModuleLoadDataEx(CUmodule* module, const void* image, unsigned int n, CUjit_option* opts,
                                       void** vals) {
  CUmodule real = nullptr;
  return load_module(module, image, real::cuModuleLoadDataEx(&real, image, n, opts, vals), real);
}

CUresult ferry::ov::cuModuleLoadFatBinary(CUmodule* module, const void* fatCubin) {
  CUmodule real = nullptr;
  return load_module(module, fatCubin, real::cuModuleLoadFatBinary(&real, fatCubin), real);
}

CUresult ferry::ov::cuModuleLoad(CUmodule* module, const char* fname) {
  CUmodule real = nullptr;
  CUresult r = real::cuModuleLoad(&real, fname);
  if (r != CUDA_SUCCESS || !module) return r;
  std::ifstream in(fname, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  bytes.push_back('\0');  // PTX text is read up to its terminator
  *module = new_module(real, bytes.data(), false, nullptr, ctx::current());
  return r;
}

CUresult ferry::ov::cuModuleUnload(CUmodule hmod) {
  CUresult r = real::cuModuleUnload(vh::real(hmod));
  if (r == CUDA_SUCCESS)
    if (tr::Module* m = module_rec(hmod)) forget_module(m);
  return r;
}

CUresult ferry::ov::cuModuleGetFunction(CUfunction* hfunc, CUmodule hmod, const char* name) {
  CUfunction real = nullptr;
  CUresult r = real::cuModuleGetFunction(&real, vh::real(hmod), name);
  if (r != CUDA_SUCCESS || !hfunc) return r;
  tr::Module* m = module_rec(hmod);
  *hfunc = m ? function_handle(m, name, real) : real;
  return r;
}

CUresult ferry::ov::cuModuleEnumerateFunctions(CUfunction* functions, unsigned int n, CUmodule mod) {
  CUresult r = real::cuModuleEnumerateFunctions(functions, n, vh::real(mod));
  if (r != CUDA_SUCCESS || !functions) return r;
  if (tr::Module* m = module_rec(mod))
    for (unsigned i = 0; i < n; i++)
      if (functions[i]) functions[i] = function_handle(m, function_name(functions[i]), functions[i]);
  return r;
}

CUresult ferry::ov::cuModuleGetGlobal_v2(CUdeviceptr* dptr, size_t* bytes, CUmodule hmod, const char* name) {
  CUdeviceptr addr = 0;
  size_t size = 0;
  CUresult r = real::cuModuleGetGlobal_v2(&addr, &size, vh::real(hmod), name);
  if (r != CUDA_SUCCESS) return r;
  addr = record_global(module_rec(hmod), name, addr, size);
  if (dptr) *dptr = addr;
  if (bytes) *bytes = size;
  return r;
}

namespace {
CUresult make_library(CUlibrary* out, const void* code, bool preserved, CUlibraryOption* opts, void** vals, unsigned n,
                      CUresult r, const CUlibrary& real) {
  if (r != CUDA_SUCCESS || !out) return r;
  auto* l = new tr::Library;
  l->preserved = preserved;
  record_image(l->image, code, preserved);
  for (unsigned i = 0; i < n && opts && vals; i++) l->options.emplace_back(opts[i], vals[i]);
  auto& st = tr::state();
  std::lock_guard lk(st.mu);
  tr::enter(l, vh::Kind::Library, real, &tr::State::libraries);
  *out = vh::as<CUlibrary>(l->v);
  return r;
}
}  // namespace

CUresult ferry::ov::cuLibraryLoadData(CUlibrary* library, const void* code, CUjit_option* jo, void** jv, unsigned int jn,
                                      CUlibraryOption* lo, void** lv, unsigned int ln) {
  CUlibrary real = nullptr;
  CUresult r = real::cuLibraryLoadData(&real, code, jo, jv, jn, lo, lv, ln);
  bool preserved = false;
  for (unsigned i = 0; i < ln && lo && lv; i++)
    if (lo[i] == CU_LIBRARY_BINARY_IS_PRESERVED && lv[i]) preserved = true;
  return make_library(library, code, preserved, lo, lv, ln, r, real);
}

CUresult ferry::ov::cuLibraryLoadFromFile(CUlibrary* library, const char* fileName, CUjit_option* jo, void** jv,
                                          unsigned int jn, CUlibraryOption* lo, void** lv, unsigned int ln) {
  CUlibrary real = nullptr;
  CUresult r = real::cuLibraryLoadFromFile(&real, fileName, jo, jv, jn, lo, lv, ln);
  if (r != CUDA_SUCCESS) return r;
  std::ifstream in(fileName, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  bytes.push_back('\0');
  return make_library(library, bytes.data(), false, lo, lv, ln, r, real);
}

CUresult ferry::ov::cuLibraryUnload(CUlibrary library) {
  CUresult r = real::cuLibraryUnload(vh::real(library));
  if (r != CUDA_SUCCESS) return r;
  tr::Library* l = library_rec(library);
  if (!l) return r;
  std::vector<tr::Module*> mods;
  {
    auto& st = tr::state();
    std::lock_guard lk(st.mu);
    for (auto& [c, m] : l->modules) mods.push_back(m);
  }
  for (tr::Module* m : mods) forget_module(m);
  auto& st = tr::state();
  std::lock_guard lk(st.mu);
  for (auto& [n, k] : l->kernels) {
    vh::release(k->v);
    delete k;
  }
  tr::leave(l, &tr::State::libraries);
  return r;
}

CUresult ferry::ov::cuLibraryGetKernel(CUkernel* pKernel, CUlibrary library, const char* name) {
  CUkernel real = nullptr;
  CUresult r = real::cuLibraryGetKernel(&real, vh::real(library), name);
  if (r != CUDA_SUCCESS || !pKernel) return r;
  tr::Library* l = library_rec(library);
  if (!l) {
    *pKernel = real;
    return r;
  }
  auto& st = tr::state();
  std::lock_guard lk(st.mu);
  tr::Kernel*& k = l->kernels[name];
  if (!k) {
    k = new tr::Kernel;
    k->library = l;
    k->name = name;
    k->v = vh::make(vh::Kind::Kernel, real, k);
  }
  k->v->real = real;
  *pKernel = vh::as<CUkernel>(k->v);
  return r;
}

CUresult ferry::ov::cuLibraryEnumerateKernels(CUkernel* kernels, unsigned int n, CUlibrary lib) {
  CUresult r = real::cuLibraryEnumerateKernels(kernels, n, vh::real(lib));
  if (r != CUDA_SUCCESS || !kernels || !library_rec(lib)) return r;
  for (unsigned i = 0; i < n; i++) {
    const char* name = nullptr;
    if (!kernels[i] || real::cuKernelGetName(&name, kernels[i]) != CUDA_SUCCESS || !name) continue;
    ferry::ov::cuLibraryGetKernel(&kernels[i], lib, name);
  }
  return r;
}

CUresult ferry::ov::cuLibraryGetModule(CUmodule* pMod, CUlibrary library) {
  CUmodule real = nullptr;
  CUresult r = real::cuLibraryGetModule(&real, vh::real(library));
  if (r != CUDA_SUCCESS || !pMod) return r;
  tr::Library* l = library_rec(library);
  tr::Module* m = l ? library_module(l) : nullptr;
  *pMod = m ? vh::as<CUmodule>(m->v) : real;
  return r;
}

CUresult ferry::ov::cuKernelGetFunction(CUfunction* pFunc, CUkernel kernel) {
  CUfunction real = nullptr;
  CUresult r = real::cuKernelGetFunction(&real, vh::real(kernel));
  if (r != CUDA_SUCCESS || !pFunc) return r;
  tr::Kernel* k = kernel_rec(kernel);
  tr::Module* m = k ? library_module(k->library) : nullptr;
  *pFunc = m ? function_handle(m, k->name, real) : real;
  return r;
}

CUresult ferry::ov::cuLibraryGetGlobal(CUdeviceptr* dptr, size_t* bytes, CUlibrary library, const char* name) {
  CUdeviceptr addr = 0;
  size_t size = 0;
  CUresult r = real::cuLibraryGetGlobal(&addr, &size, vh::real(library), name);
  if (r != CUDA_SUCCESS) return r;
  if (tr::Library* l = library_rec(library)) addr = record_global(library_module(l), name, addr, size);
  if (dptr) *dptr = addr;
  if (bytes) *bytes = size;
  return r;
}

CUresult ferry::ov::cuKernelGetLibrary(CUlibrary* pLib, CUkernel kernel) {
  CUlibrary real = nullptr;
  CUresult r = real::cuKernelGetLibrary(&real, vh::real(kernel));
  if (r != CUDA_SUCCESS || !pLib) return r;
  tr::Kernel* k = kernel_rec(kernel);
  *pLib = k ? vh::as<CUlibrary>(k->library->v) : real;
  return r;
}

CUresult ferry::ov::cuFuncGetModule(CUmodule* hmod, CUfunction hfunc) {
  CUmodule real = nullptr;
  CUresult r = real::cuFuncGetModule(&real, vh::real(hfunc));
  if (r != CUDA_SUCCESS || !hmod) return r;
  tr::Function* f = function_rec(hfunc);
  *hmod = f ? vh::as<CUmodule>(f->module->v) : real;
  return r;
}

CUresult ferry::ov::cuFuncSetAttribute(CUfunction hfunc, CUfunction_attribute attrib, int value) {
  CUresult r = real::cuFuncSetAttribute(vh::real(hfunc), attrib, value);
  if (r == CUDA_SUCCESS) {
    auto& st = tr::state();
    std::lock_guard lk(st.mu);
    if (tr::Function* f = function_rec(hfunc)) f->attrs.push_back({attrib, value});
    else if (tr::Kernel* k = kernel_rec(reinterpret_cast<CUkernel>(hfunc))) k->attrs.push_back({attrib, value});
  }
  return r;
}

CUresult ferry::ov::cuFuncSetCacheConfig(CUfunction hfunc, CUfunc_cache config) {
  CUresult r = real::cuFuncSetCacheConfig(vh::real(hfunc), config);
  if (r == CUDA_SUCCESS) {
    auto& st = tr::state();
    std::lock_guard lk(st.mu);
    if (tr::Function* f = function_rec(hfunc)) f->cache_config = config;
  }
  return r;
}

CUresult ferry::ov::cuKernelSetAttribute(CUfunction_attribute attrib, int val, CUkernel kernel, CUdevice dev) {
  CUresult r = real::cuKernelSetAttribute(attrib, val, vh::real(kernel), vh::real_device(dev));
  if (r == CUDA_SUCCESS) {
    auto& st = tr::state();
    std::lock_guard lk(st.mu);
    if (tr::Kernel* k = kernel_rec(kernel)) k->attrs.push_back({attrib, val});
  }
  return r;
}

CUresult ferry::ov::cuKernelSetCacheConfig(CUkernel kernel, CUfunc_cache config, CUdevice dev) {
  return real::cuKernelSetCacheConfig(vh::real(kernel), config, vh::real_device(dev));
}
