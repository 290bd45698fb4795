#include "full_process.hpp"

#include <dlfcn.h>
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <ferry_common/settings.hpp>

#include "sockets.hpp"

namespace ferry::cli {

namespace {

// Runs argv; returns its exit status (-1 when it could not run) and its output.
int capture(const std::vector<std::string>& argv, std::string& out) {
  int fds[2];
  if (pipe(fds) != 0) return -1;
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    dup2(fds[1], 1);
    dup2(fds[1], 2);
    close(fds[0]);
    close(fds[1]);
    std::vector<char*> a;
    for (auto& s : argv) a.push_back(const_cast<char*>(s.c_str()));
    a.push_back(nullptr);
    execv(a[0], a.data());
    _exit(127);
  }
  close(fds[1]);
  char buf[4096];
  ssize_t n;
  while ((n = read(fds[0], buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
  close(fds[0]);
  int st = 0;
  if (waitpid(pid, &st, 0) != pid) return -1;
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

std::string on_path(const char* name) {
  const char* path = getenv("PATH");  // not a ferry setting: where programs are looked up
  std::string p = path ? path : "/usr/sbin:/usr/bin:/sbin:/bin";
  size_t pos = 0;
  while (pos <= p.size()) {
    size_t c = p.find(':', pos);
    std::string dir = p.substr(pos, c == std::string::npos ? std::string::npos : c - pos);
    std::string f = (dir.empty() ? "." : dir) + "/" + name;
    if (access(f.c_str(), X_OK) == 0) return f;
    if (c == std::string::npos) break;
    pos = c + 1;
  }
  return "";
}

std::string last_line(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  size_t nl = s.rfind('\n');
  return nl == std::string::npos ? s : s.substr(nl + 1);
}

volatile int g_probe_hits = 0;
__attribute__((noinline)) void breakpoint_target() { g_probe_hits = g_probe_hits + 1; }

// A traced child stops, gets a breakpoint on breakpoint_target (DR0, enabled locally in
// DR7, as CRIU sets it), then calls it: it traps if breakpoints fire, else it exits.
bool probe_breakpoints() {
#if defined(__x86_64__)
  pid_t c = fork();
  if (c < 0) return true;  // cannot tell: leave CRIU as it is
  if (c == 0) {
    ptrace(PTRACE_TRACEME, 0, nullptr, nullptr);
    raise(SIGSTOP);
    breakpoint_target();
    _exit(0);
  }
  int st = 0;
  if (waitpid(c, &st, 0) != c || !WIFSTOPPED(st)) {
    kill(c, SIGKILL);
    waitpid(c, &st, 0);
    return true;
  }
  auto target = reinterpret_cast<void*>(&breakpoint_target);
  bool set = ptrace(PTRACE_POKEUSER, c, offsetof(struct user, u_debugreg[0]), target) == 0 &&
             ptrace(PTRACE_POKEUSER, c, offsetof(struct user, u_debugreg[7]), reinterpret_cast<void*>(1)) == 0;
  ptrace(PTRACE_CONT, c, nullptr, nullptr);
  bool fired = waitpid(c, &st, 0) == c && WIFSTOPPED(st) && WSTOPSIG(st) == SIGTRAP;
  kill(c, SIGKILL);
  waitpid(c, &st, 0);
  return set && fired;
#else
  return true;  // CRIU uses breakpoints on x86 only
#endif
}

constexpr const char* kFix = "run scripts/setup.sh as root (it builds CRIU 4.2.1) or set FERRY_CRIU to a CRIU >= 4.2";

}  // namespace

std::string criu_version(const std::string& criu) {
  std::string out;
  int rc = capture({criu, "--version"}, out);
  auto at = out.find("Version: ");
  if (rc != 0 || at == std::string::npos) return "";
  return out.substr(at + 9, out.find('\n', at) - at - 9);
}

std::string criu_path() {
  if (const char* s = settings::raw("FERRY_CRIU"); s && *s) return s;
  if (std::string p = on_path("criu"); !p.empty()) return p;
  return FERRY_DEFAULT_CRIU;
}

bool hardware_breakpoints_work() {
  static const bool works = probe_breakpoints();
  return works;
}

void prepare_criu_environment() {
  // CRIU_FAULT is CRIU's own variable: a caller who sets it knows better.
  if (!getenv("CRIU_FAULT") && !hardware_breakpoints_work()) setenv("CRIU_FAULT", "130", 1);
}

nlohmann::json full_process_report(void* driver) {
  nlohmann::json j;
  std::vector<std::string> problems, warnings;
  std::string criu = criu_path();
  nlohmann::json c = {{"path", criu}};
  if (access(criu.c_str(), X_OK) != 0) {
    problems.push_back("CRIU not found: " + criu + " is not an executable; " + kFix);
  } else {
    std::string out;
    std::string version = criu_version(criu);
    c["version"] = version;
    int major = version.empty() ? 0 : atoi(version.c_str());
    if (version.empty()) {
      problems.push_back(criu + " does not answer --version like CRIU does; " + kFix);
    } else if (major < 4) {
      problems.push_back(criu + " is CRIU " + version + "; ferry needs 4.0 or newer (3.x fails on current kernels); " +
                         kFix);
    } else if (geteuid() != 0) {
      c["check"] = "not run (needs root)";
      problems.push_back("CRIU dumps and restores processes as root; run ferry as root for whole-process dumps");
    } else {
      out.clear();
      int rc = capture({criu, "check"}, out);
      c["check"] = rc == 0 ? "passed" : "failed: " + last_line(out);
      if (rc != 0) problems.push_back("'" + criu + " check' failed on this kernel: " + last_line(out) + "; " + kFix);
    }
    if (major >= 4 && !criu_dumps_inet_sockets(version))
      warnings.push_back("CRIU " + version + " cannot dump TCP or UDP sockets on Linux " + kernel_release() +
                         " (4.2 or newer can): jobs that hold any are refused; " + kFix);
  }
  c["hardware_breakpoints"] = hardware_breakpoints_work();
  j["criu"] = c;
  bool api = driver != nullptr;
  for (const char* f : {"cuCheckpointProcessLock", "cuCheckpointProcessCheckpoint", "cuCheckpointProcessRestore",
                        "cuCheckpointProcessUnlock", "cuCheckpointProcessGetState"})
    api = api && dlsym(driver, f) != nullptr;
  j["driver_checkpoint_api"] = api;
  if (!api)
    problems.push_back("the CUDA driver has no checkpoint API (cuCheckpointProcess*: CUDA 12.8, driver r570 or newer)");
  j["problems"] = problems;
  j["warnings"] = warnings;
  j["ready"] = problems.empty();
  return j;
}

}  // namespace ferry::cli
