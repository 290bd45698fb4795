// The control socket and the checkpoint-on-signal handler (see control.hpp).
#include "control.hpp"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <string>
#include <thread>

#include <ferry_common/control.hpp>
#include <ferry_common/errors.hpp>
#include <ferry_common/json_text.hpp>
#include <ferry_common/ops.hpp>
#include <ferry_common/settings.hpp>

#include "checkpoint.hpp"
#include "config.hpp"
#include "engine.hpp"
#include "log.hpp"
#include "nvml.hpp"
#include "shim.hpp"
#include "tracker.hpp"

namespace ferry::control {

namespace {

std::mutex g_mu;
std::condition_variable g_cv;
bool g_started = false;
std::string g_path;  // our socket, removed at exit
int g_lfd = -1;          // the listening socket (-1 while detached)
pid_t g_bound_pid = 0;   // the host pid g_path is named by
bool g_detaching = false;  // asked to detach; the listener thread closes g_lfd

bool open_listener(pid_t pid);  // below
std::string marker(pid_t pid, const char* ext) { return socket_dir() + "/" + std::to_string(pid) + ext; }

void send_line(int fd, const nlohmann::json& j) {
  // A reply may name a path that is not UTF-8 (from the C API): its bad bytes are replaced
  // rather than the reply lost to an exception.
  std::string s = json_text::lossy(j) + "\n";
  size_t off = 0;
  while (off < s.size()) {
    ssize_t n = send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // the client went away; the operation goes on
    off += static_cast<size_t>(n);
  }
}

bool read_line(int fd, std::string& out) {
  char c;
  while (out.size() < (1 << 20)) {
    ssize_t n = recv(fd, &c, 1, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return !out.empty();
    if (c == '\n') return true;
    out += c;
  }
  return false;
}

engine::Options options_from(const nlohmann::json& j, int fd) {
  engine::Options o = ops::options_from_json(j);
  if (fd >= 0 && j.value("progress", true))
    o.progress.fn = [fd](const char* phase, uint64_t done, uint64_t total) {
      send_line(fd, {{"progress", {{"phase", phase}, {"done", done}, {"total", total}}}});
    };
  return o;
}

nlohmann::json check_report() {
  nlohmann::json j = engine::status();
  std::vector<std::string> problems;
  try {
    engine::check_capturable();
  } catch (const Error& e) {
    problems.push_back(e.message);
  }
  j["capturable"] = problems.empty();
  j["problems"] = problems;
  return j;
}

// Before CRIU dumps the process (ferry dump): the socket is closed and its name freed,
// so that a restored copy -- or two -- never re-binds a path another process owns. The
// listener thread then waits for either a new host pid (this is a restored copy: it
// listens under its new pid) or "<pid>.reattach" (the dump was rolled back or
// interrupted: `ferry resume` asks for the socket back). "<pid>.detached" tells the CLI
// why a process it knows has no socket. NVML is shut down too (its files would stop
// CRIU: interpose/nvml.hpp) until the process is resumed.
nlohmann::json detach() {
  std::unique_lock lk(g_mu);
  if (g_lfd < 0)
    return {{"ok", false}, {"class", class_name(ErrorClass::FixFirst)}, {"error", "the control socket is detached already"}};
  nvml::release();
  // A request to listen again is answered only after this detach: one left behind (by
  // a restore killed half-way, for an earlier process of this pid) would end it at once.
  unlink(marker(g_bound_pid, ".reattach").c_str());
  if (int fd = open(marker(g_bound_pid, ".detached").c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600); fd >= 0)
    close(fd);
  unlink(g_path.c_str());
  g_path.clear();
  g_detaching = true;
  shutdown(g_lfd, SHUT_RDWR);  // wakes the listener thread's accept()
  g_cv.wait(lk, [] { return g_lfd < 0; });
  return {{"ok", true}};
}

nlohmann::json handle(const nlohmann::json& req, int fd) {
  int v = req.value("v", 0);
  if (v != kProtocolVersion)
    return {{"ok", false}, {"class", class_name(ErrorClass::FixFirst)},
            {"error", "protocol version " + std::to_string(v) + " is not spoken here (this process speaks " +
                          std::to_string(kProtocolVersion) + "); use the ferry that started it"}};
  std::string op = req.value("op", "");
  nlohmann::json opts = req.value("options", nlohmann::json::object());
  try {
    if (op == "status") return {{"ok", true}, {"status", engine::status()}};
    if (op == "detach") return detach();
    if (op == "check") return {{"ok", true}, {"check", check_report()}};
    engine::Stats s;
    engine::Options o = options_from(opts, fd);
    if (op == "checkpoint")
      s = engine::checkpoint(o);
    else if (op == "suspend")
      s = engine::suspend(o);
    else if (op == "resume") {
      // After a dump (restored, undone or --leave-running) every path resumes through
      // here, once the driver has the process back: NVML comes back first.
      nvml::reacquire();
      s = engine::resume(o);
    }
    else if (op == "migrate")
      s = engine::migrate(o);
    else if (op == "restore")
      s = engine::restore(o);
    else
      return {{"ok", false},
              {"class", class_name(ErrorClass::FixFirst)},
              {"error", "unknown operation \"" + op + "\""}};
    return {{"ok", true}, {"stats", ops::to_json(s)}, {"status", engine::status()}};
  } catch (const Error& e) {
    return {{"ok", false}, {"class", class_name(e.cls)}, {"error", e.message}};
  } catch (const std::exception& e) {
    return {{"ok", false},
            {"class", class_name(ErrorClass::Bug)},
            {"error", std::string("internal error: ") + e.what()}};
  }
}

void serve(int fd) {
  ucred cred{};
  socklen_t len = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || (cred.uid != getuid() && cred.uid != 0)) {
    send_line(fd, {{"ok", false},
                   {"class", class_name(ErrorClass::FixFirst)},
                   {"error", "permission denied: uid " + std::to_string(cred.uid) + " may not control process " +
                                 std::to_string(host_pid()) + " (owned by uid " + std::to_string(getuid()) + ")"}});
    FERRY_WARN("refused a control connection from uid %u (pid %d)", cred.uid, cred.pid);
    close(fd);
    return;
  }
  std::string line;
  if (read_line(fd, line)) {
    nlohmann::json req;
    try {
      req = nlohmann::json::parse(line);
    } catch (const std::exception&) {
      send_line(fd, {{"ok", false}, {"class", class_name(ErrorClass::FixFirst)}, {"error", "the request is not JSON"}});
      close(fd);
      return;
    }
    send_line(fd, handle(req, fd));
  }
  close(fd);
}

// While detached: every 20 ms, has this process become a restored copy, or is the
// socket asked back? (A thread asleep is all CRIU sees of it.)
void wait_reattach() {
  for (;;) {
    usleep(20000);
    std::lock_guard lk(g_mu);
    pid_t now = host_pid();
    std::string ask = marker(g_bound_pid, ".reattach");
    bool asked = access(ask.c_str(), F_OK) == 0;
    if (now == g_bound_pid && !asked) continue;
    if (asked) unlink(ask.c_str());
    if (now == g_bound_pid) unlink(marker(now, ".detached").c_str());
    if (open_listener(now)) return;
    FERRY_WARN("cannot listen again after a detach: no more control requests");
    g_bound_pid = now;  // do not retry for ever
  }
}

void listen_loop() {
  for (;;) {
    int lfd;
    {
      std::lock_guard lk(g_mu);
      lfd = g_lfd;
    }
    int fd = accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      bool detached = false;
      {
        std::lock_guard lk(g_mu);
        if (g_detaching) {
          close(g_lfd);
          g_lfd = -1;
          g_detaching = false;
          detached = true;
          g_cv.notify_all();
        }
      }
      if (detached) {
        wait_reattach();
        continue;
      }
      FERRY_WARN("the control socket failed (%s); no more control requests", strerror(errno));
      return;
    }
    std::thread(serve, fd).detach();
  }
}

// The directory must be ours alone: created 0700, or existing, owned by us, 0700.
bool private_dir(const std::string& dir) {
  if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    FERRY_WARN("cannot create the control directory %s: %s", dir.c_str(), strerror(errno));
    return false;
  }
  struct stat sb;
  if (lstat(dir.c_str(), &sb) != 0 || !S_ISDIR(sb.st_mode) || sb.st_uid != getuid() || (sb.st_mode & 077) != 0) {
    FERRY_WARN("%s is not a directory of mode 0700 owned by uid %u: no control socket (ferry CLI cannot reach "
               "this process)", dir.c_str(), getuid());
    return false;
  }
  return true;
}

