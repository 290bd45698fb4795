// The shim: libferry.so, preloaded into an unmodified CUDA program, between every CUDA
// library in the process and the real driver.
//
// Mechanism
// - Placement: the library's SONAME is libcuda.so.1, so once preloaded every
//   dlopen("libcuda.so.1") -- cudart's, and the static cudart inside cuBLAS, NCCL, ... --
//   and every -lcuda link resolve to it. It loads the real driver itself by absolute
//   path (found automatically or given by FERRY_REAL_DRIVER) and interposes dlsym, so a
//   program that dlopens the real driver by absolute path still gets our entry points.
// - Entry points: every exported ABI variant of cuda.h has a generated wrapper
//   (cmake/gen/shim_wrappers.py): the gate, then ferry::ov::<variant>, a weak default
//   that forwards with virtual handles translated, or a hand-written override
//   (overrides/*.cpp, grouped by concern). cuGetProcAddress returns our wrapper for
//   exactly the variant the real driver resolved (name, version, flags); names we do not
//   know pass through untouched.
// - Virtual handles (handles.hpp): the application only ever holds handles that point
//   into a slab the shim owns; a translation is a range check and one load. Device
//   ordinals go through a small table. After a restore the slab entries point at new
//   real objects and the program's cached handles keep working.
// - Arena (arena.hpp): every device allocation gets its address from a per-device range
//   at a fixed base and is backed by cuMemCreate memory mapped there, so it can be
//   re-created at the same address on any GPU.
// - Tracker (tracker.hpp): the device-state log, i.e. every live object with what it
//   was created from, the memory map, module images; FERRY_LOG=state dumps it.
// - Gate (gate.hpp): per-thread in-flight marks without shared atomics on the hot
//   path; a stop-the-world closes it and waits for calls in flight.
// - Safety: results are the driver's; out-parameters are written only on success;
//   if ferry cannot work (no real driver, no arena) it says so once and either runs
//   as a plain pass-through or refuses to start (FERRY_ON_ERROR=passthrough|refuse).
// - Layering: this directory is the bottom of the shim (CMake target ferry_interpose);
//   checkpoint/, restore/ and engine/ build on it and it includes none of them. The
//   only upward call is the init hook below.
#pragma once

#include <cuda.h>

#include <cstdint>

#define FERRY_API extern "C" __attribute__((visibility("default")))

namespace ferry {

enum class Variant : unsigned;

struct VariantInfo {
  const char* name;
  void* wrapper;     // our exported entry point
  void** real_slot;  // where the real driver's entry point is kept
};
extern const VariantInfo kVariants[];
extern const unsigned kVariantCount;

// False when ferry runs as a plain pass-through (see FERRY_ON_ERROR).
bool active();

// A call whose handles ferry cannot track: remembered (checkpoints refuse) and
// reported once.
void untracked_call(Variant v, const char* name);

// Our wrapper for a real driver entry point (by its address), or nullptr.
void* wrapper_for_real(void* real);

// Loads the real driver and the configuration, once; safe to call from any entry point.
void ensure_loaded();

// The one call upward: the first successful cuInit of an active shim runs this hook,
// which the engine (a layer above, engine/) registers at load to start its control
// plane. The shim itself knows nothing of the engine.
using InitHook = void (*)();
void set_init_hook(InitHook h);

}  // namespace ferry

#include "gate.hpp"
#include "remap.hpp"
#include "handles.hpp"
