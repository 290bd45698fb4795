#include "cuda_driver.hpp"

#include <cuda.h>
#include <dlfcn.h>

#include <cstdlib>
#include <cstring>
#include <optional>

#include <ferry_common/json_text.hpp>
#include <ferry_common/visible_devices.hpp>

#include "client.hpp"
#include "output.hpp"

namespace ferry::cli {

namespace {

std::string hex_uuid(const CUuuid& u) { return ::ferry::json_text::hex(std::string(u.bytes, sizeof u.bytes)); }

CUuuid uuid_of(const std::string& hex) {
  CUuuid u{};
  for (size_t i = 0; i < 16 && 2 * i + 1 < hex.size(); i++)
    u.bytes[i] = static_cast<char>(std::stoi(hex.substr(2 * i, 2), nullptr, 16));
  return u;
}

}  // namespace

void* CudaDriver::sym(const char* name, bool required) {
  void* p = dlsym(h_, name);
  if (!p && required)
    throw ClientError(kFixFirst, "the CUDA driver " + path_ + " has no " + name +
                                     (strncmp(name, "cuCheckpoint", 12) == 0
                                          ? " (NVIDIA's checkpoint API: CUDA 12.8, driver r570 or newer)"
                                          : ""));
  return p;
}

CudaDriver::CudaDriver(const std::string& path) : path_(path) {
  h_ = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!h_) throw ClientError(kFixFirst, "cannot load the CUDA driver " + path + ": " + dlerror());
  auto init = reinterpret_cast<CUresult (*)(unsigned)>(sym("cuInit"));
  // The driver is initialized with every GPU visible: with some hidden from the caller,
  // NVIDIA's GPU pairs fail even where each pair is a GPU to itself (cuda-python PR 1983;
  // CRIU's CUDA plugin unsets it too). The caller's CUDA_VISIBLE_DEVICES (a Slurm
  // allocation) is applied below instead, as the choice of GPUs ferry may use. It is
  // taken out of the environment for good, once, before the driver's threads exist (a
  // setenv beside threads that read the environment races with them); nothing this
  // process starts needs it (CRIU does not, a restored job has its own environment).
  static const std::optional<std::string> visible = [] {
    const char* v = getenv("CUDA_VISIBLE_DEVICES");
    std::optional<std::string> s = v ? std::optional<std::string>(v) : std::nullopt;
    unsetenv("CUDA_VISIBLE_DEVICES");
    return s;
  }();
  if (CUresult ir = init(0)) throw ClientError(kFixFirst, path + ": cuInit failed with error " + std::to_string(ir));
  auto count = reinterpret_cast<CUresult (*)(int*)>(sym("cuDeviceGetCount"));
  auto get = reinterpret_cast<CUresult (*)(CUdevice*, int)>(sym("cuDeviceGet"));
  auto name = reinterpret_cast<CUresult (*)(char*, int, CUdevice)>(sym("cuDeviceGetName"));
  auto attr = reinterpret_cast<CUresult (*)(int*, CUdevice_attribute, CUdevice)>(sym("cuDeviceGetAttribute"));
  auto mem = reinterpret_cast<CUresult (*)(size_t*, CUdevice)>(sym("cuDeviceTotalMem_v2"));
  auto uuid = reinterpret_cast<CUresult (*)(CUuuid*, CUdevice)>(sym("cuDeviceGetUuid_v2"));
  int n = 0;
  if (CUresult r = count(&n))
    throw ClientError(kFixFirst, path + ": cuDeviceGetCount failed with error " + std::to_string(r));
  for (int i = 0; i < n; i++) {
    CUdevice dev = 0;
    if (CUresult r = get(&dev, i))
      throw ClientError(kFixFirst,
                        path + ": cuDeviceGet(" + std::to_string(i) + ") failed with error " + std::to_string(r));
    Gpu g;
    g.index = i;
    char nm[256] = {};
    name(nm, sizeof nm, dev);
    g.name = nm;
    int major = 0, minor = 0;
    attr(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev);
    attr(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev);
    g.cc = std::to_string(major) + "." + std::to_string(minor);
    size_t total = 0;
    mem(&total, dev);
    g.memory = total;
    // GPUs are matched by UUID (a restore's GPU pairs): one not read is an error, not zeros.
    CUuuid u{};
    if (CUresult r = uuid(&u, dev))
      throw ClientError(kFixFirst, path + ": cuDeviceGetUuid of GPU " + std::to_string(i) + " failed with error " +
                                       std::to_string(r));
    g.uuid = hex_uuid(u);
    gpus_.push_back(g);
  }
  if (!visible) return;
  std::vector<std::string> uuids;
  for (auto& g : gpus_) uuids.push_back(g.uuid);
  std::vector<Gpu> chosen;
  // MIG instances (MIG-...) are not GPUs to ferry: NVIDIA's checkpoint API does not support MIG.
  if (visible->find("MIG-") != std::string::npos)
    throw ClientError(kFixFirst, "CUDA_VISIBLE_DEVICES=" + *visible +
                                     " names MIG instances, which NVIDIA's checkpoint API does not support");
  for (int at : visible_devices(*visible, uuids)) {
    chosen.push_back(gpus_[static_cast<size_t>(at)]);
    chosen.back().index = static_cast<int>(chosen.size()) - 1;  // numbered as the caller's CUDA would
  }
  gpus_ = chosen;
}

