// The simulated GPU: a libcuda.so.1 that runs on the CPU.
//
// Mechanism
// - Entry: the real libcudart.so.13 dlopens "libcuda.so.1" and resolves everything
//   through cuGetProcAddress_v2. The (name, cudaVersion, flags) -> exported ABI
//   variant table is generated from the toolkit headers (cmake/gen); a variant the
//   emulator implements is an exported extern "C" function of that exact name, found
//   with dlsym on our own handle. Everything else answers "not found".
// - Export tables: the six tables cudart fetches, with the HMAC-MD2 integrity answer
//   computed from our own table addresses and device list (entry.cpp, with
//   common/include/ferry_common/integrity.hpp; the table ids from export_tables.hpp).
// - Address space: device memory is ordinary host memory at fixed addresses, so a
//   device pointer is a host pointer (UVA-like). Each device owns an address range for
//   cuMemAlloc/pools, reserved PROT_NONE at start where the kernel places it (so the
//   layout coexists with sanitizers and whatever else the process maps); VMM
//   reservations are separate mmaps (a hint is honoured when the range is free) backed by memfd
//   "physical" allocations, so one allocation can be mapped at several addresses.
//   Freed or unmapped memory goes back to PROT_NONE: any later access faults.
// - Streams: each stream has a worker thread running its operations in order;
//   dependencies (legacy default-stream semantics, stream waits on events) are
//   (stream, sequence number) pairs a worker waits for before running an op.
// - Kernels: host kernel libraries (ferry_emu/kernel_abi.h) found by the device-side
//   mangled name in the libraries listed in FERRY_EMU_KERNELS; a private copy of the
//   library is loaded per (module, context) so __device__ variables are per context.
//   A block's CUDA threads are fibers scheduled round-robin at barriers (launch.cpp).
//   A fault inside a kernel becomes CUDA_ERROR_ILLEGAL_ADDRESS, sticky on the context.
// - Errors are the real driver's codes; the first error of a kernel is sticky.
//
// Locking: one process-wide mutex (Driver::mu) guards all object tables and the
// address map; stream queues have their own lock; no lock is held while an op runs
// or while a thread waits for a stream.
#pragma once

#include <cuda.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include <ferry_emu/kernel_abi.h>

#include "machine.hpp"

#define FERRY_EXPORT extern "C" __attribute__((visibility("default")))

