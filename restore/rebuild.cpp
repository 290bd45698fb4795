// The restore layer (see restore.hpp for the blob ids and the rebuild order).
#include <algorithm>
#include <cstring>
#include <map>
#include <set>

#include <ferry_common/fatbin.hpp>

#include "arena.hpp"
#include "contexts.hpp"
#include "driver.hpp"
#include "restore.hpp"
#include "state_codec.hpp"
#include "transfer.hpp"
#include "graphs.hpp"
#include "remap.hpp"
#include "shim.hpp"
#include "tracker.hpp"

namespace ferry::engine {

// ---- blob sources ----------------------------------------------------------------------

namespace {

struct RamSource : BlobSource {
  std::map<std::string, const RamBlob*> blobs;
  explicit RamSource(const RamSnapshot& s) {
    for (auto& b : s.blobs) blobs[b.id] = &b;
  }
  bool has(const std::string& id, uint64_t size) override {
    auto it = blobs.find(id);
    return it != blobs.end() && it->second->size == size;
  }
  const char* direct(const std::string& id) override { return blobs.at(id)->bytes.get(); }
  void read(const std::string& id, uint64_t index, void* dst) override {
    const RamBlob* b = blobs.at(id);
    uint64_t off = index * chunk_size();
    memcpy(dst, b->bytes.get() + off, std::min(chunk_size(), b->size - off));
  }
  uint64_t chunk_size() override { return image::kDefaultChunkSize; }
};

struct ImageSource : BlobSource {
  image::Reader& r;
  std::map<std::string, const image::Blob*> blobs;
  explicit ImageSource(image::Reader& rd) : r(rd) {
    for (auto& b : r.manifest().blobs) blobs[b.id] = &b;
  }
  bool has(const std::string& id, uint64_t size) override {
    auto it = blobs.find(id);
    return it != blobs.end() && it->second->size == size;
  }
  const char* direct(const std::string&) override { return nullptr; }
  void read(const std::string& id, uint64_t index, void* dst) override {
    const image::Blob* b = blobs.at(id);
    r.read_chunk(b->chunks.at(index), dst);
  }
  uint64_t chunk_size() override { return r.manifest().chunk_size; }
};

std::string mib(uint64_t b) { return std::to_string((b + (1 << 20) - 1) >> 20) + " MiB"; }

std::string device_name(int pdev) {
  char name[256] = {};
  real::cuDeviceGetName(name, sizeof name, pdev);
  return name;
}

int compute_capability(int pdev) {
  int major = 0, minor = 0;
  real::cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, pdev);
  real::cuDeviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, pdev);
  return major * 10 + minor;
}

}  // namespace

std::unique_ptr<BlobSource> ram_source(const RamSnapshot& s) { return std::make_unique<RamSource>(s); }
std::unique_ptr<BlobSource> image_source(image::Reader& r) { return std::make_unique<ImageSource>(r); }

// ---- targets ---------------------------------------------------------------------------

std::vector<int> target_map(const nlohmann::json& state, const Options& o, std::vector<int> map) {
  int n = static_cast<int>(map.size());
  // The machine's count may differ from the program's: a whole-process restore can land
  // on a machine with more or fewer GPUs.
  int phys = 0;
  if (real::cuDeviceGetCount(&phys) != CUDA_SUCCESS) phys = n;
  auto exists = [&](int d) {
    if (d < 0 || d >= phys)
      throw Error(ErrorClass::FixFirst, "device " + std::to_string(d) + " does not exist (" + std::to_string(phys) +
                                            " devices)");
  };
  // Program devices the state does not use but whose GPU this machine lacks are backed by
  // one it has, so a later cudaSetDevice still finds a device.
  std::set<int> used;
  for (auto& c : state["contexts"]) used.insert(c["vdev"].get<int>());
  for (auto& p : state["physical"]) used.insert(p["vdev"].get<int>());
  auto settle = [&](std::vector<int> m) {
    for (int v = 0; v < n && phys > 0; v++) {
      if (m[v] < phys) continue;
      if (used.count(v)) exists(m[v]);  // never a silent move of memory the program holds
      m[v] = v % phys;
    }
    return m;
  };
  if (!o.device_uuids.empty()) {
    // By UUID: the caller knows GPUs, not this process's numbering of them.
    for (auto& [v, id] : o.device_uuids) {
      if (v < 0 || v >= n)
        throw Error(ErrorClass::FixFirst, "the GPUs by UUID name program device " + std::to_string(v) +
                                              "; the program sees " + std::to_string(n));
      int found = -1;
      for (int d = 0; d < phys && found < 0; d++)
        if (gpu_uuid(d) == id) found = d;
      if (found < 0)
        throw Error(ErrorClass::FixFirst, "GPU " + id + " is not among the " + std::to_string(phys) +
                                              " GPUs this process sees (CUDA_VISIBLE_DEVICES hides it, or the "
                                              "machine lacks it)");
      // A program device not named that was there takes v's old place, as with --device:
      // the map stays a permutation.
      for (int u = 0; u < n; u++)
        if (u != v && map[u] == found && !o.device_uuids.count(u)) map[u] = map[v];
      map[v] = found;
    }
    return settle(map);
  }
  if (!o.device_map.empty()) {
    if (static_cast<int>(o.device_map.size()) != n)
      throw Error(ErrorClass::FixFirst, "the device map names " + std::to_string(o.device_map.size()) +
                                            " devices; the program sees " + std::to_string(n));
    for (int d : o.device_map) exists(d);
    return o.device_map;
  }
  if (o.device < 0) return settle(map);
  exists(o.device);
  if (used.size() > 1)
    throw Error(ErrorClass::FixFirst, "the program uses " + std::to_string(used.size()) +
                                          " devices; say where each goes with a device map (--device-map)");
  int v = used.empty() ? 0 : *used.begin();
  // The program's device v goes to the target; whichever program device was there
  // takes v's old place, so the map stays a permutation.
  for (int u = 0; u < n; u++)
    if (map[u] == o.device && u != v) map[u] = map[v];
  map[v] = o.device;
  return settle(map);
}

