// The capture layer (see checkpoint.hpp): the device-state log as JSON, and device
// memory copied out through the transfer component, hashed, compressed and written
// by worker threads -- or straight into host RAM.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>

#include <ferry_common/fatbin.hpp>
#if FERRY_HAVE_FINGERPRINT
#include "ferry_fingerprint_fatbin.h"
#endif

#include "arena.hpp"
#include "config.hpp"
#include "checkpoint.hpp"
#include "driver.hpp"
#include "state_codec.hpp"
#include "transfer.hpp"
#include "graphs.hpp"
#include "kernels/fingerprint_mix.h"
#include "log.hpp"
#include "shim.hpp"
#include "tracker.hpp"

namespace ferry::engine {

namespace {

std::string h(const vh::Obj* o) { return hex(static_cast<const void*>(o)); }

const char* alloc_kind(tr::AllocKind k) {
  switch (k) {
    case tr::AllocKind::Device: return "device";
    case tr::AllocKind::Pitch: return "pitch";
    case tr::AllocKind::Async: return "async";
    case tr::AllocKind::Managed: return "managed";
  }
  return "?";
}

nlohmann::json attrs_json(const std::vector<tr::FuncAttr>& attrs) {
  nlohmann::json a = nlohmann::json::array();
  for (auto& x : attrs) a.push_back({static_cast<int>(x.attr), x.value});
  return a;
}

nlohmann::json device_json(int vdev) {
  int pdev = vh::real_device(vdev);
  char name[256] = {};
  real::cuDeviceGetName(name, sizeof name, pdev);
  int major = 0, minor = 0;
  real::cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, pdev);
  real::cuDeviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, pdev);
  size_t total = 0;
  real::cuDeviceTotalMem_v2(&total, pdev);
  return {{"vdev", vdev}, {"pdev", pdev}, {"name", name}, {"cc", std::to_string(major) + "." + std::to_string(minor)},
          {"memory", total}, {"uuid", gpu_uuid(pdev)}};
}

bool fatbin_decompress(uint64_t flags, const void* src, size_t n, size_t raw, std::vector<char>& out) {
  if (!(flags & 0x8000) || !image::zstd::available()) return false;  // LZ4 entries: not read
  out.resize(raw);
  return image::zstd::decompress(src, n, out.data(), raw);
}

// Every global of an image (from its cubins) plus those the program looked up.
std::set<std::string> global_names(const tr::Image& img, const tr::Module* m) {
  std::set<std::string> names;
  if (img.data()) names = fatbin::globals(img.ptr && img.copy.empty() ? img.ptr : img.data(), fatbin_decompress);
  if (m)
    for (auto& [n, g] : m->globals) names.insert(n);
  return names;
}

// Looks a global up in the driver for a real context; false when it has none of that name.
bool lookup_global(CUcontext real_ctx, CUlibrary lib, CUmodule mod, const std::string& name, CUdeviceptr* at,
                   size_t* size) {
  CtxScope scope(real_ctx);
  CUresult r = lib ? real::cuLibraryGetGlobal(at, size, lib, name.c_str())
                   : real::cuModuleGetGlobal_v2(at, size, mod, name.c_str());
  return r == CUDA_SUCCESS;
}

}  // namespace

std::string gpu_uuid(int pdev) {
  CUuuid u{};
  return real::cuDeviceGetUuid_v2(&u, pdev) == CUDA_SUCCESS ? pod_hex(u) : "";
}

