// Probes of the driver that ferry's shim and simulated GPU rely on. Each mode prints one
// JSON object on stdout; tests/gpu/run_suite.py runs them against the real driver, the
// simulated one and through the shim, and compares.
//
//   gpa               cuGetProcAddress_v2 for (name, cudaVersion, flags): found or not,
//                     symbolStatus, and which exported variant the pointer is
//   reserve-hint      whether cuMemAddressReserve returns the address it was hinted
//                     (in a fresh process: the shim's arena relies on it)
//   overhead N        host ns per call of cuLaunchKernel, cuMemcpyAsync, cuEventRecord
//                     (run once directly and once under the shim)
//   release           what a CUDA process still holds of the driver (/dev/nvidia* file
//                     descriptors and mappings) with a context, once every context is
//                     destroyed, and after NVIDIA's checkpoint API checkpointed it (driven
//                     from a second process by pid, as CRIU's tooling does); whether it can
//                     then be restored, unlocked and create a context and compute again
//                     -- the facts the whole-process path (CRIU + ferry) stands on
//   context-memory    NVML's free memory on GPU 0 after cuInit, with the primary context
//                     current, after a module load and one launch, after a 1 MiB allocation, and once
//                     the context is released; cuMemGetInfo's free beside it: what a
//                     restored process needs on a GPU beyond its device memory, which is
//                     all ferry restore's free-memory check counts
//
// The driver is opened with dlopen("libcuda.so.1"): whatever the loader finds (the
// shim when it is preloaded, the simulated GPU on LD_LIBRARY_PATH, else the real one).
#include <cuda.h>
#include <dirent.h>
#include <dlfcn.h>
#include <sys/wait.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "gpu_kernels_fatbin.h"