std::vector<int> current_map() { return std::vector<int>(vh::g_vdev_to_pdev, vh::g_vdev_to_pdev + vh::g_device_count); }

void check_targets(const nlohmann::json& state, const std::vector<int>& map) {
  std::map<int, uint64_t> need, held;  // by physical device
  for (auto& p : state["physical"]) {
    int vdev = p["vdev"].get<int>();
    need[map.at(vdev)] += p["size"].get<uint64_t>();
    held[vh::real_device(vdev)] += p["size"].get<uint64_t>();
  }
  std::set<int> targets;
  for (auto& c : state["contexts"]) targets.insert(map.at(c["vdev"].get<int>()));
  for (auto& [d, n] : need) targets.insert(d);
  DeviceContexts dc;
  for (int pdev : targets) {
    size_t free_b = 0, total = 0;
    {
      CtxScope scope(dc.get(pdev));
      check(real::cuMemGetInfo_v2(&free_b, &total), "querying a device's free memory");
    }
    // What the process holds on that device now comes back before the rebuild.
    uint64_t available = free_b + (state.value("released", false) ? 0 : held[pdev]);
    if (need[pdev] > available)
      throw Error(ErrorClass::FixFirst, "device " + std::to_string(pdev) + " (" + device_name(pdev) + ") has " +
                                            mib(available) + " available; the program's GPU state needs " +
                                            mib(need[pdev]) + ". Nothing was changed");
  }
  auto& st = tr::state();
  std::lock_guard lk(st.mu);
  auto code_check = [&](const tr::Image& img, const std::string& what) {
    if (!img.data()) return;
    for (int pdev : targets) {
      int cc = compute_capability(pdev);
      if (!fatbin::loadable_on(img.data(), cc))
        throw Error(ErrorClass::FixFirst, "device " + std::to_string(pdev) + " (" + device_name(pdev) +
                                              ", compute capability " + std::to_string(cc / 10) + "." +
                                              std::to_string(cc % 10) + ") cannot run the program's code: " + what +
                                              " carries " + fatbin::describe(img.data()) + ". Nothing was changed");
    }
  };
  for (tr::Library* l : st.libraries) code_check(l->image, "a library of " + std::to_string(l->image.bytes) + " bytes");
  for (tr::Module* m : st.modules)
    if (!m->library) code_check(m->image, "a module of " + std::to_string(m->image.bytes) + " bytes");
}

// ---- release ---------------------------------------------------------------------------

