// Device memory (through the arena), pinned host memory, pointer attributes, pools.
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>

#include "../arena.hpp"
#include "../config.hpp"
#include "../contexts.hpp"
#include "../shim.hpp"
#include "shim_decls.hpp"

using namespace ferry;

namespace {

CUstream ptsz(CUstream s) { return s ? s : CU_STREAM_PER_THREAD; }

bool use_arena() { return active() && config().arena && arena::usable(); }

// The allocation that contains p, or nullptr (tracker lock held).
tr::Alloc* find_alloc(uintptr_t p) {
  auto& allocs = tr::state().allocs;
  auto it = allocs.upper_bound(p);
  if (it == allocs.begin()) return nullptr;
  --it;
  tr::Alloc& a = it->second;
  return (p >= a.va && p < a.va + (a.size ? a.size : 1)) ? &a : nullptr;
}

tr::Pool* pool_rec(CUmemoryPool p) {
  return vh::rec_of<tr::Pool>(p, vh::Kind::Pool);
}

// A virtual handle for a real pool, made on first sight.
CUmemoryPool virtual_pool(CUmemoryPool real, int vdev, bool is_default) {
  if (!real) return real;
  auto& st = tr::state();
  std::lock_guard lk(st.mu);
  for (tr::Pool* p : st.pools)
    if (p->v->real == real) return vh::as<CUmemoryPool>(p->v);
  auto* p = new tr::Pool;
  p->vdev = vdev;
  p->is_default = is_default;
  p->props.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
  p->props.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  p->props.location.id = vdev;
  tr::enter(p, vh::Kind::Pool, real, &tr::State::pools);
  if (is_default && vdev >= 0 && vdev < vh::kMaxDevices) st.default_pool[vdev] = p;
  return vh::as<CUmemoryPool>(p->v);
}

CUmemLocation real_location(CUmemLocation l) {
  vh::to_real(l);
  return l;
}

CUresult device_alloc(CUdeviceptr* dptr, size_t size, tr::AllocKind kind, tr::Pool* pool, int vdev) {
  if (!dptr) return CUDA_ERROR_INVALID_VALUE;
  tr::Ctx* c = ctx::current();
  if (!c) {
    CUdeviceptr ignored;
    return real::cuMemAlloc_v2(&ignored, size);  // the driver's own "no context" answer
  }
  auto& st = tr::state();
  std::lock_guard lk(st.mu);
  CUresult r = arena::alloc(vdev < 0 ? c->vdev : vdev, c, size, kind, pool, dptr);
  if (r != CUDA_SUCCESS && !arena::usable()) return real::cuMemAlloc_v2(dptr, size);  // the policy said: carry on
  return r;
}

CUresult alloc_async(CUdeviceptr* dptr, size_t size, tr::Pool* pool, CUstream h, bool per_thread) {
  if (!use_arena()) {
    if (pool) return per_thread ? real::cuMemAllocFromPoolAsync_ptsz(dptr, size, vh::real(vh::as<CUmemoryPool>(pool->v)), vh::real(h))
                                : real::cuMemAllocFromPoolAsync(dptr, size, vh::real(vh::as<CUmemoryPool>(pool->v)), vh::real(h));
    return per_thread ? real::cuMemAllocAsync_ptsz(dptr, size, vh::real(h)) : real::cuMemAllocAsync(dptr, size, vh::real(h));
  }
  // Validate the stream the way the driver would, without allocating from its pool.
  CUresult q = per_thread ? real::cuStreamQuery_ptsz(vh::real(h)) : real::cuStreamQuery(vh::real(h));
  if (q != CUDA_SUCCESS && q != CUDA_ERROR_NOT_READY) return q;
  return device_alloc(dptr, size, tr::AllocKind::Async, pool, pool ? pool->vdev : -1);
}

CUresult free_async(CUdeviceptr p, CUstream h, bool per_thread) {
  if (!use_arena()) return per_thread ? real::cuMemFreeAsync_ptsz(p, vh::real(h)) : real::cuMemFreeAsync(p, vh::real(h));
  auto& st = tr::state();
  std::lock_guard lk(st.mu);
  if (!find_alloc(p) || find_alloc(p)->va != p) return per_thread ? real::cuMemFreeAsync_ptsz(p, vh::real(h))
                                                                   : real::cuMemFreeAsync(p, vh::real(h));
  return arena::free_async(p, vh::real(per_thread ? ptsz(h) : h));
}

// Pointer attributes of arena memory, answered the way the driver answers for cuMemAlloc.
CUresult arena_attribute(void* data, CUpointer_attribute attr, uintptr_t p, const tr::Alloc& a) {
  switch (attr) {
    case CU_POINTER_ATTRIBUTE_CONTEXT:
      *static_cast<CUcontext*>(data) = a.ctx ? vh::as<CUcontext>(a.ctx->v) : nullptr;
      return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_MEMORY_TYPE: *static_cast<unsigned*>(data) = CU_MEMORYTYPE_DEVICE; return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_DEVICE_POINTER: *static_cast<CUdeviceptr*>(data) = p; return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_HOST_POINTER: return CUDA_ERROR_INVALID_VALUE;
    case CU_POINTER_ATTRIBUTE_SYNC_MEMOPS: *static_cast<int*>(data) = 1; return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_BUFFER_ID:
    case CU_POINTER_ATTRIBUTE_MEMORY_BLOCK_ID: *static_cast<unsigned long long*>(data) = a.id; return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_IS_MANAGED: *static_cast<int*>(data) = 0; return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL: *static_cast<int*>(data) = a.vdev; return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_IS_LEGACY_CUDA_IPC_CAPABLE: *static_cast<int*>(data) = 0; return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_RANGE_START_ADDR: *static_cast<CUdeviceptr*>(data) = a.va; return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_RANGE_SIZE: *static_cast<size_t*>(data) = a.size; return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_MAPPED: *static_cast<int*>(data) = 1; return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_ALLOWED_HANDLE_TYPES: *static_cast<unsigned long long*>(data) = 0; return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_IS_GPU_DIRECT_RDMA_CAPABLE: *static_cast<int*>(data) = 0; return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_ACCESS_FLAGS:
      *static_cast<unsigned long long*>(data) = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
      return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_MEMPOOL_HANDLE:
      *static_cast<CUmemoryPool*>(data) = a.pool ? vh::as<CUmemoryPool>(a.pool->v) : nullptr;
      return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_MAPPING_SIZE: *static_cast<size_t*>(data) = a.span; return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_MAPPING_BASE_ADDR: *static_cast<void**>(data) = reinterpret_cast<void*>(a.va); return CUDA_SUCCESS;
    default: return CUDA_ERROR_INVALID_VALUE;
  }
}

// What the driver returned, with its handles and ordinals made virtual.
void virtualize_attribute(void* data, CUpointer_attribute attr) {
  switch (attr) {
    case CU_POINTER_ATTRIBUTE_CONTEXT:
      *static_cast<CUcontext*>(data) = tr::virtual_ctx(*static_cast<CUcontext*>(data));
      break;
    case CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL:
      *static_cast<int*>(data) = vh::virtual_device(*static_cast<int*>(data));
      break;
    case CU_POINTER_ATTRIBUTE_MEMPOOL_HANDLE: {
      CUmemoryPool p = *static_cast<CUmemoryPool*>(data);
      auto& st = tr::state();
      std::lock_guard lk(st.mu);
      for (tr::Pool* rec : st.pools)
        if (rec->v->real == p) *static_cast<CUmemoryPool*>(data) = vh::as<CUmemoryPool>(rec->v);
      break;
    }
    default: break;
  }
}

const tr::HostMem* host_rec(void* p) {
  auto& h = tr::state().host;
  auto it = h.find(p);
  return it == h.end() ? nullptr : &it->second;
}

}  // namespace