void check_capturable() {
  if (!active()) throw Error(ErrorClass::FixFirst, "ferry is running as a plain pass-through in this process (see its log)");
  if (!config().arena)
    throw Error(ErrorClass::FixFirst, "the process was started without the arena (FERRY_ARENA=off, ferry run --no-arena): "
                                      "its device memory is not at fixed addresses and cannot be captured");
  auto& st = tr::state();
  std::lock_guard lk(st.mu);
  std::string why;
  for (auto& u : st.untracked) why += (why.empty() ? "" : ", ") + u;
  for (auto& [va, a] : st.allocs)
    if (a.kind == tr::AllocKind::Managed) {
      why += (why.empty() ? "" : ", ") + std::string("managed memory (cuMemAllocManaged)");
      break;
    }
  if (graphs::capture_in_progress())
    throw Error(ErrorClass::RetryLater, "the process is capturing a CUDA graph; try again when the capture has ended");
  if (std::string g = graphs::check(); !g.empty()) why += (why.empty() ? "" : ", ") + g;
  if (!why.empty())
    throw Error(ErrorClass::FixFirst, "the process uses CUDA features ferry cannot capture yet: " + why +
                                          " (ferry check lists them)");
}

void check_schema(const nlohmann::json& state, const std::string& where) {
  // Images written before the field existed carry the first schema.
  int v = 1;
  if (state.is_object() && state.contains("schema")) {
    const auto& f = state["schema"];
    v = f.is_number_integer() ? f.get<int>() : -1;
  }
  if (v != kStateSchema)
    throw Error(ErrorClass::FixFirst, where + ": the device-state log has schema version " +
                                          (v < 0 ? std::string("(unreadable)") : std::to_string(v)) +
                                          "; this ferry reads version " + std::to_string(kStateSchema) +
                                          (v > kStateSchema ? " (the image was written by a newer ferry)" : ""));
}