namespace {

void* g_lib = nullptr;

template <class T>
T sym(const char* name) {
  void* p = dlsym(g_lib, name);
  if (!p) {
    fprintf(stderr, "gpu_probe: the driver has no %s\n", name);
    exit(2);
  }
  return reinterpret_cast<T>(p);
}

void ck(CUresult r, const char* what) {
  if (r != CUDA_SUCCESS) {
    fprintf(stderr, "gpu_probe: %s failed with %d\n", what, static_cast<int>(r));
    exit(1);
  }
}

std::string hex(uint64_t v) {
  char b[32];
  snprintf(b, sizeof b, "0x%llx", static_cast<unsigned long long>(v));
  return b;
}

// Names whose variants differ by version or stream flags (see the notes on the driver).
const char* kNames[] = {"cuMemAlloc",          "cuMemFree",           "cuMemcpyHtoD",         "cuMemcpyHtoDAsync",
                        "cuMemcpyAsync",       "cuMemcpy",            "cuMemsetD8",           "cuMemsetD32Async",
                        "cuCtxCreate",         "cuCtxDestroy",        "cuCtxPushCurrent",     "cuCtxPopCurrent",
                        "cuCtxSynchronize",    "cuDevicePrimaryCtxRelease", "cuDevicePrimaryCtxReset",
                        "cuDevicePrimaryCtxSetFlags", "cuDeviceTotalMem", "cuMemGetInfo",     "cuModuleGetGlobal",
                        "cuLaunchKernel",      "cuLaunchKernelEx",    "cuEventRecord",        "cuEventDestroy",
                        "cuStreamDestroy",     "cuStreamWaitEvent",   "cuStreamSynchronize",  "cuStreamQuery",
                        "cuStreamGetPriority", "cuStreamGetFlags",    "cuStreamBeginCapture", "cuStreamEndCapture",
                        "cuStreamGetCaptureInfo", "cuGraphInstantiate", "cuGraphLaunch",      "cuGraphAddKernelNode",
                        "cuMemAllocAsync",     "cuMemFreeAsync",      "cuMemHostRegister",    "cuMemHostAlloc",
                        "cuGetProcAddress",    "cuLinkCreate",        "cuModuleLoadDataEx",   "cuLibraryLoadData",
                        "cuMemAddressReserve", "cuMemCreate",         "cuMemMap",             "cuCtxGetDevice",
                        "cuDeviceGetUuid",     "cuEventElapsedTime",  "cuStreamGetCtx",       "cuMemcpyDtoH",
                        "cuMemcpyDtoDAsync",   "cuMemcpy2DAsync",     "cuMemcpyPeerAsync",    "cuPointerGetAttribute"};
const int kVersions[] = {3000, 3020, 4000, 7000, 10000, 11000, 11030, 12000, 12030, 12080, 13000};
const unsigned long long kFlags[] = {CU_GET_PROC_ADDRESS_DEFAULT, CU_GET_PROC_ADDRESS_LEGACY_STREAM,
                                     CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM};

// The exported symbol a pointer is, among the usual suffixes.
std::string variant_of(const char* name, void* p) {
  static const char* suffixes[] = {"",         "_v2",      "_v3",      "_v4",      "_ptds",    "_ptsz",
                                   "_v2_ptds", "_v2_ptsz", "_v3_ptds", "_v3_ptsz", "_v4_ptsz"};
  for (const char* s : suffixes) {
    std::string n = std::string(name) + s;
    if (dlsym(g_lib, n.c_str()) == p) return n;
  }
  return "(not exported)";
}

int gpa() {
  auto init = sym<CUresult (*)(unsigned)>("cuInit");
  auto gpa = sym<CUresult (*)(const char*, void**, int, cuuint64_t, CUdriverProcAddressQueryResult*)>(
      "cuGetProcAddress_v2");
  ck(init(0), "cuInit");
  int driver = 0;
  sym<CUresult (*)(int*)>("cuDriverGetVersion")(&driver);
  printf("{\"driver_version\": %d, \"queries\": [\n", driver);
  bool first = true;
  for (const char* n : kNames)
    for (int v : kVersions)
      for (unsigned long long f : kFlags) {
        void* p = nullptr;
        CUdriverProcAddressQueryResult st = CU_GET_PROC_ADDRESS_SUCCESS;
        CUresult r = gpa(n, &p, v, f, &st);
        printf("%s {\"name\": \"%s\", \"version\": %d, \"flags\": %llu, \"result\": %d, \"status\": %d, \"variant\": \"%s\"}",
               first ? "" : ",\n", n, v, f, static_cast<int>(r), static_cast<int>(st),
               r == CUDA_SUCCESS && p ? variant_of(n, p).c_str() : "");
        first = false;
      }
  printf("\n]}\n");
  return 0;
}

int reserve_hint() {
  auto init = sym<CUresult (*)(unsigned)>("cuInit");
  auto retain = sym<CUresult (*)(CUcontext*, CUdevice)>("cuDevicePrimaryCtxRetain");
  auto set = sym<CUresult (*)(CUcontext)>("cuCtxSetCurrent");
  auto reserve = sym<CUresult (*)(CUdeviceptr*, size_t, size_t, CUdeviceptr, unsigned long long)>("cuMemAddressReserve");
  auto release = sym<CUresult (*)(CUdeviceptr, size_t)>("cuMemAddressFree");
  ck(init(0), "cuInit");
  CUcontext c;
  ck(retain(&c, 0), "cuDevicePrimaryCtxRetain");
  ck(set(c), "cuCtxSetCurrent");
  struct Case {
    uint64_t hint, size;
  } cases[] = {{0x500000000000ull, 1ull << 30},  {0x500000000000ull, 64ull << 30}, {0x500000000000ull, 1ull << 40},
               {0x510000000000ull, 2ull << 20},  {0x7e9000000000ull, 1ull << 30}, {0x200000000000ull, 1ull << 30},
               // From which size is a hint honoured? (2 MiB was not, 1 GiB was, on an H200 with driver 580.)
               {0x520000000000ull, 8ull << 20},  {0x530000000000ull, 32ull << 20}, {0x540000000000ull, 128ull << 20},
               {0x550000000000ull, 512ull << 20},
               // The shim's default arena: 2 TiB per device, device 1's right after device 0's.
               {0x500000000000ull, 2ull << 40},  {0x520000000000ull, 2ull << 40}};
  printf("{\"cases\": [\n");
  bool first = true;
  for (auto& k : cases) {
    CUdeviceptr got = 0;
    CUresult r = reserve(&got, k.size, 0, k.hint, 0);
    printf("%s {\"hint\": \"%s\", \"size\": %llu, \"result\": %d, \"got\": \"%s\", \"honoured\": %s}",
           first ? "" : ",\n", hex(k.hint).c_str(), static_cast<unsigned long long>(k.size), static_cast<int>(r),
           hex(got).c_str(), r == CUDA_SUCCESS && got == k.hint ? "true" : "false");
    first = false;
    if (r == CUDA_SUCCESS) release(got, k.size);
  }
  printf("\n]}\n");
  return 0;
}

int overhead(long n) {
  using Clock = std::chrono::steady_clock;
  auto init = sym<CUresult (*)(unsigned)>("cuInit");
  auto retain = sym<CUresult (*)(CUcontext*, CUdevice)>("cuDevicePrimaryCtxRetain");
  auto set = sym<CUresult (*)(CUcontext)>("cuCtxSetCurrent");
  auto load = sym<CUresult (*)(CUmodule*, const void*)>("cuModuleLoadData");
  auto getf = sym<CUresult (*)(CUfunction*, CUmodule, const char*)>("cuModuleGetFunction");
  auto mkstream = sym<CUresult (*)(CUstream*, unsigned)>("cuStreamCreate");
  auto sync = sym<CUresult (*)(CUstream)>("cuStreamSynchronize");
  auto launch = sym<CUresult (*)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                                 CUstream, void**, void**)>("cuLaunchKernel");
  auto alloc = sym<CUresult (*)(CUdeviceptr*, size_t)>("cuMemAlloc_v2");
  auto copy = sym<CUresult (*)(CUdeviceptr, CUdeviceptr, size_t, CUstream)>("cuMemcpyAsync");
  auto mkevent = sym<CUresult (*)(CUevent*, unsigned)>("cuEventCreate");
  auto record = sym<CUresult (*)(CUevent, CUstream)>("cuEventRecord");
  ck(init(0), "cuInit");
  CUcontext c;
  ck(retain(&c, 0), "cuDevicePrimaryCtxRetain");
  ck(set(c), "cuCtxSetCurrent");
  CUmodule m;
  ck(load(&m, gpu_kernels_fatbin), "cuModuleLoadData");
  CUfunction f;
  ck(getf(&f, m, "probe_empty"), "cuModuleGetFunction");
  CUstream s;
  ck(mkstream(&s, CU_STREAM_NON_BLOCKING), "cuStreamCreate");
  CUdeviceptr a, b;
  ck(alloc(&a, 64), "cuMemAlloc");
  ck(alloc(&b, 64), "cuMemAlloc");
  CUevent e;
  ck(mkevent(&e, CU_EVENT_DISABLE_TIMING), "cuEventCreate");
  // The queue is drained every `batch` calls so the GPU never throttles submission;
  // the drain is outside the timed part.
  const long batch = 512;
  auto measure = [&](auto&& call) {
    double best = 1e30;
    for (int rep = 0; rep < 3; rep++) {
      double total = 0;
      for (long done = 0; done < n; done += batch) {
        auto t = Clock::now();
        for (long i = 0; i < batch; i++) call();
        total += std::chrono::duration<double, std::nano>(Clock::now() - t).count();
        ck(sync(s), "cuStreamSynchronize");
      }
      best = std::min(best, total / static_cast<double>(((n + batch - 1) / batch) * batch));
    }
    return best;
  };
  double t_launch = measure([&] { launch(f, 1, 1, 1, 1, 1, 1, 0, s, nullptr, nullptr); });
  double t_copy = measure([&] { copy(b, a, 4, s); });
  double t_record = measure([&] { record(e, s); });
  printf("{\"calls\": %ld, \"ns\": {\"cuLaunchKernel\": %.1f, \"cuMemcpyAsync\": %.1f, \"cuEventRecord\": %.1f}}\n", n,
         t_launch, t_copy, t_record);
  return 0;
}

