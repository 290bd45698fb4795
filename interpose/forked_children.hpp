// Children forked without exec, and the driver's files they inherit.
//
// A process that forks once CUDA is initialized -- a PyTorch DataLoader's workers, by
// default on Linux -- gives the child copies of the driver's descriptors
// (/dev/nvidiactl, /dev/nvidiaN, /dev/nvidia-uvm, /dev/nvidia-caps/...) and of those of
// its device mappings that fork copies. The child can never use them (CUDA does not work
// in a forked child), but CRIU cannot dump them, and NVIDIA's checkpoint API releases
// the driver's files only in the process it is called on: such a job cannot be dumped at
// all -- a limitation cuda-checkpoint and CRIU's CUDA plugin document.
//
// So in the child, right after fork (a pthread_atfork handler registered once the
// driver is initialized, after any the driver registered), each such descriptor is replaced by
// /dev/null at the same number, its close-on-exec flag kept, and each such mapping by
// inaccessible anonymous memory at the same addresses. CRIU dumps both, and a child that
// touched them by mistake reads nothing or faults, instead of reaching the parent's
// GPU. The parent is not affected: the child dropping its references is what its exit
// would do. The real driver's files are known by their names; the simulated GPU holds a
// userfaultfd in their place (emulator/src/emu.hpp) and names it through an export
// table of its own that no real driver serves, so that one is replaced too -- and a
// userfaultfd the program made itself never is.
//
// FERRY_FORK_RELEASE: job (the default: in a `ferry run --pid-namespace` or `--host-pids`
// job, where a whole-process dump is possible: pid_ns.hpp's in_job), on (everywhere),
// off (never).
#pragma once

namespace ferry::forked {

// Asks the driver whether it is the simulated one, and registers the child handler as
// FERRY_FORK_RELEASE says; once, at the first successful cuInit or NVML initialization
// (interpose/nvml.hpp), whichever comes first.
void install();

// What a child gave up (for tests and FERRY_LOG=debug): descriptors and mappings.
struct Released {
  int fds = 0;
  int mappings = 0;
};
// Does in the calling process what the child handler does; returns what it replaced.
Released release_driver_files();

}  // namespace ferry::forked
