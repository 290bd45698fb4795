// The simulated NVML: a libnvidia-ml.so.1 for machines without a GPU, with just what a
// whole-process dump has to reckon with. PyTorch's device_count() calls nvmlInit and
// nvmlDeviceGetCount_v2 through ctypes and never shuts NVML down; the real library
// then holds /dev/nvidiactl and /dev/nvidiaN descriptors of its own, which CRIU cannot
// dump and which NVIDIA's checkpoint API is documented (CRIU's CUDA plugin) to leave
// open. So here, from the first nvmlInit until the matching last nvmlShutdown (they are
// counted, as NVML's are), the library holds a userfaultfd -- the simulated GPU's stand-in
// for a device file, which CRIU refuses -- and the simulated driver's checkpoint does not
// touch it. Return codes are NVML's.
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <mutex>

#include <ferry_common/settings.hpp>

namespace {

constexpr int kSuccess = 0, kUninitialized = 1, kInvalidArgument = 2;

std::mutex g_mu;
int g_refs = 0;
int g_file = -1;

int init() {
  std::lock_guard lk(g_mu);
  if (g_refs++ == 0) g_file = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY));
  return kSuccess;
}

}  // namespace

extern "C" {

__attribute__((visibility("default"))) int nvmlInit_v2() { return init(); }
__attribute__((visibility("default"))) int nvmlInit() { return init(); }
__attribute__((visibility("default"))) int nvmlInitWithFlags(unsigned) { return init(); }

__attribute__((visibility("default"))) int nvmlShutdown() {
  std::lock_guard lk(g_mu);
  if (g_refs == 0) return kUninitialized;
  if (--g_refs == 0 && g_file >= 0) {
    close(g_file);
    g_file = -1;
  }
  return kSuccess;
}

__attribute__((visibility("default"))) int nvmlDeviceGetCount_v2(unsigned* count) {
  std::lock_guard lk(g_mu);
  if (g_refs == 0) return kUninitialized;
  if (!count) return kInvalidArgument;
  *count = static_cast<unsigned>(ferry::settings::count("FERRY_EMU_DEVICES", 2));
  return kSuccess;
}

// Not NVML's: the descriptor standing in for its device files (-1 while it holds none),
// for ferry's fork handler (interpose/nvml.hpp). Reads one int: safe right after fork.
__attribute__((visibility("default"))) int ferryEmuNvmlDeviceFile() { return g_file; }

}  // extern "C"
