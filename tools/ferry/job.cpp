#include "job.hpp"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <set>

#include "client.hpp"
#include "init_dir.hpp"
#include "relay.hpp"
#include "sockets.hpp"

namespace ferry::cli {

namespace {

// Signals passed on to the program; the others (KILL, STOP, faults, CHLD) are not ours
// to forward.
constexpr int kForwarded[] = {SIGHUP,  SIGINT,  SIGQUIT, SIGUSR1, SIGUSR2, SIGPIPE, SIGALRM,
                              SIGTERM, SIGCONT, SIGTSTP, SIGTTIN, SIGTTOU, SIGXCPU, SIGWINCH};

// What ends a job of the host's pids: its init kills everything below it, reaps it, and
// ends as a killed init would (128+SIGKILL). kill_tree sends it once it has killed the
// rest itself; the kernel sends it when the init's `ferry run` dies (its parent-death
// signal), since without a namespace nothing else would end what the program forked. Not
// a signal anyone sends a job; where no handler is installed (anything else as the root)
// it kills.
constexpr int kEndJob = SIGPWR;

volatile sig_atomic_t g_target = 0;  // where forwarded signals go
volatile sig_atomic_t g_ending = 0;  // kEndJob received
volatile sig_atomic_t g_pending = 0;  // a signal with an action, not yet acted on
volatile sig_atomic_t g_wake = -1;    // a --host-pids init's wake-up pipe (write end)
sigset_t g_acted;                     // the signals that have an action

void wake_up() {
  int e = errno;
  if (g_wake >= 0) (void)!write(g_wake, "", 1);
  errno = e;
}

void forward(int sig) {
  if (sigismember(&g_acted, sig)) {
    g_pending = sig;
    return;
  }
  int e = errno;
  if (g_target > 0) kill(static_cast<pid_t>(g_target), sig);
  errno = e;
}

// Signals with an action interrupt the wait (no SA_RESTART) so it can act on them.
void forward_signals_to(pid_t target, const SignalActions& actions = {}) {
  g_target = target;
  sigemptyset(&g_acted);
  for (auto& [s, f] : actions) sigaddset(&g_acted, s);
  for (int s : kForwarded) {
    struct sigaction sa {};
    sa.sa_handler = forward;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = sigismember(&g_acted, s) ? 0 : SA_RESTART;
    sigaction(s, &sa, nullptr);
  }
}

// Kills everything below the calling init (defined with kill_tree, whose look it shares).
void kill_below(pid_t self);

int status_code(int st) { return WIFEXITED(st) ? WEXITSTATUS(st) : WIFSIGNALED(st) ? 128 + WTERMSIG(st) : 1; }

[[noreturn]] void exec_program(const std::vector<std::string>& argv, const sigset_t& old_mask) {
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  for (int s : kForwarded) sigaction(s, &dfl, nullptr);
  sigprocmask(SIG_SETMASK, &old_mask, nullptr);
  exec_command(argv);
}

// The job's init: pid 1 of its namespace, or (host_pids) a subreaper.
[[noreturn]] void init(const std::vector<std::string>& argv, const sigset_t& old_mask, const std::string& dir,
                       bool host_pids, bool own_net, pid_t parent, int keep_fds) {
  // The job lives as long as its `ferry run`: killed with it (a namespace's init by the
  // kernel; a subreaper ends its tree itself). CRIU gives the signal back to a restored
  // init, whose parent is then its `ferry restore` (--restore-sibling).
  prctl(PR_SET_PDEATHSIG, host_pids ? kEndJob : SIGKILL, 0, 0, 0);
  // Without a namespace, what the job's processes orphan must still come here (the
  // kernel gives orphans to the nearest subreaper), or it would leave the job's tree.
  if (host_pids) prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
  setsid();
  prctl(PR_SET_NAME, "ferry-init", 0, 0, 0);
  // The job starts with stdin, stdout and stderr only, and what --preserve-fds names: a
  // descriptor inherited from whoever started ferry run (a scheduler's log, a test
  // runner's file) would become part of the job's image, and CRIU refuses to restore a
  // file that changed since. The kept ones are, like stdio, the restorer's at a restore.
  const unsigned first = 3u + static_cast<unsigned>(keep_fds);
  if (syscall(SYS_close_range, first, ~0u, 0u) != 0)
    for (int fd = static_cast<int>(first); fd < 1024; fd++) close(fd);
  if (own_net)
    if (std::string why = loopback_up(); !why.empty()) {
      fprintf(stderr, "ferry run: --net-namespace: %s\n", why.c_str());
      _exit(127);
    }
  pid_t self = getpid();
  pid_t prog = fork();
  if (prog < 0) {
    fprintf(stderr, "ferry run: cannot start the program in its namespace: %s\n", strerror(errno));
    _exit(127);
  }
  if (prog == 0) {
    // Without a namespace the init's death does not end the program: the kernel must,
    // where the init is killed outright (SIGKILL: kill_tree's last resort, or by hand)
    // rather than told to end.
    if (host_pids) prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    if (host_pids && getppid() != self) _exit(128 + SIGKILL);  // the init died before that
    exec_program(argv, old_mask);
  }
  // Out of the program's directory, for CRIU's sake (init_dir.hpp).
  if (!dir.empty() && chdir(dir.c_str()) != 0)
    fprintf(stderr, "ferry run: the job's init stays in the program's working directory (cannot enter %s: %s); a dump "
                    "needs CRIU able to create a directory there\n", dir.c_str(), strerror(errno));
  forward_signals_to(prog);
  sigset_t mask = old_mask;
  // A subreaper must notice kEndJob whenever it comes, also between its check of the flag
  // and a wait that no signal would then interrupt (a waitpid for a child that never
  // ends by itself): so it waits on a pipe that kEndJob's handler and SIGCHLD's write to,
  // and reaps without blocking.
  int wake[2] = {-1, -1};
  if (host_pids && pipe2(wake, O_CLOEXEC | O_NONBLOCK) == 0) g_wake = wake[1];
  if (host_pids) {
    struct sigaction sa {};
    sa.sa_handler = [](int) {
      g_ending = 1;
      wake_up();
    };
    sigemptyset(&sa.sa_mask);
    // Not blocked while its handler runs: kill_tree takes a root that blocks it for one
    // CRIU is still restoring, and kills it at once.
    sa.sa_flags = SA_NODEFER;
    sigaction(kEndJob, &sa, nullptr);
    sigdelset(&mask, kEndJob);  // kill_tree takes it blocked for a root that is no init
    sa.sa_handler = [](int) { wake_up(); };
    sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
    sigaction(SIGCHLD, &sa, nullptr);
    sigdelset(&mask, SIGCHLD);
  }
  sigprocmask(SIG_SETMASK, &mask, nullptr);
  // ferry run died before the signal was asked for: the kernel will not send it.
  if (host_pids && getppid() != parent) g_ending = 1;
  int code = 1;
  bool swept = false;
  for (;;) {
    if (g_ending && !swept) {
      swept = true;
      kill_below(self);
    }
    int st = 0;
    pid_t p = waitpid(-1, &st, wake[0] >= 0 ? WNOHANG : 0);
    if (p == 0) {  // children left, none ended: sleep until a signal says something did
      pollfd w{wake[0], POLLIN, 0};
      poll(&w, 1, -1);
      char drain[64];
      while (read(wake[0], drain, sizeof drain) > 0) {
      }
      continue;
    }
    if (p < 0) {
      if (errno == EINTR) continue;
      break;  // ECHILD: nothing left in the job
    }
    if (p == prog) {
      code = status_code(st);
      g_target = 0;
    }
  }
  _exit(g_ending ? 128 + SIGKILL : code);
}

std::set<int> g_launcher_fds;  // note_launcher_fds

}  // namespace

void note_launcher_fds() {
  // A closed stdin, stdout or stderr would be taken by ferry's first open (a lock file),
  // then handed to CRIU and the job as theirs: /dev/null stands in, as for a daemon.
  for (int fd = 0; fd <= 2; fd++)
    if (fcntl(fd, F_GETFD) < 0 && errno == EBADF) {
      int null = open("/dev/null", O_RDWR);
      if (null >= 0 && null != fd) close(null);  // a lower one closed too, and not made: leave it
    }
  DIR* d = opendir("/proc/self/fd");
  if (!d) return;
  while (dirent* e = readdir(d)) {
    char* end = nullptr;
    long fd = strtol(e->d_name, &end, 10);
    if (end == e->d_name || *end || fd < 3 || fd == dirfd(d)) continue;
    int flags = fcntl(static_cast<int>(fd), F_GETFD);
    if (flags >= 0 && !(flags & FD_CLOEXEC)) g_launcher_fds.insert(static_cast<int>(fd));
  }
  closedir(d);
}

bool from_launcher(int fd) { return g_launcher_fds.count(fd) > 0; }

bool no_process(pid_t p) { return kill(p, 0) != 0 && errno == ESRCH; }

bool dead(pid_t p) {
  const std::string proc = "/proc/" + std::to_string(p);
  if (!std::strchr("ZX", stat_from_state(proc + "/stat")[0])) return false;
  // A first thread that ended before the others shows Z while the process lives on.
  // Listed twice: a listing of /proc/PID/task may skip an entry while a thread exits.
  for (int look = 0; look < 2; look++)
    for (pid_t t : thread_ids(p))
      if (!std::strchr("ZX", stat_from_state(proc + "/task/" + std::to_string(t) + "/stat")[0])) return false;
  return true;
}

std::string stat_from_state(const std::string& path) {
  std::ifstream in(path);
  std::string stat;
  std::getline(in, stat);
  auto paren = stat.rfind(')');
  return paren != std::string::npos && paren + 2 < stat.size() ? stat.substr(paren + 2) : "X";
}

std::vector<pid_t> thread_ids(pid_t pid) {
  std::vector<pid_t> out;
  DIR* d = opendir(("/proc/" + std::to_string(pid) + "/task").c_str());
  if (!d) return out;
  while (dirent* e = readdir(d))
    if (pid_t t = static_cast<pid_t>(atoi(e->d_name)); t > 0) out.push_back(t);
  closedir(d);
  return out;
}

std::vector<pid_t> child_pids(pid_t pid) {
  std::vector<pid_t> out;
  for (pid_t t : thread_ids(pid)) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/task/" + std::to_string(t) + "/children");
    pid_t c;
    while (in >> c) out.push_back(c);
  }
  return out;
}

