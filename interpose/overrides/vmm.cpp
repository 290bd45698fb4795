// The program's own virtual memory management (PyTorch's expandable segments, NCCL):
// its reservations come from the arena, its physical allocations get virtual handles,
// and every mapping and access grant is recorded so a restore can rebuild them.
#include <vector>

#include "../arena.hpp"
#include "../config.hpp"
#include "../contexts.hpp"
#include "../shim.hpp"
#include "shim_decls.hpp"

using namespace ferry;

namespace {

bool use_arena() { return active() && config().arena && arena::usable(); }

tr::Phys* phys_rec(CUmemGenericAllocationHandle h) {
  return vh::rec_of<tr::Phys>(static_cast<uintptr_t>(h), vh::Kind::Alloc);
}

CUmemGenericAllocationHandle handle_of(tr::Phys* p) {
  if (!p->v) p->v = vh::make(vh::Kind::Alloc, reinterpret_cast<void*>(p->real), p);
  return static_cast<CUmemGenericAllocationHandle>(reinterpret_cast<uintptr_t>(p->v));
}

void forget_if_unused(tr::Phys* p) {
  if (p->handle_refs > 0 || p->map_refs > 0) return;
  auto& st = tr::state();
  st.phys.erase(p);
  if (p->v) vh::release(p->v);
  delete p;
}

std::vector<CUmemAccessDesc> real_access(const CUmemAccessDesc* d, size_t n) {
  std::vector<CUmemAccessDesc> out(d, d + n);
  for (auto& x : out)
    vh::to_real(x.location);
  return out;
}

}  // namespace

CUresult ferry::ov::cuMemAddressReserve(CUdeviceptr* ptr, size_t size, size_t alignment, CUdeviceptr addr,
                                        unsigned long long flags) {
  if (!use_arena() || !ptr || flags != 0 || size == 0 || size % arena::granularity())
    return real::cuMemAddressReserve(ptr, size, alignment, addr, flags);
  auto& st = tr::state();
  std::lock_guard lk(st.mu);
  tr::Ctx* c = ctx::current();
  int vdev = addr ? arena::range_of(addr) : -1;
  if (vdev < 0) vdev = c ? c->vdev : 0;
  uintptr_t va = 0;
  if (addr && arena::range_of(addr) < 0) {
    // A hint outside the arena: the program wants that place; let the driver decide.
    CUresult r = real::cuMemAddressReserve(ptr, size, alignment, addr, flags);
    if (r == CUDA_SUCCESS) st.reservations[*ptr] = tr::Reservation{*ptr, size, -1, tr::Owner::App, true};
    return r;
  }
  if (CUresult e = arena::carve(vdev, size, alignment, addr, &va)) return e;
  if (CUresult e = arena::reserve_exact(va, size)) {
    arena::uncarve(vdev, va, size);
    return e;
  }
  st.reservations[va].owner = tr::Owner::App;
  st.reservations[va].vdev = vdev;
  *ptr = va;
  return CUDA_SUCCESS;
}

CUresult ferry::ov::cuMemAddressFree(CUdeviceptr ptr, size_t size) {
  auto& st = tr::state();
  std::unique_lock lk(st.mu);
  auto it = st.reservations.find(ptr);
  if (it != st.reservations.end() && it->second.vdev >= 0 && arena::range_of(ptr) >= 0) {
    // Carved from the arena: the driver holds the range's backing, not this piece.
    if (it->second.size != size) return CUDA_ERROR_INVALID_VALUE;
    auto m = st.mappings.lower_bound(ptr);
    if (m != st.mappings.end() && m->first < ptr + size) return CUDA_ERROR_INVALID_VALUE;  // still mapped
    arena::drop_piece(ptr);  // nothing mapped: only the reservation goes
    return CUDA_SUCCESS;
  }
  lk.unlock();
  CUresult r = real::cuMemAddressFree(ptr, size);
  if (r != CUDA_SUCCESS) return r;
  lk.lock();
  it = st.reservations.find(ptr);
  if (it != st.reservations.end()) st.reservations.erase(it);
  return r;
}

CUresult ferry::ov::cuMemCreate(CUmemGenericAllocationHandle* handle, size_t size, const CUmemAllocationProp* prop,
                                unsigned long long flags) {
  if (!active() || !handle || !prop || flags != 0 || prop->location.type != CU_MEM_LOCATION_TYPE_DEVICE) {
    CUmemAllocationProp p = prop ? *prop : CUmemAllocationProp{};
    vh::to_real(p.location);
    CUresult r = real::cuMemCreate(handle, size, prop ? &p : nullptr, flags);
    if (r == CUDA_SUCCESS && active()) untracked_call(Variant::cuMemCreate, "cuMemCreate (host or special memory)");
    return r;
  }
  auto& st = tr::state();
  std::lock_guard lk(st.mu);
  tr::Phys* p = nullptr;
  if (CUresult e = arena::create_phys(prop->location.id, size, prop, &p)) return e;
  p->handle_refs = 1;
  *handle = handle_of(p);
  return CUDA_SUCCESS;
}

