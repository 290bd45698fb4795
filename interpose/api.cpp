// The shim's C entry points (exported as ferry_*). Programs and tools find them with
// dlsym at run time, so nothing links against the shim; include/ferry/ferry.hpp wraps
// them for C++.
#include <fcntl.h>
#include <unistd.h>

#include <string>

#include "arena.hpp"
#include "config.hpp"
#include "shim.hpp"
#include "tracker.hpp"

FERRY_API int ferry_shim_abi_version(void) { return 1; }

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