// ---- release ------------------------------------------------------------------------

// The driver's files this process holds: "<fds> fds, <maps> maps" of /dev/nvidia* (and
// userfaultfds, the simulated GPU's stand-in for them), and the distinct names.
std::string holdings() {
  int fds = 0, maps = 0;
  std::vector<std::string> names;
  if (DIR* d = opendir("/proc/self/fd")) {
    while (dirent* e = readdir(d)) {
      char target[256] = {};
      std::string link = std::string("/proc/self/fd/") + e->d_name;
      if (readlink(link.c_str(), target, sizeof target - 1) <= 0) continue;
      std::string t = target;
      if (t.rfind("/dev/nvidia", 0) != 0 && t != "anon_inode:[userfaultfd]") continue;
      fds++;
      if (std::find(names.begin(), names.end(), t) == names.end()) names.push_back(t);
    }
    closedir(d);
  }
  std::ifstream m("/proc/self/maps");
  std::string line;
  while (std::getline(m, line))
    if (line.find("/dev/nvidia") != std::string::npos) maps++;
  std::string j = "{\"fds\": " + std::to_string(fds) + ", \"maps\": " + std::to_string(maps) + ", \"files\": [";
  for (size_t i = 0; i < names.size(); i++) j += (i ? ", \"" : "\"") + names[i] + "\"";
  return j + "]}";
}