namespace {

// Whether every thread of pid has stopped (or died, or is gone).
bool all_stopped(pid_t pid) {
  for (pid_t t : thread_ids(pid))
    if (!std::strchr("TtZX", stat_from_state("/proc/" + std::to_string(pid) + "/task/" + std::to_string(t) + "/stat")[0]))
      return false;
  return true;
}

// The parent of zombie p; 0 when p is no zombie (or gone).
pid_t zombie_parent(pid_t p) {
  std::string s = stat_from_state("/proc/" + std::to_string(p) + "/stat");
  return s[0] == 'Z' ? static_cast<pid_t>(atoi(s.c_str() + 1)) : 0;
}

// Whether sig is in the signal set a line of pid's /proc status names ("SigBlk", "ShdPnd").
bool signal_in(pid_t pid, const char* set, int sig) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  const std::string key = std::string(set) + ":";
  for (std::string line; std::getline(in, line);)
    if (line.rfind(key, 0) == 0) return (std::stoull(line.substr(key.size()), nullptr, 16) >> (sig - 1)) & 1;
  return false;
}

// Whether pid blocks sig (a process CRIU is still restoring blocks them all).
bool blocks(pid_t pid, int sig) { return signal_in(pid, "SigBlk", sig); }

// Signals go to processes by pidfd: a pid may be reused once its process is reaped,
// which here happens while this runs.
int pidfd_of(pid_t p) { return static_cast<int>(syscall(SYS_pidfd_open, p, 0)); }
void signal_fd(int fd, int sig) { syscall(SYS_pidfd_send_signal, fd, sig, nullptr, 0); }