nlohmann::json serialize_state(std::vector<BlobRef>* refs) {
  auto& st = tr::state();
  std::lock_guard lk(st.mu);
  nlohmann::json j;
  j["schema"] = kStateSchema;
  j["pid"] = getpid();
  j["arena"] = {{"base", hex(config().arena_base)}, {"size", hex(config().arena_size)}};

  std::set<int> vdevs;
  auto& ctxs = j["contexts"] = nlohmann::json::array();
  for (tr::Ctx* c : st.contexts) {
    if (!c->alive) continue;
    vdevs.insert(c->vdev);
    unsigned flags = c->flags;
    if (c->primary && c->real) {
      int active_flag = 0;
      real::cuDevicePrimaryCtxGetState(vh::real_device(c->vdev), &flags, &active_flag);
    }
    ctxs.push_back({{"h", h(c->v)}, {"vdev", c->vdev}, {"primary", c->primary}, {"flags", flags},
                    {"retain", c->retain}, {"id", c->id}});
  }
  auto& streams = j["streams"] = nlohmann::json::array();
  for (tr::Stream* s : st.streams)
    streams.push_back({{"h", h(s->v)}, {"ctx", s->ctx ? h(s->ctx->v) : ""}, {"flags", s->flags},
                       {"priority", s->priority}, {"id", s->id}});
  auto& events = j["events"] = nlohmann::json::array();
  for (tr::Event* e : st.events) events.push_back({{"h", h(e->v)}, {"ctx", e->ctx ? h(e->ctx->v) : ""}, {"flags", e->flags}});
  auto& pools = j["pools"] = nlohmann::json::array();
  for (tr::Pool* p : st.pools)
    pools.push_back({{"h", h(p->v)}, {"vdev", p->vdev}, {"default", p->is_default}, {"props", pod_hex(p->props)}});

  // Graphs are re-created from the shim's recipes (graphs.hpp); the state names them
  // so a restore can tell an image taken before or after a graph was made.
  auto& graphs = j["graphs"] = nlohmann::json::array();
  for (tr::Graph* g : st.graphs)
    graphs.push_back({{"h", h(g->v)}, {"ctx", g->ctx ? h(g->ctx->v) : ""}, {"nodes", g->ops->size()}});
  auto& execs = j["graph_execs"] = nlohmann::json::array();
  for (tr::GraphExec* e : st.graph_execs)
    execs.push_back({{"h", h(e->v)}, {"ctx", e->ctx ? h(e->ctx->v) : ""}, {"nodes", e->ops->size()}, {"flags", e->flags}});

  auto& globals = j["globals"] = nlohmann::json::array();
  auto add_global = [&](const std::string& owner, tr::Ctx* c, const std::string& name, CUdeviceptr at, size_t size,
                        uintptr_t program_addr) {
    std::string id = "global:" + owner + ":" + h(c->v) + ":" + name;
    globals.push_back({{"blob", id}, {"owner", owner}, {"ctx", h(c->v)}, {"name", name}, {"addr", hex(program_addr)},
                       {"size", size}});
    if (refs) {
      BlobRef r;
      r.id = id;
      r.size = size;
      r.at = at;
      r.pdev = vh::real_device(c->vdev);
      r.ctx = c->real;
      r.program_addr = program_addr;
      refs->push_back(r);
    }
  };

  auto& libs = j["libraries"] = nlohmann::json::array();
  for (tr::Library* l : st.libraries) {
    nlohmann::json kernels = nlohmann::json::array();
    for (auto& [name, k] : l->kernels) kernels.push_back({{"h", h(k->v)}, {"name", name}, {"attrs", attrs_json(k->attrs)}});
    libs.push_back({{"h", h(l->v)}, {"bytes", l->image.bytes}, {"preserved", l->preserved}, {"kernels", kernels}});
    // A library's globals exist once per context it was loaded in; it loads lazily, so
    // every live context is asked (a context it never ran in gets fresh copies).
    std::set<std::string> names = global_names(l->image, nullptr);
    for (auto& [c, m] : l->modules)
      for (auto& [n, g] : m->globals) names.insert(n);
    if (names.empty()) continue;
    for (tr::Ctx* c : st.contexts) {
      if (!c->alive || !c->real) continue;
      auto mit = l->modules.find(c);
      for (auto& name : names) {
        CUdeviceptr at = 0;
        size_t size = 0;
        if (!lookup_global(c->real, static_cast<CUlibrary>(l->v->real), nullptr, name, &at, &size) || size == 0) continue;
        uintptr_t prog = at;
        if (mit != l->modules.end()) {
          auto g = mit->second->globals.find(name);
          if (g != mit->second->globals.end()) prog = g->second.addr;
        }
        add_global(h(l->v), c, name, at, size, prog);
      }
    }
  }
  auto& mods = j["modules"] = nlohmann::json::array();
  for (tr::Module* m : st.modules) {
    nlohmann::json fns = nlohmann::json::array();
    for (auto& [name, f] : m->functions)
      fns.push_back({{"h", h(f->v)}, {"name", name}, {"attrs", attrs_json(f->attrs)}, {"cache", f->cache_config}});
    nlohmann::json gl = nlohmann::json::array();
    for (auto& [name, g] : m->globals) gl.push_back({{"name", name}, {"addr", hex(g.addr)}, {"size", g.size}});
    mods.push_back({{"h", h(m->v)}, {"ctx", m->ctx ? h(m->ctx->v) : ""}, {"library", m->library ? h(m->library->v) : ""},
                    {"bytes", m->image.bytes}, {"functions", fns}, {"globals", gl}});
    if (m->library || !m->ctx || !m->ctx->alive) continue;
    for (auto& name : global_names(m->image, m)) {
      CUdeviceptr at = 0;
      size_t size = 0;
      if (!lookup_global(m->ctx->real, nullptr, static_cast<CUmodule>(m->v->real), name, &at, &size) || size == 0)
        continue;
      auto g = m->globals.find(name);
      add_global(h(m->v), m->ctx, name, at, size, g != m->globals.end() ? g->second.addr : at);
    }
  }

  auto& res = j["reservations"] = nlohmann::json::array();
  for (auto& [va, r] : st.reservations)
    res.push_back({{"va", hex(va)}, {"size", r.size}, {"vdev", r.vdev}, {"owner", r.owner == tr::Owner::App ? "program" : "arena"}});

  // A physical allocation is named by the program's handle to it, or else by the
  // address where it is mapped: both stay the same across restores.
  std::map<tr::Phys*, const tr::Mapping*> whole;
  std::map<tr::Phys*, uintptr_t> first_va;
  for (auto& [va, m] : st.mappings) {
    if (!first_va.count(m.phys)) first_va[m.phys] = va;
    if (m.offset == 0 && m.size >= m.phys->size && !whole.count(m.phys)) whole[m.phys] = &m;
  }
  std::map<tr::Phys*, std::string> phys_id;
  std::vector<tr::Phys*> phys(st.phys.begin(), st.phys.end());
  for (tr::Phys* p : phys) phys_id[p] = p->v ? "phys:h" + h(p->v) : "phys:" + hex(first_va.count(p) ? first_va[p] : 0);
  std::sort(phys.begin(), phys.end(), [&](tr::Phys* a, tr::Phys* b) { return phys_id[a] < phys_id[b]; });
  auto& pj = j["physical"] = nlohmann::json::array();
  uint64_t device_bytes = 0;
  for (tr::Phys* p : phys) {
    vdevs.insert(p->vdev);
    device_bytes += p->size;
    pj.push_back({{"blob", phys_id[p]}, {"h", p->v ? h(p->v) : ""}, {"size", p->size}, {"vdev", p->vdev},
                  {"owner", p->owner == tr::Owner::App ? "program" : "arena"}, {"handles", p->handle_refs},
                  {"prop", pod_hex(p->prop)}});
    if (refs) {
      BlobRef r;
      r.id = phys_id[p];
      r.size = p->size;
      r.at = whole.count(p) ? whole[p]->va : 0;
      r.phys = p->real;
      r.pdev = vh::real_device(p->vdev);
      refs->push_back(r);
    }
  }
  auto& maps = j["mappings"] = nlohmann::json::array();
  for (auto& [va, m] : st.mappings) {
    nlohmann::json acc = nlohmann::json::array();
    for (auto& a : m.access) acc.push_back(pod_hex(a));
    maps.push_back({{"va", hex(va)}, {"size", m.size}, {"physical", phys_id[m.phys]}, {"offset", m.offset}, {"access", acc}});
  }
  auto& allocs = j["allocs"] = nlohmann::json::array();
  for (auto& [va, a] : st.allocs)
    allocs.push_back({{"va", hex(va)}, {"size", a.size}, {"span", a.span}, {"kind", alloc_kind(a.kind)}, {"vdev", a.vdev},
                      {"ctx", a.ctx ? h(a.ctx->v) : ""}});
  auto& host = j["host"] = nlohmann::json::array();
  for (auto& [p, hm] : st.host)
    host.push_back({{"ptr", hex(hm.ptr)}, {"size", hm.size}, {"flags", hm.flags}, {"alloc", hm.ours}});

  for (auto& g : globals) device_bytes += g["size"].get<uint64_t>();
  j["device_bytes"] = device_bytes;
  auto& devs = j["devices"] = nlohmann::json::array();
  for (int v : vdevs) devs.push_back(device_json(v));
  return j;
}

