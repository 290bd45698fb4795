// Start-up, configuration and the device queries of the simulated GPU.
#include <fcntl.h>
#include <pthread.h>
#include <linux/userfaultfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <future>
#include <new>
#include <thread>

#include "emu.hpp"

#include <ferry_common/settings.hpp>
#include <ferry_common/visible_devices.hpp>

namespace ferry::emu {

Driver& drv() {
  // Never destroyed: stream workers and atexit handlers of the application may still
  // call in while static destructors run.
  static Driver* d = new Driver;
  return *d;
}

namespace {
int log_level() {
  static int lvl = [] {
    return static_cast<int>(ferry::settings::count("FERRY_EMU_LOG", 0));
  }();
  return lvl;
}
}  // namespace

void log(const char* fmt, ...) {
  if (log_level() <= 0) return;
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  fprintf(stderr, "[ferry-emu] %s\n", buf);
}

void fatal(const char* fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  fprintf(stderr, "[ferry-emu] fatal: %s\n", buf);
  abort();
}

uint64_t new_id() { return drv().next_id++; }

Device* add_device(Driver& d, const DeviceConfig& cfg) {
  int i = static_cast<int>(d.devices.size());
  {
    auto dev = std::make_unique<Device>();
    dev->ordinal = i;
    DeviceConfig& c = dev->cfg;
    c = cfg;

    // 2 MiB-aligned so large allocations can be aligned like a GPU's.
    // Room for fragmentation: four times the memory, at least 64 GiB, at most 1 TiB.
    size_t span = std::min<size_t>(std::max<size_t>(4 * c.total_mem, 64ull << 30), kDeviceHeapSpan);
    span = (span + kGranularity - 1) / kGranularity * kGranularity;
    void* p = mmap(nullptr, span + kGranularity, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) fatal("cannot reserve address space for emulated device %d: %s", i, strerror(errno));
    dev->heap_base = (reinterpret_cast<uintptr_t>(p) + kGranularity - 1) / kGranularity * kGranularity;
    dev->heap_end = dev->heap_base + span;
    dev->heap_free[dev->heap_base] = span;

    auto* ctx = new Context;
    ctx->dev = dev.get();
    ctx->primary = true;
    ctx->id = new_id();
    d.contexts.insert(ctx);
    dev->primary = ctx;

    auto* pool = new MemPool;
    pool->dev = dev.get();
    pool->is_default = true;
    pool->props.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
    pool->props.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    pool->props.location.id = i;
    d.pools.insert(pool);
    dev->default_pool = dev->current_pool = pool;
    d.devices.push_back(std::move(dev));
  }
  return d.devices.back().get();
}

namespace {

// false: CUDA_VISIBLE_DEVICES leaves no device.
bool setup_devices(Driver& d) {
  const int count = machine_device_count();
  std::vector<DeviceConfig> machine;
  for (int i = 0; i < count; i++) machine.push_back(machine_device(i));
  std::vector<int> chosen;
  if (const char* cvd = getenv("CUDA_VISIBLE_DEVICES")) {
    std::vector<std::string> uuids;
    for (auto& c : machine) uuids.push_back(uuid_hex(c.uuid));
    chosen = ferry::visible_devices(cvd, uuids);
    d.restricted = true;
    d.hides = chosen.size() < machine.size();
    if (chosen.empty()) return false;
  } else {
    for (int i = 0; i < count; i++) chosen.push_back(i);
  }
  for (int i : chosen) add_device(d, machine[static_cast<size_t>(i)]);
  d.present = d.devices.size();
  return true;
}

}  // namespace

CUresult ensure_init() {
  checkpoint_gate();
  Driver& d = drv();
  std::lock_guard lk(d.mu);
  return d.initialized ? CUDA_SUCCESS : CUDA_ERROR_NOT_INITIALIZED;
}

Device* device(CUdevice ordinal) {
  Driver& d = drv();
  if (ordinal < 0 || static_cast<size_t>(ordinal) >= d.present) return nullptr;
  return d.devices[static_cast<size_t>(ordinal)].get();
}

}  // namespace ferry::emu