struct Proc {
  pid_t pid;
  int fd;  // pidfd, to be closed
};

// Every process of the tree under root, stopped (root too, unless it is the caller).
std::vector<Proc> stop_tree(pid_t root) {
  const bool self = root == getpid();
  std::vector<Proc> all;
  std::set<pid_t> seen;
  // Stopped first, so that nothing forks further. A fork already past the kernel's
  // signal check completes after the SIGSTOP, and its child is listed only then: so each
  // look waits until everything it found has stopped, and the next look finds what such
  // a fork added, until one finds nothing new.
  for (bool grew = true; grew;) {
    grew = false;
    std::vector<pid_t> todo = {root};
    while (!todo.empty()) {
      pid_t p = todo.back();
      todo.pop_back();
      if (seen.insert(p).second) {
        int fd = pidfd_of(p);
        if (fd < 0) continue;  // gone
        if (!(self && p == root)) signal_fd(fd, SIGSTOP);
        all.push_back({p, fd});
        grew = true;
      }
      for (pid_t c : child_pids(p)) todo.push_back(c);
    }
    auto stopped = [&](const Proc& x) { return (self && x.pid == root) || all_stopped(x.pid); };
    for (int i = 0; grew && i < 200 && !std::all_of(all.begin(), all.end(), stopped); i++) usleep(5000);
  }
  return all;
}

void kill_below(pid_t self) {
  for (auto& x : stop_tree(self)) {
    if (x.pid != self) signal_fd(x.fd, SIGKILL);
    close(x.fd);
  }
}

}  // namespace

