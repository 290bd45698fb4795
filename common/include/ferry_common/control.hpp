// Where a process under ferry listens, shared by the shim (server) and the CLI.
//
// Each process that initializes CUDA under the shim listens on <dir>/<pid>.sock, where
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

}  // namespace ferry::control