std::map<std::string, uint64_t> CudaDriver::free_memory(std::string* why) const {
  return nvml_free_memory(path_, gpus_, why);
}

std::map<std::string, uint64_t> nvml_free_memory(const std::string& driver_path, const std::vector<Gpu>& gpus,
                                                 std::string* why) {
  // NVML's own types and codes (nvml.h is not among the headers this build uses).
  struct NvmlMemory {
    unsigned long long total, free, used;
  };
  using Handle = void*;
  const size_t slash = driver_path.rfind('/');
  const std::string nvml =
      (slash == std::string::npos ? std::string() : driver_path.substr(0, slash + 1)) + "libnvidia-ml.so.1";
  std::map<std::string, uint64_t> free;
  // Never closed: NVML is not documented to survive being unloaded and loaded again.
  void* h = dlopen(nvml.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    *why = std::string("cannot load NVML: ") + dlerror();
    return free;
  }
  auto init = reinterpret_cast<int (*)()>(dlsym(h, "nvmlInit_v2"));
  auto shutdown = reinterpret_cast<int (*)()>(dlsym(h, "nvmlShutdown"));
  auto by_uuid = reinterpret_cast<int (*)(const char*, Handle*)>(dlsym(h, "nvmlDeviceGetHandleByUUID"));
  auto memory = reinterpret_cast<int (*)(Handle, NvmlMemory*)>(dlsym(h, "nvmlDeviceGetMemoryInfo"));
  if (!init || !shutdown || !by_uuid || !memory) {
    *why = nvml + " lacks nvmlInit_v2, nvmlShutdown, nvmlDeviceGetHandleByUUID or nvmlDeviceGetMemoryInfo";
    return free;
  }
  if (int r = init()) {
    *why = nvml + ": nvmlInit_v2 failed with error " + std::to_string(r);
    return free;
  }
  std::vector<std::string> silent;
  for (const Gpu& g : gpus) {
    // NVML names a GPU by the bytes CUDA reports.
    Handle dev = nullptr;
    NvmlMemory mem{};
    const std::string name = gpu_uuid_text(g.uuid);
    if (int r = by_uuid(name.c_str(), &dev))
      silent.push_back("GPU " + std::to_string(g.index) + " (" + name + "): nvmlDeviceGetHandleByUUID error " +
                       std::to_string(r));
    else if (int r2 = memory(dev, &mem))
      silent.push_back("GPU " + std::to_string(g.index) + " (" + name + "): nvmlDeviceGetMemoryInfo error " +
                       std::to_string(r2));
    else
      free[g.uuid] = mem.free;
  }
  if (!silent.empty()) *why = "NVML did not answer for " + list_text(silent);
  shutdown();
  return free;
}

