#include "nvml.hpp"

#include <atomic>
#include <cstring>
#include <mutex>

#include "log.hpp"

namespace ferry::nvml {

namespace {

using Init = int (*)();
using InitFlags = int (*)(unsigned);

std::atomic<Init> g_init{nullptr}, g_init_v2{nullptr}, g_shutdown{nullptr}, g_emu_file{nullptr};
std::atomic<InitFlags> g_init_flags{nullptr};

std::mutex g_mu;
int g_refs = 0;      // the program's successful initializations, less its shutdowns
int g_released = 0;  // shut down by release(), to be initialized again

void counted(int r, int delta) {
  if (r != 0) return;
  std::lock_guard lk(g_mu);
  g_refs = delta > 0 || g_refs > 0 ? g_refs + delta : 0;
}

int init_wrapper() {
  int r = g_init.load()();
  counted(r, 1);
  return r;
}
int init_v2_wrapper() {
  int r = g_init_v2.load()();
  counted(r, 1);
  return r;
}
int init_flags_wrapper(unsigned flags) {
  int r = g_init_flags.load()(flags);
  counted(r, 1);
  return r;
}
int shutdown_wrapper() {
  int r = g_shutdown.load()();
  counted(r, -1);
  return r;
}

template <typename F>
void resolve(std::atomic<F>& slot, void* handle, const char* name, void* (*real)(void*, const char*)) {
  if (!slot.load()) slot.store(reinterpret_cast<F>(real(handle, name)));
}

}  // namespace

void* dlsym_lookup(void* handle, const char* name, void* (*real)(void*, const char*)) {
  void* wrapper = !strcmp(name, "nvmlInit")          ? reinterpret_cast<void*>(&init_wrapper)
                  : !strcmp(name, "nvmlInit_v2")       ? reinterpret_cast<void*>(&init_v2_wrapper)
                  : !strcmp(name, "nvmlInitWithFlags") ? reinterpret_cast<void*>(&init_flags_wrapper)
                  : !strcmp(name, "nvmlShutdown")      ? reinterpret_cast<void*>(&shutdown_wrapper)
                                                       : nullptr;
  if (!wrapper || !real(handle, name)) return nullptr;
  // The whole set from the library the program found, whichever name it asked for:
  // release() needs nvmlShutdown even if the program never looks it up (PyTorch does not).
  resolve(g_init, handle, "nvmlInit", real);
  resolve(g_init_v2, handle, "nvmlInit_v2", real);
  resolve(g_init_flags, handle, "nvmlInitWithFlags", real);
  resolve(g_shutdown, handle, "nvmlShutdown", real);
  resolve(g_emu_file, handle, "ferryEmuNvmlDeviceFile", real);
  return wrapper;
}

int release() {
  std::lock_guard lk(g_mu);
  Init shutdown = g_shutdown.load();
  if (!shutdown || g_refs == 0) return 0;
  int n = 0;
  while (n < g_refs && shutdown() == 0) n++;
  g_released = n;
  FERRY_INFO("NVML shut down %d time(s) for a whole-process dump", n);
  return n;
}

void reacquire() {
  std::lock_guard lk(g_mu);
  Init init = g_init_v2.load() ? g_init_v2.load() : g_init.load();
  int again = 0;
  for (int i = 0; init && i < g_released; i++)
    if (init() == 0) again++;
  if (again != g_released) FERRY_WARN("NVML initialized again %d of %d time(s): NVML calls may fail", again, g_released);
  g_released = 0;
}

int emu_device_file() {
  Init f = g_emu_file.load(std::memory_order_relaxed);
  return f ? f() : -1;
}

}  // namespace ferry::nvml