// Everything the other end writes until it closes.
std::string read_all(int fd) {
  std::string s;
  char buf[1024];
  for (ssize_t n; (n = read(fd, buf, sizeof buf)) > 0;) s.append(buf, static_cast<size_t>(n));
  return s;
}

bool read_byte(int fd) {
  char c;
  return read(fd, &c, 1) == 1;
}
void write_byte(int fd) {
  char c = 1;
  if (write(fd, &c, 1) != 1) _exit(3);
}

// The second process: waits for "go", then drives the checkpoint API on `target` step
// by step, letting the target look at itself once checkpointed. Writes its results as
// a JSON object to `out`.
[[noreturn]] void controller(pid_t target, int go, int checkpointed, int looked, int out) {
  std::string r;
  if (!read_byte(go)) _exit(2);
  void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  auto api = [&](const char* n) { return lib ? dlsym(lib, n) : nullptr; };
  auto init = reinterpret_cast<CUresult (*)(unsigned)>(api("cuInit"));
  auto state = reinterpret_cast<CUresult (*)(int, CUprocessState*)>(api("cuCheckpointProcessGetState"));
  auto lock = reinterpret_cast<CUresult (*)(int, CUcheckpointLockArgs*)>(api("cuCheckpointProcessLock"));
  auto ckpt = reinterpret_cast<CUresult (*)(int, CUcheckpointCheckpointArgs*)>(api("cuCheckpointProcessCheckpoint"));
  auto restore = reinterpret_cast<CUresult (*)(int, CUcheckpointRestoreArgs*)>(api("cuCheckpointProcessRestore"));
  auto unlock = reinterpret_cast<CUresult (*)(int, CUcheckpointUnlockArgs*)>(api("cuCheckpointProcessUnlock"));
  auto tid = reinterpret_cast<CUresult (*)(int, int*)>(api("cuCheckpointProcessGetRestoreThreadId"));
  if (!init || !state || !lock || !ckpt || !restore || !unlock) {
    r = "{\"api\": false}";
    write_byte(checkpointed);  // nothing to look at
    read_byte(looked);
  } else {
    auto st = [&] {
      CUprocessState s = CU_PROCESS_STATE_FAILED;
      CUresult e = state(target, &s);
      return e == CUDA_SUCCESS ? std::to_string(static_cast<int>(s)) : "\"error " + std::to_string(e) + "\"";
    };
    r = "{\"api\": true, \"cuInit\": " + std::to_string(init(0));
    r += ", \"state_before\": " + st();
    int t = 0;
    if (tid) {
      CUresult te = tid(target, &t);
      r += ", \"restore_thread\": " + std::to_string(te) + ", \"tid\": " + std::to_string(t);
    }
    CUcheckpointLockArgs la{};
    la.timeoutMs = 20000;
    auto t0 = std::chrono::steady_clock::now();
    CUresult e = lock(target, &la);
    auto ms = [&] {
      return std::to_string(
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    };
    r += ", \"lock\": " + std::to_string(e) + ", \"lock_ms\": " + ms() + ", \"state_locked\": " + st();
    bool did_checkpoint = false;
    if (e == CUDA_SUCCESS) {
      CUcheckpointCheckpointArgs ca{};
      t0 = std::chrono::steady_clock::now();
      e = ckpt(target, &ca);
      did_checkpoint = e == CUDA_SUCCESS;
      r += ", \"checkpoint\": " + std::to_string(e) + ", \"checkpoint_ms\": " + ms() +
           ", \"state_checkpointed\": " + st();
    }
    write_byte(checkpointed);
    read_byte(looked);
    if (did_checkpoint) {
      // With GPU pairs, each GPU to itself: the struct, the UUIDs' byte order and the
      // pairs' path of the driver, which ferry's restore onto other GPUs takes (a pair
      // for every GPU here, so every one the process had is named).
      auto count = reinterpret_cast<CUresult (*)(int*)>(api("cuDeviceGetCount"));
      auto get = reinterpret_cast<CUresult (*)(CUdevice*, int)>(api("cuDeviceGet"));
      auto uuid = reinterpret_cast<CUresult (*)(CUuuid*, CUdevice)>(api("cuDeviceGetUuid_v2"));
      std::vector<CUcheckpointGpuPair> pairs;
      int n = 0;
      if (count && get && uuid && count(&n) == CUDA_SUCCESS)
        for (int i = 0; i < n; i++) {
          CUdevice d = 0;
          CUuuid u{};
          if (get(&d, i) == CUDA_SUCCESS && uuid(&u, d) == CUDA_SUCCESS) pairs.push_back({u, u});
        }
      CUcheckpointRestoreArgs ra{};
      ra.gpuPairs = pairs.empty() ? nullptr : pairs.data();
      ra.gpuPairsCount = static_cast<unsigned>(pairs.size());
      t0 = std::chrono::steady_clock::now();
      e = restore(target, &ra);
      r += ", \"restore_pairs\": " + std::to_string(pairs.size()) + ", \"restore\": " + std::to_string(e) +
           ", \"restore_ms\": " + ms();
      if (e != CUDA_SUCCESS && !pairs.empty()) {  // still checkpointed: brought back without pairs
        CUcheckpointRestoreArgs plain{};
        r += ", \"restore_without_pairs\": " + std::to_string(restore(target, &plain));
      }
    }
    CUcheckpointUnlockArgs ua{};
    e = unlock(target, &ua);  // before the state is asked (operands of + are unsequenced)
    r += ", \"unlock\": " + std::to_string(e);
    r += ", \"state_after\": " + st() + "}";
  }
  size_t off = 0;
  while (off < r.size()) {
    ssize_t n = write(out, r.data() + off, r.size() - off);
    if (n <= 0) break;
    off += static_cast<size_t>(n);
  }
  _exit(0);
}

// cuInit, device 0's primary context current, and `bytes` of device memory set to 7.
CUdeviceptr context_and_memory(size_t bytes) {
  ck(sym<CUresult (*)(unsigned)>("cuInit")(0), "cuInit");
  CUcontext c;
  ck(sym<CUresult (*)(CUcontext*, CUdevice)>("cuDevicePrimaryCtxRetain")(&c, 0), "cuDevicePrimaryCtxRetain");
  ck(sym<CUresult (*)(CUcontext)>("cuCtxSetCurrent")(c), "cuCtxSetCurrent");
  CUdeviceptr p;
  ck(sym<CUresult (*)(CUdeviceptr*, size_t)>("cuMemAlloc_v2")(&p, bytes), "cuMemAlloc");
  ck(sym<CUresult (*)(CUdeviceptr, unsigned char, size_t)>("cuMemsetD8_v2")(p, 7, bytes), "cuMemsetD8");
  return p;
}

// With `nvml`, NVML is initialized first, as PyTorch's device_count() does (and never
// shuts it down): whether NVIDIA's checkpoint releases NVML's files too. "" when it
// was initialized (or not asked for), else why not.
std::string init_nvml() {
  void* nvml = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!nvml) return "no libnvidia-ml.so.1 here";
  auto init = reinterpret_cast<int (*)()>(dlsym(nvml, "nvmlInit_v2"));
  if (!init) return "no nvmlInit_v2";
  int r = init();
  return r == 0 ? "" : "nvmlInit_v2 failed: " + std::to_string(r);
}