std::vector<pid_t> kill_tree(pid_t root) {
  std::vector<Proc> all = stop_tree(root);
  int root_fd = -1;
  for (auto& x : all) {
    if (x.pid == root)
      root_fd = x.fd;
    else
      signal_fd(x.fd, SIGKILL);
  }
  // Their pids are free only once they are reaped, which a restore of the job's image in
  // their place needs. The init (a subreaper: what dies below it comes to it) reaps them
  // once it runs again and then ends, told that it was killed; the host's init would
  // reap them too, but in its own time (in some containers never). A root that is not
  // ferry's init dies of kEndJob, or, blocking it (CRIU had not finished restoring it),
  // is killed at once.
  std::vector<pid_t> left;
  if (root_fd >= 0) {
    signal_fd(root_fd, kEndJob);
    signal_fd(root_fd, SIGCONT);
    pollfd p{root_fd, POLLIN, 0};  // readable once the root has ended
    int r = 0;
    if (!blocks(root, kEndJob)) {
      do r = poll(&p, 1, 30000);
      while (r < 0 && errno == EINTR);
    }
    if (r <= 0) signal_fd(root_fd, SIGKILL);  // not reaping: the host's init must (or this process, a subreaper)
    for (int i = 0; i < (r > 0 ? 50 : 500); i++) {
      left.clear();
      bool waiting = false;  // for a reaper that is at work: this process, or the init
      for (auto& x : all) {
        if (x.pid == root) continue;
        // Orphaned to this process (a subreaper: ferry restore) once the root was killed.
        waitpid(x.pid, nullptr, WNOHANG);
        if (no_process(x.pid)) continue;
        left.push_back(x.pid);
        // A zombie of another subreaper (the guard's caller, blocked until it ends) is
        // not reaped while this waits.
        pid_t parent = zombie_parent(x.pid);
        waiting = waiting || parent == 0 || parent == root || parent == getpid() || parent == 1;
      }
      if (!waiting) break;
      usleep(10000);
    }
  }
  for (auto& x : all) close(x.fd);
  return left;
}

void end_orphans() {
  kill_below(getpid());
  for (int i = 0; i < 500; i++) {
    pid_t p = waitpid(-1, nullptr, WNOHANG);
    if (p < 0 && errno != EINTR) return;  // ECHILD: all reaped
    if (p == 0) usleep(10000);
  }
  if (auto left = child_pids(getpid()); !left.empty())
    fprintf(stderr, "ferry: the job's processes %s were killed but have not ended in 5 s: their pids stay taken\n",
            pid_list(left).c_str());
}

bool told_to_end(pid_t init) { return signal_in(init, "ShdPnd", kEndJob) || signal_in(init, "SigPnd", kEndJob); }

std::string pid_list(const std::vector<pid_t>& pids) {
  std::string s;
  for (pid_t p : pids) s += (s.empty() ? "" : ", ") + std::to_string(p);
  return s;
}

void exec_command(const std::vector<std::string>& argv) {
  std::vector<char*> a;
  for (auto& s : argv) a.push_back(const_cast<char*>(s.c_str()));
  a.push_back(nullptr);
  execvp(a[0], a.data());
  fprintf(stderr, "ferry run: cannot run %s: %s\n", a[0], strerror(errno));
  _exit(127);
}

int wait_job(pid_t init, const SignalActions& actions, bool* killed) {
  forward_signals_to(init, actions);
  // A signal with an action is taken only inside ppoll, which unblocks it atomically: one
  // that comes while the loop is elsewhere (an action running, or before the first wait
  // -- those ferry restore deferred, process_image.cpp) stays pending until then, where a
  // flag checked before a plain wait could be set just after the check and lie unseen.
  sigset_t acted, found, during;
  sigemptyset(&acted);
  for (auto& [s, f] : actions) sigaddset(&acted, s);
  sigprocmask(SIG_BLOCK, &acted, &found);
  during = found;
  for (auto& [s, f] : actions) sigdelset(&during, s);
  const int fd = pidfd_of(init);  // readable once the init has ended
  bool dumped = false, lost = false;
  int st = 0;
  for (;;) {
    if (int sig = g_pending; sig && !dumped) {
      g_pending = 0;
      auto it = actions.find(sig);
      if (it != actions.end() && it->second(init))
        dumped = true;
      else
        kill(init, sig);  // the action failed: the job gets the signal as it would without ferry
      continue;
    }
    pid_t r = -1;
    if (fd >= 0) {
      pollfd p{fd, POLLIN, 0};
      if (ppoll(&p, 1, nullptr, &during) < 0) {
        if (errno == EINTR) continue;
        lost = true;
        break;
      }
      r = waitpid(init, &st, 0);
    } else {  // no pidfd (a seccomp filter): a wait a signal may slip past, just before it
      sigprocmask(SIG_SETMASK, &during, nullptr);
      if (!g_pending) r = waitpid(init, &st, 0);
      sigprocmask(SIG_BLOCK, &acted, nullptr);
      if (r < 0 && g_pending) continue;
    }
    if (r == init) {
      g_target = 0;  // reaped: its pid may be another process's from now on
      break;
    }
    if (errno != EINTR) {
      lost = true;
      break;
    }
  }
  if (fd >= 0) close(fd);
  sigprocmask(SIG_SETMASK, &found, nullptr);
  if (lost) return 70;
  // Anything still below this process came from the job: an init killed outright left
  // it, or CRIU restored it under a helper that has gone (a session's leader).
  int subreaper = 0;
  if (!dumped && prctl(PR_GET_CHILD_SUBREAPER, &subreaper, 0, 0, 0) == 0 && subreaper) end_orphans();
  if (killed) *killed = !dumped && WIFSIGNALED(st);
  return dumped ? 0 : status_code(st);
}

