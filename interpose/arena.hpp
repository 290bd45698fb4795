// The arena: fixed addresses for device memory.
//
// Each virtual device owns a range of virtual addresses at a fixed base
// (FERRY_ARENA_BASE + device * FERRY_ARENA_SIZE). Every allocation the program makes
// (cuMemAlloc, cuMemAllocPitch, cuMemAllocAsync, pool allocations) and every VA
// reservation it makes itself (cuMemAddressReserve, e.g. PyTorch's expandable
// segments) takes its addresses from that range. The range is not reserved from the
// driver piece by piece: the real driver ignores the address hint of a small
// reservation (an H200 with driver 580 put 2 MiB asked for at 0x510000000000 elsewhere
// and honoured 1 GiB and more at 0x500000000000), so the whole range of a device in
// use is reserved at its fixed address, once ("the backing"), while the pieces are
// only bookkeeping: each is carved from the range, backed by cuMemCreate memory and
// mapped there. The backing goes back to the driver when the range's last piece does
// (a release of the GPU state drops it, so a driver checkpoint finds nothing
// reserved), and a restore reserves it again before it maps the same pieces at the
// same addresses, on any GPU.
//
// Allocations of at least kSmallLimit get their own piece, rounded to the allocation
// granularity (2 MiB on current GPUs): sizes PyTorch uses (2 MiB, 20 MiB segments)
// waste nothing. Smaller ones share 2 MiB chunks, 512-byte aligned, first fit; a chunk
// goes back to the driver when its last allocation is freed. bench/arena_overhead
// measures the waste on a PyTorch-like trace.
//
// All functions expect tr::state().mu held.
#pragma once

#include <cuda.h>

#include <cstddef>
#include <cstdint>

#include "tracker.hpp"

namespace ferry::arena {

constexpr size_t kSmallLimit = 1u << 20;
constexpr size_t kSmallAlign = 512;

// False once the arena failed (its addresses were taken): allocations then go to the
// driver directly, or the process stopped, as FERRY_ON_ERROR says.
bool usable();

// At start-up: checks that the arena's first addresses can be reserved, so a process
// that cannot get fixed addresses learns it (and FERRY_ON_ERROR applies) before it
// allocates anything.
void probe();

// The driver's allocation granularity for device memory (cached).
size_t granularity();

// Virtual addresses from vdev's range, granularity-aligned; `hint` (0: any) is
// honoured when free and inside the range.
CUresult carve(int vdev, size_t size, size_t align, uintptr_t hint, uintptr_t* out);
void uncarve(int vdev, uintptr_t va, size_t size);
// The virtual device whose range holds va, or -1.
int range_of(uintptr_t va);

// Makes [va, va+size) usable for mapping: inside a device's range, that range's
// backing (reserved at its fixed address on first use, counted); elsewhere a
// reservation of exactly that range from the driver. Records a tracker reservation
// when `record`. A backing that cannot be had makes the arena unusable (FERRY_ON_ERROR
// applies) unless `restoring`: a restore reports it as its own error.
CUresult reserve_exact(uintptr_t va, size_t size, bool record = true, bool restoring = false);
// Undoes reserve_exact (the tracker's record is the caller's).
void unreserve(uintptr_t va, size_t size);
// Physical memory on virtual device vdev (the current physical device behind it).
CUresult create_phys(int vdev, size_t size, const CUmemAllocationProp* program_prop, tr::Phys** out);
// Maps phys at va and makes it accessible from vdev (and the devices in `access`).
CUresult map(uintptr_t va, size_t size, tr::Phys* p, size_t offset, const CUmemAccessDesc* access, size_t n_access);

// Device memory for the program. Returns the driver's error on failure, nothing half-made.
CUresult alloc(int vdev, tr::Ctx* ctx, size_t size, tr::AllocKind kind, tr::Pool* pool, CUdeviceptr* out);
// Frees an allocation made by alloc(). CUDA_ERROR_INVALID_VALUE if p is not one.
CUresult free(CUdeviceptr p);
// Stream-ordered free: the memory returns once the work queued on `stream` before it is done.
CUresult free_async(CUdeviceptr p, CUstream real_stream);
// Frees what stream-ordered frees have released since.
void reap();

// Unmaps and releases a piece alloc() built (reservation, mapping, physical memory), or
// the reservation alone of one the program carved (cuMemAddressReserve) and left unmapped.
void drop_piece(uintptr_t va);

}  // namespace ferry::arena