void release_gpu_state() {
  auto& st = tr::state();
  std::lock_guard lk(st.mu);
  arena::reap();
  release_graphs();  // they hold references to memory, modules and streams
  for (auto& [va, m] : st.mappings)
    if (m.live) {
      real::cuMemUnmap(va, m.size);
      m.live = false;
    }
  for (tr::Phys* p : st.phys) {
    if (!p->real) continue;
    int refs = p->owner == tr::Owner::Arena ? 1 : p->handle_refs;
    for (int i = 0; i < refs; i++) real::cuMemRelease(p->real);
    p->real = 0;
    if (p->v) p->v->real = nullptr;
  }
  for (auto& [va, r] : st.reservations)
    if (r.live) {
      arena::unreserve(va, r.size);
      r.live = false;
    }
  for (auto& [ptr, hm] : st.host)
    if (hm.live) {
      real::cuMemHostUnregister(ptr);
      hm.live = false;
    }
  for (tr::Event* e : st.events)
    if (e->v->real) {
      real::cuEventDestroy_v2(static_cast<CUevent>(e->v->real));
      e->v->real = nullptr;
    }
  for (tr::Stream* s : st.streams)
    if (s->v->real) {
      real::cuStreamDestroy_v2(static_cast<CUstream>(s->v->real));
      s->v->real = nullptr;
    }
  for (tr::Pool* p : st.pools)
    if (p->v->real) {
      if (!p->is_default) real::cuMemPoolDestroy(static_cast<CUmemoryPool>(p->v->real));
      p->v->real = nullptr;
    }
  for (tr::Module* m : st.modules) {
    if (m->v->real && !m->library) real::cuModuleUnload(static_cast<CUmodule>(m->v->real));
    m->v->real = nullptr;
    for (auto& [n, f] : m->functions) f->v->real = nullptr;
  }
  for (tr::Library* l : st.libraries) {
    if (l->v->real) real::cuLibraryUnload(static_cast<CUlibrary>(l->v->real));
    l->v->real = nullptr;
    for (auto& [n, k] : l->kernels) k->v->real = nullptr;
  }
  for (tr::Ctx* c : st.contexts) {
    if (!c->alive || !c->real) continue;
    if (c->primary) {
      int pdev = vh::real_device(c->vdev);
      for (int i = 0; i < c->retain; i++) real::cuDevicePrimaryCtxRelease_v2(pdev);
      real::cuDevicePrimaryCtxReset_v2(pdev);
    } else {
      real::cuCtxDestroy_v2(c->real);
    }
    st.ctx_by_real.erase(c->real);
    c->real = nullptr;
    c->v->real = nullptr;
  }
}

// ---- rebuild ---------------------------------------------------------------------------