nlohmann::json structure_of(const nlohmann::json& state) {
  nlohmann::json s = state;
  for (const char* k : {"schema", "pid", "devices", "device_bytes", "released"}) s.erase(k);
  // Live queries of the driver, not part of what the program built.
  for (auto& c : s["contexts"]) c.erase("flags");
  return s;
}

// ---- copying out ----------------------------------------------------------------------

namespace {

// Physical allocations not mapped anywhere are mapped at a temporary address while
// they are copied.
struct TempViews {
  std::vector<std::pair<CUdeviceptr, size_t>> made;
  void ensure(std::vector<BlobRef>& refs) {
    for (auto& r : refs) {
      if (r.at || !r.phys) continue;
      CUdeviceptr va = 0;
      check(real::cuMemAddressReserve(&va, r.size, 0, 0, 0), "reserving a temporary address range");
      if (CUresult e = real::cuMemMap(va, r.size, 0, r.phys, 0)) {
        real::cuMemAddressFree(va, r.size);
        throw cuda_error("mapping an unmapped allocation to copy it", e);
      }
      made.emplace_back(va, r.size);
      CUmemAccessDesc d{};
      d.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
      d.location.id = r.pdev;
      d.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
      check(real::cuMemSetAccess(va, r.size, &d, 1), "granting access to a temporary mapping");
      r.at = va;
    }
  }
  ~TempViews() {
    for (auto& [va, n] : made) {
      real::cuMemUnmap(va, n);
      real::cuMemAddressFree(va, n);
    }
  }
};

uint64_t total_bytes(const std::vector<BlobRef>& refs) {
  uint64_t t = 0;
  for (auto& r : refs) t += r.size;
  return t;
}

// Hashes a chunk and hands it to the writer (compressed when asked and worth it).
image::Hash store_chunk(image::Writer& w, const char* data, uint32_t n, int zstd_level, std::vector<char>& scratch) {
  image::Hash hh = image::hash_of(data, n);
  if (w.known(hh)) {
    w.put(hh, data, n, n, image::Codec::None);  // counted as reused
    return hh;
  }
  if (zstd_level > 0 && image::zstd::available()) {
    size_t c = image::zstd::compress(data, n, scratch, zstd_level);
    if (c > 0) {
      w.put(hh, scratch.data(), static_cast<uint32_t>(c), n, image::Codec::Zstd);
      return hh;
    }
  }
  w.put(hh, data, n, n, image::Codec::None);
  return hh;
}

thread_local std::vector<char> t_scratch;

// What the fingerprint kernel computes for these bytes (8-byte aligned).
image::Hash host_fingerprint(const char* p, uint64_t n) {
  const uint64_t words = n / 8;
  unsigned long long a = 0, b = 0, v, out[2];
  for (uint64_t i = 0; i < words; i++) {
    memcpy(&v, p + 8 * i, 8);
    ferry_fp::add(ferry_fp::word(v, i), a, b);
  }
  ferry_fp::add_tail(reinterpret_cast<const unsigned char*>(p), n, a, b);
  ferry_fp::finish(a, b, n, out);
  return {out[0], out[1]};
}

// Fingerprints of every chunk of a context's blobs (kernels/fingerprint.cu), computed
// on the GPU on their own stream: started at construction, collected by wait(). A blob
// is absent from the results when it could not be fingerprinted, and the results are
// empty when the kernel is unavailable (no code for this GPU, the simulated GPU without
// its kernel library, no device memory for the results) -- then every chunk is copied,
// as without a parent. Off with Options::fingerprints (ferry checkpoint --read-all) or
// FERRY_FINGERPRINTS=off in the program's environment.
class DeviceFingerprints {
 public:
  using Results = std::map<const BlobRef*, std::vector<image::Hash>>;
  DeviceFingerprints(const std::vector<BlobRef*>& group, uint64_t cs, const Options& o) : cs_(cs) {
    start(group, o);
  }
  DeviceFingerprints(const DeviceFingerprints&) = delete;
  DeviceFingerprints& operator=(const DeviceFingerprints&) = delete;
  ~DeviceFingerprints() { release(); }