int context_memory() {
  void* nvml = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!nvml) {
    printf("{\"nvml\": \"no libnvidia-ml.so.1 here\"}\n");
    return 0;
  }
  struct Memory {
    unsigned long long total, free, used;
  };
  auto nvml_init = reinterpret_cast<int (*)()>(dlsym(nvml, "nvmlInit_v2"));
  auto by_uuid = reinterpret_cast<int (*)(const char*, void**)>(dlsym(nvml, "nvmlDeviceGetHandleByUUID"));
  auto info = reinterpret_cast<int (*)(void*, Memory*)>(dlsym(nvml, "nvmlDeviceGetMemoryInfo"));
  if (!nvml_init || !by_uuid || !info || nvml_init() != 0) {
    printf("{\"nvml\": \"cannot be started\"}\n");
    return 0;
  }
  ck(sym<CUresult (*)(unsigned)>("cuInit")(0), "cuInit");
  CUdevice dev = 0;
  ck(sym<CUresult (*)(CUdevice*, int)>("cuDeviceGet")(&dev, 0), "cuDeviceGet");
  CUuuid u{};
  ck(sym<CUresult (*)(CUuuid*, CUdevice)>("cuDeviceGetUuid_v2")(&u, dev), "cuDeviceGetUuid_v2");
  char x[33];
  for (int i = 0; i < 16; i++) snprintf(x + 2 * i, 3, "%02x", static_cast<unsigned char>(u.bytes[i]));
  const std::string h = x;
  const std::string name =
      "GPU-" + h.substr(0, 8) + "-" + h.substr(8, 4) + "-" + h.substr(12, 4) + "-" + h.substr(16, 4) + "-" + h.substr(20);
  void* handle = nullptr;
  if (by_uuid(name.c_str(), &handle) != 0) {
    printf("{\"nvml\": \"does not know %s\"}\n", name.c_str());
    return 0;
  }
  auto free_now = [&] {
    Memory m{};
    return info(handle, &m) == 0 ? static_cast<long long>(m.free) : -1;
  };
  std::string out = "{\"nvml\": \"answers\", \"free\": {";
  auto note = [&](const char* when) { out += std::string(out.back() == '{' ? "" : ", ") + "\"" + when + "\": " +
                                             std::to_string(free_now()); };
  note("after_cuinit");
  CUcontext ctx = nullptr;
  ck(sym<CUresult (*)(CUcontext*, CUdevice)>("cuDevicePrimaryCtxRetain")(&ctx, dev), "cuDevicePrimaryCtxRetain");
  ck(sym<CUresult (*)(CUcontext)>("cuCtxSetCurrent")(ctx), "cuCtxSetCurrent");
  note("with_context");
  CUmodule m = nullptr;
  ck(sym<CUresult (*)(CUmodule*, const void*)>("cuModuleLoadData")(&m, gpu_kernels_fatbin), "cuModuleLoadData");
  // One launch: with lazy loading (the default) the module's code reaches the GPU only then.
  CUfunction f = nullptr;
  ck(sym<CUresult (*)(CUfunction*, CUmodule, const char*)>("cuModuleGetFunction")(&f, m, "probe_empty"),
     "cuModuleGetFunction");
  ck(sym<CUresult (*)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, CUstream,
                      void**, void**)>("cuLaunchKernel")(f, 1, 1, 1, 1, 1, 1, 0, nullptr, nullptr, nullptr),
     "cuLaunchKernel");
  ck(sym<CUresult (*)()>("cuCtxSynchronize")(), "cuCtxSynchronize");
  note("after_module");
  CUdeviceptr p = 0;
  ck(sym<CUresult (*)(CUdeviceptr*, size_t)>("cuMemAlloc_v2")(&p, 1 << 20), "cuMemAlloc");
  note("after_1mib");
  size_t cfree = 0, ctotal = 0;
  ck(sym<CUresult (*)(size_t*, size_t*)>("cuMemGetInfo_v2")(&cfree, &ctotal), "cuMemGetInfo");
  ck(sym<CUresult (*)(CUdeviceptr)>("cuMemFree_v2")(p), "cuMemFree");
  ck(sym<CUresult (*)(CUmodule)>("cuModuleUnload")(m), "cuModuleUnload");
  ck(sym<CUresult (*)(CUcontext)>("cuCtxSetCurrent")(nullptr), "cuCtxSetCurrent");
  ck(sym<CUresult (*)(CUdevice)>("cuDevicePrimaryCtxRelease_v2")(dev), "cuDevicePrimaryCtxRelease");
  note("released");
  out += "}, \"cumemgetinfo_free\": " + std::to_string(cfree) + ", \"total\": " + std::to_string(ctotal) + "}";
  printf("%s\n", out.c_str());
  return 0;
}

