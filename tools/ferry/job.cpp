#include "job.hpp"

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>

namespace ferry::cli {

namespace {

// Signals passed on to the program; the others (KILL, STOP, faults, CHLD) are not ours
// to forward.
constexpr int kForwarded[] = {SIGHUP,  SIGINT,  SIGQUIT, SIGUSR1, SIGUSR2, SIGPIPE, SIGALRM,
                              SIGTERM, SIGCONT, SIGTSTP, SIGTTIN, SIGTTOU, SIGXCPU, SIGWINCH};

volatile sig_atomic_t g_target = 0;  // where forwarded signals go

void forward(int sig) {
  if (g_target > 0) kill(static_cast<pid_t>(g_target), sig);
}

void forward_signals_to(pid_t target) {
  g_target = target;
  struct sigaction sa {};
  sa.sa_handler = forward;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  for (int s : kForwarded) sigaction(s, &sa, nullptr);
}

int status_code(int st) { return WIFEXITED(st) ? WEXITSTATUS(st) : WIFSIGNALED(st) ? 128 + WTERMSIG(st) : 1; }

[[noreturn]] void exec_program(const std::vector<std::string>& argv, const sigset_t& old_mask) {
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  for (int s : kForwarded) sigaction(s, &dfl, nullptr);
  sigprocmask(SIG_SETMASK, &old_mask, nullptr);
  exec_command(argv);
}

// pid 1 of the job's namespace.
[[noreturn]] void init(const std::vector<std::string>& argv, const sigset_t& old_mask) {
  // The job lives as long as its `ferry run`: killed with it (a restored job will get a
  // new parent and must clear this; see docs/control.md).
  prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
  setsid();
  prctl(PR_SET_NAME, "ferry-init", 0, 0, 0);
  pid_t prog = fork();
  if (prog < 0) {
    fprintf(stderr, "ferry run: cannot start the program in its namespace: %s\n", strerror(errno));
    _exit(127);
  }
  if (prog == 0) exec_program(argv, old_mask);
  forward_signals_to(prog);
  sigprocmask(SIG_SETMASK, &old_mask, nullptr);
  int code = 1;
  for (;;) {
    int st = 0;
    pid_t p = waitpid(-1, &st, 0);
    if (p < 0) {
      if (errno == EINTR) continue;
      break;  // ECHILD: nothing left in the job
    }
    if (p == prog) {
      code = status_code(st);
      g_target = 0;
    }
  }
  _exit(code);
}

}  // namespace

void exec_command(const std::vector<std::string>& argv) {
  std::vector<char*> a;
  for (auto& s : argv) a.push_back(const_cast<char*>(s.c_str()));
  a.push_back(nullptr);
  execvp(a[0], a.data());
  fprintf(stderr, "ferry run: cannot run %s: %s\n", a[0], strerror(errno));
  _exit(127);
}

int run_job(const std::vector<std::string>& argv) {
  if (unshare(CLONE_NEWPID) != 0) {
    fprintf(stderr, "ferry run: --pid-namespace: cannot create a PID namespace (%s)%s\n", strerror(errno),
            errno == EPERM ? "; it needs root (CAP_SYS_ADMIN)" : "");
    return 78;
  }
  // Signals that arrive before the handlers are in place wait instead of killing.
  sigset_t all, old;
  sigfillset(&all);
  sigprocmask(SIG_BLOCK, &all, &old);
  pid_t init_pid = fork();
  if (init_pid < 0) {
    sigprocmask(SIG_SETMASK, &old, nullptr);
    fprintf(stderr, "ferry run: cannot start the job: %s\n", strerror(errno));
    return 78;
  }
  if (init_pid == 0) init(argv, old);
  forward_signals_to(init_pid);
  sigprocmask(SIG_SETMASK, &old, nullptr);
  int st = 0;
  while (waitpid(init_pid, &st, 0) < 0)
    if (errno != EINTR) return 70;
  return status_code(st);
}

}  // namespace ferry::cli
