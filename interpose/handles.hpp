// Virtual handles: what the application holds instead of the driver's handles.
//
// Every virtual handle is the address of a small object in one slab the shim reserves
// at start-up; the object holds the real handle. Translating is a range check (is this
// one of ours?) and one load, without locks, and a handle that is not ours (the NULL
// stream, CU_STREAM_LEGACY, CU_STREAM_PER_THREAD, anything ferry never saw) passes
// through unchanged. Restoring GPU state re-points the objects at new real handles;
// the application's copies stay valid. Device ordinals are virtual too: the program's
// device N is physical device map[N].
#pragma once

#include <cuda.h>

#include <atomic>
#include <cstdint>
#include <type_traits>

namespace ferry::vh {

enum class Kind : uint32_t {
  Free = 0,
  Context,
  Stream,
  Event,
  Module,
  Function,
  Library,
  Kernel,
  Pool,
  Graph,
  GraphNode,
  GraphExec,
  Alloc,  // CUmemGenericAllocationHandle
};

struct Obj {
  void* real;
  Kind kind;
  uint32_t serial;  // distinguishes reuses of the same slot in logs
  void* rec;        // the tracker's record of the object
  uint64_t pad;
};
static_assert(sizeof(Obj) == 32);

extern uintptr_t g_slab_lo, g_slab_hi;
constexpr int kMaxDevices = 16;
// The program's device count, fixed when it initializes: after a restore onto a
// machine with another number of GPUs the program still sees its own devices, each
// backed by whichever physical device g_vdev_to_pdev names.
extern int g_device_count;
extern int g_vdev_to_pdev[kMaxDevices];
extern int g_pdev_to_vdev[kMaxDevices];

inline bool is_virtual(uintptr_t v) { return v - g_slab_lo < g_slab_hi - g_slab_lo; }
template <class H>
inline uintptr_t bits(H h) {
  if constexpr (std::is_pointer_v<H>)
    return reinterpret_cast<uintptr_t>(h);
  else
    return static_cast<uintptr_t>(h);
}
template <class H>
inline bool is_virtual(H h) {
  return is_virtual(bits(h));
}
template <class H>
inline Obj* obj(H h) {
  return reinterpret_cast<Obj*>(bits(h));
}

// Virtual -> real, for pointer-like handles.
template <class H>
inline H real(H h) {
  return is_virtual(h) ? reinterpret_cast<H>(obj(h)->real) : h;
}
inline CUmemGenericAllocationHandle real_alloc(CUmemGenericAllocationHandle h) {
  return is_virtual(static_cast<uintptr_t>(h))
             ? static_cast<CUmemGenericAllocationHandle>(reinterpret_cast<uintptr_t>(obj(h)->real))
             : h;
}
inline CUdevice real_device(CUdevice d) {
  return (d >= 0 && d < g_device_count) ? g_vdev_to_pdev[d] : d;
}
inline CUdevice virtual_device(CUdevice d) {
  return (d >= 0 && d < kMaxDevices) ? g_pdev_to_vdev[d] : d;  // physical: the machine may have more
}

template <class R, class H>
inline R* rec(H h) {
  return static_cast<R*>(obj(h)->rec);
}
// The tracker record behind h when h is one of ours and of kind k, else nullptr.
template <class R, class H>
inline R* rec_of(H h, Kind k) {
  return is_virtual(h) && obj(h)->kind == k ? rec<R>(h) : nullptr;
}

// Memory locations and access descriptors name devices: the program's ordinals on
// its side, physical ones on the driver's.
inline void to_real(CUmemLocation& l) {
  if (l.type == CU_MEM_LOCATION_TYPE_DEVICE) l.id = real_device(l.id);
}
inline void to_virtual(CUmemLocation& l) {
  if (l.type == CU_MEM_LOCATION_TYPE_DEVICE) l.id = virtual_device(l.id);
}

void init_slab();
// A new virtual handle of `kind` for `real`, carrying the tracker record `rec`.
Obj* make(Kind kind, void* real, void* rec);
// The handle's slot becomes reusable (after a delay, so a stale handle is not at once
// another object).
void release(Obj* o);

template <class H>
inline H as(Obj* o) {
  return reinterpret_cast<H>(o);
}

}  // namespace ferry::vh
