// The CLI's side of the control socket (common/include/ferry_common/control.hpp): finding
// a process's socket, sending one request, reading progress lines and the reply.
#pragma once

#include <sys/types.h>

#include <functional>
#include <string>
#include <vector>

#include <ferry_common/errors.hpp>
#include <nlohmann/json.hpp>

namespace ferry::cli {

// Exit codes a scheduler can act on (sysexits.h values), from common's error table.
enum Exit {
  kOk = exit_code::kOk,
  kFailed = exit_code::kFailed,
  kUsage = exit_code::kUsage,
  kNoProcess = exit_code::kNoProcess,
  kBug = info(ErrorClass::Bug).exit_code,
  kDataLost = info(ErrorClass::DataLost).exit_code,
  kRetryLater = info(ErrorClass::RetryLater).exit_code,
  kFixFirst = info(ErrorClass::FixFirst).exit_code,
};
int exit_for_class(const std::string& cls);

struct ClientError : std::exception {
  int code;
  std::string message;
  ClientError(int c, std::string m) : code(c), message(std::move(m)) {}
  const char* what() const noexcept override { return message.c_str(); }
};

// The socket directory as the shim makes and insists on it (engine/control.cpp): this
// user's, mode 0700 -- nobody else can plant a file or a link in it. Made where missing;
// throws ClientError (kFixFirst) when it is not so.
std::string own_socket_dir();

// The socket of process pid (throws ClientError(kNoProcess) with the reason).
std::string socket_of(pid_t pid);

// Whether a socket listens at path: a connection is accepted, or only waits its turn.
// (The name exists from bind() on, before listen(), and a killed process's stays.)
bool listens(const std::string& path);

// Sends {"v":1,"op":op,"options":options}; calls progress for each progress line and
// returns the reply. timeout_s 0: wait as long as the operation takes.
nlohmann::json request(pid_t pid, const std::string& op, const nlohmann::json& options,
                       const std::function<void(const nlohmann::json&)>& progress, int timeout_s = 0);

// Processes with a control socket for this user: (pid, socket path).
std::vector<std::pair<pid_t, std::string>> list_processes();

}  // namespace ferry::cli