// ---- device memory --------------------------------------------------------------------

CUresult ferry::ov::cuMemAlloc_v2(CUdeviceptr* dptr, size_t bytesize) {
  if (!use_arena()) return real::cuMemAlloc_v2(dptr, bytesize);
  return device_alloc(dptr, bytesize, tr::AllocKind::Device, nullptr, -1);
}

CUresult ferry::ov::cuMemAllocPitch_v2(CUdeviceptr* dptr, size_t* pitch, size_t width, size_t height,
                                       unsigned int elemSize) {
  if (!use_arena()) return real::cuMemAllocPitch_v2(dptr, pitch, width, height, elemSize);
  // The driver decides the pitch: ask it with a real allocation, then make ours.
  CUdeviceptr probe = 0;
  size_t p = 0;
  if (CUresult e = real::cuMemAllocPitch_v2(&probe, &p, width, height, elemSize)) return e;
  real::cuMemFree_v2(probe);
  CUresult r = device_alloc(dptr, p * height, tr::AllocKind::Pitch, nullptr, -1);
  if (r == CUDA_SUCCESS && pitch) *pitch = p;
  return r;
}

CUresult ferry::ov::cuMemFree_v2(CUdeviceptr dptr) {
  if (!use_arena()) return real::cuMemFree_v2(dptr);
  if (dptr == 0) return real::cuMemFree_v2(0);
  tr::Alloc a;
  {
    auto& st = tr::state();
    std::lock_guard lk(st.mu);
    auto it = st.allocs.find(dptr);
    if (it == st.allocs.end() || it->second.kind == tr::AllocKind::Managed) {
      bool managed = it != st.allocs.end();
      if (managed) st.allocs.erase(it);
      return real::cuMemFree_v2(dptr);
    }
    a = it->second;
  }
  // cuMemFree waits for work that may still use the memory, as the driver does.
  if (a.ctx && a.ctx->alive) real::cuCtxSynchronize_v2(a.ctx->real);
  auto& st = tr::state();
  std::lock_guard lk(st.mu);
  return arena::free(dptr);
}

