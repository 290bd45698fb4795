// Device, managed and pinned host memory, pointer attributes and memory pools.
#include <sys/mman.h>

#include <cerrno>
#include <cstring>

#include "emu.hpp"

namespace ferry::emu {

namespace {

size_t round_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

bool in_device_va(uintptr_t p) {
  Driver& d = drv();
  for (auto& dev : d.devices)
    if (p >= dev->heap_base && p < dev->heap_end) return true;
  return false;
}

}  // namespace

void* map_fixed(uintptr_t at, size_t len, int prot) {
  return mmap(reinterpret_cast<void*>(at), len, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
}

Range* find_range(uintptr_t p) {
  Driver& d = drv();
  auto it = d.ranges.upper_bound(p);
  if (it == d.ranges.begin()) return nullptr;
  --it;
  Range& r = it->second;
  size_t extent = r.size ? r.size : 1;
  if (p >= r.base && p < r.base + extent) return &r;
  return nullptr;
}

namespace {
// Mapped and accessible bytes of a VMM reservation starting at p, up to n.
bool vmm_accessible(uintptr_t p, size_t n) {
  Driver& d = drv();
  uintptr_t end = p + n;
  while (p < end) {
    auto it = d.mappings.upper_bound(p);
    if (it == d.mappings.begin()) return false;
    --it;
    const Mapping& m = it->second;
    if (p < m.base || p >= m.base + m.size || !m.rw) return false;
    p = m.base + m.size;
  }
  return true;
}
}  // namespace

CUresult check_device_access(uintptr_t p, size_t n) {
  if (n == 0) return CUDA_SUCCESS;
  Driver& d = drv();
  std::lock_guard lk(d.mu);
  Range* r = find_range(p);
  if (!r) return CUDA_ERROR_INVALID_VALUE;
  if (r->kind == RangeKind::VmmReserve) return vmm_accessible(p, n) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
  if (p + n > r->base + r->size || p + n < p) return CUDA_ERROR_INVALID_VALUE;
  return CUDA_SUCCESS;
}

bool is_pinned_host(const void* ptr, size_t n) {
  Driver& d = drv();
  std::lock_guard lk(d.mu);
  Range* r = find_range(reinterpret_cast<uintptr_t>(ptr));
  if (!r || (r->kind != RangeKind::HostPinned && r->kind != RangeKind::HostRegistered)) return false;
  return reinterpret_cast<uintptr_t>(ptr) + n <= r->base + r->size;
}

// True when p is inside the device heaps or the VMM region, where only registered
// ranges are valid; anywhere else an unknown pointer is ordinary pageable host memory.
bool looks_like_device(uintptr_t p) {
  std::lock_guard lk(drv().mu);
  if (find_range(p)) {
    Range* r = find_range(p);
    return r->kind != RangeKind::HostPinned && r->kind != RangeKind::HostRegistered;
  }
  return in_device_va(p);
}

CUresult heap_alloc(Device* dev, size_t size, RangeKind kind, Context* ctx, MemPool* pool, CUdeviceptr* out) {
  if (size == 0) return CUDA_ERROR_INVALID_VALUE;
  Driver& d = drv();
  std::lock_guard lk(d.mu);
  size_t align = size >= kGranularity ? kGranularity : kPage;
  size_t span = round_up(size, align);
  if (span < size || span > room_on(dev)) return CUDA_ERROR_OUT_OF_MEMORY;
  for (auto it = dev->heap_free.begin(); it != dev->heap_free.end(); ++it) {
    uintptr_t start = round_up(it->first, align);
    if (start + span > it->first + it->second) continue;
    uintptr_t blk = it->first;
    size_t blk_len = it->second;
    dev->heap_free.erase(it);
    if (start > blk) dev->heap_free[blk] = start - blk;
    if (start + span < blk + blk_len) dev->heap_free[start + span] = blk + blk_len - (start + span);
    if (map_fixed(start, span, PROT_READ | PROT_WRITE) == MAP_FAILED)
      fatal("mapping %zu bytes of device memory failed: %s", span, strerror(errno));
    dev->used += span;
    Range r;
    r.base = start;
    r.size = size;
    r.span = span;
    r.kind = kind;
    r.dev = dev;
    r.ctx = ctx;
    r.pool = pool;
    r.id = new_id();
    d.ranges[start] = r;
    if (pool) {
      pool->used += span;
      if (pool->used > pool->used_high) pool->used_high = pool->used;
    }
    *out = start;
    return CUDA_SUCCESS;
  }
  return CUDA_ERROR_OUT_OF_MEMORY;
}

void heap_free(Range& r) {
  Driver& d = drv();
  uintptr_t base = r.base;
  switch (r.kind) {
    case RangeKind::DeviceAlloc:
    case RangeKind::PoolAlloc:
    case RangeKind::Managed: {
      Device* dev = r.dev;
      // Back to PROT_NONE: the pages are dropped and any later access faults.
      if (map_fixed(base, r.span, PROT_NONE) == MAP_FAILED) fatal("unmapping device memory failed: %s", strerror(errno));
      dev->used -= r.span;
      if (r.pool) r.pool->used -= r.span;
      uintptr_t start = base;
      size_t len = r.span;
      auto next = dev->heap_free.lower_bound(start);
      if (next != dev->heap_free.end() && next->first == start + len) {
        len += next->second;
        dev->heap_free.erase(next);
      }
      auto prev = dev->heap_free.lower_bound(start);
      if (prev != dev->heap_free.begin()) {
        --prev;
        if (prev->first + prev->second == start) {
          start = prev->first;
          len += prev->second;
          dev->heap_free.erase(prev);
        }
      }
      dev->heap_free[start] = len;
      break;
    }
    case RangeKind::HostPinned:
      munmap(reinterpret_cast<void*>(base), r.span);
      break;
    default:
      break;
  }
  d.ranges.erase(base);
}

}  // namespace ferry::emu

using namespace ferry::emu;

namespace {

CUresult free_device(CUdeviceptr p, bool allow_pool) {
  Context* c = nullptr;
  if (CUresult e = current_or_error(&c)) return e;
  if (p == 0) return CUDA_SUCCESS;
  // cuMemFree synchronizes with outstanding work, like the real driver's implicit sync.
  sync_context(c);
  Driver& d = drv();
  std::lock_guard lk(d.mu);
  auto it = d.ranges.find(p);
  if (it == d.ranges.end()) return CUDA_ERROR_INVALID_VALUE;
  Range& r = it->second;
  if (r.kind != RangeKind::DeviceAlloc && r.kind != RangeKind::Managed &&
      !(allow_pool && r.kind == RangeKind::PoolAlloc))
    return CUDA_ERROR_INVALID_VALUE;
  heap_free(r);
  return CUDA_SUCCESS;
}

}  // namespace

FERRY_EXPORT CUresult cuMemAlloc_v2(CUdeviceptr* dptr, size_t bytesize) {
  Context* c = nullptr;
  if (CUresult e = current_or_error(&c)) return e;
  if (!dptr) return CUDA_ERROR_INVALID_VALUE;
  if (CUresult e = c->sticky.load()) return e;
  return heap_alloc(c->dev, bytesize, RangeKind::DeviceAlloc, c, nullptr, dptr);
}

FERRY_EXPORT CUresult cuMemAllocPitch_v2(CUdeviceptr* dptr, size_t* pitch, size_t width, size_t height,
                                         unsigned int elemSize) {
  if (!pitch || width == 0 || height == 0 || (elemSize != 4 && elemSize != 8 && elemSize != 16))
    return CUDA_ERROR_INVALID_VALUE;
  size_t p = (width + 511) / 512 * 512;
  CUresult e = cuMemAlloc_v2(dptr, p * height);
  if (e == CUDA_SUCCESS) *pitch = p;
  return e;
}

FERRY_EXPORT CUresult cuMemFree_v2(CUdeviceptr dptr) { return free_device(dptr, true); }

FERRY_EXPORT CUresult cuMemAllocManaged(CUdeviceptr* dptr, size_t bytesize, unsigned int flags) {
  Context* c = nullptr;
  if (CUresult e = current_or_error(&c)) return e;
  if (!dptr || (flags != CU_MEM_ATTACH_GLOBAL && flags != CU_MEM_ATTACH_HOST)) return CUDA_ERROR_INVALID_VALUE;
  CUresult e = heap_alloc(c->dev, bytesize, RangeKind::Managed, c, nullptr, dptr);
  if (e == CUDA_SUCCESS) {
    std::lock_guard lk(drv().mu);
    drv().ranges[*dptr].flags = flags;
  }
  return e;
}

FERRY_EXPORT CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
  Context* c = nullptr;
  if (CUresult e = current_or_error(&c)) return e;
  if (!free_bytes || !total) return CUDA_ERROR_INVALID_VALUE;
  std::lock_guard lk(drv().mu);
  *total = c->dev->cfg.total_mem;
  *free_bytes = room_on(c->dev);
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuMemGetAddressRange_v2(CUdeviceptr* pbase, size_t* psize, CUdeviceptr dptr) {
  if (CUresult e = ensure_init()) return e;
  std::lock_guard lk(drv().mu);
  Range* r = find_range(dptr);
  if (!r || r->kind == RangeKind::HostRegistered) return CUDA_ERROR_NOT_FOUND;
  if (r->kind == RangeKind::VmmReserve) {
    auto it = drv().mappings.upper_bound(dptr);
    if (it == drv().mappings.begin()) return CUDA_ERROR_NOT_FOUND;
    --it;
    if (dptr >= it->second.base + it->second.size) return CUDA_ERROR_NOT_FOUND;
    if (pbase) *pbase = it->second.base;
    if (psize) *psize = it->second.size;
    return CUDA_SUCCESS;
  }
  if (pbase) *pbase = r->base;
  if (psize) *psize = r->size;
  return CUDA_SUCCESS;
}

// ---- pinned host memory ---------------------------------------------------------------

FERRY_EXPORT CUresult cuMemHostAlloc(void** pp, size_t bytesize, unsigned int flags) {
  Context* c = nullptr;
  if (CUresult e = current_or_error(&c)) return e;
  if (!pp || bytesize == 0) return CUDA_ERROR_INVALID_VALUE;
  if (flags & ~0xfu) return CUDA_ERROR_INVALID_VALUE;
  size_t span = (bytesize + kPage - 1) / kPage * kPage;
  void* p = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return CUDA_ERROR_OUT_OF_MEMORY;
  std::lock_guard lk(drv().mu);
  Range r;
  r.base = reinterpret_cast<uintptr_t>(p);
  r.size = bytesize;
  r.span = span;
  r.kind = RangeKind::HostPinned;
  r.dev = c->dev;
  r.ctx = (flags & CU_MEMHOSTALLOC_PORTABLE) ? nullptr : c;
  r.flags = flags;
  r.id = new_id();
  drv().ranges[r.base] = r;
  *pp = p;
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuMemAllocHost_v2(void** pp, size_t bytesize) { return cuMemHostAlloc(pp, bytesize, 0); }

FERRY_EXPORT CUresult cuMemFreeHost(void* p) {
  if (CUresult e = ensure_init()) return e;
  std::lock_guard lk(drv().mu);
  auto it = drv().ranges.find(reinterpret_cast<uintptr_t>(p));
  if (it == drv().ranges.end() || it->second.kind != RangeKind::HostPinned) return CUDA_ERROR_INVALID_VALUE;
  heap_free(it->second);
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuMemHostRegister_v2(void* p, size_t bytesize, unsigned int flags) {
  Context* c = nullptr;
  if (CUresult e = current_or_error(&c)) return e;
  if (!p || bytesize == 0 || (flags & ~0xfu)) return CUDA_ERROR_INVALID_VALUE;
  uintptr_t b = reinterpret_cast<uintptr_t>(p);
  std::lock_guard lk(drv().mu);
  auto it = drv().ranges.lower_bound(b);
  if ((it != drv().ranges.end() && it->first < b + bytesize) || find_range(b))
    return CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED;
  Range r;
  r.base = b;
  r.size = r.span = bytesize;
  r.kind = RangeKind::HostRegistered;
  r.dev = c->dev;
  r.ctx = (flags & CU_MEMHOSTREGISTER_PORTABLE) ? nullptr : c;
  r.flags = flags;
  r.id = new_id();
  drv().ranges[b] = r;
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuMemHostRegister(void* p, size_t bytesize, unsigned int flags) {
  return cuMemHostRegister_v2(p, bytesize, flags);
}

FERRY_EXPORT CUresult cuMemHostUnregister(void* p) {
  if (CUresult e = ensure_init()) return e;
  std::lock_guard lk(drv().mu);
  auto it = drv().ranges.find(reinterpret_cast<uintptr_t>(p));
  if (it == drv().ranges.end() || it->second.kind != RangeKind::HostRegistered)
    return CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED;
  drv().ranges.erase(it);
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuMemHostGetDevicePointer_v2(CUdeviceptr* pdptr, void* p, unsigned int flags) {
  if (CUresult e = ensure_init()) return e;
  if (!pdptr || flags != 0) return CUDA_ERROR_INVALID_VALUE;
  std::lock_guard lk(drv().mu);
  Range* r = find_range(reinterpret_cast<uintptr_t>(p));
  if (!r || (r->kind != RangeKind::HostPinned && r->kind != RangeKind::HostRegistered)) return CUDA_ERROR_INVALID_VALUE;
  *pdptr = reinterpret_cast<CUdeviceptr>(p);  // unified addressing: same address
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuMemHostGetFlags(unsigned int* flags, void* p) {
  if (CUresult e = ensure_init()) return e;
  if (!flags) return CUDA_ERROR_INVALID_VALUE;
  std::lock_guard lk(drv().mu);
  Range* r = find_range(reinterpret_cast<uintptr_t>(p));
  if (!r || (r->kind != RangeKind::HostPinned && r->kind != RangeKind::HostRegistered)) return CUDA_ERROR_INVALID_VALUE;
  *flags = r->flags;
  return CUDA_SUCCESS;
}

// ---- pointer attributes ---------------------------------------------------------------

namespace {

// Writes one attribute; returns INVALID_VALUE when it does not apply to the pointer.
CUresult pointer_attribute(void* data, CUpointer_attribute attr, uintptr_t p, const Range* r) {
  const Mapping* m = nullptr;
  if (r && r->kind == RangeKind::VmmReserve) {
    auto it = drv().mappings.upper_bound(p);
    if (it != drv().mappings.begin()) {
      --it;
      if (p >= it->second.base && p < it->second.base + it->second.size) m = &it->second;
    }
    if (!m) r = nullptr;  // reserved but unmapped: not a valid device address
  }
  bool host = r && (r->kind == RangeKind::HostPinned || r->kind == RangeKind::HostRegistered);
  Device* dev = r ? (m ? m->phys->dev : r->dev) : nullptr;
  switch (attr) {
    case CU_POINTER_ATTRIBUTE_CONTEXT:
      if (!r) return CUDA_ERROR_INVALID_VALUE;
      *static_cast<CUcontext*>(data) = reinterpret_cast<CUcontext>(r->ctx);
      return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_MEMORY_TYPE:
      if (!r) return CUDA_ERROR_INVALID_VALUE;
      *static_cast<unsigned*>(data) = host ? CU_MEMORYTYPE_HOST : CU_MEMORYTYPE_DEVICE;
      return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_DEVICE_POINTER:
      if (!r) return CUDA_ERROR_INVALID_VALUE;
      *static_cast<CUdeviceptr*>(data) = p;
      return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_HOST_POINTER:
      if (!r || !(host || r->kind == RangeKind::Managed)) return CUDA_ERROR_INVALID_VALUE;
      *static_cast<void**>(data) = reinterpret_cast<void*>(p);
      return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_SYNC_MEMOPS:
      if (!r) return CUDA_ERROR_INVALID_VALUE;
      *static_cast<int*>(data) = 1;
      return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_BUFFER_ID:
      if (!r) return CUDA_ERROR_INVALID_VALUE;
      *static_cast<unsigned long long*>(data) = m ? m->phys->id : r->id;
      return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_IS_MANAGED:
      if (!r) return CUDA_ERROR_INVALID_VALUE;
      *static_cast<int*>(data) = r->kind == RangeKind::Managed;
      return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL:
      if (!r || !dev) return CUDA_ERROR_INVALID_VALUE;
      *static_cast<int*>(data) = dev->ordinal;
      return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_IS_LEGACY_CUDA_IPC_CAPABLE:
      if (!r) return CUDA_ERROR_INVALID_VALUE;
      *static_cast<int*>(data) = r->kind == RangeKind::DeviceAlloc;
      return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_RANGE_START_ADDR:
      if (!r) return CUDA_ERROR_INVALID_VALUE;
      *static_cast<CUdeviceptr*>(data) = m ? m->base : r->base;
      return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_RANGE_SIZE:
      if (!r) return CUDA_ERROR_INVALID_VALUE;
      *static_cast<size_t*>(data) = m ? m->size : r->size;
      return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_MAPPED:
      *static_cast<int*>(data) = r != nullptr;
      return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_ALLOWED_HANDLE_TYPES:
      if (!r) return CUDA_ERROR_INVALID_VALUE;
      *static_cast<unsigned long long*>(data) = m ? m->phys->prop.requestedHandleTypes : 0;
      return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_IS_GPU_DIRECT_RDMA_CAPABLE:
      if (!r) return CUDA_ERROR_INVALID_VALUE;
      *static_cast<int*>(data) = 0;
      return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_ACCESS_FLAGS:
      if (!r) return CUDA_ERROR_INVALID_VALUE;
      *static_cast<unsigned long long*>(data) = (m && !m->rw) ? CU_MEM_ACCESS_FLAGS_PROT_NONE : CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
      return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_MEMPOOL_HANDLE:
      if (!r) return CUDA_ERROR_INVALID_VALUE;
      *static_cast<CUmemoryPool*>(data) = reinterpret_cast<CUmemoryPool>(r->pool);
      return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_MAPPING_SIZE:
      if (!r) return CUDA_ERROR_INVALID_VALUE;
      *static_cast<size_t*>(data) = m ? m->size : r->span;
      return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_MAPPING_BASE_ADDR:
      if (!r) return CUDA_ERROR_INVALID_VALUE;
      *static_cast<void**>(data) = reinterpret_cast<void*>(m ? m->base : r->base);
      return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_MEMORY_BLOCK_ID:
      if (!r) return CUDA_ERROR_INVALID_VALUE;
      *static_cast<unsigned long long*>(data) = m ? m->phys->id : r->id;
      return CUDA_SUCCESS;
    default:
      return CUDA_ERROR_INVALID_VALUE;
  }
}

}  // namespace

FERRY_EXPORT CUresult cuPointerGetAttribute(void* data, CUpointer_attribute attribute, CUdeviceptr ptr) {
  if (CUresult e = ensure_init()) return e;
  if (!data) return CUDA_ERROR_INVALID_VALUE;
  std::lock_guard lk(drv().mu);
  return pointer_attribute(data, attribute, ptr, find_range(ptr));
}

FERRY_EXPORT CUresult cuPointerGetAttributes(unsigned int n, CUpointer_attribute* attrs, void** data, CUdeviceptr ptr) {
  if (CUresult e = ensure_init()) return e;
  if (!attrs || !data) return CUDA_ERROR_INVALID_VALUE;
  std::lock_guard lk(drv().mu);
  const Range* r = find_range(ptr);
  for (unsigned i = 0; i < n; i++) {
    if (!data[i]) continue;
    if (pointer_attribute(data[i], attrs[i], ptr, r) != CUDA_SUCCESS) {
      // Unknown memory reads as "unregistered host memory": zeros, not an error.
      switch (attrs[i]) {
        case CU_POINTER_ATTRIBUTE_CONTEXT: *static_cast<CUcontext*>(data[i]) = nullptr; break;
        case CU_POINTER_ATTRIBUTE_MEMORY_TYPE: *static_cast<unsigned*>(data[i]) = 0; break;
        case CU_POINTER_ATTRIBUTE_DEVICE_POINTER:
        case CU_POINTER_ATTRIBUTE_RANGE_START_ADDR: *static_cast<CUdeviceptr*>(data[i]) = 0; break;
        case CU_POINTER_ATTRIBUTE_HOST_POINTER:
        case CU_POINTER_ATTRIBUTE_MAPPING_BASE_ADDR: *static_cast<void**>(data[i]) = nullptr; break;
        case CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL: *static_cast<int*>(data[i]) = -2; break;
        case CU_POINTER_ATTRIBUTE_BUFFER_ID:
        case CU_POINTER_ATTRIBUTE_ALLOWED_HANDLE_TYPES:
        case CU_POINTER_ATTRIBUTE_ACCESS_FLAGS:
        case CU_POINTER_ATTRIBUTE_MEMORY_BLOCK_ID: *static_cast<unsigned long long*>(data[i]) = 0; break;
        case CU_POINTER_ATTRIBUTE_RANGE_SIZE:
        case CU_POINTER_ATTRIBUTE_MAPPING_SIZE: *static_cast<size_t*>(data[i]) = 0; break;
        case CU_POINTER_ATTRIBUTE_MEMPOOL_HANDLE: *static_cast<CUmemoryPool*>(data[i]) = nullptr; break;
        default: *static_cast<int*>(data[i]) = 0; break;
      }
    }
  }
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuPointerSetAttribute(const void*, CUpointer_attribute attribute, CUdeviceptr ptr) {
  if (CUresult e = ensure_init()) return e;
  if (attribute != CU_POINTER_ATTRIBUTE_SYNC_MEMOPS) return CUDA_ERROR_INVALID_VALUE;
  std::lock_guard lk(drv().mu);
  return find_range(ptr) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

// ---- memory pools and stream-ordered allocation ---------------------------------------

namespace {

MemPool* as_pool(CUmemoryPool p) {
  auto* m = reinterpret_cast<MemPool*>(p);
  std::lock_guard lk(drv().mu);
  return drv().pools.count(m) ? m : nullptr;
}

CUresult alloc_async(CUdeviceptr* dptr, size_t size, MemPool* pool, CUstream hStream) {
  if (!dptr) return CUDA_ERROR_INVALID_VALUE;
  Context* c = nullptr;
  CUresult err = CUDA_SUCCESS;
  auto s = resolve_stream(hStream, &c, &err);
  if (!s) return err;
  if (CUresult e = c->sticky.load()) return e;
  if (!pool) pool = c->dev->current_pool;
  return heap_alloc(pool->dev, size, RangeKind::PoolAlloc, nullptr, pool, dptr);
}

CUresult free_async(CUdeviceptr p, CUstream hStream) {
  Context* c = nullptr;
  CUresult err = CUDA_SUCCESS;
  auto s = resolve_stream(hStream, &c, &err);
  if (!s) return err;
  {
    std::lock_guard lk(drv().mu);
    auto it = drv().ranges.find(p);
    if (it == drv().ranges.end() || it->second.freeing ||
        (it->second.kind != RangeKind::PoolAlloc && it->second.kind != RangeKind::DeviceAlloc))
      return CUDA_ERROR_INVALID_VALUE;
    it->second.freeing = true;
  }
  enqueue(s, Op{{}, [p]() {
                  std::lock_guard lk(drv().mu);
                  auto it = drv().ranges.find(p);
                  if (it != drv().ranges.end()) heap_free(it->second);
                  return CUDA_SUCCESS;
                }});
  return CUDA_SUCCESS;
}

}  // namespace

FERRY_EXPORT CUresult cuMemAllocAsync(CUdeviceptr* dptr, size_t bytesize, CUstream hStream) {
  return alloc_async(dptr, bytesize, nullptr, hStream);
}
FERRY_EXPORT CUresult cuMemAllocAsync_ptsz(CUdeviceptr* dptr, size_t bytesize, CUstream hStream) {
  return alloc_async(dptr, bytesize, nullptr, hStream ? hStream : CU_STREAM_PER_THREAD);
}
FERRY_EXPORT CUresult cuMemAllocFromPoolAsync(CUdeviceptr* dptr, size_t bytesize, CUmemoryPool pool, CUstream hStream) {
  MemPool* p = as_pool(pool);
  if (!p) return CUDA_ERROR_INVALID_VALUE;
  return alloc_async(dptr, bytesize, p, hStream);
}
FERRY_EXPORT CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr* dptr, size_t bytesize, CUmemoryPool pool,
                                                   CUstream hStream) {
  return cuMemAllocFromPoolAsync(dptr, bytesize, pool, hStream ? hStream : CU_STREAM_PER_THREAD);
}
FERRY_EXPORT CUresult cuMemFreeAsync(CUdeviceptr dptr, CUstream hStream) { return free_async(dptr, hStream); }
FERRY_EXPORT CUresult cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream hStream) {
  return free_async(dptr, hStream ? hStream : CU_STREAM_PER_THREAD);
}

FERRY_EXPORT CUresult cuMemPoolCreate(CUmemoryPool* pool, const CUmemPoolProps* props) {
  if (CUresult e = ensure_init()) return e;
  if (!pool || !props || props->allocType != CU_MEM_ALLOCATION_TYPE_PINNED ||
      props->location.type != CU_MEM_LOCATION_TYPE_DEVICE)
    return CUDA_ERROR_INVALID_VALUE;
  Device* d = device(props->location.id);
  if (!d) return CUDA_ERROR_INVALID_DEVICE;
  auto* p = new MemPool;
  p->dev = d;
  p->props = *props;
  std::lock_guard lk(drv().mu);
  drv().pools.insert(p);
  *pool = reinterpret_cast<CUmemoryPool>(p);
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuMemPoolDestroy(CUmemoryPool pool) {
  MemPool* p = as_pool(pool);
  if (!p || p->is_default) return CUDA_ERROR_INVALID_VALUE;
  std::lock_guard lk(drv().mu);
  for (auto it = drv().ranges.begin(); it != drv().ranges.end();) {
    uintptr_t base = it->first;
    bool mine = it->second.pool == p;
    ++it;
    if (mine) heap_free(drv().ranges.at(base));
  }
  if (p->dev->current_pool == p) p->dev->current_pool = p->dev->default_pool;
  drv().pools.erase(p);
  delete p;
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuMemPoolTrimTo(CUmemoryPool pool, size_t) {
  return as_pool(pool) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;  // freed blocks are never cached
}

FERRY_EXPORT CUresult cuMemPoolSetAttribute(CUmemoryPool pool, CUmemPool_attribute attr, void* value) {
  MemPool* p = as_pool(pool);
  if (!p || !value) return CUDA_ERROR_INVALID_VALUE;
  std::lock_guard lk(drv().mu);
  switch (attr) {
    case CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES: p->reuse_follow_event = *static_cast<int*>(value); break;
    case CU_MEMPOOL_ATTR_REUSE_ALLOW_OPPORTUNISTIC: p->reuse_opportunistic = *static_cast<int*>(value); break;
    case CU_MEMPOOL_ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES: p->reuse_internal = *static_cast<int*>(value); break;
    case CU_MEMPOOL_ATTR_RELEASE_THRESHOLD: p->release_threshold = *static_cast<cuuint64_t*>(value); break;
    case CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH:
    case CU_MEMPOOL_ATTR_USED_MEM_HIGH:
      if (*static_cast<cuuint64_t*>(value) != 0) return CUDA_ERROR_INVALID_VALUE;
      p->used_high = p->used;
      break;
    default: return CUDA_ERROR_INVALID_VALUE;
  }
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuMemPoolGetAttribute(CUmemoryPool pool, CUmemPool_attribute attr, void* value) {
  MemPool* p = as_pool(pool);
  if (!p || !value) return CUDA_ERROR_INVALID_VALUE;
  std::lock_guard lk(drv().mu);
  switch (attr) {
    case CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES: *static_cast<int*>(value) = p->reuse_follow_event; break;
    case CU_MEMPOOL_ATTR_REUSE_ALLOW_OPPORTUNISTIC: *static_cast<int*>(value) = p->reuse_opportunistic; break;
    case CU_MEMPOOL_ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES: *static_cast<int*>(value) = p->reuse_internal; break;
    case CU_MEMPOOL_ATTR_RELEASE_THRESHOLD: *static_cast<cuuint64_t*>(value) = p->release_threshold; break;
    case CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT:
    case CU_MEMPOOL_ATTR_USED_MEM_CURRENT: *static_cast<cuuint64_t*>(value) = p->used; break;
    case CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH:
    case CU_MEMPOOL_ATTR_USED_MEM_HIGH: *static_cast<cuuint64_t*>(value) = p->used_high; break;
    default: return CUDA_ERROR_INVALID_VALUE;
  }
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuMemPoolSetAccess(CUmemoryPool pool, const CUmemAccessDesc* map, size_t count) {
  if (!as_pool(pool) || (count && !map)) return CUDA_ERROR_INVALID_VALUE;
  for (size_t i = 0; i < count; i++)
    if (!device(map[i].location.id)) return CUDA_ERROR_INVALID_DEVICE;
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuMemPoolGetAccess(CUmemAccess_flags* flags, CUmemoryPool pool, CUmemLocation* location) {
  if (!as_pool(pool) || !flags || !location) return CUDA_ERROR_INVALID_VALUE;
  *flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuMemGetDefaultMemPool(CUmemoryPool* pool, CUmemLocation* location, CUmemAllocationType type) {
  if (CUresult e = ensure_init()) return e;
  if (!pool || !location || type != CU_MEM_ALLOCATION_TYPE_PINNED || location->type != CU_MEM_LOCATION_TYPE_DEVICE)
    return CUDA_ERROR_INVALID_VALUE;
  Device* d = device(location->id);
  if (!d) return CUDA_ERROR_INVALID_DEVICE;
  *pool = reinterpret_cast<CUmemoryPool>(d->default_pool);
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuMemGetMemPool(CUmemoryPool* pool, CUmemLocation* location, CUmemAllocationType type) {
  if (CUresult e = ensure_init()) return e;
  if (!pool || !location || type != CU_MEM_ALLOCATION_TYPE_PINNED || location->type != CU_MEM_LOCATION_TYPE_DEVICE)
    return CUDA_ERROR_INVALID_VALUE;
  Device* d = device(location->id);
  if (!d) return CUDA_ERROR_INVALID_DEVICE;
  std::lock_guard lk(drv().mu);
  *pool = reinterpret_cast<CUmemoryPool>(d->current_pool);
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuMemSetMemPool(CUmemLocation* location, CUmemAllocationType type, CUmemoryPool pool) {
  if (!location || type != CU_MEM_ALLOCATION_TYPE_PINNED || location->type != CU_MEM_LOCATION_TYPE_DEVICE)
    return CUDA_ERROR_INVALID_VALUE;
  return cuDeviceSetMemPool(location->id, pool);
}

// ---- managed-memory hints: accepted, nothing to move on a single host memory -----------

FERRY_EXPORT CUresult cuMemAdvise_v2(CUdeviceptr devPtr, size_t count, CUmem_advise, CUmemLocation) {
  if (CUresult e = ensure_init()) return e;
  return check_device_access(devPtr, count);
}

FERRY_EXPORT CUresult cuMemAdvise(CUdeviceptr devPtr, size_t count, CUmem_advise, CUdevice) {
  if (CUresult e = ensure_init()) return e;
  return check_device_access(devPtr, count);
}

FERRY_EXPORT CUresult cuMemPrefetchAsync_v2(CUdeviceptr devPtr, size_t count, CUmemLocation, unsigned int,
                                            CUstream hStream) {
  Context* c = nullptr;
  CUresult err = CUDA_SUCCESS;
  if (!resolve_stream(hStream, &c, &err)) return err;
  return check_device_access(devPtr, count);
}

FERRY_EXPORT CUresult cuMemPrefetchAsync_v2_ptsz(CUdeviceptr devPtr, size_t count, CUmemLocation loc,
                                                 unsigned int flags, CUstream hStream) {
  return cuMemPrefetchAsync_v2(devPtr, count, loc, flags, hStream ? hStream : CU_STREAM_PER_THREAD);
}

FERRY_EXPORT CUresult cuMemPrefetchAsync(CUdeviceptr devPtr, size_t count, CUdevice dst, CUstream hStream) {
  if (dst != CU_DEVICE_CPU && !device(dst)) return CUDA_ERROR_INVALID_DEVICE;
  Context* c = nullptr;
  CUresult err = CUDA_SUCCESS;
  if (!resolve_stream(hStream, &c, &err)) return err;
  return check_device_access(devPtr, count);
}

FERRY_EXPORT CUresult cuMemPrefetchAsync_ptsz(CUdeviceptr devPtr, size_t count, CUdevice dst, CUstream hStream) {
  return cuMemPrefetchAsync(devPtr, count, dst, hStream ? hStream : CU_STREAM_PER_THREAD);
}

namespace {
CUresult batch_hint(CUdeviceptr* dptrs, size_t* sizes, size_t count, CUstream h) {
  if (!dptrs || !sizes || count == 0) return CUDA_ERROR_INVALID_VALUE;
  Context* c = nullptr;
  CUresult err = CUDA_SUCCESS;
  if (!resolve_stream(h, &c, &err)) return err;
  for (size_t i = 0; i < count; i++)
    if (CUresult e = check_device_access(dptrs[i], sizes[i])) return e;
  return CUDA_SUCCESS;
}
}  // namespace

#define FERRY_BATCH_HINT(name, ...)                                                                         \
  FERRY_EXPORT CUresult name(CUdeviceptr* d, size_t* s, size_t n, __VA_ARGS__, unsigned long long, CUstream h) { \
    return batch_hint(d, s, n, h);                                                                          \
  }                                                                                                         \
  FERRY_EXPORT CUresult name##_ptsz(CUdeviceptr* d, size_t* s, size_t n, __VA_ARGS__, unsigned long long,      \
                                    CUstream h) {                                                           \
    return batch_hint(d, s, n, h ? h : CU_STREAM_PER_THREAD);                                               \
  }
FERRY_BATCH_HINT(cuMemPrefetchBatchAsync, CUmemLocation*, size_t*, size_t)
FERRY_BATCH_HINT(cuMemDiscardAndPrefetchBatchAsync, CUmemLocation*, size_t*, size_t)
#undef FERRY_BATCH_HINT

FERRY_EXPORT CUresult cuMemDiscardBatchAsync(CUdeviceptr* d, size_t* s, size_t n, unsigned long long, CUstream h) {
  return batch_hint(d, s, n, h);
}
FERRY_EXPORT CUresult cuMemDiscardBatchAsync_ptsz(CUdeviceptr* d, size_t* s, size_t n, unsigned long long,
                                                  CUstream h) {
  return batch_hint(d, s, n, h ? h : CU_STREAM_PER_THREAD);
}

FERRY_EXPORT CUresult cuMemRangeGetAttribute(void* data, size_t dataSize, CUmem_range_attribute attribute,
                                             CUdeviceptr devPtr, size_t count) {
  if (CUresult e = ensure_init()) return e;
  if (!data) return CUDA_ERROR_INVALID_VALUE;
  {
    std::lock_guard lk(drv().mu);
    Range* r = find_range(devPtr);
    if (!r || r->kind != RangeKind::Managed || devPtr + count > r->base + r->size) return CUDA_ERROR_INVALID_VALUE;
  }
  switch (attribute) {
    case CU_MEM_RANGE_ATTRIBUTE_READ_MOSTLY:
      if (dataSize != 4) return CUDA_ERROR_INVALID_VALUE;
      *static_cast<int*>(data) = 0;
      return CUDA_SUCCESS;
    case CU_MEM_RANGE_ATTRIBUTE_PREFERRED_LOCATION:
    case CU_MEM_RANGE_ATTRIBUTE_LAST_PREFETCH_LOCATION:
      if (dataSize != 4) return CUDA_ERROR_INVALID_VALUE;
      *static_cast<int*>(data) = CU_DEVICE_INVALID;
      return CUDA_SUCCESS;
    default:
      if (dataSize % 4) return CUDA_ERROR_INVALID_VALUE;
      memset(data, 0, dataSize);
      return CUDA_SUCCESS;
  }
}

FERRY_EXPORT CUresult cuMemRangeGetAttributes(void** data, size_t* dataSizes, CUmem_range_attribute* attributes,
                                              size_t n, CUdeviceptr devPtr, size_t count) {
  if (!data || !dataSizes || !attributes) return CUDA_ERROR_INVALID_VALUE;
  for (size_t i = 0; i < n; i++)
    if (CUresult e = cuMemRangeGetAttribute(data[i], dataSizes[i], attributes[i], devPtr, count)) return e;
  return CUDA_SUCCESS;
}
