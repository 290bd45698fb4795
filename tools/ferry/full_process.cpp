#include "full_process.hpp"

#include <dlfcn.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <ferry_common/settings.hpp>

#include "cuda_driver.hpp"
#include "paths.hpp"
#include "sockets.hpp"

namespace ferry::cli {

namespace {

// Runs argv, with `env` added to the environment; returns its exit status (-1 when it
// could not run or died of a signal, -2 when it was killed after timeout_s seconds, where
// that is not 0) and its output.
int capture(const std::vector<std::string>& argv, std::string& out, int timeout_s = 0,
            const std::vector<std::string>& env = {}) {
  // The environment is built before the fork: the child of a process with threads (the
  // driver's) may only make async-signal-safe calls before it execs.
  std::vector<std::string> vars(env);
  for (char** e = environ; *e; ++e) {
    std::string v = *e;
    bool replaced = false;
    for (auto& x : env) replaced = replaced || v.compare(0, x.find('=') + 1, x, 0, x.find('=') + 1) == 0;
    if (!replaced) vars.push_back(v);
  }
  std::vector<char*> envp;
  for (auto& v : vars) envp.push_back(const_cast<char*>(v.c_str()));
  envp.push_back(nullptr);
  std::vector<char*> a;
  for (auto& s : argv) a.push_back(const_cast<char*>(s.c_str()));
  a.push_back(nullptr);
  int fds[2];
  if (pipe(fds) != 0) return -1;
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    dup2(fds[1], 1);
    dup2(fds[1], 2);
    close(fds[0]);
    close(fds[1]);
    execve(a[0], a.data(), envp.data());
    _exit(127);
  }
  close(fds[1]);
  char buf[4096];
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  bool killed = false;
  for (;;) {
    if (timeout_s > 0) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      pollfd p{fds[0], POLLIN, 0};
      int ready = left.count() <= 0 ? 0 : poll(&p, 1, static_cast<int>(left.count()));
      if (ready < 0 && errno == EINTR) continue;
      if (ready == 0) {
        kill(pid, SIGKILL);
        killed = true;
        break;
      }
    }
    ssize_t n = read(fds[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  close(fds[0]);
  int st = 0;
  if (waitpid(pid, &st, 0) != pid) return -1;
  if (killed) return -2;
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
  const pid_t parent = getpid();
  pid_t c = fork();
  if (c < 0) return true;  // cannot tell: leave CRIU as it is
  if (c == 0) {
    // ferry killed meanwhile would leave this child stopped for good -- holding what ferry
    // held (a restore guard's socket: the guard would wait on it forever).
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    if (getppid() != parent) _exit(0);
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


int driver_start() {
  // The shim, which `ferry run` preloads, answers to this name; it finds the real driver.
  void* h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
  if (!h) {
    printf("{\"error\": \"cannot load libcuda.so.1\"}\n");
    return 1;
  }
  auto f = [&](const char* name) { return dlsym(h, name); };
  auto init = reinterpret_cast<int (*)(unsigned)>(f("cuInit"));
  auto count = reinterpret_cast<int (*)(int*)>(f("cuDeviceGetCount"));
  auto retain = reinterpret_cast<int (*)(void**, int)>(f("cuDevicePrimaryCtxRetain"));
  auto set = reinterpret_cast<int (*)(void*)>(f("cuCtxSetCurrent"));
  auto alloc = reinterpret_cast<int (*)(unsigned long long*, size_t)>(f("cuMemAlloc_v2"));
  auto mfree = reinterpret_cast<int (*)(unsigned long long)>(f("cuMemFree_v2"));
  auto release = reinterpret_cast<int (*)(int)>(f("cuDevicePrimaryCtxRelease_v2"));
  if (!init || !count || !retain || !set || !alloc || !mfree || !release) {
    printf("{\"error\": \"the driver lacks entry points\"}\n");
    return 1;
  }
  nlohmann::json j;
  int r = init(0), n = 0;
  j["cuInit"] = r;
  if (r == 0) j["cuDeviceGetCount"] = r = count(&n);
  if (r == 0 && n > 0) {
    void* ctx = nullptr;
    bool retained = (r = retain(&ctx, 0)) == 0;
    if (r == 0) r = set(ctx);
    j["context"] = r;
    unsigned long long p = 0;
    if (r == 0) j["cuMemAlloc"] = r = alloc(&p, 1 << 20);
    if (r == 0) mfree(p);
    if (retained) release(0);
  }
  // Who ran it, by its own number and /proc's: they differ in a PID namespace that kept
  // the host's /proc (what the GPU kit's probe.pid_namespace shows).
  char self[32] = {};
  if (readlink("/proc/self", self, sizeof self - 1) <= 0) snprintf(self, sizeof self, "?");
  j["pid"] = getpid();
  j["proc_self"] = self;
  printf("%s\n", j.dump().c_str());
  return r == 0 ? 0 : 1;
}

// What a job that cannot start the driver does with /proc: the probe again with
// FERRY_TRACE_PROC=on, and each /proc call or thread naming it reports as failed ("ferry:
// open(/proc/...) as ...: No such file or directory"), once each, the first 8.
nlohmann::json proc_failures(const std::vector<std::string>& argv) {
  std::string out;
  capture(argv, out, 120, {"FERRY_TRACE_PROC=on"});
  nlohmann::json failed = nlohmann::json::array();
  std::set<std::string> seen;
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line) && failed.size() < 8;) {
    if (line.rfind("ferry: ", 0) != 0 || line.ends_with(": ok")) continue;
    std::string what = line.substr(7);
    // Only the shim's reports: a call, its arguments in parentheses, then the outcome.
    auto open = what.find('('), close = what.find(')', open == std::string::npos ? 0 : open);
    if (open == std::string::npos || close == std::string::npos || what.find(": ", close) == std::string::npos) continue;
    if (seen.insert(what).second) failed.push_back(what);
  }
  return failed;
}

// how: --pid-namespace or --host-pids.
nlohmann::json driver_in_job(const std::vector<std::string>& driver_args, const char* how) {
  std::string self = self_exe();
  if (access(self.c_str(), X_OK) != 0) return {{"ok", false}, {"error", "cannot find ferry's own program"}};
  std::vector<std::string> argv = {self, "run", how};
  argv.insert(argv.end(), driver_args.begin(), driver_args.end());
  argv.insert(argv.end(), {"--", self, "__driver-start"});
  std::string out;
  int rc = capture(argv, out, 120);
  // The probe's report is the one line that starts with '{' (ferry run's own messages,
  // and the driver's, are text).
  nlohmann::json j = nlohmann::json::object();
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    if (line.empty() || line[0] != '{') continue;
    try {
      if (auto p = nlohmann::json::parse(line); p.is_object()) j = p;
    } catch (const nlohmann::json::exception&) {
    }
  }
  j.erase("pid");  // the probe's, gone with it
  j.erase("proc_self");
  auto code = [&](const char* k) { return j.contains(k) && j[k].is_number_integer() ? j[k].get<int>() : 0; };
  std::string why;
  if (j.empty())
    why = rc == -2 ? "the job gave no answer in 120 s" : "a job could not be started: " + last_line(out);
  else if (j.contains("error") && j["error"].is_string())
    why = j["error"].get<std::string>();
  for (const char* k : {"cuInit", "cuDeviceGetCount", "context", "cuMemAlloc"})
    if (why.empty() && code(k) != 0) why = std::string(k) + " failed with " + cuda_error_text(code(k));
  if (why.empty() && rc != 0) why = "the job ended with " + std::to_string(rc) + ": " + last_line(out);
  j["ok"] = why.empty();
  if (!why.empty()) {
    j["error"] = why;
    // In a job of the host's pids /proc is the program's own: nothing to translate.
    if (strcmp(how, "--pid-namespace") == 0) j["proc_failures"] = proc_failures(argv);
  }
  return j;
}

nlohmann::json criu_report(std::vector<std::string>& problems, std::vector<std::string>& warnings) {
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
  return c;
}

nlohmann::json full_process_report(void* driver, const std::vector<std::string>& driver_args) {
  nlohmann::json j;
  std::vector<std::string> problems, warnings;
  j["criu"] = criu_report(problems, warnings);
  j["criu"]["hardware_breakpoints"] = hardware_breakpoints_work();
  bool api = driver != nullptr;
  for (const char* f : {"cuCheckpointProcessLock", "cuCheckpointProcessCheckpoint", "cuCheckpointProcessRestore",
                        "cuCheckpointProcessUnlock", "cuCheckpointProcessGetState"})
    api = api && dlsym(driver, f) != nullptr;
  j["driver_checkpoint_api"] = api;
  if (!api)
    problems.push_back("the CUDA driver has no checkpoint API (cuCheckpointProcess*: CUDA 12.8, driver r570 or newer)");
  // Jobs run in PID namespaces of their own, with the host's /proc: a driver that cannot
  // start there (the real one names its threads through /proc) rules dumps out.
  if (api && geteuid() != 0) {
    j["driver_in_job"] = {{"skipped", "PID namespaces need root"}};
  } else if (api) {
    nlohmann::json job = driver_in_job(driver_args, "--pid-namespace");
    j["driver_in_job"] = job;
    if (!job["ok"].get<bool>()) {
      std::string failed;
      for (auto& f : job["proc_failures"]) failed += (failed.empty() ? "" : "; ") + f.get<std::string>();
      std::string why = "the CUDA driver does not start in a job's PID namespace here (" +
                        job["error"].get<std::string>() + "); " +
                        (failed.empty() ? "none of its /proc calls failed" : "its /proc calls that failed: " + failed) +
                        "; FERRY_TRACE_PROC=on ferry run --pid-namespace -- PROGRAM shows the /proc paths it uses";
      // Where the driver failed in the namespace (not the job failing to start), a job
      // without one is the way (job.hpp) if the driver starts there.
      nlohmann::json host = job.contains("cuInit") ? driver_in_job(driver_args, "--host-pids") : nlohmann::json();
      if (!host.is_null()) j["driver_in_host_pids_job"] = host;
      if (!host.is_null() && host["ok"].get<bool>())
        warnings.push_back(why + ". Run jobs with ferry run --host-pids here: the driver starts in those, and their "
                                 "images are restored where their pids are free (not beside the original)");
      else if (!host.is_null())
        problems.push_back(why + "; nor in a job with the host's pids (" + host["error"].get<std::string>() + ")");
      else
        problems.push_back(why);
    }
  }
  j["problems"] = problems;
  j["warnings"] = warnings;
  j["ready"] = problems.empty();
  return j;
}

}  // namespace ferry::cli