CUresult ferry::ov::cuMemAllocAsync(CUdeviceptr* dptr, size_t bytesize, CUstream h) {
  return alloc_async(dptr, bytesize, nullptr, h, false);
}
CUresult ferry::ov::cuMemAllocAsync_ptsz(CUdeviceptr* dptr, size_t bytesize, CUstream h) {
  return alloc_async(dptr, bytesize, nullptr, h, true);
}
CUresult ferry::ov::cuMemAllocFromPoolAsync(CUdeviceptr* dptr, size_t bytesize, CUmemoryPool pool, CUstream h) {
  tr::Pool* p = pool_rec(pool);
  if (!p) return real::cuMemAllocFromPoolAsync(dptr, bytesize, vh::real(pool), vh::real(h));
  return alloc_async(dptr, bytesize, p, h, false);
}
CUresult ferry::ov::cuMemAllocFromPoolAsync_ptsz(CUdeviceptr* dptr, size_t bytesize, CUmemoryPool pool, CUstream h) {
  tr::Pool* p = pool_rec(pool);
  if (!p) return real::cuMemAllocFromPoolAsync_ptsz(dptr, bytesize, vh::real(pool), vh::real(h));
  return alloc_async(dptr, bytesize, p, h, true);
}
CUresult ferry::ov::cuMemFreeAsync(CUdeviceptr dptr, CUstream h) { return free_async(dptr, h, false); }
CUresult ferry::ov::cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream h) { return free_async(dptr, h, true); }

CUresult ferry::ov::cuMemAllocManaged(CUdeviceptr* dptr, size_t bytesize, unsigned int flags) {
  CUresult r = real::cuMemAllocManaged(dptr, bytesize, flags);
  if (r == CUDA_SUCCESS && dptr && active()) {
    auto& st = tr::state();
    std::lock_guard lk(st.mu);
    tr::Alloc a;
    a.va = *dptr;
    a.size = bytesize;
    a.kind = tr::AllocKind::Managed;
    a.ctx = ctx::current();
    a.vdev = a.ctx ? a.ctx->vdev : 0;
    a.id = st.next_id++;
    st.allocs[*dptr] = a;
  }
  return r;
}

CUresult ferry::ov::cuMemGetAddressRange_v2(CUdeviceptr* pbase, size_t* psize, CUdeviceptr dptr) {
  {
    auto& st = tr::state();
    std::lock_guard lk(st.mu);
    if (tr::Alloc* a = find_alloc(dptr); a && a->kind != tr::AllocKind::Managed) {
      if (pbase) *pbase = a->va;
      if (psize) *psize = a->size;
      return CUDA_SUCCESS;
    }
  }
  return real::cuMemGetAddressRange_v2(pbase, psize, dptr);
}

CUresult ferry::ov::cuPointerGetAttribute(void* data, CUpointer_attribute attribute, CUdeviceptr ptr) {
  if (data) {
    auto& st = tr::state();
    std::lock_guard lk(st.mu);
    if (tr::Alloc* a = find_alloc(ptr); a && a->kind != tr::AllocKind::Managed)
      return arena_attribute(data, attribute, ptr, *a);
  }
  CUresult r = real::cuPointerGetAttribute(data, attribute, ptr);
  if (r == CUDA_SUCCESS) virtualize_attribute(data, attribute);
  return r;
}