using namespace ferry::emu;

#define REQUIRE_INIT()                          \
  do {                                          \
    if (CUresult e_ = ensure_init()) return e_; \
  } while (0)

namespace {
// The real driver (570 and later) names the helper threads it starts during cuInit from
// the thread that starts them, and fails with CUDA_ERROR_OPERATING_SYSTEM when it cannot.
// Either way of doing so goes through /proc/self/task/<tid>/comm with the caller's tid,
// which a PID namespace without a /proc of its own gets wrong; whether the driver calls
// glibc's pthread_setname_np or opens the file itself is not known, so this does both.
bool name_helper_threads() {
  std::promise<void> named;
  std::promise<pid_t> tid;
  auto tid_f = tid.get_future();
  std::thread helper([f = named.get_future(), &tid]() mutable {
    tid.set_value(static_cast<pid_t>(syscall(SYS_gettid)));
    f.wait();
  });
  int r = pthread_setname_np(helper.native_handle(), "ferry-emu-init");
  if (r != 0) log("cuInit: cannot name a helper thread (%s)", strerror(r));
  bool ok = r == 0;
  char path[64];
  snprintf(path, sizeof path, "/proc/self/task/%d/comm", static_cast<int>(tid_f.get()));
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0 || write(fd, "ferry-emu-io", 12) != 12) {
    log("cuInit: cannot write %s (%s)", path, strerror(errno));
    ok = false;
  }
  if (fd >= 0) close(fd);
  named.set_value();
  helper.join();
  return ok;
}

// The real driver stats /proc/<getpid()>/ns/pid while it initializes (seen in an strace
// of its start, NVIDIA's cuda-checkpoint issue 10) -- presumably to learn its PID
// namespace, which cuda-checkpoint's calls by pid from another namespace need. Where
// /proc belongs to another namespace that path is another process's, or none; what the
// driver then does is not known. The simulated one fails with CUDA_ERROR_OPERATING_SYSTEM
// unless it names the caller's own namespace (inferred from the 304 a ferry job's driver
// gave on an H200, not observed), so the tests show the shim's translation of it works.
bool own_pid_namespace_entry() {
  struct stat self{}, named{};
  if (stat("/proc/self/ns/pid", &self) != 0) return true;  // no namespaces here: nothing to tell
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/ns/pid", static_cast<int>(getpid()));
  if (stat(path, &named) != 0) {
    log("cuInit: cannot stat %s (%s)", path, strerror(errno));
    return false;
  }
  if (named.st_dev != self.st_dev || named.st_ino != self.st_ino) {
    log("cuInit: %s is not this process's PID namespace", path);
    return false;
  }
  return true;
}

// A child forked without exec gets none of the device memory. A GPU's memory is not in
// the process's address space, so a real driver's child holds only the device files
// (here the userfaultfd, which stays: CRIU refuses it in the child as it refuses
// /dev/nvidia* there). The simulated GPU's memory is host memory -- memfds mapped shared
// (VMM) and private mappings -- that the child would otherwise see (the parent's live
// device memory, for the shared ones) and that a CRIU dump of the child would carry.
// The driver's lock is held across fork so the child finds its tables whole; the child
// cannot release a lock its parent's thread took (another tid), so it gets a new one.
void fork_prepare() { drv().mu.lock(); }
void fork_parent() { drv().mu.unlock(); }
void fork_child() {
  Driver& d = drv();
  int null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
  for (PhysAlloc* p : d.phys)
    if (null_fd >= 0 && p->fd >= 0) dup3(null_fd, p->fd, O_CLOEXEC);
  if (null_fd >= 0) close(null_fd);
  for (auto& [base, m] : d.mappings) map_fixed(base, m.size, PROT_NONE);
  for (auto& [base, r] : d.ranges)
    if (r.kind == RangeKind::DeviceAlloc || r.kind == RangeKind::PoolAlloc) map_fixed(base, r.span, PROT_NONE);
  new (&d.mu) std::recursive_mutex();
}
}  // namespace

