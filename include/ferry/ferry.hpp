// ferry's C++ API: checkpoint, suspend, resume, migrate and restore the GPU state of
// the calling process, which runs under `ferry run`.
//
// Header-only and link-free: the shim's C entry points (ferry_c.h) are looked up at run
// time, so a program built with this header runs unchanged without ferry, and every
// call then fails with a clear "not running under ferry" result.
//
//   ferry::Options o;
//   o.dir = "/ckpt/step-1000";
//   if (auto r = ferry::checkpoint(o); !r) std::cerr << r.message << "\n";
//   ferry::migrate(1);  // the program's device moves to physical GPU 1
//
// Each operation stops the process's CUDA calls while it runs (other threads wait at
// their next CUDA call). Hooks run around each operation on the thread doing it, with
// the world stopped: they must not call CUDA.
#pragma once

#include <dlfcn.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "ferry_c.h"

namespace ferry {

enum class ErrorClass { None = FERRY_OK, RetryLater = FERRY_RETRY_LATER, FixFirst = FERRY_FIX_FIRST,
                        DataLost = FERRY_DATA_LOST, Bug = FERRY_BUG, NotUnderFerry = 100 };

struct Options {
  std::string dir;            // image directory
  std::string parent;         // incremental checkpoint: an earlier image to reference
  bool leave_running = false; // checkpoint: release the program once memory is in host RAM
  bool stay_stopped = false;  // checkpoint/restore: keep the program stopped until resume()
  bool discard = false;       // suspend: drop the GPU state (bring it back with restore())
  int zstd_level = 0;         // 0: no compression
  int device = -1;            // resume/migrate/restore: the program's device goes here
  std::vector<int> device_map;  // or: program device i -> physical device_map[i]
  uint64_t staging_bytes = 0;   // pinned staging memory (0: default)
  bool read_all = false;        // checkpoint: read every chunk, no GPU fingerprints (--read-all)
  std::function<void(const char* phase, uint64_t done, uint64_t total)> progress;
};

struct Result {
  ErrorClass error = ErrorClass::None;
  std::string message;
  uint64_t device_bytes = 0, written = 0, reused = 0;
  uint64_t copied = 0;  // device bytes copied to the host (chunks unchanged since the parent are not)
  uint64_t carried = 0;  // the parent's bytes copied in so the image stands alone (not in written)
  double seconds = 0, stopped_seconds = 0;
  explicit operator bool() const { return error == ErrorClass::None; }
};

namespace detail {

template <class F>
F lookup(const char* name) {
  return reinterpret_cast<F>(dlsym(RTLD_DEFAULT, name));
}

inline void progress_trampoline(const char* phase, unsigned long long d, unsigned long long t, void* user) {
  (*static_cast<const std::function<void(const char*, uint64_t, uint64_t)>*>(user))(phase, d, t);
}

using OpFn = int (*)(const ferry_options*, ferry_result*);

inline Result call(const char* name, const Options& o) {
  Result r;
  auto abi = lookup<int (*)()>("ferry_shim_abi_version");
  auto fn = lookup<OpFn>(name);
  if (!abi || !fn || abi() < FERRY_C_ABI_OLDEST) {
    r.error = ErrorClass::NotUnderFerry;
    r.message = abi ? std::string("the ferry shim in this process is too old for ") + name
                    : "this process is not running under ferry (start it with `ferry run -- ...`)";
    return r;
  }
  ferry_options c = FERRY_OPTIONS_INIT;
  c.dir = o.dir.empty() ? nullptr : o.dir.c_str();
  c.parent = o.parent.empty() ? nullptr : o.parent.c_str();
  c.leave_running = o.leave_running;
  c.stay_stopped = o.stay_stopped;
  c.discard = o.discard;
  c.zstd_level = o.zstd_level;
  c.device = o.device;
  c.device_map = o.device_map.empty() ? nullptr : o.device_map.data();
  c.device_map_len = static_cast<int>(o.device_map.size());
  c.staging_bytes = o.staging_bytes;
  c.read_all = o.read_all;
  if (o.progress) {
    c.progress = progress_trampoline;
    c.progress_user = const_cast<void*>(static_cast<const void*>(&o.progress));
  }
  ferry_result res{};
  res.size = sizeof res;
  int code = fn(&c, &res);
  r.error = static_cast<ErrorClass>(code);
  r.message = res.message;
  r.device_bytes = res.device_bytes;
  r.written = res.written;
  r.reused = res.reused;
  r.copied = res.copied;
  r.carried = res.carried;
  r.seconds = res.seconds;
  r.stopped_seconds = res.stopped_seconds;
  return r;
}

}  // namespace detail

// True when the process runs under ferry's shim (and the operations can work).
inline bool available() {
  auto abi = detail::lookup<int (*)()>("ferry_shim_abi_version");
  auto active = detail::lookup<int (*)()>("ferry_shim_active");
  return abi && active && abi() >= FERRY_C_ABI_OLDEST && active();
}

inline Result checkpoint(const Options& o) { return detail::call("ferry_checkpoint", o); }
inline Result checkpoint(const std::string& dir) {
  Options o;
  o.dir = dir;
  return checkpoint(o);
}
inline Result suspend(const Options& o = {}) { return detail::call("ferry_suspend", o); }
inline Result resume(const Options& o = {}) { return detail::call("ferry_resume", o); }
inline Result migrate(const Options& o) { return detail::call("ferry_migrate", o); }
inline Result migrate(int device) {
  Options o;
  o.device = device;
  return migrate(o);
}
inline Result restore(const Options& o) { return detail::call("ferry_restore", o); }
inline Result restore(const std::string& dir) {
  Options o;
  o.dir = dir;
  return restore(o);
}

// The engine's status as JSON text ("" when not under ferry): state, devices, the last
// operation's result and statistics.
inline std::string status() {
  auto fn = detail::lookup<unsigned long (*)(char*, unsigned long)>("ferry_status");
  if (!fn) return "";
  std::string s(fn(nullptr, 0) + 1, '\0');
  s.resize(fn(s.data(), s.size()));
  return s;
}

// fn(op, after, user) before (after = 0) and after (after = 1) every operation.
inline bool add_hook(ferry_hook_fn fn, void* user) {
  auto add = detail::lookup<int (*)(ferry_hook_fn, void*)>("ferry_add_hook");
  return add && add(fn, user) == FERRY_OK;
}

}  // namespace ferry