CUresult ferry::ov::cuPointerGetAttributes(unsigned int n, CUpointer_attribute* attrs, void** data, CUdeviceptr ptr) {
  if (attrs && data) {
    auto& st = tr::state();
    std::lock_guard lk(st.mu);
    if (tr::Alloc* a = find_alloc(ptr); a && a->kind != tr::AllocKind::Managed) {
      for (unsigned i = 0; i < n; i++) {
        if (!data[i]) continue;
        if (arena_attribute(data[i], attrs[i], ptr, *a) != CUDA_SUCCESS) {
          if (attrs[i] == CU_POINTER_ATTRIBUTE_HOST_POINTER) *static_cast<void**>(data[i]) = nullptr;
        }
      }
      return CUDA_SUCCESS;
    }
  }
  CUresult r = real::cuPointerGetAttributes(n, attrs, data, ptr);
  if (r == CUDA_SUCCESS && attrs && data)
    for (unsigned i = 0; i < n; i++)
      if (data[i]) virtualize_attribute(data[i], attrs[i]);
  return r;
}

CUresult ferry::ov::cuMemPrefetchAsync_v2(CUdeviceptr p, size_t n, CUmemLocation loc, unsigned int flags, CUstream h) {
  return real::cuMemPrefetchAsync_v2(p, n, real_location(loc), flags, vh::real(h));
}
CUresult ferry::ov::cuMemPrefetchAsync_v2_ptsz(CUdeviceptr p, size_t n, CUmemLocation loc, unsigned int flags,
                                               CUstream h) {
  return real::cuMemPrefetchAsync_v2_ptsz(p, n, real_location(loc), flags, vh::real(h));
}
CUresult ferry::ov::cuMemAdvise_v2(CUdeviceptr p, size_t n, CUmem_advise advice, CUmemLocation loc) {
  return real::cuMemAdvise_v2(p, n, advice, real_location(loc));
}

namespace {
CUresult copy3d_peer(const CUDA_MEMCPY3D_PEER* p, CUstream h, int variant) {
  CUDA_MEMCPY3D_PEER c = p ? *p : CUDA_MEMCPY3D_PEER{};
  if (p) {
    c.srcContext = vh::real(p->srcContext);
    c.dstContext = vh::real(p->dstContext);
  }
  const CUDA_MEMCPY3D_PEER* q = p ? &c : nullptr;
  switch (variant) {
    case 0: return real::cuMemcpy3DPeer(q);
    case 1: return real::cuMemcpy3DPeer_ptds(q);
    case 2: return real::cuMemcpy3DPeerAsync(q, vh::real(h));
    default: return real::cuMemcpy3DPeerAsync_ptsz(q, vh::real(h));
  }
}
}  // namespace

CUresult ferry::ov::cuMemcpy3DPeer(const CUDA_MEMCPY3D_PEER* p) { return copy3d_peer(p, nullptr, 0); }
CUresult ferry::ov::cuMemcpy3DPeer_ptds(const CUDA_MEMCPY3D_PEER* p) { return copy3d_peer(p, nullptr, 1); }
CUresult ferry::ov::cuMemcpy3DPeerAsync(const CUDA_MEMCPY3D_PEER* p, CUstream h) { return copy3d_peer(p, h, 2); }
CUresult ferry::ov::cuMemcpy3DPeerAsync_ptsz(const CUDA_MEMCPY3D_PEER* p, CUstream h) { return copy3d_peer(p, h, 3); }

// ---- pinned host memory: our own pages, registered with the driver --------------------
// Driver-allocated pinned memory dies with its context; pages the shim maps itself
// and registers survive a context being re-created (and are plain memory for CRIU).

CUresult ferry::ov::cuMemHostAlloc(void** pp, size_t bytesize, unsigned int flags) {
  if (!active() || !pp || bytesize == 0) return real::cuMemHostAlloc(pp, bytesize, flags);
  size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  size_t span = (bytesize + page - 1) / page * page;
  void* p = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return CUDA_ERROR_OUT_OF_MEMORY;
  unsigned reg = 0;
  if (flags & CU_MEMHOSTALLOC_PORTABLE) reg |= CU_MEMHOSTREGISTER_PORTABLE;
  if (flags & CU_MEMHOSTALLOC_DEVICEMAP) reg |= CU_MEMHOSTREGISTER_DEVICEMAP;
  CUresult r = real::cuMemHostRegister_v2(p, span, reg);
  if (r != CUDA_SUCCESS) {
    munmap(p, span);
    return r;
  }
  auto& st = tr::state();
  std::lock_guard lk(st.mu);
  st.host[p] = tr::HostMem{p, span, flags, true, ctx::current(), true};
  *pp = p;
  return r;
}

