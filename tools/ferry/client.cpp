#include "client.hpp"

#include <ferry_common/errors.hpp>

#include <dirent.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include <ferry_common/control.hpp>

namespace ferry::cli {

int exit_for_class(const std::string& cls) { return exit_code_for(cls); }

namespace {

// FERRY_SOCKET_DIR as the process itself sees it, when we may read its environment.
std::string env_of(pid_t pid, const char* name) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/environ", std::ios::binary);
  std::string entry, prefix = std::string(name) + "=";
  while (std::getline(in, entry, '\0'))
    if (entry.rfind(prefix, 0) == 0) return entry.substr(prefix.size());
  return "";
}

}  // namespace

std::string own_socket_dir() {
  std::string dir = control::socket_dir();
  if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST)
    throw ClientError(kFixFirst, "cannot create " + dir + ": " + strerror(errno));
  struct stat sb;
  if (lstat(dir.c_str(), &sb) != 0 || !S_ISDIR(sb.st_mode) || sb.st_uid != getuid() || (sb.st_mode & 077) != 0)
    throw ClientError(kFixFirst, dir + " is not a directory of mode 0700 owned by uid " + std::to_string(getuid()) +
                                     "; remove it (the shim makes it so) or set FERRY_SOCKET_DIR");
  return dir;
}

std::string socket_of(pid_t pid) {
  if (pid <= 0) throw ClientError(kUsage, "not a process id: " + std::to_string(pid));
  struct stat sb;
  std::string proc = "/proc/" + std::to_string(pid);
  if (stat(proc.c_str(), &sb) != 0) throw ClientError(kNoProcess, "no process " + std::to_string(pid));
  std::vector<std::string> dirs;
  std::string own = env_of(pid, "FERRY_SOCKET_DIR");
  dirs.push_back(control::socket_dir_for(sb.st_uid, own.c_str()));
  dirs.push_back(control::socket_dir());
  for (auto& d : dirs) {
    std::string p = d + "/" + control::socket_name(pid);
    struct stat ss;
    if (stat(p.c_str(), &ss) == 0 && S_ISSOCK(ss.st_mode)) return p;
  }
  throw ClientError(kNoProcess, "process " + std::to_string(pid) + " does not run under ferry, or has not initialized "
                                "CUDA yet (no control socket in " + dirs.front() + ")");
}

bool listens(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) return false;
  memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return false;
  bool ok = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 || errno == EAGAIN;
  close(fd);
  return ok;
}

nlohmann::json request(pid_t pid, const std::string& op, const nlohmann::json& options,
                       const std::function<void(const nlohmann::json&)>& progress, int timeout_s) {
  std::string path = socket_of(pid);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw ClientError(kBug, std::string("socket: ") + strerror(errno));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) {
    close(fd);
    throw ClientError(kFixFirst, "socket path too long: " + path);
  }
  memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  // Refused by a process that lives: its socket may be bound but not listening yet (it
  // is named from bind() on); asked again for up to 100 ms.
  int e = 0;
  for (int tries = 0;; tries++) {
    e = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 ? 0 : errno;
    if (e != ECONNREFUSED || tries == 10 || kill(pid, 0) != 0) break;
    usleep(10000);
  }
  if (e != 0) {
    close(fd);
    if (e == ECONNREFUSED || e == ENOENT)
      throw ClientError(kNoProcess, "process " + std::to_string(pid) + " no longer listens on " + path);
    if (e == EACCES || e == EPERM)
      throw ClientError(kFixFirst, "permission denied on " + path + ": the process belongs to another user");
    throw ClientError(kBug, "cannot connect to " + path + ": " + strerror(e));
  }
  nlohmann::json req = {{"v", control::kProtocolVersion}, {"op", op}, {"options", options}};
  std::string line;
  try {
    line = req.dump() + "\n";
  } catch (const nlohmann::json::type_error&) {
    // main refuses such paths first; this is for any that gets past it, sent unaltered or not at all.
    close(fd);
    throw ClientError(kUsage, "a path for process " + std::to_string(pid) +
                                  " is not valid UTF-8, which its control messages (JSON) cannot carry");
  }
  // A process that refuses us (another user's) answers and closes without reading
  // the request, so the send may fail: its answer, if any, is still there to read.
  bool sent = send(fd, line.data(), line.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(line.size());
  std::string buf;
  for (;;) {
    size_t nl = buf.find('\n');
    if (nl != std::string::npos) {
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(buf.substr(0, nl));
      } catch (const std::exception&) {
        close(fd);
        throw ClientError(kBug, "process " + std::to_string(pid) + " sent a malformed reply");
      }
      buf.erase(0, nl + 1);
      if (j.contains("progress")) {
        if (progress) progress(j["progress"]);
        continue;
      }
      close(fd);
      return j;
    }
    if (timeout_s > 0) {
      pollfd p{fd, POLLIN, 0};
      int r = poll(&p, 1, timeout_s * 1000);
      if (r == 0) {
        close(fd);
        throw ClientError(kRetryLater, "process " + std::to_string(pid) + " did not answer within " +
                                           std::to_string(timeout_s) + " s");
      }
    }
    char tmp[4096];
    ssize_t n = recv(fd, tmp, sizeof tmp, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      close(fd);
      throw ClientError(kNoProcess, "process " + std::to_string(pid) +
                                        (sent ? " closed the connection before answering (did it exit?)"
                                              : " closed the connection"));
    }
    buf.append(tmp, static_cast<size_t>(n));
  }
}

std::vector<std::pair<pid_t, std::string>> list_processes() {
  std::vector<std::pair<pid_t, std::string>> out;
  std::string dir = control::socket_dir();
  DIR* d = opendir(dir.c_str());
  if (!d) return out;
  while (dirent* e = readdir(d)) {
    std::string n = e->d_name;
    if (n.size() < 6 || n.substr(n.size() - 5) != ".sock") continue;
    pid_t pid = static_cast<pid_t>(atoi(n.c_str()));
    if (pid <= 0) continue;
    std::string path = dir + "/" + n;
    if (kill(pid, 0) != 0 && errno == ESRCH) {
      unlink(path.c_str());  // the process is gone without cleaning up
      continue;
    }
    out.emplace_back(pid, path);
  }
  closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace ferry::cli
