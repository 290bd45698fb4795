// The CLI's side of the control socket (common/include/ferry_common/control.hpp): finding
// a process's socket, sending one request, reading progress lines and the reply.
#pragma once

#include <sys/types.h>

#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace ferry::cli {

// Exit codes a scheduler can act on (sysexits.h values).
enum Exit {
  kOk = 0,
  kFailed = 1,       // a check found problems
  kUsage = 64,       // the command line is wrong
  kNoProcess = 69,   // no such process, or it does not run under ferry
  kBug = 70,         // ferry failed
  kDataLost = 74,    // the image is damaged or incomplete
  kRetryLater = 75,  // transient: try again later
  kFixFirst = 78,    // the request or the environment must change
};
int exit_for_class(const std::string& cls);

struct ClientError : std::exception {
  int code;
  std::string message;
  ClientError(int c, std::string m) : code(c), message(std::move(m)) {}
  const char* what() const noexcept override { return message.c_str(); }
};

// The socket of process pid (throws ClientError(kNoProcess) with the reason).
std::string socket_of(pid_t pid);

// Sends {"v":1,"op":op,"options":options}; calls progress for each progress line and
// returns the reply. timeout_s 0: wait as long as the operation takes.
nlohmann::json request(pid_t pid, const std::string& op, const nlohmann::json& options,
                       const std::function<void(const nlohmann::json&)>& progress, int timeout_s = 0);

// Processes with a control socket for this user: (pid, socket path).
std::vector<std::pair<pid_t, std::string>> list_processes();

}  // namespace ferry::cli