CUresult ferry::ov::cuMemAllocHost_v2(void** pp, size_t bytesize) { return ferry::ov::cuMemHostAlloc(pp, bytesize, 0); }

CUresult ferry::ov::cuMemFreeHost(void* p) {
  tr::HostMem hm;
  {
    auto& st = tr::state();
    std::lock_guard lk(st.mu);
    const tr::HostMem* h = host_rec(p);
    if (!h || !h->ours) return real::cuMemFreeHost(p);
    hm = *h;
    st.host.erase(p);
  }
  real::cuMemHostUnregister(p);
  munmap(p, hm.size);
  return CUDA_SUCCESS;
}

CUresult ferry::ov::cuMemHostGetFlags(unsigned int* flags, void* p) {
  {
    auto& st = tr::state();
    std::lock_guard lk(st.mu);
    for (auto& [base, h] : st.host)
      if (h.ours && p >= base && static_cast<char*>(p) < static_cast<char*>(base) + h.size) {
        if (!flags) return CUDA_ERROR_INVALID_VALUE;
        *flags = h.flags;
        return CUDA_SUCCESS;
      }
  }
  return real::cuMemHostGetFlags(flags, p);
}

namespace {
CUresult host_register(void* p, size_t bytesize, unsigned flags, CUresult r) {
  if (r == CUDA_SUCCESS && active()) {
    auto& st = tr::state();
    std::lock_guard lk(st.mu);
    st.host[p] = tr::HostMem{p, bytesize, flags, false, ctx::current(), true};
  }
  return r;
}
}  // namespace

CUresult ferry::ov::cuMemHostRegister_v2(void* p, size_t bytesize, unsigned int flags) {
  return host_register(p, bytesize, flags, real::cuMemHostRegister_v2(p, bytesize, flags));
}
CUresult ferry::ov::cuMemHostRegister(void* p, size_t bytesize, unsigned int flags) {
  return host_register(p, bytesize, flags, real::cuMemHostRegister(p, bytesize, flags));
}
CUresult ferry::ov::cuMemHostUnregister(void* p) {
  CUresult r = real::cuMemHostUnregister(p);
  if (r == CUDA_SUCCESS) {
    auto& st = tr::state();
    std::lock_guard lk(st.mu);
    st.host.erase(p);
  }
  return r;
}

// ---- pools -------------------------------------------------------------------------------

CUresult ferry::ov::cuDeviceGetDefaultMemPool(CUmemoryPool* out, CUdevice_v1 dev) {
  CUmemoryPool real = nullptr;
  CUresult r = real::cuDeviceGetDefaultMemPool(&real, vh::real_device(dev));
  if (r == CUDA_SUCCESS && out) *out = virtual_pool(real, dev, true);
  return r;
}

CUresult ferry::ov::cuDeviceGetMemPool(CUmemoryPool* out, CUdevice_v1 dev) {
  CUmemoryPool real = nullptr;
  CUresult r = real::cuDeviceGetMemPool(&real, vh::real_device(dev));
  if (r == CUDA_SUCCESS && out) *out = virtual_pool(real, dev, false);
  return r;
}

CUresult ferry::ov::cuMemPoolCreate(CUmemoryPool* out, const CUmemPoolProps* props) {
  if (!props || !out) return real::cuMemPoolCreate(out, props);
  CUmemPoolProps p = *props;
  p.location = real_location(p.location);
  CUmemoryPool real = nullptr;
  CUresult r = real::cuMemPoolCreate(&real, &p);
  if (r != CUDA_SUCCESS) return r;
  *out = virtual_pool(real, props->location.type == CU_MEM_LOCATION_TYPE_DEVICE ? props->location.id : 0, false);
  auto& st = tr::state();
  std::lock_guard lk(st.mu);
  if (tr::Pool* rec = pool_rec(*out)) rec->props = *props;
  return r;
}

