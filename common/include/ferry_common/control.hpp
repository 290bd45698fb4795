// Where a process under ferry listens, shared by the shim (server) and the CLI.
//
// Each process that initializes CUDA under the shim listens on <dir>/<pid>.sock (its
// host pid, see host_pid()), where
// <dir> is FERRY_SOCKET_DIR or /tmp/ferry-<uid>: a directory of mode 0700 owned by the
// user, so only the user (and root) can reach the socket; the shim also checks each
// peer's credentials. The protocol is JSON lines: one request, then progress lines
// and one final reply (docs/control.md).
#pragma once

#include <sys/types.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

#include <ferry_common/settings.hpp>

namespace ferry::control {

constexpr int kProtocolVersion = 1;

inline std::string socket_dir_for(uid_t uid, const char* env_dir) {
  if (env_dir && *env_dir) return env_dir;
  return "/tmp/ferry-" + std::to_string(uid);
}

inline std::string socket_dir() { return socket_dir_for(getuid(), settings::raw("FERRY_SOCKET_DIR")); }

inline std::string socket_name(pid_t pid) { return std::to_string(pid) + ".sock"; }

// This process's id on the host. A job started with `ferry run --pid-namespace` sees
// itself as pid 2 of its own namespace, as does every other such job, so sockets are
// named by the host's id: /proc is the host's (no new mount namespace), and its "self"
// link names the reader in the proc mount's namespace.
inline pid_t host_pid() {
  char buf[32];
  ssize_t n = readlink("/proc/self", buf, sizeof buf - 1);
  if (n <= 0) return getpid();
  buf[n] = 0;
  int v = atoi(buf);
  return v > 0 ? static_cast<pid_t>(v) : getpid();
}

}  // namespace ferry::control