void remove_socket() {
  if (!g_path.empty()) unlink(g_path.c_str());
}

void after_fork_child() {
  // The child has no listener thread; it gets its own socket if it initializes CUDA.
  g_started = false;
  g_path.clear();
  if (g_lfd >= 0) close(g_lfd);
  g_lfd = -1;
  g_detaching = false;
}

// ---- checkpoint on a signal ------------------------------------------------------------

int g_signal_pipe[2] = {-1, -1};
struct SignalRule {
  int sig = 0;
  std::string dir;
};
std::vector<SignalRule>& rules() {
  static auto* r = new std::vector<SignalRule>;
  return *r;
}

void on_signal(int sig) {
  unsigned char b = static_cast<unsigned char>(sig);
  ssize_t ignored = write(g_signal_pipe[1], &b, 1);
  (void)ignored;
}

void signal_loop() {
  for (;;) {
    unsigned char b;
    ssize_t n = read(g_signal_pipe[0], &b, 1);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    for (auto& r : rules()) {
      if (r.sig != b) continue;
      FERRY_WARN("signal %d: checkpointing to %s, then exiting", r.sig, r.dir.c_str());
      engine::Options o;
      o.dir = r.dir;
      o.stay_stopped = true;
      try {
        engine::Stats s = engine::checkpoint(o);
        FERRY_WARN("checkpoint written to %s (%llu bytes of device memory, %.2f s); exiting", r.dir.c_str(),
                   static_cast<unsigned long long>(s.device_bytes), s.seconds);
        _exit(0);
      } catch (const std::exception& e) {
        FERRY_ERROR("the checkpoint on signal %d failed: %s; exiting", r.sig, e.what());
        _exit(1);
      }
    }
  }
}