namespace ferry::emu {

constexpr int kDriverVersion = 13000;
// The smallest reservation whose address hint is honoured: an H200 with driver 580
// placed 2 MiB asked for at a free address elsewhere and honoured 1 GiB there.
constexpr size_t kHintedReserveMinimum = 1ull << 30;
constexpr size_t kPage = 4096;
constexpr uintptr_t kDeviceHeapSpan = 0x10000000000ull;  // at most 1 TiB of address space per device

struct Context;
struct Stream;
struct Device;
struct MemPool;
struct Library;
struct Module;
struct KernelLibInstance;

// ---- configuration and devices --------------------------------------------------------
struct Device {
  int ordinal = 0;
  DeviceConfig cfg;
  uintptr_t heap_base = 0, heap_end = 0;
  std::map<uintptr_t, size_t> heap_free;  // free VA blocks of the heap, by address
  size_t used = 0;                        // committed bytes (allocs + physical VMM)
  Context* primary = nullptr;
  MemPool* default_pool = nullptr;
  MemPool* current_pool = nullptr;
  unsigned primary_flags = 0;
};

// What this process may still allocate on dev: the GPU less what the machine's other
// tenants hold (machine.hpp) and what the process holds itself.
inline size_t room_on(const Device* dev) {
  const size_t cap = dev->cfg.total_mem - dev->cfg.held;
  return dev->used < cap ? cap - dev->used : 0;
}

// ---- memory map -------------------------------------------------------------------------
enum class RangeKind { DeviceAlloc, PoolAlloc, Managed, HostPinned, HostRegistered, VmmReserve, ModuleGlobal };

struct Range {
  uintptr_t base = 0;
  size_t size = 0;       // bytes the caller asked for
  size_t span = 0;       // bytes of VA this range occupies (page/granularity rounded)
  RangeKind kind = RangeKind::DeviceAlloc;
  Device* dev = nullptr;
  Context* ctx = nullptr;
  MemPool* pool = nullptr;
  unsigned flags = 0;
  uint64_t id = 0;       // CU_POINTER_ATTRIBUTE_BUFFER_ID
  bool freeing = false;  // cuMemFreeAsync enqueued
};

struct PhysAlloc {
  int fd = -1;
  size_t size = 0;
  Device* dev = nullptr;
  CUmemAllocationProp prop{};
  int handle_refs = 1;  // the CUmemGenericAllocationHandle itself
  int map_refs = 0;     // live mappings
  uint64_t id = 0;
};

struct Mapping {
  uintptr_t base = 0;
  size_t size = 0;
  PhysAlloc* phys = nullptr;
  size_t offset = 0;
  bool rw = false;
};

struct MemPool {
  uint32_t magic = 0x504f4f4c;
  Device* dev = nullptr;
  CUmemPoolProps props{};
  uint64_t release_threshold = 0;
  size_t used = 0, used_high = 0;
  bool reuse_follow_event = true, reuse_opportunistic = true, reuse_internal = true;
  bool is_default = false;
};

// ---- streams and events -----------------------------------------------------------------
struct Dep {
  std::shared_ptr<Stream> stream;
  uint64_t seq = 0;
};

struct Op {
  std::vector<Dep> deps;
  std::function<CUresult()> run;  // a non-success result is recorded on the context
};

struct Graph;

struct Stream {
  uint32_t magic = 0x5354524d;
  Context* ctx = nullptr;
  unsigned flags = 0;
  int priority = 0;
  uint64_t id = 0;
  bool legacy = false;      // the context's NULL stream
  bool per_thread = false;  // a thread's per-thread default stream
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::pair<uint64_t, Op>> queue;
  uint64_t enqueued = 0;               // guarded by mu
  std::atomic<uint64_t> completed{0};  // ops finished, in order
  bool worker_started = false;
  bool stopping = false;
  std::thread worker;
  std::weak_ptr<Stream> self;
  // Stream capture (graph.cpp): while set, enqueue() appends work to this graph
  // instead of running it. Guarded by mu.
  std::shared_ptr<Graph> capture;
  uint64_t capture_id = 0;
};

// A graph made by stream capture: the captured work, in capture order (the simulated
// GPU captures one stream at a time, so the order is the dependency order).
struct Graph {
  uint32_t magic = 0x47524148;
  Context* ctx = nullptr;
  std::vector<std::function<CUresult()>> ops;
};
struct GraphExec {
  uint32_t magic = 0x47455845;
  Context* ctx = nullptr;
  std::shared_ptr<const std::vector<std::function<CUresult()>>> ops;
};

struct Event {
  uint32_t magic = 0x45564e54;
  Context* ctx = nullptr;
  unsigned flags = 0;
  std::mutex mu;
  std::shared_ptr<Stream> stream;  // last record
  uint64_t seq = 0;
  std::shared_ptr<std::atomic<int64_t>> stamp_ns;  // set when the record op runs
};

// ---- modules and kernels ---------------------------------------------------------------
struct KernelLibFile {
  std::string path;
  void* probe = nullptr;          // the library as first loaded, used to answer lookups
  std::set<std::string> kernels;  // names the library defines
};

struct KernelLibInstance {
  const KernelLibFile* file = nullptr;
  void* handle = nullptr;
  int memfd = -1;
  const ferry_emu_kernel_library* lib = nullptr;
  std::unordered_map<std::string, const ferry_emu_kernel_entry*> by_name;
  std::vector<uintptr_t> globals;  // registered ModuleGlobal ranges
};

struct Function {
  uint32_t magic = 0x46554e43;
  Module* module = nullptr;
  std::string name;
  const ferry_emu_kernel_entry* entry = nullptr;
  int max_dynamic_smem = 48 * 1024;
  int preferred_carveout = -1;
  CUfunc_cache cache_config = CU_FUNC_CACHE_PREFER_NONE;
};

struct Module {
  uint32_t magic = 0x4d4f444c;
  Context* ctx = nullptr;
  Library* library = nullptr;  // set when the module is a library's per-context load
  const void* image = nullptr;
  std::string image_copy;      // the module owns its image unless the caller preserves it
  const KernelLibFile* bound = nullptr;
  KernelLibInstance* inst = nullptr;
  std::map<std::string, std::unique_ptr<Function>> functions;
};

struct Kernel {
  uint32_t magic = 0x4b45524e;
  Library* library = nullptr;
  std::string name;
  int max_dynamic_smem = 48 * 1024;
};

struct Library {
  uint32_t magic = 0x4c494252;
  const void* image = nullptr;
  std::string image_copy;
  bool preserved = false;
  const KernelLibFile* bound = nullptr;
  std::map<Context*, Module*> per_ctx;
  std::map<std::string, std::unique_ptr<Kernel>> kernels;
};

// ---- contexts ---------------------------------------------------------------------------
struct ClsEntry {
  void* value = nullptr;
  void (*dtor)(CUcontext, void*, void*) = nullptr;
};

struct Context {
  uint32_t magic = 0x43545854;
  Device* dev = nullptr;
  bool primary = false;
  bool alive = false;  // created (or primary retained) and not destroyed
  int retain = 0;      // primary context reference count
  unsigned flags = 0;
  uint64_t id = 0;
  std::shared_ptr<Stream> null_stream;
  std::set<std::shared_ptr<Stream>> streams;
  std::map<std::thread::id, std::shared_ptr<Stream>> per_thread_streams;
  std::set<Module*> modules;
  std::map<void*, ClsEntry> cls;
  std::atomic<CUresult> sticky{CUDA_SUCCESS};
  size_t limits[16] = {};
};

// ---- the driver ------------------------------------------------------------------------
struct Driver {
  std::recursive_mutex mu;
  bool initialized = false;
  // Held from cuInit on, like a real driver's /dev/nvidia* files: a userfaultfd
  // (user-mode only, so no privilege is needed), which CRIU refuses to dump just as it
  // refuses the real driver's device files. A process under the simulated GPU can be
  // dumped only once the driver lets go of it -- as with a real GPU. -1 where the
  // kernel does not offer userfaultfd.
  int device_file = -1;
  // Every device ever made; the machine shows the first `present` of them. A restore
  // by NVIDIA's checkpoint API onto a machine with other GPUs changes `present` (and
  // adds devices when it has more): entries are never destroyed, so nothing that
  // points at a Device dangles.
  std::vector<std::unique_ptr<Device>> devices;
  size_t present = 0;
  // CUDA_VISIBLE_DEVICES chose the devices at cuInit. Such a process sees only its own
  // GPUs, on this machine or, after a restore, wherever the GPU pairs put them.
  bool restricted = false;
  bool hides = false;  // CUDA_VISIBLE_DEVICES left out some of the machine's GPUs
  std::map<uintptr_t, Range> ranges;        // every registered address range, by base
  std::map<uintptr_t, Mapping> mappings;    // VMM mappings, by base
  std::set<PhysAlloc*> phys;
  std::set<Context*> contexts;              // every context ever made (dead ones stay)
  std::set<Stream*> live_streams;
  std::set<Event*> events;
  std::set<Library*> libraries;
  std::set<Module*> modules;
  std::set<MemPool*> pools;
  std::set<Kernel*> kernel_set;
  std::set<Function*> function_set;
  std::vector<KernelLibFile> kernel_libs;
  bool kernel_libs_scanned = false;
  uint64_t next_id = 1;
  std::mutex progress_mu;  // stream completions are announced on progress_cv
  std::condition_variable progress_cv;
};

Driver& drv();
void log(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
[[noreturn]] void fatal(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

// init.cpp
CUresult ensure_init();  // waits while NVIDIA's checkpoint API holds the process locked
// checkpoint.cpp: NVIDIA's checkpoint API. The service starts at cuInit; the gate holds
// calls while the process is locked or checkpointed.
void checkpoint_service_start();
void checkpoint_gate();
Device* device(CUdevice d);  // nullptr when out of range (not present on this machine)
Device* add_device(Driver& d, const DeviceConfig& c);  // mu held: a new device at the next ordinal

// context.cpp
Context* current_ctx();
CUresult current_or_error(Context** out);  // INVALID_CONTEXT when none
bool valid_ctx(Context* c);
void destroy_ctx_resources(Context* c);
void activate_ctx(Context* c);

// memory.cpp
// Fresh anonymous memory at [at, at+len), replacing whatever was mapped there.
void* map_fixed(uintptr_t at, size_t len, int prot);
Range* find_range(uintptr_t p);  // range containing p, or nullptr (mu held)
// Checks that [p, p+n) is memory the device may touch; returns INVALID_VALUE otherwise.
CUresult check_device_access(uintptr_t p, size_t n);
bool is_pinned_host(const void* p, size_t n);
bool looks_like_device(uintptr_t p);
CUresult heap_alloc(Device* d, size_t size, RangeKind kind, Context* ctx, MemPool* pool, CUdeviceptr* out);
void heap_free(Range& r);  // mu held; releases VA and memory
uint64_t new_id();

// stream.cpp
std::shared_ptr<Stream> resolve_stream(CUstream s, Context** ctx_out, CUresult* err);
std::shared_ptr<Stream> make_stream(Context* c, unsigned flags, int priority, bool legacy);
// Enqueues op on s with the implicit legacy-stream dependencies; returns its sequence.
uint64_t enqueue(const std::shared_ptr<Stream>& s, Op op);
void wait_for(const std::shared_ptr<Stream>& s, uint64_t seq);
// Whether work enqueued on s now is captured into a graph rather than run.
bool capturing(const std::shared_ptr<Stream>& s);
void sync_stream(const std::shared_ptr<Stream>& s);
void sync_context(Context* c);
void stop_stream(const std::shared_ptr<Stream>& s);
void announce_progress();

// module.cpp
void unload_module(Module* m);  // mu held
const void* fatbin_wrapper_image(const void* image);

// launch.cpp
CUresult launch(Function* f, Context* c, const std::shared_ptr<Stream>& s, ferry_emu_dim grid, ferry_emu_dim block,
                unsigned smem, void** params, void** extra);

}  // namespace ferry::emu
