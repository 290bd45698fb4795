// The CUDA driver as the CLI itself loads it: the GPUs of this machine, and NVIDIA's
// checkpoint API (cuCheckpointProcess*), which acts on another process given its pid
// (docs/driver-facts.md §15). A whole-process dump uses it to make the driver let go
// of a process before CRIU dumps it; a restore, to hand the restored process the GPUs
// of the machine it now runs on (gpuPairs: old UUID -> new UUID).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace ferry::cli {

struct Gpu {
  int index = 0;
  std::string name, cc, uuid;  // uuid: 32 hex digits
  uint64_t memory = 0;
};

class CudaDriver {
 public:
  // Loads and initializes the driver at path; throws ClientError(kFixFirst) saying why not.
  explicit CudaDriver(const std::string& path);
  CudaDriver(const CudaDriver&) = delete;
  CudaDriver& operator=(const CudaDriver&) = delete;
  const std::string& path() const { return path_; }
  // The GPUs the caller's CUDA_VISIBLE_DEVICES lets it use (all where unset), numbered as
  // its CUDA would number them; the driver itself sees them all.
  const std::vector<Gpu>& gpus() const { return gpus_; }
  // Each GPU's free memory by UUID, as NVML reports it: what other processes (and the
  // driver itself) hold is taken off, which the CUDA driver cannot say without a context
  // on every GPU (hundreds of MiB each on a real one). NVML is the one beside the driver
  // (the simulated GPU has its own), loaded, asked and shut down here. Empty where it
  // cannot be loaded or started, without the GPUs it did not answer for; *why says why
  // (empty where every GPU has its figure). Where one is missing, only its total is known.
  std::map<std::string, uint64_t> free_memory(std::string* why) const;

  // The checkpoint API; each returns the CUresult. Throws ClientError(kFixFirst) when
  // the driver has no such API.
  int state(pid_t pid, int* st);
  int lock(pid_t pid, unsigned timeout_ms);
  int checkpoint(pid_t pid);
  int restore(pid_t pid, const std::vector<std::pair<std::string, std::string>>& uuid_pairs);
  int unlock(pid_t pid);

 private:
  void* sym(const char* name, bool required = true);
  void* h_ = nullptr;
  std::string path_;
  std::vector<Gpu> gpus_;
};

// CudaDriver::free_memory for gpus (their index and uuid) of a driver loaded otherwise:
// NVML beside driver_path.
std::map<std::string, uint64_t> nvml_free_memory(const std::string& driver_path, const std::vector<Gpu>& gpus,
                                                 std::string* why);

// "CUDA_ERROR_TIMEOUT (909)", or the number alone when the driver cannot name it.
std::string cuda_error_text(int code);

}  // namespace ferry::cli
