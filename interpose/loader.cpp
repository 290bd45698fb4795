// Getting in front of the driver: finding and loading the real driver, the table of
// our wrappers the dlsym interposer and GPA consult, and the policy when ferry itself
// cannot work. The configuration is read first (config.cpp).
#include <dlfcn.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "config.hpp"
#include "log.hpp"
#include "shim.hpp"
#include "tracker.hpp"

extern "C" void* ferry_resolve_real_dlsym();

namespace ferry {

namespace {

using dlsym_fn = void* (*)(void*, const char*);

void* g_real_handle = nullptr;
std::atomic<bool> g_loaded{false};
bool g_active = false;
std::unordered_map<std::string, void*>* g_wrapper_by_name = nullptr;
std::unordered_map<void*, void*>* g_wrapper_by_real = nullptr;

bool same_file(const char* a, const char* b) {
  struct stat sa{}, sb{};
  return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

std::string self_path() {
  Dl_info info{};
  dladdr(reinterpret_cast<void*>(&ensure_loaded), &info);
  return info.dli_fname ? info.dli_fname : "";
}

// The real driver: FERRY_REAL_DRIVER, else the first libcuda.so.1 on the library path
// or in the usual places that is neither this library nor the toolkit's stub.
std::string find_real_driver() {
  if (!config().real_driver.empty()) return config().real_driver;
  std::vector<std::string> dirs;
  if (const char* lp = getenv("LD_LIBRARY_PATH")) {  // not a ferry setting: where the dynamic linker looks
    std::string s = lp;
    size_t pos = 0;
    while (pos <= s.size()) {
      size_t c = s.find(':', pos);
      std::string d = s.substr(pos, c == std::string::npos ? std::string::npos : c - pos);
      if (!d.empty()) dirs.push_back(d);
      if (c == std::string::npos) break;
      pos = c + 1;
    }
  }
  for (const char* d : {"/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib",
                        "/usr/local/nvidia/lib64", "/usr/local/nvidia/lib", "/usr/lib/wsl/lib"})
    dirs.push_back(d);
  std::string self = self_path();
  for (auto& d : dirs) {
    std::string p = d + "/libcuda.so.1";
    if (access(p.c_str(), R_OK) != 0) continue;
    if (p.find("/stubs") != std::string::npos) continue;
    if (!self.empty() && same_file(p.c_str(), self.c_str())) continue;
    return p;
  }
  return "";
}

CUresult no_driver_stub() { return CUDA_ERROR_NO_DEVICE; }

void fail(const char* what) {
  FERRY_ERROR("%s", what);
  if (config().refuse_on_error) {
    FERRY_ERROR("refusing to start (FERRY_ON_ERROR=refuse)");
    _exit(1);
  }
  FERRY_ERROR("continuing as a plain pass-through: no checkpoint, restore or migration in this process");
  g_active = false;
}

void dump_signal_thread(int sig) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, sig);
  for (;;) {
    int got = 0;
    if (sigwait(&set, &got) == 0 && got == sig) tr::dump_to_log("signal", true);
  }
}

void load() {
  read_config();
  vh::init_slab();
  g_wrapper_by_name = new std::unordered_map<std::string, void*>;
  g_wrapper_by_real = new std::unordered_map<void*, void*>;
  for (unsigned i = 0; i < kVariantCount; i++) (*g_wrapper_by_name)[kVariants[i].name] = kVariants[i].wrapper;

  std::string path = find_real_driver();
  if (!path.empty()) g_real_handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!g_real_handle) {
    for (unsigned i = 0; i < kVariantCount; i++) *kVariants[i].real_slot = reinterpret_cast<void*>(&no_driver_stub);
    std::string msg = path.empty() ? "cannot find the real CUDA driver (libcuda.so.1); set FERRY_REAL_DRIVER to its path"
                                   : "cannot load the real CUDA driver " + path + ": " + dlerror();
    g_active = true;  // fail() decides
    fail(msg.c_str());
    return;
  }
  auto real_dlsym = reinterpret_cast<dlsym_fn>(ferry_resolve_real_dlsym());
  unsigned found = 0;
  for (unsigned i = 0; i < kVariantCount; i++) {
    void* p = real_dlsym(g_real_handle, kVariants[i].name);
    *kVariants[i].real_slot = p;
    if (p) {
      found++;
      (*g_wrapper_by_real)[p] = kVariants[i].wrapper;
    }
  }
  g_active = true;
  FERRY_INFO("real driver %s: %u of %u entry points", path.c_str(), found, kVariantCount);
  if (config().dump_signal > 0) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, config().dump_signal);
    // Threads started later inherit the mask, so only our thread takes the signal.
    pthread_sigmask(SIG_BLOCK, &set, nullptr);
    std::thread(dump_signal_thread, config().dump_signal).detach();
  }
}

}  // namespace

bool active() { return g_active; }

void ensure_loaded() {
  static std::once_flag once;
  std::call_once(once, [] {
    load();
    g_loaded.store(true, std::memory_order_release);
  });
}

void* wrapper_for_real(void* real) {
  if (!g_wrapper_by_real) return nullptr;
  auto it = g_wrapper_by_real->find(real);
  return it == g_wrapper_by_real->end() ? nullptr : it->second;
}

void untracked_call(Variant, const char* name) {
  if (!g_active) return;
  auto& st = tr::state();
  std::lock_guard lk(st.mu);
  if (st.untracked.insert(name).second)
    FERRY_WARN("%s: ferry does not track the handles this call uses; checkpoints of this process will be refused",
               name);
}


}  // namespace ferry

// ---- dlsym (the trampoline and the real dlsym live in dlsym_hook.cpp) ----------------

namespace ferry {
// Our wrapper for a driver entry point asked of the real driver's handle, or nullptr.
void* dlsym_lookup(void* handle, const char* name) {
  if (!g_loaded.load(std::memory_order_acquire)) ensure_loaded();
  if (!g_wrapper_by_name || handle != g_real_handle || !isupper(static_cast<unsigned char>(name[2]))) return nullptr;
  auto it = g_wrapper_by_name->find(name);
  return it == g_wrapper_by_name->end() ? nullptr : it->second;
}
}  // namespace ferry

namespace {
__attribute__((constructor)) void ferry_shim_init() { ferry::ensure_loaded(); }
__attribute__((destructor)) void ferry_shim_fini() {
  if (ferry::g_loaded.load() && ferry::config().dump_state_at_exit) ferry::tr::dump_to_log("exit", false);
}
}  // namespace