int run_job(const std::vector<std::string>& argv, const SignalActions& actions, bool host_pids, bool own_net,
            int keep_fds) {
  // Signals that arrive before the handlers are in place wait instead of killing.
  sigset_t all, old;
  sigfillset(&all);
  sigprocmask(SIG_BLOCK, &all, &old);
  // clone with CLONE_NEWPID, like a fork whose child is pid 1 of a new namespace. Not
  // unshare(CLONE_NEWPID) + fork: that would leave ferry run unable to start threads or
  // further processes of its own (the kernel refuses CLONE_THREAD once the namespace
  // for children differs), and it must run CRIU from outside the job (--on-signal dump).
  std::string dir;
  try {
    dir = make_init_dir();
  } catch (const ClientError& e) {
    fprintf(stderr, "ferry run: the job's init stays in the program's working directory (%s); a dump needs CRIU "
                    "able to create a directory there\n", e.message.c_str());
  }
  // A service's stdout and stderr (journald's stream) in a network of its own (relay.hpp).
  OutputRelay relay;
  if (std::string why; own_net && !relay.wrap({1, 2}, &why)) {
    sigprocmask(SIG_SETMASK, &old, nullptr);
    if (!dir.empty()) rmdir(dir.c_str());
    fprintf(stderr, "ferry run: --net-namespace: %s\n", why.c_str());
    return 78;
  }
  // Should the init be killed outright, what it had below it comes here (wait_job).
  if (host_pids) prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
  unsigned long flags = (host_pids ? 0 : CLONE_NEWPID) | (own_net ? CLONE_NEWNET : 0) | SIGCHLD;
  pid_t parent = getpid();
  pid_t init_pid = static_cast<pid_t>(syscall(SYS_clone, flags, nullptr, nullptr, nullptr, nullptr));
  if (init_pid < 0) {
    int e = errno;
    sigprocmask(SIG_SETMASK, &old, nullptr);
    if (!dir.empty()) rmdir(dir.c_str());
    const char* root = e == EPERM ? "; it needs root (CAP_SYS_ADMIN)" : "";
    if (own_net)
      fprintf(stderr, "ferry run: --net-namespace: cannot start the job in %s of its own (%s)%s\n",
              host_pids ? "a network namespace" : "PID and network namespaces", strerror(e), root);
    else if (host_pids)
      fprintf(stderr, "ferry run: --host-pids: cannot start the job's init (%s)\n", strerror(e));
    else
      fprintf(stderr, "ferry run: --pid-namespace: cannot start the job in a PID namespace of its own (%s)%s\n",
              strerror(e), root);
    return 78;
  }
  if (init_pid == 0) {
    relay.adopt_in_job();
    init(argv, old, dir, host_pids, own_net, parent, keep_fds);
  }
  relay.close_write_ends();
  relay.start();
  // The kept descriptors are the job's now: a reader waiting for their end sees it when
  // the job's last holder ends, not when ferry run does.
  for (int fd = 3; fd < 3 + keep_fds; fd++) close(fd);
  forward_signals_to(init_pid, actions);
  sigprocmask(SIG_SETMASK, &old, nullptr);
  bool killed = false;
  int code = wait_job(init_pid, actions, &killed);
  relay.finish("ferry run");
  // A job killed from outside may have been dumped by CRIU itself, whose restore needs
  // the directory as it was; ferry's own images make it again.
  if (!killed) remove_init_dir_if_unused(dir);
  return code;
}

std::vector<int> forwarded_signals() { return {std::begin(kForwarded), std::end(kForwarded)}; }

}  // namespace ferry::cli
