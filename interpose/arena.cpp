#include "arena.hpp"

#include <unistd.h>

#include <cstdio>

#include <map>
#include <vector>

#include "config.hpp"
#include "log.hpp"
#include "shim.hpp"
#include "shim_decls.hpp"

namespace ferry::arena {

namespace {

struct Space {
  bool ready = false;
  uintptr_t base = 0, size = 0;
  std::map<uintptr_t, size_t> free;  // free VA blocks by address
};
// Built on first use: see loader.cpp on initialization order.
Space* spaces() {
  static auto* s = new Space[vh::kMaxDevices];
  return s;
}

struct Chunk {
  uintptr_t va = 0;
  size_t size = 0;
  int vdev = 0;
  tr::Ctx* ctx = nullptr;
  std::map<uintptr_t, size_t> free;
  size_t live = 0;  // allocations in it
};
std::map<uintptr_t, Chunk>& chunks() {
  static auto* m = new std::map<uintptr_t, Chunk>;
  return *m;
}

struct PendingFree {
  CUevent event;
  CUdeviceptr ptr;
};
std::vector<PendingFree>& pending() {
  static auto* v = new std::vector<PendingFree>;
  return *v;
}

size_t round_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

Space& space(int vdev) {
  Space& s = spaces()[vdev];
  if (!s.ready) {
    s.ready = true;
    s.base = config().arena_base + static_cast<uintptr_t>(vdev) * config().arena_size;
    s.size = config().arena_size;
    s.free[s.base] = s.size;
  }
  return s;
}

// First fit in a free-block map; returns 0 when nothing fits.
uintptr_t take(std::map<uintptr_t, size_t>& free, size_t size, size_t align, uintptr_t hint) {
  if (hint) {
    auto it = free.upper_bound(hint);
    if (it != free.begin()) {
      --it;
      if (hint % align == 0 && hint >= it->first && hint + size <= it->first + it->second) {
        uintptr_t blk = it->first;
        size_t len = it->second;
        free.erase(it);
        if (hint > blk) free[blk] = hint - blk;
        if (hint + size < blk + len) free[hint + size] = blk + len - (hint + size);
        return hint;
      }
    }
  }
  for (auto it = free.begin(); it != free.end(); ++it) {
    uintptr_t start = round_up(it->first, align);
    if (start + size > it->first + it->second || start + size < start) continue;
    uintptr_t blk = it->first;
    size_t len = it->second;
    free.erase(it);
    if (start > blk) free[blk] = start - blk;
    if (start + size < blk + len) free[start + size] = blk + len - (start + size);
    return start;
  }
  return 0;
}

void give_back(std::map<uintptr_t, size_t>& free, uintptr_t start, size_t len) {
  auto next = free.lower_bound(start);
  if (next != free.end() && next->first == start + len) {
    len += next->second;
    free.erase(next);
  }
  auto prev = free.lower_bound(start);
  if (prev != free.begin()) {
    --prev;
    if (prev->first + prev->second == start) {
      start = prev->first;
      len += prev->second;
      free.erase(prev);
    }
  }
  free[start] = len;
}

CUmemAllocationProp device_prop(int pdev) {
  CUmemAllocationProp p{};
  p.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  p.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  p.location.id = pdev;
  return p;
}

// Reserve + create + map a piece of `span` bytes at va for the arena.
CUresult build_piece(uintptr_t va, size_t span, int vdev) {
  if (CUresult e = reserve_exact(va, span)) return e;
  tr::Phys* phys = nullptr;
  if (CUresult e = create_phys(vdev, span, nullptr, &phys)) {
    unreserve(va, span);
    tr::state().reservations.erase(va);
    return e;
  }
  if (CUresult e = map(va, span, phys, 0, nullptr, 0)) {
    real::cuMemRelease(phys->real);
    tr::state().phys.erase(phys);
    delete phys;
    unreserve(va, span);
    tr::state().reservations.erase(va);
    return e;
  }
  return CUDA_SUCCESS;
}

}  // namespace

bool g_broken = false;

bool usable() { return !g_broken; }

namespace {
void arena_unusable(const char* why) {
  if (g_broken) return;
  g_broken = true;
  FERRY_ERROR("%s", why);
  if (config().refuse_on_error) {
    FERRY_ERROR("refusing to continue without fixed device addresses (FERRY_ON_ERROR=refuse)");
    _exit(1);
  }
  FERRY_ERROR("continuing without fixed device addresses: this process cannot be restored or migrated");
  tr::state().untracked.insert("device memory outside the arena");
}
}  // namespace

size_t granularity() {
  static size_t g = 0;
  if (!g) {
    CUmemAllocationProp p = device_prop(vh::real_device(0));
    size_t v = 0;
    if (real::cuMemGetAllocationGranularity(&v, &p, CU_MEM_ALLOC_GRANULARITY_MINIMUM) != CUDA_SUCCESS || v == 0)
      v = 2u << 20;
    g = v;
  }
  return g;
}

void probe() {
  if (!config().arena || vh::g_device_count == 0) return;
  std::lock_guard lk(tr::state().mu);
  uintptr_t base = space(0).base;
  size_t g = granularity();
  if (reserve_exact(base, g, false) == CUDA_SUCCESS) unreserve(base, g);
}

int range_of(uintptr_t va) {
  uintptr_t base = config().arena_base, size = config().arena_size;
  if (va < base) return -1;
  uintptr_t d = (va - base) / size;
  return d < static_cast<uintptr_t>(vh::kMaxDevices) ? static_cast<int>(d) : -1;
}

CUresult carve(int vdev, size_t size, size_t align, uintptr_t hint, uintptr_t* out) {
  Space& s = space(vdev);
  align = std::max(align, granularity());
  size = round_up(size, granularity());
  uintptr_t at = take(s.free, size, align, hint);
  if (!at) return CUDA_ERROR_OUT_OF_MEMORY;
  *out = at;
  return CUDA_SUCCESS;
}

void uncarve(int vdev, uintptr_t va, size_t size) { give_back(space(vdev).free, va, round_up(size, granularity())); }

namespace {
struct Backing {
  bool live = false;
  size_t refs = 0;  // reserve_exact calls not undone
};
Backing* backings() {
  static auto* b = new Backing[vh::kMaxDevices];
  return b;
}

// The device whose range holds all of [va, va+size), or -1.
int backed_by(uintptr_t va, size_t size) {
  int d = range_of(va);
  return d >= 0 && range_of(va + size - 1) == d ? d : -1;
}
}  // namespace

CUresult reserve_exact(uintptr_t va, size_t size, bool record, bool restoring) {
  int d = backed_by(va, size);
  if (d >= 0) {
    Backing& b = backings()[d];
    if (!b.live) {
      uintptr_t base = space(d).base;
      size_t len = space(d).size;
      CUdeviceptr got = 0;
      CUresult e = real::cuMemAddressReserve(&got, len, 0, base, 0);
      if (e != CUDA_SUCCESS) {
        char msg[256];
        snprintf(msg, sizeof msg, "the driver refused to reserve the %zu GiB of device %d's arena at %#llx (error %d): "
                 "the arena cannot be placed there (FERRY_ARENA_BASE, FERRY_ARENA_SIZE move and size it)",
                 len >> 30, d, static_cast<unsigned long long>(base), static_cast<int>(e));
        if (!restoring) arena_unusable(msg);
        return e;
      }
      if (got != base) {
        real::cuMemAddressFree(got, len);
        char msg[256];
        snprintf(msg, sizeof msg,
                 "the driver placed device %d's arena at %#llx instead of %#llx: the arena's addresses are not free in "
                 "this process (FERRY_ARENA_BASE moves them)",
                 d, static_cast<unsigned long long>(got), static_cast<unsigned long long>(base));
        if (!restoring) arena_unusable(msg);
        return CUDA_ERROR_OUT_OF_MEMORY;
      }
      b.live = true;
    }
    b.refs++;
  } else {
    CUdeviceptr got = 0;
    CUresult e = real::cuMemAddressReserve(&got, size, 0, va, 0);
    if (e != CUDA_SUCCESS) return e;
    if (got != va) {
      real::cuMemAddressFree(got, size);
      return CUDA_ERROR_OUT_OF_MEMORY;
    }
  }
  if (record) {
    tr::Reservation r;
    r.va = va;
    r.size = size;
    r.vdev = range_of(va) < 0 ? 0 : range_of(va);
    r.owner = tr::Owner::Arena;
    tr::state().reservations[va] = r;
  }
  return CUDA_SUCCESS;
}

void unreserve(uintptr_t va, size_t size) {
  int d = backed_by(va, size);
  if (d >= 0) {
    Backing& b = backings()[d];
    if (b.refs > 0 && --b.refs == 0 && b.live) {
      real::cuMemAddressFree(space(d).base, space(d).size);
      b.live = false;
    }
  } else {
    real::cuMemAddressFree(va, size);
  }
}

CUresult create_phys(int vdev, size_t size, const CUmemAllocationProp* program_prop, tr::Phys** out) {
  CUmemAllocationProp prop = program_prop ? *program_prop : device_prop(vdev);
  CUmemAllocationProp real_prop = prop;
  vh::to_real(real_prop.location);
  CUmemGenericAllocationHandle h = 0;
  if (CUresult e = real::cuMemCreate(&h, size, &real_prop, 0)) return e;
  auto* p = new tr::Phys;
  p->real = h;
  p->size = size;
  p->vdev = vdev;
  p->prop = prop;
  p->owner = program_prop ? tr::Owner::App : tr::Owner::Arena;
  tr::state().phys.insert(p);
  *out = p;
  return CUDA_SUCCESS;
}

CUresult map(uintptr_t va, size_t size, tr::Phys* p, size_t offset, const CUmemAccessDesc* access, size_t n_access) {
  if (CUresult e = real::cuMemMap(va, size, offset, p->real, 0)) return e;
  tr::Mapping m;
  m.va = va;
  m.size = size;
  m.phys = p;
  m.offset = offset;
  if (access) {
    m.access.assign(access, access + n_access);
  } else {
    CUmemAccessDesc d{};
    d.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    d.location.id = p->vdev;
    d.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    m.access.push_back(d);
  }
  std::vector<CUmemAccessDesc> real_access = m.access;
  for (auto& d : real_access)
    vh::to_real(d.location);
  if (!real_access.empty()) {
    if (CUresult e = real::cuMemSetAccess(va, size, real_access.data(), real_access.size())) {
      real::cuMemUnmap(va, size);
      return e;
    }
  }
  p->map_refs++;
  tr::state().mappings[va] = m;
  return CUDA_SUCCESS;
}

void drop_piece(uintptr_t va) {
  auto& st = tr::state();
  auto m = st.mappings.find(va);
  if (m != st.mappings.end()) {
    tr::Phys* p = m->second.phys;
    real::cuMemUnmap(va, m->second.size);
    st.mappings.erase(m);
    real::cuMemRelease(p->real);
    st.phys.erase(p);
    delete p;
  }
  auto r = st.reservations.find(va);
  if (r != st.reservations.end()) {
    if (r->second.live) unreserve(va, r->second.size);
    uncarve(r->second.vdev, va, r->second.size);
    st.reservations.erase(r);
  }
}

CUresult alloc(int vdev, tr::Ctx* ctx, size_t size, tr::AllocKind kind, tr::Pool* pool, CUdeviceptr* out) {
  if (size == 0) return CUDA_ERROR_INVALID_VALUE;
  auto& st = tr::state();
  reap();
  tr::Alloc a;
  a.size = size;
  a.kind = kind;
  a.vdev = vdev;
  a.ctx = ctx;
  a.pool = pool;
  a.id = st.next_id++;
  if (size < kSmallLimit) {
    size_t need = round_up(size, kSmallAlign);
    for (auto& [cva, c] : chunks()) {
      if (c.vdev != vdev || c.ctx != ctx) continue;
      uintptr_t at = take(c.free, need, kSmallAlign, 0);
      if (!at) continue;
      c.live++;
      a.va = at;
      a.span = need;
      a.chunk = cva;
      st.allocs[at] = a;
      *out = at;
      return CUDA_SUCCESS;
    }
    uintptr_t va = 0;
    size_t csize = granularity();
    if (CUresult e = carve(vdev, csize, 0, 0, &va)) return e;
    if (CUresult e = build_piece(va, csize, vdev)) {
      uncarve(vdev, va, csize);
      return e;
    }
    Chunk& c = chunks()[va];
    c.va = va;
    c.size = csize;
    c.vdev = vdev;
    c.ctx = ctx;
    c.free[va] = csize;
    uintptr_t at = take(c.free, need, kSmallAlign, 0);
    c.live = 1;
    a.va = at;
    a.span = need;
    a.chunk = va;
    st.allocs[at] = a;
    *out = at;
    return CUDA_SUCCESS;
  }
  size_t span = round_up(size, granularity());
  uintptr_t va = 0;
  if (CUresult e = carve(vdev, span, 0, 0, &va)) return e;
  if (CUresult e = build_piece(va, span, vdev)) {
    uncarve(vdev, va, span);
    return e;
  }
  a.va = va;
  a.span = span;
  st.allocs[va] = a;
  *out = va;
  return CUDA_SUCCESS;
}

CUresult free(CUdeviceptr p) {
  auto& st = tr::state();
  auto it = st.allocs.find(p);
  if (it == st.allocs.end() || it->second.kind == tr::AllocKind::Managed) return CUDA_ERROR_INVALID_VALUE;
  tr::Alloc a = it->second;
  st.allocs.erase(it);
  if (a.chunk) {
    auto c = chunks().find(a.chunk);
    if (c != chunks().end()) {
      give_back(c->second.free, a.va, a.span);
      if (--c->second.live == 0) {
        drop_piece(c->first);
        chunks().erase(c);
      }
    }
  } else {
    drop_piece(a.va);
  }
  return CUDA_SUCCESS;
}

CUresult free_async(CUdeviceptr p, CUstream real_stream) {
  auto& st = tr::state();
  auto it = st.allocs.find(p);
  if (it == st.allocs.end() || it->second.kind == tr::AllocKind::Managed) return CUDA_ERROR_INVALID_VALUE;
  for (auto& pf : pending())
    if (pf.ptr == p) return CUDA_ERROR_INVALID_VALUE;  // already being freed
  CUevent ev = nullptr;
  if (CUresult e = real::cuEventCreate(&ev, CU_EVENT_DISABLE_TIMING)) return e;
  if (CUresult e = real::cuEventRecord(ev, real_stream)) {
    real::cuEventDestroy_v2(ev);
    return e;
  }
  pending().push_back({ev, p});
  return CUDA_SUCCESS;
}

void reap() {
  for (size_t i = 0; i < pending().size();) {
    if (real::cuEventQuery(pending()[i].event) == CUDA_ERROR_NOT_READY) {
      i++;
      continue;
    }
    real::cuEventDestroy_v2(pending()[i].event);
    free(pending()[i].ptr);
    pending()[i] = pending().back();
    pending().pop_back();
  }
}

}  // namespace ferry::arena