namespace {

void apply_map(const std::vector<int>& map) {
  int n = vh::g_device_count;
  for (int p = 0; p < vh::kMaxDevices; p++) vh::g_pdev_to_vdev[p] = p;
  for (int v = n - 1; v >= 0; v--) {  // a device two program devices share answers as the lower one
    vh::g_vdev_to_pdev[v] = map[v];
    vh::g_pdev_to_vdev[map[v]] = v;
  }
}

const nlohmann::json* find_h(const nlohmann::json& list, const vh::Obj* o) {
  std::string key = hex(static_cast<const void*>(o));
  for (auto& x : list)
    if (x.value("h", "") == key) return &x;
  return nullptr;
}

void rebuild_contexts(const nlohmann::json& state) {
  auto& st = tr::state();
  for (tr::Ctx* c : st.contexts) {
    if (!c->alive || c->real) continue;
    int pdev = vh::real_device(c->vdev);
    CUcontext r = nullptr;
    if (c->primary) {
      const nlohmann::json* cj = find_h(state["contexts"], c->v);
      unsigned flags = cj ? (*cj)["flags"].get<unsigned>() : 0;
      real::cuDevicePrimaryCtxSetFlags_v2(pdev, flags);  // fails harmlessly when already active
      for (int i = 0; i < std::max(1, c->retain); i++)
        check(real::cuDevicePrimaryCtxRetain(&r, pdev), "re-creating a primary context", ErrorClass::RetryLater);
    } else {
      check(real::cuCtxCreate_v2(&r, c->flags, pdev), "re-creating a context", ErrorClass::RetryLater);
      CUcontext popped;
      real::cuCtxPopCurrent_v2(&popped);
    }
    c->real = r;
    c->v->real = r;
    st.ctx_by_real[r] = c;
  }
}

void rebuild_objects() {
  auto& st = tr::state();
  for (tr::Stream* s : st.streams) {
    CtxScope scope(s->ctx->real);
    CUstream x = nullptr;
    check(real::cuStreamCreateWithPriority(&x, s->flags, s->priority), "re-creating a stream");
    s->v->real = x;
  }
  for (tr::Event* e : st.events) {
    CtxScope scope(e->ctx->real);
    CUevent x = nullptr;
    check(real::cuEventCreate(&x, e->flags), "re-creating an event");
    real::cuEventRecord(x, nullptr);  // "completed", as every event is once the world drained
    e->v->real = x;
  }
  for (tr::Pool* p : st.pools) {
    CUmemoryPool x = nullptr;
    if (p->is_default) {
      check(real::cuDeviceGetDefaultMemPool(&x, vh::real_device(p->vdev)), "finding a device's default memory pool");
    } else {
      CUmemPoolProps props = p->props;
      vh::to_real(props.location);
      check(real::cuMemPoolCreate(&x, &props), "re-creating a memory pool");
    }
    p->v->real = x;
    for (auto& [attr, value] : p->attrs) {
      auto a = static_cast<CUmemPool_attribute>(attr);
      cuuint64_t wide = value;
      int narrow = static_cast<int>(value);
      check(real::cuMemPoolSetAttribute(x, a, a == CU_MEMPOOL_ATTR_RELEASE_THRESHOLD ? static_cast<void*>(&wide) : &narrow),
            "setting a memory pool's attributes again");
    }
    if (!p->access.empty()) {
      std::vector<CUmemAccessDesc> d = p->access;
      for (auto& a : d)
        vh::to_real(a.location);
      check(real::cuMemPoolSetAccess(x, d.data(), d.size()), "granting access to a memory pool again");
    }
  }
  std::set<int> pdevs;
  for (tr::Ctx* c : st.contexts)
    if (c->alive) pdevs.insert(vh::real_device(c->vdev));
  auto functions = [](tr::Module* m, CUmodule mod) {
    for (auto& [name, f] : m->functions) {
      CUfunction x = nullptr;
      check(real::cuModuleGetFunction(&x, mod, name.c_str()), ("finding function " + name).c_str());
      f->v->real = x;
      for (auto& a : f->attrs) real::cuFuncSetAttribute(x, a.attr, a.value);
      if (f->cache_config >= 0) real::cuFuncSetCacheConfig(x, static_cast<CUfunc_cache>(f->cache_config));
    }
  };
  for (tr::Library* l : st.libraries) {
    std::vector<CUlibraryOption> opts;
    std::vector<void*> vals;
    for (auto& [o, v] : l->options) opts.push_back(o), vals.push_back(v);
    CUlibrary x = nullptr;
    check(real::cuLibraryLoadData(&x, l->image.data(), nullptr, nullptr, 0, opts.empty() ? nullptr : opts.data(),
                                  vals.empty() ? nullptr : vals.data(), static_cast<unsigned>(opts.size())),
          "reloading a library");
    l->v->real = x;
    for (auto& [name, k] : l->kernels) {
      CUkernel kx = nullptr;
      check(real::cuLibraryGetKernel(&kx, x, name.c_str()), ("finding kernel " + name).c_str());
      k->v->real = kx;
      for (auto& a : k->attrs)
        for (int d : pdevs) real::cuKernelSetAttribute(a.attr, a.value, kx, d);
    }
    for (auto& [c, m] : l->modules) {
      if (!c->alive) continue;
      CtxScope scope(c->real);
      CUmodule mx = nullptr;
      check(real::cuLibraryGetModule(&mx, x), "loading a library into a context");
      m->v->real = mx;
      functions(m, mx);
    }
  }
  for (tr::Module* m : st.modules) {
    if (m->library || !m->ctx || !m->ctx->alive) continue;
    CtxScope scope(m->ctx->real);
    CUmodule mx = nullptr;
    check(real::cuModuleLoadData(&mx, m->image.data()), "reloading a module");
    m->v->real = mx;
    functions(m, mx);
  }
}

void rebuild_memory() {
  auto& st = tr::state();
  for (auto& [va, r] : st.reservations) {
    if (r.live) continue;
    CUresult e = arena::reserve_exact(va, r.size, false, true);
    if (e == CUDA_ERROR_OUT_OF_MEMORY)
      throw Error(ErrorClass::FixFirst, "the address range " + hex(va) + "+" + std::to_string(r.size) +
                                            " is taken in this process; the program's memory cannot be put back there");
    if (e != CUDA_SUCCESS) throw cuda_error(("reserving the address range at " + hex(va)).c_str(), e, ErrorClass::FixFirst);
    r.live = true;
  }
  for (tr::Phys* p : st.phys) {
    if (p->real) continue;
    CUmemAllocationProp prop = p->prop;
    vh::to_real(prop.location);
    CUmemGenericAllocationHandle x = 0;
    CUresult e = real::cuMemCreate(&x, p->size, &prop, 0);
    if (e != CUDA_SUCCESS)
      throw cuda_error(("allocating " + mib(p->size) + " on device " + std::to_string(prop.location.id)).c_str(), e,
                       e == CUDA_ERROR_OUT_OF_MEMORY ? ErrorClass::FixFirst : ErrorClass::Bug);
    p->real = x;
    if (p->v) p->v->real = reinterpret_cast<void*>(x);
  }
  for (auto& [va, m] : st.mappings) {
    if (m.live) continue;
    check(real::cuMemMap(va, m.size, m.offset, m.phys->real, 0), "mapping memory back at its address");
    m.live = true;
    std::vector<CUmemAccessDesc> acc = m.access;
    for (auto& a : acc)
      vh::to_real(a.location);
    if (!acc.empty()) check(real::cuMemSetAccess(va, m.size, acc.data(), acc.size()), "granting access to memory");
  }
}

// The program holds as many references to each of its physical allocations as before.
void fix_handle_refs() {
  auto& st = tr::state();
  for (tr::Phys* p : st.phys) {
    if (p->owner != tr::Owner::App) continue;
    if (p->handle_refs == 0) {
      real::cuMemRelease(p->real);  // only its mappings keep it, as before
      continue;
    }
    uintptr_t va = 0;
    for (auto& [a, m] : st.mappings)
      if (m.phys == p) va = a;
    for (int i = 1; i < p->handle_refs && va; i++) {
      CUmemGenericAllocationHandle x;
      real::cuMemRetainAllocationHandle(&x, reinterpret_cast<void*>(va));
    }
  }
}

void rebuild_host() {
  auto& st = tr::state();
  for (auto& [ptr, hm] : st.host) {
    if (hm.live) continue;
    unsigned flags = hm.flags;
    if (hm.ours) {
      flags = 0;
      if (hm.flags & CU_MEMHOSTALLOC_PORTABLE) flags |= CU_MEMHOSTREGISTER_PORTABLE;
      if (hm.flags & CU_MEMHOSTALLOC_DEVICEMAP) flags |= CU_MEMHOSTREGISTER_DEVICEMAP;
    }
    CtxScope scope(hm.ctx && hm.ctx->alive ? hm.ctx->real : nullptr);
    check(real::cuMemHostRegister_v2(ptr, hm.size, flags), "registering pinned host memory again");
    hm.live = true;
  }
}

void fill(std::vector<BlobRef>& refs, BlobSource& src, const Options& o) {
  uint64_t total = 0;
  for (auto& r : refs) {
    if (!src.has(r.id, r.size))
      throw Error(ErrorClass::DataLost, "the snapshot has no data for " + r.id + " (" + std::to_string(r.size) +
                                            " bytes): it was taken from a different GPU state");
    total += r.size;
  }
  Reporter rep(o.progress, "restoring", total);
  if (refs.empty()) return;
  if (src.direct(refs.front().id)) {
    copy_whole(Direction::ToDevice, refs, [&](const BlobRef& r) { return const_cast<char*>(src.direct(r.id)); }, rep);
    return;
  }
  // From an image: workers read, decompress and verify chunks into pinned staging
  // slots and queue the copies to the device.
  const uint64_t cs = src.chunk_size();
  DeviceContexts dc;
  auto groups = by_context(refs, dc);
  StagedCopy copier(Direction::ToDevice, cs, o.staging_bytes, groups.begin()->first);
  for (auto& [ctx, group] : groups) {
    copier.begin(ctx);
    for (BlobRef* r : group)
      for (uint64_t c = 0; c * cs < r->size && !copier.failed(); c++) {
        uint64_t n = std::min(cs, r->size - c * cs);
        copier.chunk(r->at + c * cs, n, [&, r, c, n](char* buf) {
          src.read(r->id, c, buf);
          rep.add(n);
        });
      }
    copier.end();
  }
}

}  // namespace

void rebuild(const nlohmann::json& state, BlobSource& src, const std::vector<int>& map, const Options& o) {
  auto& st = tr::state();
  std::lock_guard lk(st.mu);
  try {
    apply_map(map);
    o.progress("rebuilding", 0, 0);
    rebuild_contexts(state);
    rebuild_objects();
    rebuild_memory();
    fix_handle_refs();
    std::vector<BlobRef> refs;
    serialize_state(&refs);
    fill(refs, src, o);
    std::vector<gx::Moved> moved;
    for (auto& r : refs)
      if (r.program_addr) moved.push_back({r.program_addr, r.size, r.at});
    gx::publish(std::move(moved));
    rebuild_host();
    rebuild_graphs();
  } catch (...) {
    release_gpu_state();
    throw;
  }
}

}  // namespace ferry::engine