CUresult ferry::ov::cuMemRelease(CUmemGenericAllocationHandle handle) {
  CUresult r = real::cuMemRelease(vh::real_alloc(handle));
  if (r != CUDA_SUCCESS) return r;
  auto& st = tr::state();
  std::lock_guard lk(st.mu);
  if (tr::Phys* p = phys_rec(handle)) {
    if (p->handle_refs > 0) p->handle_refs--;
    forget_if_unused(p);
  }
  return r;
}

CUresult ferry::ov::cuMemMap(CUdeviceptr ptr, size_t size, size_t offset, CUmemGenericAllocationHandle handle,
                             unsigned long long flags) {
  CUresult r = real::cuMemMap(ptr, size, offset, vh::real_alloc(handle), flags);
  if (r != CUDA_SUCCESS) return r;
  auto& st = tr::state();
  std::lock_guard lk(st.mu);
  if (tr::Phys* p = phys_rec(handle)) {
    p->map_refs++;
    st.mappings[ptr] = tr::Mapping{ptr, size, p, offset, {}, true};
  } else if (active()) {
    untracked_call(Variant::cuMemMap, "cuMemMap (of memory ferry did not create)");
  }
  return r;
}

CUresult ferry::ov::cuMemUnmap(CUdeviceptr ptr, size_t size) {
  CUresult r = real::cuMemUnmap(ptr, size);
  if (r != CUDA_SUCCESS) return r;
  auto& st = tr::state();
  std::lock_guard lk(st.mu);
  for (auto it = st.mappings.lower_bound(ptr); it != st.mappings.end() && it->first < ptr + size;) {
    tr::Phys* p = it->second.phys;
    it = st.mappings.erase(it);
    p->map_refs--;
    forget_if_unused(p);
  }
  return r;
}

CUresult ferry::ov::cuMemSetAccess(CUdeviceptr ptr, size_t size, const CUmemAccessDesc* desc, size_t count) {
  if (!desc) return real::cuMemSetAccess(ptr, size, desc, count);
  std::vector<CUmemAccessDesc> d = real_access(desc, count);
  CUresult r = real::cuMemSetAccess(ptr, size, d.data(), count);
  if (r != CUDA_SUCCESS) return r;
  auto& st = tr::state();
  std::lock_guard lk(st.mu);
  for (auto it = st.mappings.lower_bound(ptr); it != st.mappings.end() && it->first < ptr + size; ++it) {
    auto& acc = it->second.access;
    for (size_t i = 0; i < count; i++) {
      bool replaced = false;
      for (auto& a : acc)
        if (a.location.type == desc[i].location.type && a.location.id == desc[i].location.id)
          a = desc[i], replaced = true;
      if (!replaced) acc.push_back(desc[i]);
    }
  }
  return r;
}

CUresult ferry::ov::cuMemGetAccess(unsigned long long* flags, const CUmemLocation* location, CUdeviceptr ptr) {
  if (!location) return real::cuMemGetAccess(flags, location, ptr);
  CUmemLocation l = *location;
  vh::to_real(l);
  return real::cuMemGetAccess(flags, &l, ptr);
}

CUresult ferry::ov::cuMemRetainAllocationHandle(CUmemGenericAllocationHandle* handle, void* addr) {
  CUmemGenericAllocationHandle real = 0;
  CUresult r = real::cuMemRetainAllocationHandle(&real, addr);
  if (r != CUDA_SUCCESS || !handle) return r;
  auto& st = tr::state();
  std::lock_guard lk(st.mu);
  auto it = st.mappings.find(reinterpret_cast<uintptr_t>(addr));
  if (it == st.mappings.end()) {
    *handle = real;
    if (active()) untracked_call(Variant::cuMemRetainAllocationHandle, "cuMemRetainAllocationHandle (unknown mapping)");
    return r;
  }
  it->second.phys->handle_refs++;
  *handle = handle_of(it->second.phys);
  return r;
}

CUresult ferry::ov::cuMemGetAllocationPropertiesFromHandle(CUmemAllocationProp* prop,
                                                           CUmemGenericAllocationHandle handle) {
  CUresult r = real::cuMemGetAllocationPropertiesFromHandle(prop, vh::real_alloc(handle));
  if (r == CUDA_SUCCESS && prop) vh::to_virtual(prop->location);
  return r;
}

CUresult ferry::ov::cuMemGetAllocationGranularity(size_t* granularity, const CUmemAllocationProp* prop,
                                                  CUmemAllocationGranularity_flags option) {
  if (!prop) return real::cuMemGetAllocationGranularity(granularity, prop, option);
  CUmemAllocationProp p = *prop;
  vh::to_real(p.location);
  return real::cuMemGetAllocationGranularity(granularity, &p, option);
}

CUresult ferry::ov::cuMemImportFromShareableHandle(CUmemGenericAllocationHandle* handle, void* osHandle,
                                                   CUmemAllocationHandleType type) {
  CUresult r = real::cuMemImportFromShareableHandle(handle, osHandle, type);
  // Memory shared by another process cannot be re-created by this one alone.
  if (r == CUDA_SUCCESS && active())
    untracked_call(Variant::cuMemImportFromShareableHandle, "cuMemImportFromShareableHandle (inter-process memory)");
  return r;
}
