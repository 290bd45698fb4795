// Virtual memory management: reservations, physical allocations (memfd), mappings.
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "emu.hpp"

using namespace ferry::emu;

namespace {

PhysAlloc* as_phys(CUmemGenericAllocationHandle h) {
  auto* p = reinterpret_cast<PhysAlloc*>(h);
  return drv().phys.count(p) ? p : nullptr;
}

void release_phys_if_unused(PhysAlloc* p) {
  if (p->handle_refs > 0 || p->map_refs > 0) return;
  close(p->fd);
  p->dev->used -= p->size;
  drv().phys.erase(p);
  delete p;
}

bool try_reserve(uintptr_t at, size_t size) {
  void* p = mmap(reinterpret_cast<void*>(at), size, PROT_NONE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
  if (p == MAP_FAILED) return false;
  if (p != reinterpret_cast<void*>(at)) {  // kernels without MAP_FIXED_NOREPLACE treat it as a hint
    munmap(p, size);
    return false;
  }
  return true;
}

bool overlaps_registered(uintptr_t at, size_t size) {
  auto& ranges = drv().ranges;
  auto it = ranges.lower_bound(at);
  if (it != ranges.end() && it->first < at + size) return true;
  if (it != ranges.begin()) {
    --it;
    if (it->second.base + std::max(it->second.size, it->second.span) > at) return true;
  }
  return false;
}

}  // namespace

FERRY_EXPORT CUresult cuMemGetAllocationGranularity(size_t* granularity, const CUmemAllocationProp* prop,
                                                    CUmemAllocationGranularity_flags option) {
  if (CUresult e = ensure_init()) return e;
  if (!granularity || !prop || prop->type != CU_MEM_ALLOCATION_TYPE_PINNED) return CUDA_ERROR_INVALID_VALUE;
  if (option != CU_MEM_ALLOC_GRANULARITY_MINIMUM && option != CU_MEM_ALLOC_GRANULARITY_RECOMMENDED)
    return CUDA_ERROR_INVALID_VALUE;
  if (prop->location.type == CU_MEM_LOCATION_TYPE_DEVICE && !device(prop->location.id))
    return CUDA_ERROR_INVALID_DEVICE;
  *granularity = kGranularity;
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuMemAddressReserve(CUdeviceptr* ptr, size_t size, size_t alignment, CUdeviceptr addr,
                                          unsigned long long flags) {
  if (CUresult e = ensure_init()) return e;
  if (!ptr || size == 0 || size % kGranularity || flags != 0) return CUDA_ERROR_INVALID_VALUE;
  if (alignment && (alignment & (alignment - 1))) return CUDA_ERROR_INVALID_VALUE;
  size_t align = std::max<size_t>(alignment, kGranularity);
  Driver& d = drv();
  std::lock_guard lk(d.mu);
  uintptr_t at = 0;
  // The address is only a hint, as with the real driver: honoured when the range is free
  // and large enough.
  if (addr && size >= kHintedReserveMinimum && addr % align == 0 && !overlaps_registered(addr, size) &&
      try_reserve(addr, size))
    at = addr;
  if (!at) {
    // Otherwise the kernel picks: over-reserve, then trim to the alignment.
    void* p = mmap(nullptr, size + align, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return CUDA_ERROR_OUT_OF_MEMORY;
    uintptr_t base = reinterpret_cast<uintptr_t>(p);
    at = (base + align - 1) / align * align;
    if (at > base) munmap(p, at - base);
    if (base + size + align > at + size) munmap(reinterpret_cast<void*>(at + size), base + size + align - (at + size));
  }
  if (!at) return CUDA_ERROR_OUT_OF_MEMORY;
  Range r;
  r.base = at;
  r.size = r.span = size;
  r.kind = RangeKind::VmmReserve;
  r.id = new_id();
  d.ranges[at] = r;
  *ptr = at;
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuMemAddressFree(CUdeviceptr ptr, size_t size) {
  if (CUresult e = ensure_init()) return e;
  Driver& d = drv();
  std::lock_guard lk(d.mu);
  auto it = d.ranges.find(ptr);
  if (it == d.ranges.end() || it->second.kind != RangeKind::VmmReserve || it->second.size != size)
    return CUDA_ERROR_INVALID_VALUE;
  auto m = d.mappings.lower_bound(ptr);
  if (m != d.mappings.end() && m->first < ptr + size) return CUDA_ERROR_INVALID_VALUE;  // still mapped
  munmap(reinterpret_cast<void*>(ptr), size);
  d.ranges.erase(it);
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuMemCreate(CUmemGenericAllocationHandle* handle, size_t size, const CUmemAllocationProp* prop,
                                  unsigned long long flags) {
  if (CUresult e = ensure_init()) return e;
  if (!handle || !prop || size == 0 || size % kGranularity || flags != 0) return CUDA_ERROR_INVALID_VALUE;
  if (prop->type != CU_MEM_ALLOCATION_TYPE_PINNED || prop->location.type != CU_MEM_LOCATION_TYPE_DEVICE)
    return CUDA_ERROR_INVALID_VALUE;
  Device* dev = device(prop->location.id);
  if (!dev) return CUDA_ERROR_INVALID_DEVICE;
  Driver& d = drv();
  std::lock_guard lk(d.mu);
  if (size > room_on(dev)) return CUDA_ERROR_OUT_OF_MEMORY;
  int fd = memfd_create("ferry-emu-vram", MFD_CLOEXEC);
  if (fd < 0) return CUDA_ERROR_OUT_OF_MEMORY;
  if (ftruncate(fd, static_cast<off_t>(size)) != 0) {
    close(fd);
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  auto* p = new PhysAlloc;
  p->fd = fd;
  p->size = size;
  p->dev = dev;
  p->prop = *prop;
  p->id = new_id();
  dev->used += size;
  d.phys.insert(p);
  *handle = reinterpret_cast<CUmemGenericAllocationHandle>(p);
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuMemRelease(CUmemGenericAllocationHandle handle) {
  if (CUresult e = ensure_init()) return e;
  std::lock_guard lk(drv().mu);
  PhysAlloc* p = as_phys(handle);
  if (!p || p->handle_refs <= 0) return CUDA_ERROR_INVALID_VALUE;
  p->handle_refs--;
  release_phys_if_unused(p);
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuMemMap(CUdeviceptr ptr, size_t size, size_t offset, CUmemGenericAllocationHandle handle,
                               unsigned long long flags) {
  if (CUresult e = ensure_init()) return e;
  if (flags != 0 || size == 0 || ptr % kGranularity || size % kGranularity || offset % kGranularity)
    return CUDA_ERROR_INVALID_VALUE;
  Driver& d = drv();
  std::lock_guard lk(d.mu);
  PhysAlloc* p = as_phys(handle);
  if (!p || offset + size > p->size) return CUDA_ERROR_INVALID_VALUE;
  Range* r = find_range(ptr);
  if (!r || r->kind != RangeKind::VmmReserve || ptr + size > r->base + r->size) return CUDA_ERROR_INVALID_VALUE;
  auto next = d.mappings.lower_bound(ptr);
  if (next != d.mappings.end() && next->first < ptr + size) return CUDA_ERROR_INVALID_VALUE;
  if (next != d.mappings.begin()) {
    auto prev = std::prev(next);
    if (prev->second.base + prev->second.size > ptr) return CUDA_ERROR_INVALID_VALUE;
  }
  // Mapped but inaccessible until cuMemSetAccess, as on a GPU.
  void* m = mmap(reinterpret_cast<void*>(ptr), size, PROT_NONE, MAP_SHARED | MAP_FIXED, p->fd, static_cast<off_t>(offset));
  if (m == MAP_FAILED) return CUDA_ERROR_OUT_OF_MEMORY;
  d.mappings[ptr] = Mapping{ptr, size, p, offset, false};
  p->map_refs++;
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuMemUnmap(CUdeviceptr ptr, size_t size) {
  if (CUresult e = ensure_init()) return e;
  Driver& d = drv();
  std::lock_guard lk(d.mu);
  // The range must consist of whole mappings.
  std::vector<uintptr_t> covered;
  for (uintptr_t p = ptr; p < ptr + size;) {
    auto it = d.mappings.find(p);
    if (it == d.mappings.end()) return CUDA_ERROR_INVALID_VALUE;
    covered.push_back(p);
    p += it->second.size;
    if (p > ptr + size) return CUDA_ERROR_INVALID_VALUE;
  }
  if (covered.empty()) return CUDA_ERROR_INVALID_VALUE;
  for (uintptr_t p : covered) {
    Mapping m = d.mappings[p];
    map_fixed(m.base, m.size, PROT_NONE);
    d.mappings.erase(p);
    m.phys->map_refs--;
    release_phys_if_unused(m.phys);
  }
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuMemSetAccess(CUdeviceptr ptr, size_t size, const CUmemAccessDesc* desc, size_t count) {
  if (CUresult e = ensure_init()) return e;
  if (!desc || count == 0) return CUDA_ERROR_INVALID_VALUE;
  bool rw = false;
  for (size_t i = 0; i < count; i++) {
    if (desc[i].location.type != CU_MEM_LOCATION_TYPE_DEVICE) return CUDA_ERROR_INVALID_VALUE;
    if (!device(desc[i].location.id)) return CUDA_ERROR_INVALID_DEVICE;
    if (desc[i].flags == CU_MEM_ACCESS_FLAGS_PROT_READWRITE || desc[i].flags == CU_MEM_ACCESS_FLAGS_PROT_READ) rw = true;
  }
  Driver& d = drv();
  std::lock_guard lk(d.mu);
  std::vector<Mapping*> ms;
  for (uintptr_t p = ptr; p < ptr + size;) {
    auto it = d.mappings.upper_bound(p);
    if (it == d.mappings.begin()) return CUDA_ERROR_INVALID_VALUE;
    --it;
    Mapping& m = it->second;
    if (p < m.base || p >= m.base + m.size) return CUDA_ERROR_INVALID_VALUE;
    ms.push_back(&m);
    p = m.base + m.size;
  }
  if (mprotect(reinterpret_cast<void*>(ptr), size, rw ? PROT_READ | PROT_WRITE : PROT_NONE) != 0)
    return CUDA_ERROR_INVALID_VALUE;
  for (Mapping* m : ms) m->rw = rw;
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuMemGetAccess(unsigned long long* flags, const CUmemLocation* location, CUdeviceptr ptr) {
  if (CUresult e = ensure_init()) return e;
  if (!flags || !location) return CUDA_ERROR_INVALID_VALUE;
  std::lock_guard lk(drv().mu);
  auto it = drv().mappings.upper_bound(ptr);
  if (it == drv().mappings.begin()) return CUDA_ERROR_INVALID_VALUE;
  --it;
  if (ptr >= it->second.base + it->second.size) return CUDA_ERROR_INVALID_VALUE;
  *flags = it->second.rw ? CU_MEM_ACCESS_FLAGS_PROT_READWRITE : CU_MEM_ACCESS_FLAGS_PROT_NONE;
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuMemRetainAllocationHandle(CUmemGenericAllocationHandle* handle, void* addr) {
  if (CUresult e = ensure_init()) return e;
  if (!handle) return CUDA_ERROR_INVALID_VALUE;
  std::lock_guard lk(drv().mu);
  auto it = drv().mappings.upper_bound(reinterpret_cast<uintptr_t>(addr));
  if (it == drv().mappings.begin()) return CUDA_ERROR_INVALID_VALUE;
  --it;
  if (reinterpret_cast<uintptr_t>(addr) != it->second.base) return CUDA_ERROR_INVALID_VALUE;
  it->second.phys->handle_refs++;
  *handle = reinterpret_cast<CUmemGenericAllocationHandle>(it->second.phys);
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuMemGetAllocationPropertiesFromHandle(CUmemAllocationProp* prop,
                                                             CUmemGenericAllocationHandle handle) {
  if (CUresult e = ensure_init()) return e;
  std::lock_guard lk(drv().mu);
  PhysAlloc* p = as_phys(handle);
  if (!p || !prop) return CUDA_ERROR_INVALID_VALUE;
  *prop = p->prop;
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuMemExportToShareableHandle(void* shareableHandle, CUmemGenericAllocationHandle handle,
                                                   CUmemAllocationHandleType handleType, unsigned long long flags) {
  if (CUresult e = ensure_init()) return e;
  std::lock_guard lk(drv().mu);
  PhysAlloc* p = as_phys(handle);
  if (!p || !shareableHandle || flags) return CUDA_ERROR_INVALID_VALUE;
  if (handleType != CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR ||
      !(p->prop.requestedHandleTypes & CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR))
    return CUDA_ERROR_NOT_SUPPORTED;
  int fd = dup(p->fd);
  if (fd < 0) return CUDA_ERROR_OUT_OF_MEMORY;
  *static_cast<int*>(shareableHandle) = fd;
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuMemImportFromShareableHandle(CUmemGenericAllocationHandle* handle, void* osHandle,
                                                     CUmemAllocationHandleType shHandleType) {
  if (CUresult e = ensure_init()) return e;
  if (!handle || shHandleType != CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR) return CUDA_ERROR_NOT_SUPPORTED;
  int fd = static_cast<int>(reinterpret_cast<intptr_t>(osHandle));
  off_t size = lseek(fd, 0, SEEK_END);
  if (size <= 0) return CUDA_ERROR_INVALID_VALUE;
  int own = dup(fd);
  if (own < 0) return CUDA_ERROR_INVALID_VALUE;
  std::lock_guard lk(drv().mu);
  auto* p = new PhysAlloc;
  p->fd = own;
  p->size = static_cast<size_t>(size);
  p->dev = drv().devices.empty() ? nullptr : drv().devices[0].get();
  if (!p->dev) {
    close(own);
    delete p;
    return CUDA_ERROR_NO_DEVICE;
  }
  p->prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  p->prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  p->prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
  p->id = new_id();
  p->dev->used += p->size;  // accounted to the importer, released with the handle
  drv().phys.insert(p);
  *handle = reinterpret_cast<CUmemGenericAllocationHandle>(p);
  return CUDA_SUCCESS;
}