  const Results& wait() {
    if (!running_) return out_;
    running_ = false;
    std::vector<uint64_t> host(chunks_ * 2);
    if (CUresult e = real::cuMemcpyDtoHAsync_v2(host.data(), dev_, chunks_ * 16, st_)) {
      give_up("reading the results", e);
      return out_;
    }
    if (CUresult e = real::cuStreamSynchronize(st_)) {
      give_up("running the kernel", e);
      return out_;
    }
    release();
    uint64_t at = 0;
    for (const BlobRef* r : blobs_) {
      auto& v = out_[r];
      for (uint64_t c = 0; c * cs_ < r->size; c++, at++) v.push_back({host[2 * at], host[2 * at + 1]});
    }
    return out_;
  }

 private:
  void start(const std::vector<BlobRef*>& group, const Options& o) {
#if FERRY_HAVE_FINGERPRINT
    const uint64_t cs = cs_;
    if (!o.fingerprints) return;
    if (!config().fingerprints) return;
    if (cs % 8 || cs > (1ull << 31)) return;
    for (const BlobRef* r : group)
      if (r->at && r->at % 8 == 0 && r->size) {
        blobs_.push_back(r);
        chunks_ += (r->size + cs - 1) / cs;
      }
    if (blobs_.empty()) return;
    CUfunction fn = nullptr;
    if (CUresult e = real::cuStreamCreate(&st_, CU_STREAM_NON_BLOCKING)) return give_up("creating a stream", e);
    if (CUresult e = real::cuModuleLoadData(&mod_, ferry_fingerprint_fatbin)) return give_up("loading the kernel", e);
    if (CUresult e = real::cuModuleGetFunction(&fn, mod_, "ferry_fingerprint_chunks"))
      return give_up("finding the kernel", e);
    if (CUresult e = real::cuMemAlloc_v2(&dev_, chunks_ * 16)) return give_up("allocating room for the results", e);
    uint64_t at = 0;
    for (const BlobRef* r : blobs_) {
      unsigned long long data = r->at, size = r->size, chunk = cs, res = dev_ + at * 16;
      void* args[] = {&data, &size, &chunk, &res};
      unsigned n = static_cast<unsigned>((r->size + cs - 1) / cs);
      if (CUresult e = real::cuLaunchKernel(fn, n, 1, 1, 256, 1, 1, 0, st_, args, nullptr))
        return give_up("launching the kernel", e);
      at += n;
    }
    running_ = true;
#else
    (void)group, (void)o;
#endif
  }
  void give_up(const char* what, CUresult e) {
    FERRY_DEBUG("fingerprints: %s; every chunk is copied", cuda_error(what, e).message.c_str());
    running_ = false;
    release();
  }
  void release() {
    if (st_) real::cuStreamSynchronize(st_);  // nothing may still write into dev_
    if (dev_) real::cuMemFree_v2(dev_);
    if (mod_) real::cuModuleUnload(mod_);
    if (st_) real::cuStreamDestroy_v2(st_);
    dev_ = 0, mod_ = nullptr, st_ = nullptr;
  }
  uint64_t cs_, chunks_ = 0;
  std::vector<const BlobRef*> blobs_;
  CUstream st_ = nullptr;
  CUmodule mod_ = nullptr;
  CUdeviceptr dev_ = 0;
  bool running_ = false;
  Results out_;
};

}  // namespace