CUresult ferry::ov::cuMemPoolDestroy(CUmemoryPool pool) {
  CUresult r = real::cuMemPoolDestroy(vh::real(pool));
  if (r == CUDA_SUCCESS) {
    auto& st = tr::state();
    std::lock_guard lk(st.mu);
    if (tr::Pool* p = pool_rec(pool)) {
      for (auto& [va, a] : st.allocs)
        if (a.pool == p) a.pool = nullptr;  // allocations outlive their pool until freed
      tr::leave(p, &tr::State::pools);
    }
  }
  return r;
}

namespace {
CUresult location_pool(CUmemoryPool* out, CUmemLocation* loc, CUmemAllocationType type, bool def) {
  if (!loc || !out) return def ? real::cuMemGetDefaultMemPool(out, loc, type) : real::cuMemGetMemPool(out, loc, type);
  CUmemLocation l = real_location(*loc);
  CUmemoryPool real = nullptr;
  CUresult r = def ? real::cuMemGetDefaultMemPool(&real, &l, type) : real::cuMemGetMemPool(&real, &l, type);
  if (r == CUDA_SUCCESS)
    *out = virtual_pool(real, loc->type == CU_MEM_LOCATION_TYPE_DEVICE ? loc->id : -1, def);
  return r;
}
}  // namespace

CUresult ferry::ov::cuMemGetDefaultMemPool(CUmemoryPool* out, CUmemLocation* loc, CUmemAllocationType type) {
  return location_pool(out, loc, type, true);
}
CUresult ferry::ov::cuMemGetMemPool(CUmemoryPool* out, CUmemLocation* loc, CUmemAllocationType type) {
  return location_pool(out, loc, type, false);
}
CUresult ferry::ov::cuMemSetMemPool(CUmemLocation* loc, CUmemAllocationType type, CUmemoryPool pool) {
  if (!loc) return real::cuMemSetMemPool(loc, type, vh::real(pool));
  CUmemLocation l = real_location(*loc);
  return real::cuMemSetMemPool(&l, type, vh::real(pool));
}

CUresult ferry::ov::cuMemPoolSetAccess(CUmemoryPool pool, const CUmemAccessDesc* map, size_t count) {
  std::vector<CUmemAccessDesc> d(map ? map : nullptr, map ? map + count : nullptr);
  for (auto& x : d) x.location = real_location(x.location);
  CUresult r = real::cuMemPoolSetAccess(vh::real(pool), map ? d.data() : nullptr, count);
  if (r == CUDA_SUCCESS && map)
    if (tr::Pool* p = pool_rec(pool)) {  // replayed when the pool is re-created
      auto& st = tr::state();
      std::lock_guard lk(st.mu);
      for (size_t i = 0; i < count; i++) {
        std::erase_if(p->access, [&](const CUmemAccessDesc& a) {
          return a.location.type == map[i].location.type && a.location.id == map[i].location.id;
        });
        p->access.push_back(map[i]);
      }
    }
  return r;
}

CUresult ferry::ov::cuMemPoolSetAttribute(CUmemoryPool pool, CUmemPool_attribute attr, void* value) {
  CUresult r = real::cuMemPoolSetAttribute(vh::real(pool), attr, value);
  tr::Pool* p = r == CUDA_SUCCESS && value ? pool_rec(pool) : nullptr;
  if (!p) return r;
  auto& st = tr::state();
  std::lock_guard lk(st.mu);
  switch (attr) {
    case CU_MEMPOOL_ATTR_RELEASE_THRESHOLD:
      p->attrs[attr] = *static_cast<cuuint64_t*>(value);
      break;
    case CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES:
    case CU_MEMPOOL_ATTR_REUSE_ALLOW_OPPORTUNISTIC:
    case CU_MEMPOOL_ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES:
      p->attrs[attr] = static_cast<uint64_t>(*static_cast<int*>(value));
      break;
    default:  // the high-water marks: resets of statistics, nothing to replay
      break;
  }
  return r;
}

CUresult ferry::ov::cuMemPoolGetAccess(CUmemAccess_flags* flags, CUmemoryPool pool, CUmemLocation* loc) {
  if (!loc) return real::cuMemPoolGetAccess(flags, vh::real(pool), loc);
  CUmemLocation l = real_location(*loc);
  return real::cuMemPoolGetAccess(flags, vh::real(pool), &l);
}
