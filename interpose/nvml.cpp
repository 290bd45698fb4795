#include "nvml.hpp"

#include <pthread.h>

#include <atomic>
#include <cstring>
#include <mutex>

#include <ferry_common/settings.hpp>

#include "forked_children.hpp"
#include "log.hpp"

namespace ferry::nvml {

namespace {

using Init = int (*)();
using InitFlags = int (*)(unsigned);

std::atomic<Init> g_init{nullptr}, g_init_v2{nullptr}, g_shutdown{nullptr}, g_emu_file{nullptr};
std::atomic<InitFlags> g_init_flags{nullptr};

// Held across every call into NVML's init and shutdown, so that release() sees a count
// that matches NVML's own.
std::mutex g_mu;
int g_refs = 0;          // the program's initializations in force, less its shutdowns
bool g_released = false; // release() shut NVML down; g_refs inits are owed to it
// The first initialization, replayed first by reacquire(): the one NVML opened with.
enum class Kind { V1, V2, Flags } g_first = Kind::V2;
unsigned g_first_flags = 0;

constexpr int kSuccess = 0, kUninitialized = 1;

// NVML's own initialization of that kind (kUninitialized where the library lacks it).
int call_init(Kind kind, unsigned flags) {
  if (kind == Kind::Flags) return g_init_flags.load() ? g_init_flags.load()(flags) : kUninitialized;
  Init f = kind == Kind::V1 ? g_init.load() : g_init_v2.load();
  return f ? f() : kUninitialized;
}

// While released, the program's own initializations and shutdowns only move the count:
// NVML's files must stay closed until the process runs on.
int init_any(Kind kind, unsigned flags) {
  std::lock_guard lk(g_mu);
  int r = g_released ? kSuccess : call_init(kind, flags);
  if (r != kSuccess) return r;
  if (g_refs++ == 0) {
    g_first = kind;
    g_first_flags = flags;
    forked::install();  // a child forked from here on must not keep NVML's files either
  }
  return r;
}
int init_wrapper() { return init_any(Kind::V1, 0); }
int init_v2_wrapper() { return init_any(Kind::V2, 0); }
int init_flags_wrapper(unsigned flags) { return init_any(Kind::Flags, flags); }
int shutdown_wrapper() {
  std::lock_guard lk(g_mu);
  if (g_released) {
    if (g_refs == 0) return kUninitialized;
    g_refs--;
    return kSuccess;
  }
  int r = g_shutdown.load()();
  if (r == kSuccess && g_refs > 0) g_refs--;
  return r;
}

// The library's own function `name`, kept in `slot` the first time; false when the
// program asks a different library (another copy, a stub) for it: that one is left
// unwrapped.
template <typename F>
bool resolve(std::atomic<F>& slot, void* handle, const char* name, void* (*real)(void*, const char*)) {
  auto f = reinterpret_cast<F>(real(handle, name));
  F none = nullptr;
  return slot.compare_exchange_strong(none, f) || slot.load() == f;
}

}  // namespace

void* dlsym_lookup(void* handle, const char* name, void* (*real)(void*, const char*)) {
  void* wrapper = !strcmp(name, "nvmlInit")          ? reinterpret_cast<void*>(&init_wrapper)
                  : !strcmp(name, "nvmlInit_v2")       ? reinterpret_cast<void*>(&init_v2_wrapper)
                  : !strcmp(name, "nvmlInitWithFlags") ? reinterpret_cast<void*>(&init_flags_wrapper)
                  : !strcmp(name, "nvmlShutdown")      ? reinterpret_cast<void*>(&shutdown_wrapper)
                                                       : nullptr;
  if (!wrapper || !real(handle, name)) return nullptr;
  static const bool enabled = settings::flag("FERRY_NVML_RELEASE", true);
  if (!enabled) return nullptr;
  // The whole set from the library the program found, whichever name it asked for:
  // release() needs nvmlShutdown even if the program never looks it up (PyTorch does not).
  if (!resolve(g_shutdown, handle, "nvmlShutdown", real) || !g_shutdown.load()) return nullptr;
  bool same = resolve(g_init, handle, "nvmlInit", real) && resolve(g_init_v2, handle, "nvmlInit_v2", real) &&
              resolve(g_init_flags, handle, "nvmlInitWithFlags", real);
  if (!same) return nullptr;
  resolve(g_emu_file, handle, "ferryEmuNvmlDeviceFile", real);
  // A fork while another thread is inside NVML's init would leave the child our lock
  // taken for ever: fork waits for it instead.
  static const bool fork_safe =
      pthread_atfork([] { g_mu.lock(); }, [] { g_mu.unlock(); }, [] { g_mu.unlock(); }) == 0;
  (void)fork_safe;
  return wrapper;  // its slot holds the library's function: real() found it above
}

int release() {
  std::lock_guard lk(g_mu);
  Init shutdown = g_shutdown.load();
  if (!shutdown || g_refs == 0 || g_released) return 0;
  int n = 0;
  while (n < g_refs && shutdown() == kSuccess) n++;
  if (n < g_refs)
    FERRY_WARN("NVML shut down %d of %d time(s) for a whole-process dump: its files stay open, and CRIU will refuse "
               "them", n, g_refs);
  else
    FERRY_INFO("NVML shut down %d time(s) for a whole-process dump", n);
  g_refs = n;  // what reacquire() owes
  g_released = true;
  return n;
}

void reacquire() {
  std::lock_guard lk(g_mu);
  if (!g_released) return;
  g_released = false;
  int want = g_refs, got = 0;
  for (int i = 0; i < want; i++)
    if (call_init(i == 0 ? g_first : Kind::V2, g_first_flags) == kSuccess) got++;
  g_refs = got;
  if (got != want) FERRY_WARN("NVML initialized again %d of %d time(s): NVML calls may fail", got, want);
}

int emu_device_file() {
  Init f = g_emu_file.load(std::memory_order_relaxed);
  return f ? f() : -1;
}

}  // namespace ferry::nvml