int release(bool nvml) {
  std::string nvml_state = nvml ? init_nvml() : "not asked for";
  // The controller is forked before this process touches CUDA (a CUDA process must not
  // fork and use CUDA in the child).
  int go[2], checkpointed[2], looked[2], out[2];
  if (pipe(go) || pipe(checkpointed) || pipe(looked) || pipe(out)) return 2;
  pid_t self = getpid();
  pid_t ctl = fork();
  if (ctl == 0) {
    close(go[1]), close(checkpointed[0]), close(looked[1]), close(out[0]);
    controller(self, go[0], checkpointed[1], looked[0], out[1]);
  }
  // Only the other side holds these ends: a controller that dies (inside the driver,
  // say) reads as end-of-file here instead of a wait forever.
  close(go[0]), close(checkpointed[1]), close(looked[0]), close(out[1]);
  auto retain = sym<CUresult (*)(CUcontext*, CUdevice)>("cuDevicePrimaryCtxRetain");
  auto release_ctx = sym<CUresult (*)(CUdevice)>("cuDevicePrimaryCtxRelease_v2");
  auto reset = sym<CUresult (*)(CUdevice)>("cuDevicePrimaryCtxReset_v2");
  auto set = sym<CUresult (*)(CUcontext)>("cuCtxSetCurrent");
  auto alloc = sym<CUresult (*)(CUdeviceptr*, size_t)>("cuMemAlloc_v2");
  auto mfree = sym<CUresult (*)(CUdeviceptr)>("cuMemFree_v2");
  auto memset8 = sym<CUresult (*)(CUdeviceptr, unsigned char, size_t)>("cuMemsetD8_v2");
  auto dtoh = sym<CUresult (*)(void*, CUdeviceptr, size_t)>("cuMemcpyDtoH_v2");
  std::string j = "{";
  CUcontext c;
  CUdeviceptr p = context_and_memory(64u << 20);
  j += "\"with_context\": " + holdings();
  ck(mfree(p), "cuMemFree");
  ck(set(nullptr), "cuCtxSetCurrent");
  ck(release_ctx(0), "cuDevicePrimaryCtxRelease");
  ck(reset(0), "cuDevicePrimaryCtxReset");
  j += ", \"contexts_destroyed\": " + holdings();
  signal(SIGPIPE, SIG_IGN);  // a controller that died: its pipes fail, this goes on
  auto tell = [](int fd) {
    char c = 1;
    return write(fd, &c, 1) == 1;
  };
  tell(go[1]);
  read_byte(checkpointed[0]);  // not a CUDA call: this thread may look while locked
  j += ", \"after_checkpoint\": " + holdings();
  tell(looked[1]);
  std::string ctl_out = read_all(out[0]);
  int st = 0;
  waitpid(ctl, &st, 0);
  j += ", \"controller\": " + (ctl_out.empty() ? std::string("null") : ctl_out);
  j += ", \"after_restore\": " + holdings();
  // Can this process use the GPU again?
  CUresult again = retain(&c, 0);
  if (again == CUDA_SUCCESS) again = set(c);
  if (again == CUDA_SUCCESS) again = alloc(&p, 1u << 20);
  unsigned char back = 0;
  if (again == CUDA_SUCCESS) again = memset8(p, 42, 1u << 20);
  if (again == CUDA_SUCCESS) again = dtoh(&back, p + 4096, 1);
  j += ", \"context_again\": " + std::to_string(again) + ", \"computes_again\": " +
       (again == CUDA_SUCCESS && back == 42 ? "true" : "false") + ", \"nvml\": \"" +
       (nvml_state.empty() ? "initialized" : nvml_state) + "\"}";
  printf("%s\n", j.c_str());
  return 0;
}