void capture_to_ram(const std::vector<BlobRef>& refs_in, RamSnapshot& out, const Options& o) {
  std::vector<BlobRef> refs = refs_in;
  TempViews views;
  views.ensure(refs);
  Reporter rep(o.progress, "copying", total_bytes(refs));
  // Each blob's host memory is made when its copies are queued, so the snapshot lists
  // blobs in copy order (by context).
  copy_whole(Direction::ToHost, refs, [&](const BlobRef& r) {
    RamBlob b;
    b.id = r.id;
    b.size = r.size;
    b.bytes = HostBuffer(r.size);
    char* p = b.bytes.get();
    out.bytes += r.size;
    out.blobs.push_back(std::move(b));
    return p;
  }, rep);
}

uint64_t capture_to_image(const std::vector<BlobRef>& refs_in, image::Writer& w, image::Manifest& m, const Options& o) {
  std::vector<BlobRef> refs = refs_in;
  DeviceContexts dc;
  TempViews views;
  views.ensure(refs);
  const uint64_t cs = m.chunk_size;
  Reporter rep(o.progress, "writing", total_bytes(refs));
  auto groups = by_context(refs, dc);
  if (groups.empty()) return 0;
  StagedCopy copier(Direction::ToHost, cs, o.staging_bytes, groups.begin()->first);
  std::map<const BlobRef*, size_t> blob_index;
  for (auto& r : refs) {
    image::Blob b;
    b.id = r.id;
    b.size = r.size;
    b.chunks.resize((r.size + cs - 1) / cs);
    blob_index[&r] = m.blobs.size();
    m.blobs.push_back(std::move(b));
  }
  std::atomic<uint64_t> copied{0};
  for (auto& [ctx, group] : groups) {
    copier.begin(ctx);
    DeviceFingerprints pending(group, cs, o);
    // Needed before copying only where the parent has fingerprints to compare with;
    // otherwise the pass runs alongside the copies and is collected at the end.
    bool compare = std::any_of(group.begin(), group.end(), [&](const BlobRef* r) {
      const image::Blob* b = w.parent_blob(r->id, r->size, cs);
      return b && !b->fingerprints.empty();
    });
    const DeviceFingerprints::Results none;
    const auto& fps = compare ? pending.wait() : none;
    for (const BlobRef* r : group) {
      size_t bi = blob_index[r];
      const std::vector<image::Hash>* fp = nullptr;
      const image::Blob* before = nullptr;
      if (auto it = fps.find(r); it != fps.end()) {
        fp = &it->second;
        before = w.parent_blob(r->id, r->size, cs);
        if (before && before->fingerprints.size() != fp->size()) before = nullptr;
      }
      for (uint64_t c = 0; c * cs < r->size && !copier.failed(); c++) {
        uint64_t off = c * cs;
        uint32_t n = static_cast<uint32_t>(std::min(cs, r->size - off));
        // Unchanged since the parent: its chunk, without reading the device.
        if (before && before->fingerprints[c] == (*fp)[c] && w.known(before->chunks[c])) {
          m.blobs[bi].chunks[c] = before->chunks[c];
          w.put(before->chunks[c], nullptr, 0, n, image::Codec::None);  // known: counted as reused
          rep.add(n);
          continue;
        }
        copied += n;
        copier.chunk(r->at + off, n, [&, n, bi, c](char* buf) {
          m.blobs[bi].chunks[c] = store_chunk(w, buf, n, o.zstd_level, t_scratch);
          rep.add(n);
        });
      }
    }
    copier.end();
    const auto& all = pending.wait();
    for (const BlobRef* r : group)
      if (auto it = all.find(r); it != all.end()) m.blobs[blob_index[r]].fingerprints = it->second;
  }
  return copied;
}

