// The device-state log: everything needed to re-create the process's GPU state
// elsewhere, kept up to date by the overrides.
//
// Records hang off the virtual handles (vh::Obj::rec) and are also indexed here, all
// under one mutex: creation and destruction paths take it, hot paths (launches,
// copies, event records, queries) never do. Memory is described the way the arena
// builds it (arena.hpp): reservations (VA ranges), physical allocations (device
// memory, size, device) and mappings (VA -> physical at an offset, with access), plus
// the allocations the program sees (what cuMemAlloc & co. returned) on top.
#pragma once

#include <cuda.h>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "handles.hpp"

namespace ferry::tr {

struct Ctx;
struct Module;
struct Library;

struct ClsEntry {
  void* value = nullptr;
  void (*dtor)(CUcontext, void*, void*) = nullptr;
};

struct Ctx {
  vh::Obj* v = nullptr;
  CUcontext real = nullptr;
  int vdev = 0;
  bool primary = false;
  bool alive = false;  // created, or a primary context retained at least once
  int retain = 0;      // primary: the program's references
  unsigned flags = 0;
  unsigned long long id = 0;
  std::map<void*, ClsEntry> cls;  // cudart's per-context state lives here, keyed by virtual context
};

struct Stream {
  vh::Obj* v = nullptr;
  Ctx* ctx = nullptr;
  unsigned flags = 0;
  int priority = 0;
  unsigned long long id = 0;
};

struct Event {
  vh::Obj* v = nullptr;
  Ctx* ctx = nullptr;
  unsigned flags = 0;
};

struct FuncAttr {
  CUfunction_attribute attr;
  int value;
};

struct Function {
  vh::Obj* v = nullptr;
  Module* module = nullptr;
  std::string name;
  std::vector<FuncAttr> attrs;  // cuFuncSetAttribute calls to replay
  int cache_config = -1;
};

struct Kernel {
  vh::Obj* v = nullptr;
  Library* library = nullptr;
  std::string name;
  std::vector<FuncAttr> attrs;  // cuKernelSetAttribute (per device) to replay
};

struct Global {
  CUdeviceptr addr = 0;  // the address the program was given (first lookup)
  size_t size = 0;
};

struct Image {
  const void* ptr = nullptr;  // the image as the program passed it
  std::string copy;           // our copy, when the program did not promise to keep it
  const void* data() const { return copy.empty() ? ptr : copy.data(); }
  size_t bytes = 0;
};

struct Library {
  vh::Obj* v = nullptr;
  Image image;
  bool preserved = false;
  std::vector<std::pair<CUlibraryOption, void*>> options;
  std::map<std::string, Kernel*> kernels;
  std::map<Ctx*, Module*> modules;  // cuLibraryGetModule / per-context loads we saw
};

struct Module {
  vh::Obj* v = nullptr;
  Ctx* ctx = nullptr;
  Library* library = nullptr;  // a library's per-context module
  Image image;                 // for modules loaded with cuModuleLoad*
  std::map<std::string, Function*> functions;
  std::map<std::string, Global> globals;  // every global the program looked up
};

struct Pool {
  vh::Obj* v = nullptr;
  int vdev = 0;
  bool is_default = false;
  CUmemPoolProps props{};
  std::map<int, uint64_t> attrs;          // cuMemPoolSetAttribute calls to replay (last value each)
  std::vector<CUmemAccessDesc> access;    // cuMemPoolSetAccess calls to replay (location.id virtual)
};

// ---- graphs made by stream capture (interpose/graphs.hpp) ------------------------------

// One piece of captured work, as the program asked for it (virtual handles, the
// addresses it passed, a copy of the kernel arguments).
struct CapOp {
  enum Kind { Kernel, Copy, CopyHtoD, CopyDtoH, CopyDtoD, Set8, Set16, Set32, HostFn } kind = Kernel;
  CUfunction func = nullptr;  // virtual CUfunction or CUkernel
  unsigned grid[3] = {1, 1, 1}, block[3] = {1, 1, 1}, smem = 0;
  std::string args;                        // packed argument bytes
  std::vector<uint32_t> offsets;           // of each argument in args (empty: args is an `extra` buffer)
  std::vector<CUlaunchAttribute> attrs;    // cuLaunchKernelEx
  uintptr_t dst = 0, src = 0;
  size_t bytes = 0;                        // copies; memsets: elements
  unsigned value = 0;
  CUhostFn fn = nullptr;
  void* user = nullptr;
};
using Recipe = std::vector<CapOp>;

struct Graph {
  vh::Obj* v = nullptr;
  Ctx* ctx = nullptr;
  std::shared_ptr<const Recipe> ops;
  std::string unrecordable;  // why it cannot be re-created ("" when it can)
};

struct GraphExec {
  vh::Obj* v = nullptr;
  Ctx* ctx = nullptr;
  std::shared_ptr<const Recipe> ops;
  unsigned long long flags = 0;
  std::string unrecordable;
};

// ---- memory map ---------------------------------------------------------------------

enum class Owner { Arena, App };

struct Reservation {
  uintptr_t va = 0;
  size_t size = 0;
  int vdev = 0;  // the arena it was carved from
  Owner owner = Owner::Arena;
  bool live = true;  // reserved from the driver now (false while the GPU state is released)
};

struct Phys {
  vh::Obj* v = nullptr;  // set when the program holds a handle to it (cuMemCreate)
  CUmemGenericAllocationHandle real = 0;
  size_t size = 0;
  int vdev = 0;
  CUmemAllocationProp prop{};  // location.id is the virtual device
  Owner owner = Owner::Arena;
  int handle_refs = 0;  // program-held handles (create/retain/import)
  int map_refs = 0;
};

struct Mapping {
  uintptr_t va = 0;
  size_t size = 0;
  Phys* phys = nullptr;
  size_t offset = 0;
  std::vector<CUmemAccessDesc> access;  // location.id: virtual device
  bool live = true;
};

enum class AllocKind { Device, Pitch, Async, Managed };

struct Alloc {
  uintptr_t va = 0;
  size_t size = 0;     // requested
  size_t span = 0;     // bytes of arena VA it occupies
  AllocKind kind = AllocKind::Device;
  int vdev = 0;
  Ctx* ctx = nullptr;
  Pool* pool = nullptr;
  uintptr_t chunk = 0;  // small allocations: the 2 MiB chunk they live in (0: own mapping)
  unsigned long long id = 0;
};

struct HostMem {
  void* ptr = nullptr;
  size_t size = 0;
  unsigned flags = 0;
  bool ours = false;  // cuMemHostAlloc backed by our own mapping (else cuMemHostRegister)
  Ctx* ctx = nullptr;
  bool live = true;  // registered with the driver now
};

struct State {
  std::recursive_mutex mu;
  std::vector<Ctx*> contexts;               // all, alive or not
  std::map<CUcontext, Ctx*> ctx_by_real;    // live real contexts
  Ctx* primary[vh::kMaxDevices] = {};
  std::set<Stream*> streams;
  std::set<Event*> events;
  std::set<Library*> libraries;
  std::set<Module*> modules;
  std::set<Pool*> pools;
  std::set<Graph*> graphs;
  std::set<GraphExec*> graph_execs;
  Pool* default_pool[vh::kMaxDevices] = {};
  std::map<uintptr_t, Reservation> reservations;
  std::set<Phys*> phys;
  std::map<uintptr_t, Mapping> mappings;
  std::map<uintptr_t, Alloc> allocs;
  std::map<void*, HostMem> host;
  std::vector<const void*> registered_fatbins;  // __cudaRegisterFatBinary (shared cudart)
  unsigned long long next_id = 1;
  std::set<std::string> untracked;  // entry points called whose handles ferry cannot follow
};

State& state();

// A new record joins the log: it gets its virtual handle for `real` and goes into the
// state's set `into`. Expects state().mu held.
template <class R>
void enter(R* rec, vh::Kind kind, void* real, std::set<R*> State::*into) {
  rec->v = vh::make(kind, real, rec);
  (state().*into).insert(rec);
}
// A record leaves the log: out of its set, its handle released, the record deleted.
// Expects state().mu held.
template <class R>
void leave(R* rec, std::set<R*> State::*from) {
  (state().*from).erase(rec);
  vh::release(rec->v);
  delete rec;
}

// The context record for a real context handle, or nullptr.
Ctx* ctx_of_real(CUcontext real);
// Virtual handle of a real context (the real one if ferry does not know it).
CUcontext virtual_ctx(CUcontext real);

// Drops the records of everything a context owned (it was destroyed or reset);
// frees arena memory the context owned, as the driver would have.
void forget_context_objects(Ctx* c);

// Text dump of the whole log (stable format, one object per line).
std::string dump();
// Writes dump() where FERRY_LOG_FILE says (stderr by default), with the world
// stopped when asked.
void dump_to_log(const char* why, bool stop_world);

}  // namespace ferry::tr
