// Getting in front of the driver: configuration, finding and loading the real driver,
// the dlsym interposer, logging, and the policy when ferry itself cannot work.
#include <dlfcn.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <cstdarg>
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

// Everything the loader keeps is constant-initialized or built on first use: the
// library constructor may run before this file's dynamic initializers would.
Config& cfg() {
  static Config* c = new Config;
  return *c;
}
void* g_real_handle = nullptr;
std::atomic<bool> g_loaded{false};
bool g_active = false;
int g_log_level = log::Warn;
int g_log_fd = 2;
std::unordered_map<std::string, void*>* g_wrapper_by_name = nullptr;
std::unordered_map<void*, void*>* g_wrapper_by_real = nullptr;

uintptr_t parse_uint(const char* s, uintptr_t dflt) {
  if (!s || !*s) return dflt;
  char* end = nullptr;
  unsigned long long v = strtoull(s, &end, 0);
  if (end == s) return dflt;
  switch (*end) {
    case 'k': case 'K': v <<= 10; break;
    case 'm': case 'M': v <<= 20; break;
    case 'g': case 'G': v <<= 30; break;
    case 't': case 'T': v <<= 40; break;
    default: break;
  }
  return static_cast<uintptr_t>(v);
}

void read_config() {
  Config& c = cfg();
  if (const char* s = getenv("FERRY_REAL_DRIVER")) c.real_driver = s;
  if (const char* s = getenv("FERRY_ON_ERROR")) c.refuse_on_error = strcmp(s, "refuse") == 0;
  if (const char* s = getenv("FERRY_ARENA")) c.arena = !(strcmp(s, "off") == 0 || strcmp(s, "0") == 0);
  c.arena_base = parse_uint(getenv("FERRY_ARENA_BASE"), c.arena_base);
  c.arena_size = parse_uint(getenv("FERRY_ARENA_SIZE"), c.arena_size);
  if (const char* s = getenv("FERRY_DEVICE_MAP")) c.device_map = s;
  if (const char* s = getenv("FERRY_LOG_FILE")) c.log_file = s;
  if (const char* s = getenv("FERRY_LOG")) {
    std::string v = s;
    if (v.find("error") != std::string::npos) g_log_level = log::Error;
    if (v.find("warn") != std::string::npos) g_log_level = log::Warn;
    if (v.find("info") != std::string::npos) g_log_level = log::Info;
    if (v.find("debug") != std::string::npos) g_log_level = log::Debug;
    c.dump_state_at_exit = v.find("state") != std::string::npos;
  }
  if (const char* s = getenv("FERRY_DUMP_SIGNAL")) {
    std::string v = s;
    if (v.rfind("SIG", 0) == 0) v = v.substr(3);
    if (v == "USR1") c.dump_signal = SIGUSR1;
    else if (v == "USR2") c.dump_signal = SIGUSR2;
    else c.dump_signal = atoi(v.c_str());
  }
  if (!c.log_file.empty()) {
    int fd = open(c.log_file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd >= 0) g_log_fd = fd;
  }
}

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
  if (!cfg().real_driver.empty()) return cfg().real_driver;
  std::vector<std::string> dirs;
  if (const char* lp = getenv("LD_LIBRARY_PATH")) {
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
  if (cfg().refuse_on_error) {
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
  if (cfg().dump_signal > 0) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, cfg().dump_signal);
    // Threads started later inherit the mask, so only our thread takes the signal.
    pthread_sigmask(SIG_BLOCK, &set, nullptr);
    std::thread(dump_signal_thread, cfg().dump_signal).detach();
  }
}

}  // namespace

const Config& config() { return cfg(); }
bool active() { return g_active; }

void ensure_loaded() {
  static std::once_flag once;
  std::call_once(once, [] {
    load();
    g_loaded.store(true, std::memory_order_release);
  });
}

void* real_symbol(const char* name) {
  ensure_loaded();
  if (!g_real_handle) return nullptr;
  for (unsigned i = 0; i < kVariantCount; i++)
    if (strcmp(kVariants[i].name, name) == 0) return *kVariants[i].real_slot;
  return nullptr;
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

namespace log {

bool enabled(Level l) { return l <= g_log_level; }

void raw(const char* text, unsigned long len) {
  while (len > 0) {
    ssize_t n = ::write(g_log_fd, text, len);
    if (n <= 0) return;
    text += n;
    len -= static_cast<unsigned long>(n);
  }
}

void write(Level l, const char* fmt, ...) {
  if (l > g_log_level) return;
  char buf[1024];
  int n = snprintf(buf, sizeof buf, "ferry: ");
  va_list ap;
  va_start(ap, fmt);
  n += vsnprintf(buf + n, sizeof buf - static_cast<size_t>(n) - 1, fmt, ap);
  va_end(ap);
  if (n > static_cast<int>(sizeof buf) - 2) n = sizeof buf - 2;
  buf[n++] = '\n';
  raw(buf, static_cast<unsigned long>(n));
}

}  // namespace log

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
