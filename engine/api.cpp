// The shim's C entry points (exported as ferry_*). Programs and tools find them with
// dlsym at run time, so nothing links against the shim; include/ferry/ferry.hpp wraps
// them for C++.
#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include <ferry/ferry_c.h>
#include <ferry_common/errors.hpp>
#include <ferry_common/json_text.hpp>
#include <ferry_common/ops.hpp>

#include "config.hpp"
#include "engine.hpp"
#include "shim.hpp"
#include "tracker.hpp"

FERRY_API int ferry_shim_abi_version(void) { return FERRY_C_ABI_VERSION; }

FERRY_API int ferry_shim_active(void) { return ferry::active() ? 1 : 0; }

// 1 when h is a handle the shim handed out (a virtual context, stream, event, ...).
FERRY_API int ferry_is_virtual_handle(const void* h) { return ferry::vh::is_virtual(h) ? 1 : 0; }

// Writes the device-state log to `path` (or stderr when NULL), with the world stopped.
FERRY_API int ferry_dump_state(const char* path) {
  ferry::ensure_loaded();
  std::string d;
  {
    ferry::gate::Stopped world;
    d = ferry::tr::dump();
  }
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

template <class Op>
int run_c(Op op, const ferry_options* c, ferry_result* r) {
  engine::Stats s;
  int code = FERRY_OK;
  std::string message;
  try {
    s = op(ops::from_c(c));
  } catch (const Error& e) {
    code = info(e.cls).c_code;
    message = e.message;
  } catch (const std::exception& e) {
    code = info(ErrorClass::Bug).c_code;
    message = std::string("internal error: ") + e.what();
  }
  ops::to_c(s, code, message, r);
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
    s = json_text::lossy(engine::status());
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