FERRY_EXPORT CUresult cuInit(unsigned int flags) {
  if (flags != 0) return CUDA_ERROR_INVALID_VALUE;
  Driver& d = drv();
  std::lock_guard lk(d.mu);
  if (!d.initialized) {
    bool named = name_helper_threads();
    if (!own_pid_namespace_entry() || !named) return CUDA_ERROR_OPERATING_SYSTEM;
    if (!setup_devices(d)) return CUDA_ERROR_NO_DEVICE;
    d.device_file = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY));
    if (d.device_file < 0) log("no userfaultfd (%s): a CRIU dump will not be refused as on a real GPU", strerror(errno));
    checkpoint_service_start();
    static bool fork_handlers = pthread_atfork(fork_prepare, fork_parent, fork_child) == 0;
    (void)fork_handlers;
    d.initialized = true;
    log("initialised %zu device(s)", d.present);
  }
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuDriverGetVersion(int* v) {
  if (!v) return CUDA_ERROR_INVALID_VALUE;
  *v = kDriverVersion;
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuDeviceGetCount(int* count) {
  REQUIRE_INIT();
  if (!count) return CUDA_ERROR_INVALID_VALUE;
  *count = static_cast<int>(drv().present);
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuDeviceGet(CUdevice* dev, int ordinal) {
  REQUIRE_INIT();
  if (!dev) return CUDA_ERROR_INVALID_VALUE;
  if (!device(ordinal)) return CUDA_ERROR_INVALID_DEVICE;
  *dev = ordinal;
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuDeviceGetName(char* name, int len, CUdevice dev) {
  REQUIRE_INIT();
  Device* d = device(dev);
  if (!d) return CUDA_ERROR_INVALID_DEVICE;
  if (!name || len <= 0) return CUDA_ERROR_INVALID_VALUE;
  snprintf(name, static_cast<size_t>(len), "%s", d->cfg.name.c_str());
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice dev) {
  REQUIRE_INIT();
  Device* d = device(dev);
  if (!d) return CUDA_ERROR_INVALID_DEVICE;
  if (!bytes) return CUDA_ERROR_INVALID_VALUE;
  *bytes = d->cfg.total_mem;
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuDeviceGetUuid(CUuuid* uuid, CUdevice dev) {
  REQUIRE_INIT();
  Device* d = device(dev);
  if (!d) return CUDA_ERROR_INVALID_DEVICE;
  if (!uuid) return CUDA_ERROR_INVALID_VALUE;
  *uuid = d->cfg.uuid;
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuDeviceGetUuid_v2(CUuuid* uuid, CUdevice dev) { return cuDeviceGetUuid(uuid, dev); }

FERRY_EXPORT CUresult cuDeviceGetLuid(char*, unsigned int*, CUdevice dev) {
  REQUIRE_INIT();
  return device(dev) ? CUDA_ERROR_NOT_SUPPORTED : CUDA_ERROR_INVALID_DEVICE;
}

FERRY_EXPORT CUresult cuDeviceComputeCapability(int* major, int* minor, CUdevice dev) {
  REQUIRE_INIT();
  Device* d = device(dev);
  if (!d) return CUDA_ERROR_INVALID_DEVICE;
  if (!major || !minor) return CUDA_ERROR_INVALID_VALUE;
  *major = d->cfg.cc_major;
  *minor = d->cfg.cc_minor;
  return CUDA_SUCCESS;
}

namespace {
int attribute_value(const Device& d, CUdevice_attribute a, bool* known) {
  const DeviceConfig& c = d.cfg;
  *known = true;
  switch (a) {
    case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK: return 1024;
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X: return 1024;
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y: return 1024;
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z: return 64;
    case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X: return 2147483647;
    case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y: return 65535;
    case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z: return 65535;
    case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK: return 48 * 1024;
    case CU_DEVICE_ATTRIBUTE_TOTAL_CONSTANT_MEMORY: return 64 * 1024;
    case CU_DEVICE_ATTRIBUTE_WARP_SIZE: return 32;
    case CU_DEVICE_ATTRIBUTE_MAX_PITCH: return 2147483647;
    case CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_BLOCK: return 65536;
    case CU_DEVICE_ATTRIBUTE_CLOCK_RATE: return 1980000;
    case CU_DEVICE_ATTRIBUTE_TEXTURE_ALIGNMENT: return 512;
    case CU_DEVICE_ATTRIBUTE_GPU_OVERLAP: return 1;
    case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: return c.sm_count;
    case CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY: return 1;
    case CU_DEVICE_ATTRIBUTE_SURFACE_ALIGNMENT: return 512;
    case CU_DEVICE_ATTRIBUTE_CONCURRENT_KERNELS: return 1;
    case CU_DEVICE_ATTRIBUTE_ECC_ENABLED: return 1;
    case CU_DEVICE_ATTRIBUTE_PCI_BUS_ID: return c.pci_bus;
    case CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID: return c.pci_device;
    case CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID: return c.pci_domain;
    case CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE: return 2619000;
    case CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH: return 5120;
    case CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE: return 50 * 1024 * 1024;
    case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR: return 2048;
    case CU_DEVICE_ATTRIBUTE_ASYNC_ENGINE_COUNT: return 3;
    case CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING: return 1;
    case CU_DEVICE_ATTRIBUTE_TEXTURE_PITCH_ALIGNMENT: return 32;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: return c.cc_major;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: return c.cc_minor;
    case CU_DEVICE_ATTRIBUTE_STREAM_PRIORITIES_SUPPORTED: return 1;
    case CU_DEVICE_ATTRIBUTE_GLOBAL_L1_CACHE_SUPPORTED: return 1;
    case CU_DEVICE_ATTRIBUTE_LOCAL_L1_CACHE_SUPPORTED: return 1;
    case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR: return 228 * 1024;
    case CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_MULTIPROCESSOR: return 65536;
    case CU_DEVICE_ATTRIBUTE_MANAGED_MEMORY: return 1;
    case CU_DEVICE_ATTRIBUTE_SINGLE_TO_DOUBLE_PRECISION_PERF_RATIO: return 2;
    case CU_DEVICE_ATTRIBUTE_CONCURRENT_MANAGED_ACCESS: return 1;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_PREEMPTION_SUPPORTED: return 1;
    case CU_DEVICE_ATTRIBUTE_CAN_USE_HOST_POINTER_FOR_REGISTERED_MEM: return 1;
    case CU_DEVICE_ATTRIBUTE_COOPERATIVE_LAUNCH: return 1;
    case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: return 227 * 1024;
    case CU_DEVICE_ATTRIBUTE_HOST_REGISTER_SUPPORTED: return 1;
    case CU_DEVICE_ATTRIBUTE_DIRECT_MANAGED_MEM_ACCESS_FROM_HOST: return 1;
    case CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED: return 1;
    case CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED: return 1;
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCKS_PER_MULTIPROCESSOR: return 32;
    case CU_DEVICE_ATTRIBUTE_MAX_PERSISTING_L2_CACHE_SIZE: return 0;
    case CU_DEVICE_ATTRIBUTE_RESERVED_SHARED_MEMORY_PER_BLOCK: return 1024;
    case CU_DEVICE_ATTRIBUTE_READ_ONLY_HOST_REGISTER_SUPPORTED: return 1;
    case CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED: return 1;
    case CU_DEVICE_ATTRIBUTE_MEMPOOL_SUPPORTED_HANDLE_TYPES: return CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
    case CU_DEVICE_ATTRIBUTE_CAN_USE_64_BIT_STREAM_MEM_OPS: return 1;
    case CU_DEVICE_ATTRIBUTE_CAN_USE_STREAM_WAIT_VALUE_NOR: return 1;
    case CU_DEVICE_ATTRIBUTE_IPC_EVENT_SUPPORTED: return 0;
    case CU_DEVICE_ATTRIBUTE_MEM_SYNC_DOMAIN_COUNT: return 1;
    case CU_DEVICE_ATTRIBUTE_NUMA_ID: return -1;
    case CU_DEVICE_ATTRIBUTE_HOST_NUMA_ID: return -1;
    case CU_DEVICE_ATTRIBUTE_GPU_PCI_DEVICE_ID: return 0x233010de;
    default: break;
  }
  *known = a > 0 && a < CU_DEVICE_ATTRIBUTE_MAX;
  return 0;
}
}  // namespace

FERRY_EXPORT CUresult cuDeviceGetAttribute(int* pi, CUdevice_attribute attrib, CUdevice dev) {
  REQUIRE_INIT();
  Device* d = device(dev);
  if (!d) return CUDA_ERROR_INVALID_DEVICE;
  if (!pi) return CUDA_ERROR_INVALID_VALUE;
  bool known = false;
  int v = attribute_value(*d, attrib, &known);
  if (!known) return CUDA_ERROR_INVALID_VALUE;
  *pi = v;
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuDeviceGetPCIBusId(char* pciBusId, int len, CUdevice dev) {
  REQUIRE_INIT();
  Device* d = device(dev);
  if (!d) return CUDA_ERROR_INVALID_DEVICE;
  if (!pciBusId || len <= 0) return CUDA_ERROR_INVALID_VALUE;
  snprintf(pciBusId, static_cast<size_t>(len), "%08X:%02X:%02X.0", d->cfg.pci_domain, d->cfg.pci_bus,
           d->cfg.pci_device);
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuDeviceGetByPCIBusId(CUdevice* dev, const char* pciBusId) {
  REQUIRE_INIT();
  if (!dev || !pciBusId) return CUDA_ERROR_INVALID_VALUE;
  unsigned dom = 0, bus = 0, device_id = 0;
  if (sscanf(pciBusId, "%x:%x:%x", &dom, &bus, &device_id) != 3) {
    dom = 0;
    if (sscanf(pciBusId, "%x:%x", &bus, &device_id) != 2) return CUDA_ERROR_INVALID_VALUE;
  }
  for (auto& d : drv().devices) {
    if (static_cast<size_t>(d->ordinal) >= drv().present) break;
    if (static_cast<unsigned>(d->cfg.pci_domain) == dom && static_cast<unsigned>(d->cfg.pci_bus) == bus &&
        static_cast<unsigned>(d->cfg.pci_device) == device_id) {
      *dev = d->ordinal;
      return CUDA_SUCCESS;
    }
  }
  return CUDA_ERROR_INVALID_DEVICE;
}

FERRY_EXPORT CUresult cuDeviceCanAccessPeer(int* can, CUdevice dev, CUdevice peer) {
  REQUIRE_INIT();
  if (!can) return CUDA_ERROR_INVALID_VALUE;
  if (!device(dev) || !device(peer)) return CUDA_ERROR_INVALID_DEVICE;
  *can = dev != peer;
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuDeviceGetP2PAttribute(int* value, CUdevice_P2PAttribute attrib, CUdevice src, CUdevice dst) {
  REQUIRE_INIT();
  if (!value) return CUDA_ERROR_INVALID_VALUE;
  if (!device(src) || !device(dst) || src == dst) return CUDA_ERROR_INVALID_DEVICE;
  switch (attrib) {
    case CU_DEVICE_P2P_ATTRIBUTE_PERFORMANCE_RANK: *value = 0; break;
    case CU_DEVICE_P2P_ATTRIBUTE_ACCESS_SUPPORTED: *value = 1; break;
    case CU_DEVICE_P2P_ATTRIBUTE_NATIVE_ATOMIC_SUPPORTED: *value = 1; break;
    default: *value = 0; break;
  }
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuModuleGetLoadingMode(CUmoduleLoadingMode* mode) {
  if (!mode) return CUDA_ERROR_INVALID_VALUE;
  const char* env = getenv("CUDA_MODULE_LOADING");
  *mode = (env && strcmp(env, "EAGER") == 0) ? CU_MODULE_EAGER_LOADING : CU_MODULE_LAZY_LOADING;
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuDeviceGetDefaultMemPool(CUmemoryPool* pool, CUdevice dev) {
  REQUIRE_INIT();
  Device* d = device(dev);
  if (!d) return CUDA_ERROR_INVALID_DEVICE;
  if (!pool) return CUDA_ERROR_INVALID_VALUE;
  *pool = reinterpret_cast<CUmemoryPool>(d->default_pool);
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuDeviceGetMemPool(CUmemoryPool* pool, CUdevice dev) {
  REQUIRE_INIT();
  Device* d = device(dev);
  if (!d) return CUDA_ERROR_INVALID_DEVICE;
  if (!pool) return CUDA_ERROR_INVALID_VALUE;
  std::lock_guard lk(drv().mu);
  *pool = reinterpret_cast<CUmemoryPool>(d->current_pool);
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuDeviceSetMemPool(CUdevice dev, CUmemoryPool pool) {
  REQUIRE_INIT();
  Device* d = device(dev);
  if (!d) return CUDA_ERROR_INVALID_DEVICE;
  std::lock_guard lk(drv().mu);
  auto* p = reinterpret_cast<MemPool*>(pool);
  if (!drv().pools.count(p) || p->dev != d) return CUDA_ERROR_INVALID_VALUE;
  d->current_pool = p;
  return CUDA_SUCCESS;
}

namespace {
CUresult atomic_caps(unsigned* caps, const CUatomicOperation* ops, unsigned count) {
  if (!caps || (count && !ops)) return CUDA_ERROR_INVALID_VALUE;
  // Host atomics back everything: each operation is supported at every width.
  for (unsigned i = 0; i < count; i++)
    caps[i] = CU_ATOMIC_CAPABILITY_SIGNED | CU_ATOMIC_CAPABILITY_UNSIGNED | CU_ATOMIC_CAPABILITY_REDUCTION |
              CU_ATOMIC_CAPABILITY_SCALAR_32 | CU_ATOMIC_CAPABILITY_SCALAR_64;
  return CUDA_SUCCESS;
}
}  // namespace

FERRY_EXPORT CUresult cuDeviceGetHostAtomicCapabilities(unsigned int* caps, const CUatomicOperation* ops,
                                                        unsigned int count, CUdevice dev) {
  REQUIRE_INIT();
  if (!device(dev)) return CUDA_ERROR_INVALID_DEVICE;
  return atomic_caps(caps, ops, count);
}

FERRY_EXPORT CUresult cuDeviceGetP2PAtomicCapabilities(unsigned int* caps, const CUatomicOperation* ops,
                                                       unsigned int count, CUdevice src, CUdevice dst) {
  REQUIRE_INIT();
  if (!device(src) || !device(dst) || src == dst) return CUDA_ERROR_INVALID_DEVICE;
  return atomic_caps(caps, ops, count);
}

// Nothing asynchronous ever happens to an emulated device, so registered callbacks
// are kept only to be handed back.
FERRY_EXPORT CUresult cuDeviceRegisterAsyncNotification(CUdevice dev, CUasyncCallback fn, void*,
                                                        CUasyncCallbackHandle* handle) {
  REQUIRE_INIT();
  if (!device(dev)) return CUDA_ERROR_INVALID_DEVICE;
  if (!fn || !handle) return CUDA_ERROR_INVALID_VALUE;
  *handle = reinterpret_cast<CUasyncCallbackHandle>(new char);
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuDeviceUnregisterAsyncNotification(CUdevice dev, CUasyncCallbackHandle handle) {
  REQUIRE_INIT();
  if (!device(dev)) return CUDA_ERROR_INVALID_DEVICE;
  if (!handle) return CUDA_ERROR_INVALID_VALUE;
  delete reinterpret_cast<char*>(handle);
  return CUDA_SUCCESS;
}
