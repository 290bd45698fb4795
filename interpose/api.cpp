// The shim's C entry points (exported as ferry_*). Programs and tools find them with
// dlsym at run time, so nothing links against the shim; include/ferry/ferry.hpp wraps
// them for C++.
#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include <ferry/ferry_c.h>

#include "arena.hpp"
#include "config.hpp"
#include "engine.hpp"
#include "shim.hpp"
#include "tracker.hpp"

FERRY_API int ferry_shim_abi_version(void) { return FERRY_C_ABI_VERSION; }

FERRY_API int ferry_shim_active(void) { return ferry::active() ? 1 : 0; }

// 1 when h is a handle the shim handed out (a virtual context, stream, event, ...).
FERRY_API int ferry_is_virtual_handle(const void* h) { return ferry::vh::is_virtual(h) ? 1 : 0; }

// 1 when p lies in the arena (fixed-address device memory) of some device.
FERRY_API int ferry_is_arena_address(unsigned long long p) { return ferry::arena::range_of(p) >= 0 ? 1 : 0; }

// Writes the device-state log to `path` (or stderr when NULL), with the world stopped.
FERRY_API int ferry_dump_state(const char* path) {
  ferry::ensure_loaded();
  ferry::gate::close();
  std::string d = ferry::tr::dump();
  ferry::gate::open();
  int fd = path ? open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644) : 2;
  if (fd < 0) return -1;
  size_t off = 0;
  while (off < d.size()) {
    ssize_t n = write(fd, d.data() + off, d.size() - off);
    if (n <= 0) break;
    off += static_cast<size_t>(n);
  }
  if (path) close(fd);
  return off == d.size() ? 0 : -1;
}

// ---- operations ------------------------------------------------------------------------

namespace {

using namespace ferry;

int class_code(engine::ErrorClass c) {
  switch (c) {
    case engine::ErrorClass::RetryLater: return FERRY_RETRY_LATER;
    case engine::ErrorClass::FixFirst: return FERRY_FIX_FIRST;
    case engine::ErrorClass::DataLost: return FERRY_DATA_LOST;
    case engine::ErrorClass::Bug: return FERRY_BUG;
  }
  return FERRY_BUG;
}

// Options from the C struct; fields past the caller's `size` keep their defaults.
engine::Options from_c(const ferry_options* c) {
  engine::Options o;
  if (!c || c->size == 0) return o;
  ferry_options x{};
  x.device = -1;
  memcpy(&x, c, std::min<size_t>(c->size, sizeof x));
  if (x.dir) o.dir = x.dir;
  if (x.parent) o.parent = x.parent;
  o.leave_running = x.leave_running != 0;
  o.stay_stopped = x.stay_stopped != 0;
  o.discard = x.discard != 0;
  o.zstd_level = x.zstd_level;
  o.device = x.device;
  if (x.device_map && x.device_map_len > 0) o.device_map.assign(x.device_map, x.device_map + x.device_map_len);
  if (x.staging_bytes) o.staging_bytes = x.staging_bytes;
  if (x.progress) {
    ferry_progress_fn fn = x.progress;
    void* user = x.progress_user;
    o.progress.fn = [fn, user](const char* phase, uint64_t d, uint64_t t) { fn(phase, d, t, user); };
  }
  return o;
}

template <class Op>
int run_c(Op op, const ferry_options* c, ferry_result* r) {
  ferry_result res{};
  res.size = sizeof res;
  int code = FERRY_OK;
  try {
    engine::Options o = from_c(c);
    engine::Stats s = op(o);
    res.device_bytes = s.device_bytes;
    res.written = s.written;
    res.reused = s.reused;
    res.copied = s.copied;
    res.seconds = s.seconds;
    res.stopped_seconds = s.stopped_seconds;
  } catch (const engine::Error& e) {
    code = class_code(e.cls);
    snprintf(res.message, sizeof res.message, "%s", e.message.c_str());
  } catch (const std::exception& e) {
    code = FERRY_BUG;
    snprintf(res.message, sizeof res.message, "internal error: %s", e.what());
  }
  res.error_class = code;
  if (r) memcpy(r, &res, std::min<size_t>(r->size ? r->size : sizeof res, sizeof res));
  return code;
}

}  // namespace

FERRY_API int ferry_checkpoint(const ferry_options* o, ferry_result* r) { return run_c(engine::checkpoint, o, r); }
FERRY_API int ferry_suspend(const ferry_options* o, ferry_result* r) { return run_c(engine::suspend, o, r); }
FERRY_API int ferry_resume(const ferry_options* o, ferry_result* r) { return run_c(engine::resume, o, r); }
FERRY_API int ferry_migrate(const ferry_options* o, ferry_result* r) { return run_c(engine::migrate, o, r); }
FERRY_API int ferry_restore(const ferry_options* o, ferry_result* r) { return run_c(engine::restore, o, r); }

FERRY_API unsigned long ferry_status(char* buf, unsigned long len) {
  std::string s;
  try {
    s = engine::status().dump();
  } catch (const std::exception& e) {
    s = std::string("{\"error\":\"") + e.what() + "\"}";
  }
  if (buf && len) snprintf(buf, len, "%s", s.c_str());
  return s.size();
}

FERRY_API int ferry_add_hook(ferry_hook_fn fn, void* user) {
  if (!fn) return FERRY_FIX_FIRST;
  engine::add_hook(fn, user);
  return FERRY_OK;
}
