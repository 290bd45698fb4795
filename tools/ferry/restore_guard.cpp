#include "restore_guard.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace ferry::cli {

namespace {

pid_t pid_in(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  char buf[32] = {};
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  return n > 0 ? static_cast<pid_t>(atoi(buf)) : 0;
}

// The processes with a descriptor open on path.
std::vector<pid_t> holding(const std::string& path) {
  std::vector<pid_t> v;
  DIR* proc = opendir("/proc");
  if (!proc) return v;
  char buf[4096];
  while (dirent* e = readdir(proc)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    std::string fds = std::string("/proc/") + e->d_name + "/fd";
    DIR* d = opendir(fds.c_str());
    if (!d) continue;
    while (dirent* f = readdir(d)) {
      ssize_t n = readlinkat(dirfd(d), f->d_name, buf, sizeof buf - 1);
      if (n > 0 && std::string(buf, static_cast<size_t>(n)) == path) {
        v.push_back(static_cast<pid_t>(atoi(e->d_name)));
        break;
      }
    }
    closedir(d);
  }
  closedir(proc);
  return v;
}

[[noreturn]] void guard(int in, const std::string& work) {
  setsid();
  for (int s : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE, SIGUSR1, SIGUSR2}) signal(s, SIG_IGN);
  int null = open("/dev/null", O_RDWR);
  for (int fd = 0; fd <= 2; fd++) dup2(null, fd);
  dup2(in, 3);
  if (syscall(SYS_close_range, 4u, ~0u, 0u) != 0)
    for (int fd = 4; fd < 1024; fd++) close(fd);
  std::vector<pid_t> watched;
  std::string line;
  char c;
  for (;;) {
    ssize_t n = read(3, &c, 1);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // ferry is gone
    if (c != '\n') {
      line += c;
      continue;
    }
    if (line == "done") _exit(0);
    if (line.rfind("watch ", 0) == 0) watched.push_back(static_cast<pid_t>(atoi(line.c_str() + 6)));
    line.clear();
  }
  // CRIU first, so that it makes nothing more; then the init, whose death ends its
  // namespace's every process, and whatever still holds CRIU's log: the processes CRIU
  // has forked but not yet made the job's (the init among them before the action script
  // names it).
  for (pid_t p : watched) kill(p, SIGKILL);
  for (const char* f : {kRootPidFile, "init.pid"})
    if (pid_t p = pid_in(work + "/" + f); p > 1) kill(p, SIGKILL);
  for (pid_t p : holding(work + "/restore.log")) kill(p, SIGKILL);
  _exit(0);
}

}  // namespace

RestoreGuard::RestoreGuard(std::string work_dir) {
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) return;  // no guard: a restore as before
  pid_t g = fork();
  if (g == 0) {
    close(p[1]);
    guard(p[0], work_dir);
  }
  close(p[0]);
  if (g < 0) {
    close(p[1]);
    return;
  }
  fd_ = p[1];
  guard_ = g;
}

RestoreGuard::~RestoreGuard() { done(); }

void RestoreGuard::watch(pid_t p) {
  if (fd_ < 0) return;
  std::string line = "watch " + std::to_string(p) + "\n";
  (void)!write(fd_, line.data(), line.size());
}

void RestoreGuard::done() {
  if (fd_ < 0) return;
  (void)!write(fd_, "done\n", 5);
  close(fd_);
  fd_ = -1;
  while (waitpid(guard_, nullptr, 0) < 0 && errno == EINTR) {
  }
}

int criu_action_script(const char* action) {
  const char* work = getenv(kRestoreWorkEnv);
  const char* init = getenv("CRTOOLS_INIT_PID");
  if (!work || !init || strcmp(action, "setup-namespaces") != 0) return 0;
  std::string path = std::string(work) + "/" + kRootPidFile, tmp = path + ".tmp";
  FILE* f = fopen(tmp.c_str(), "we");
  if (!f) return 0;  // the guard then knows the init only from CRIU's pidfile
  fprintf(f, "%s\n", init);
  if (fclose(f) == 0) rename(tmp.c_str(), path.c_str());
  return 0;
}

}  // namespace ferry::cli