int CudaDriver::state(pid_t pid, int* st) {
  auto f = reinterpret_cast<CUresult (*)(int, CUprocessState*)>(sym("cuCheckpointProcessGetState"));
  CUprocessState s = CU_PROCESS_STATE_FAILED;
  CUresult r = f(pid, &s);
  *st = r == CUDA_SUCCESS ? static_cast<int>(s) : -1;  // not FAILED: nothing was learnt
  return r;
}

int CudaDriver::lock(pid_t pid, unsigned timeout_ms) {
  auto f = reinterpret_cast<CUresult (*)(int, CUcheckpointLockArgs*)>(sym("cuCheckpointProcessLock"));
  CUcheckpointLockArgs a{};
  a.timeoutMs = timeout_ms;
  return f(pid, &a);
}

int CudaDriver::checkpoint(pid_t pid) {
  auto f = reinterpret_cast<CUresult (*)(int, CUcheckpointCheckpointArgs*)>(sym("cuCheckpointProcessCheckpoint"));
  CUcheckpointCheckpointArgs a{};
  return f(pid, &a);
}

int CudaDriver::restore(pid_t pid, const std::vector<std::pair<std::string, std::string>>& uuid_pairs) {
  auto f = reinterpret_cast<CUresult (*)(int, CUcheckpointRestoreArgs*)>(sym("cuCheckpointProcessRestore"));
  std::vector<CUcheckpointGpuPair> pairs;
  for (auto& [o, n] : uuid_pairs) pairs.push_back({uuid_of(o), uuid_of(n)});
  CUcheckpointRestoreArgs a{};
  a.gpuPairs = pairs.empty() ? nullptr : pairs.data();
  a.gpuPairsCount = static_cast<unsigned>(pairs.size());
  return f(pid, &a);
}

int CudaDriver::unlock(pid_t pid) {
  auto f = reinterpret_cast<CUresult (*)(int, CUcheckpointUnlockArgs*)>(sym("cuCheckpointProcessUnlock"));
  CUcheckpointUnlockArgs a{};
  return f(pid, &a);
}

std::string cuda_error_text(int code) {
  switch (code) {
    case CUDA_ERROR_TIMEOUT: return "CUDA_ERROR_TIMEOUT (909: work on the GPU did not finish in time)";
    // What cuda.h lists for a lock's timeout.
    case CUDA_ERROR_NOT_READY: return "CUDA_ERROR_NOT_READY (600: its work in flight did not finish within the lock's timeout)";
    case CUDA_ERROR_NOT_INITIALIZED: return "CUDA_ERROR_NOT_INITIALIZED (3: not a process the driver knows, or it has ended)";
    case CUDA_ERROR_ILLEGAL_STATE: return "CUDA_ERROR_ILLEGAL_STATE (401)";
    case CUDA_ERROR_INVALID_DEVICE: return "CUDA_ERROR_INVALID_DEVICE (101: a GPU missing, or not one the driver takes in place of the old)";
    case CUDA_ERROR_OUT_OF_MEMORY: return "CUDA_ERROR_OUT_OF_MEMORY (2)";
    // The driver's answer to GPU pairs it cannot honour (another chip type, a GPU it does not see).
    case CUDA_ERROR_INVALID_VALUE: return "CUDA_ERROR_INVALID_VALUE (1: an argument refused, e.g. a GPU pair)";
    case CUDA_ERROR_NOT_SUPPORTED: return "CUDA_ERROR_NOT_SUPPORTED (801)";
    case CUDA_ERROR_NO_DEVICE: return "CUDA_ERROR_NO_DEVICE (100)";
    case CUDA_ERROR_OPERATING_SYSTEM: return "CUDA_ERROR_OPERATING_SYSTEM (304: an OS call failed)";
    default: return "CUDA error " + std::to_string(code);
  }
}

}  // namespace ferry::cli