void install_signal_rules() {
  const std::string& s = config().on_signal;
  if (s.empty()) return;
  size_t pos = 0;
  while (pos <= s.size()) {
    size_t end = s.find(';', pos);
    std::string item = s.substr(pos, end == std::string::npos ? std::string::npos : end - pos);
    pos = end == std::string::npos ? s.size() + 1 : end + 1;
    if (item.empty()) continue;
    size_t eq = item.find('=');
    std::string action = eq == std::string::npos ? "" : item.substr(eq + 1);
    int sig = settings::parse_signal(item.substr(0, eq));
    if (!sig || action.rfind("checkpoint:", 0) != 0 || action.size() <= 11) {
      FERRY_ERROR("FERRY_ON_SIGNAL: cannot understand \"%s\" (expected SIGNAL=checkpoint:DIR)", item.c_str());
      continue;
    }
    rules().push_back({sig, action.substr(11)});
  }
  if (rules().empty()) return;
  if (pipe2(g_signal_pipe, O_CLOEXEC) != 0) return;
  for (auto& r : rules()) {
    struct sigaction sa {};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(r.sig, &sa, nullptr);
  }
  std::thread(signal_loop).detach();
}

}  // namespace

void start() {
  std::lock_guard lk(g_mu);
  if (g_started) return;
  g_started = true;
  static std::once_flag atfork;
  std::call_once(atfork, [] {
    pthread_atfork(nullptr, nullptr, after_fork_child);
    atexit(remove_socket);
    install_signal_rules();
  });
  if (!config().control) return;
  if (open_listener(host_pid())) std::thread(listen_loop).detach();
}

namespace {

// Listens on the socket named by pid (g_mu held, or before the listener thread runs).
bool open_listener(pid_t pid) {
  std::string dir = socket_dir();
  if (!private_dir(dir)) return false;
  std::string path = dir + "/" + socket_name(pid);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) {
    FERRY_WARN("the control socket path %s is too long: no control socket", path.c_str());
    return false;
  }
  memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (lfd < 0) return false;
  unlink(path.c_str());  // a stale socket of an earlier process with our pid
  if (bind(lfd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || chmod(path.c_str(), 0600) != 0 ||
      listen(lfd, 16) != 0) {
    FERRY_WARN("cannot listen on %s: %s", path.c_str(), strerror(errno));
    close(lfd);
    return false;
  }
  g_path = path;
  g_lfd = lfd;
  g_bound_pid = pid;
  FERRY_INFO("listening on %s", path.c_str());
  return true;
}

}  // namespace

// The shim calls this at the first cuInit (interpose/shim.hpp's init hook).
__attribute__((constructor)) void register_with_shim() { set_init_hook(start); }

}  // namespace ferry::control
