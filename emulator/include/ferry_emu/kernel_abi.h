/* The contract between the simulated GPU (libcuda.so.1 from emulator/) and a host
 * kernel library: the same .cu source compiled by g++ with cuda_on_host.h.
 *
 * A kernel library exports one C function, ferry_emu_kernel_library_v1(), that
 * returns a table of its kernels by their device (nvcc) mangled names, each with a
 * trampoline that unpacks cuLaunchKernel's void** argument array into a typed call.
 * The emulator loads a private copy of the library per (module, context), so each
 * context gets its own __device__ variables, and binds each worker thread to its
 * per-thread execution state before running blocks. Plain C so both sides may be
 * built by different compilers; bump FERRY_EMU_KERNEL_ABI on any layout change.
 */
#ifndef FERRY_EMU_KERNEL_ABI_H
#define FERRY_EMU_KERNEL_ABI_H

#include <stdint.h>

#define FERRY_EMU_KERNEL_ABI 1u

#ifdef __cplusplus
extern "C" {
#endif

struct ferry_emu_dim {
  unsigned x, y, z;
};

/* Services the emulator offers to running kernel code. All act on the calling
 * CUDA thread (a fiber), found through the thread state. */
struct ferry_emu_runtime {
  uint32_t abi_version;
  /* Block-wide barrier; returns the number of threads that passed a non-zero
   * predicate (op 0 = plain sync, 1 = count, 2 = and, 3 = or as 0/1). */
  int (*block_barrier)(int op, int predicate);
  /* Warp-wide exchange: every live lane of the warp deposits `value`; returns
   * what lane `src_lane` deposited (ballot when src_lane < 0: bit i set when
   * lane i deposited a non-zero value). */
  uint64_t (*warp_exchange)(uint64_t value, int src_lane);
  /* Abort the kernel with a launch failure (device-side assert, __trap()). */
  void (*trap)(const char* why);
};

struct ferry_emu_thread_state {
  struct ferry_emu_dim thread_idx;
  struct ferry_emu_dim block_idx;
  struct ferry_emu_dim block_dim;
  struct ferry_emu_dim grid_dim;
  const struct ferry_emu_runtime* rt;
  void* dynamic_shared; /* extern __shared__ storage of the running block */
};

struct ferry_emu_kernel_entry {
  const char* name; /* device-side mangled name, as cudart asks for it */
  void (*invoke)(void* const* params);
  uint32_t param_count;
  const uint32_t* param_sizes;
  const uint32_t* param_aligns;
};

struct ferry_emu_kernel_library {
  uint32_t abi_version;
  uint32_t kernel_count;
  const struct ferry_emu_kernel_entry* kernels;
  /* Makes `state` the calling OS thread's execution state for this library copy. */
  void (*bind_thread)(struct ferry_emu_thread_state* state);
};

typedef const struct ferry_emu_kernel_library* (*ferry_emu_kernel_library_fn)(void);
#define FERRY_EMU_KERNEL_LIBRARY_SYMBOL "ferry_emu_kernel_library_v1"

#ifdef __cplusplus
}
#endif

#endif