void persist(const RamSnapshot& s, image::Writer& w, image::Manifest& m, const Options& o) {
  const uint64_t cs = m.chunk_size;
  Reporter rep(o.progress, "writing", s.bytes);
  Workers workers(worker_count());
  for (auto& b : s.blobs) {
    image::Blob ib;
    ib.id = b.id;
    ib.size = b.size;
    ib.chunks.resize((b.size + cs - 1) / cs);
    if (o.fingerprints) ib.fingerprints.resize(ib.chunks.size());
    m.blobs.push_back(std::move(ib));
  }
  for (size_t bi = 0; bi < s.blobs.size(); bi++) {
    const RamBlob& b = s.blobs[bi];
    for (uint64_t c = 0; c * cs < b.size; c++) {
      uint64_t off = c * cs;
      uint32_t n = static_cast<uint32_t>(std::min(cs, b.size - off));
      workers.submit([&, bi, c, off, n] {
        const char* p = s.blobs[bi].bytes.get() + off;
        m.blobs[bi].chunks[c] = store_chunk(w, p, n, o.zstd_level, t_scratch);
        // The GPU's fingerprint of these bytes, computed here, off the stopped window.
        if (o.fingerprints) m.blobs[bi].fingerprints[c] = host_fingerprint(p, n);
        rep.add(n);
      });
    }
  }
  workers.finish();
}

}  // namespace ferry::engine
