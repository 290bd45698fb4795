// NVML across a whole-process dump.
//
// PyTorch's device_count() initializes NVML (nvmlInit through ctypes on
// libnvidia-ml.so.1, to count devices without initializing CUDA) and never shuts it down.
// NVML then holds /dev/nvidiactl and /dev/nvidiaN descriptors of its own, which CRIU
// cannot dump. Whether NVIDIA's checkpoint releases them depends on the driver (CRIU's
// CUDA plugin says it does not; cuda-checkpoint lists "NVML support" from r570) and has
// not been measured here (the GPU kit's probe.release does).
//
// So the shim counts the program's NVML initializations: dlsym lookups of nvmlInit,
// nvmlInit_v2, nvmlInitWithFlags and nvmlShutdown on any library's handle (how ctypes
// and pynvml reach NVML) get wrappers here, which hold a lock across NVML's own call.
// A whole-process dump shuts NVML down that many times before the driver checkpoint
// (release(), at the control socket's detach) and initializes it again that many times
// -- the first as the program did, flags included -- when the process is resumed
// (reacquire(): restored, the dump undone, or --leave-running). In between, the
// program's own inits and shutdowns only move the count, and other NVML calls fail with
// NVML_ERROR_UNINITIALIZED; NVML handles the program kept are not translated; NVML
// reached otherwise (linked directly, RTLD_DEFAULT, dlvsym) is not covered.
// FERRY_NVML_RELEASE=off leaves NVML alone.
#pragma once

namespace ferry::nvml {

// The wrapper for `name` (one of the four above) looked up on `handle`, or nullptr
// (any other name); `real_dlsym` resolves the library's own functions.
void* dlsym_lookup(void* handle, const char* name, void* (*real_dlsym)(void*, const char*));

// Shuts NVML down as often as the program initialized it; returns that count.
int release();
// Initializes it again as often as release() shut it down.
void reacquire();

// The simulated NVML's descriptor standing in for its device files, or -1 (also where
// NVML is the real one). Reads one int: safe in a child right after fork.
int emu_device_file();

}  // namespace ferry::nvml