// ---- fork ---------------------------------------------------------------------------

// A child forked without exec once CUDA is initialized, as a DataLoader's worker is:
// what it holds of the driver (under ferry, after the shim's fork handler:
// interpose/forked_children.hpp), and whether the parent still computes once the child
// has exited. With `use_exit` the child ends with exit() rather than _exit(): the
// driver's own exit handlers then run in the child, on what the fork handler left.
int fork_child(bool use_exit) {
  auto memset8 = sym<CUresult (*)(CUdeviceptr, unsigned char, size_t)>("cuMemsetD8_v2");
  auto dtoh = sym<CUresult (*)(void*, CUdeviceptr, size_t)>("cuMemcpyDtoH_v2");
  CUdeviceptr p = context_and_memory(64u << 20);
  int out[2];
  if (pipe(out)) return 2;
  pid_t child = fork();
  if (child == 0) {
    std::string h = holdings();
    ssize_t n = write(out[1], h.data(), h.size());
    if (use_exit) exit(n == static_cast<ssize_t>(h.size()) ? 0 : 3);
    _exit(n == static_cast<ssize_t>(h.size()) ? 0 : 3);
  }
  close(out[1]);
  std::string held = read_all(out[0]);
  int st = 0;
  waitpid(child, &st, 0);
  unsigned char back = 0;
  CUresult again = memset8(p, 42, 64u << 20);
  if (again == CUDA_SUCCESS) again = dtoh(&back, p + (32u << 20), 1);
  std::string end = WIFEXITED(st) ? "exited " + std::to_string(WEXITSTATUS(st))
                                   : WIFSIGNALED(st) ? "killed by signal " + std::to_string(WTERMSIG(st)) : "?";
  printf("{\"child\": %s, \"child_end\": \"%s\", \"parent\": %s, \"computes_after\": %s}\n",
         held.empty() ? "null" : held.c_str(), end.c_str(), holdings().c_str(),
         again == CUDA_SUCCESS && back == 42 ? "true" : "false");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: gpu_probe gpa | reserve-hint | overhead N | release [nvml] | fork [exit] | context-memory\n");
    return 64;
  }
  g_lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
  if (!g_lib) {
    fprintf(stderr, "gpu_probe: %s\n", dlerror());
    return 2;
  }
  std::string mode = argv[1];
  if (mode == "gpa") return gpa();
  if (mode == "reserve-hint") return reserve_hint();
  if (mode == "overhead") return overhead(argc > 2 ? atol(argv[2]) : 20000);
  if (mode == "release") return release(argc > 2 && std::string(argv[2]) == "nvml");
  if (mode == "fork") return fork_child(argc > 2 && std::string(argv[2]) == "exit");
  if (mode == "context-memory") return context_memory();
  fprintf(stderr, "gpu_probe: unknown mode %s\n", mode.c_str());
  return 64;
}
