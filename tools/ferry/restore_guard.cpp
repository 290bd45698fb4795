#include "restore_guard.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cerrno>
#include <cstdio>
#include <exception>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "init_dir.hpp"
#include "job.hpp"
#include "sockets.hpp"

namespace ferry::cli {

namespace {

pid_t pid_in(const std::string& path) {
  std::ifstream in(path);
  long p = 0;
  return (in >> p) ? static_cast<pid_t>(p) : 0;
}

// The processes with path open for writing (CRIU and the processes it forked write its
// log; a person reading it does not count).
std::vector<pid_t> writing(const std::string& path) {
  std::vector<pid_t> v;
  DIR* proc = opendir("/proc");
  if (!proc) return v;
  while (dirent* e = readdir(proc)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    pid_t p = static_cast<pid_t>(atoi(e->d_name));
    for (auto& [fd, link] : fd_links(p))
      if (link == path && (fd_flags(p, fd) & O_ACCMODE) != O_RDONLY) {
        v.push_back(p);
        break;
      }
  }
  closedir(proc);
  return v;
}

[[noreturn]] void guard(int in) {
  setsid();
  for (int s : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE, SIGUSR1, SIGUSR2}) signal(s, SIG_IGN);
  // Out of 0-2 first: ferry may have been started with those closed.
  int keep = fcntl(in, F_DUPFD, 3);
  int null = open("/dev/null", O_RDWR);
  for (int fd = 0; fd <= 2; fd++)
    if (null != fd) dup2(null, fd);
  dup2(keep, 3);
  if (syscall(SYS_close_range, 4u, ~0u, 0u) != 0)
    for (int fd = 4; fd < 1024; fd++) close(fd);
  std::vector<pid_t> watched;
  std::string work, init_dir, line;
  bool keep_work = false;  // its log named in ferry's error
  bool whole_tree = false;  // a job without a PID namespace: the init's death ends nothing else
  char c;
  for (;;) {
    ssize_t n = read(3, &c, 1);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // ferry is gone, or wants what it told of killed
    if (c != '\n') {
      line += c;
      continue;
    }
    if (line == "done") _exit(0);
    auto arg = [&](const char* key) {
      size_t k = strlen(key);
      return line.size() > k && line.compare(0, k, key) == 0 && line[k] == ' ' ? line.substr(k + 1) : std::string();
    };
    if (auto p = arg("watch"); !p.empty()) watched.push_back(static_cast<pid_t>(atoi(p.c_str())));
    if (auto p = arg("unwatch"); !p.empty())
      watched.erase(std::remove(watched.begin(), watched.end(), static_cast<pid_t>(atoi(p.c_str()))), watched.end());
    if (auto p = arg("work"); !p.empty()) work = p;
    if (auto p = arg("init-dir"); !p.empty()) init_dir = p;
    if (line == "keep-work") keep_work = true;
    if (line == "whole-tree") whole_tree = true;
    line.clear();
  }
  // CRIU first, so that it makes nothing more; then the init, whose death ends its
  // namespace's every process, and whatever CRIU forked that still runs its code.
  std::vector<pid_t> killed = watched;
  for (pid_t p : watched) kill(p, SIGKILL);
  if (!work.empty()) {
    for (const char* f : {kRootPidFile, kCriuPidFile})
      if (pid_t p = pid_in(work + "/" + f); p > 1 && std::find(killed.begin(), killed.end(), p) == killed.end()) {
        killed.push_back(p);
        if (whole_tree)
          kill_tree(p);
        else
          kill(p, SIGKILL);
      }
  }
  // A process CRIU forked may be forking itself when it is killed (the init forking the
  // program, in a job without a namespace, where nothing else kills a late child); that
  // child, which holds the log too, shows only once the fork completes. So look again
  // until a few looks in a row find nobody new (one killed that still holds the log, slow
  // to let go of its files, is no news).
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(3);
  for (int quiet = 0; !work.empty() && quiet < 3 && std::chrono::steady_clock::now() < until;) {
    quiet++;
    for (pid_t p : writing(work + "/" + kCriuLog)) {
      kill(p, SIGKILL);
      if (std::find(killed.begin(), killed.end(), p) == killed.end()) killed.push_back(p), quiet = 0;
    }
    usleep(10000);
  }
  for (int i = 0; i < 200 && !std::all_of(killed.begin(), killed.end(), dead); i++) usleep(10000);
  std::error_code ec;
  if (!work.empty() && !keep_work) std::filesystem::remove_all(work, ec);
  remove_init_dir_if_unused(init_dir);
  _exit(0);
}

}  // namespace

RestoreGuard::RestoreGuard() {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return;
  pid_t g = fork();
  if (g == 0) {
    close(sv[1]);
    guard(sv[0]);
  }
  close(sv[0]);
  if (g < 0) {
    close(sv[1]);
    return;
  }
  fd_ = sv[1];
  guard_ = g;
}

RestoreGuard::~RestoreGuard() {
  // Left by an exception nobody in the restore caught (main reports it as a bug): what
  // CRIU restored may be half set up, so it goes, as if this process had died.
  if (std::uncaught_exceptions() > 0)
    clean_up();
  else
    done();
}

void RestoreGuard::say(const std::string& line) {
  if (fd_ < 0) return;
  std::string l = line + "\n";
  // A guard that is gone must not take this process with it (SIGPIPE).
  (void)!send(fd_, l.data(), l.size(), MSG_NOSIGNAL);
}

void RestoreGuard::work_dir(const std::string& path) { say("work " + path); }
void RestoreGuard::init_dir(const std::string& path) { say("init-dir " + path); }
void RestoreGuard::watch(pid_t p) { say("watch " + std::to_string(p)); }
void RestoreGuard::unwatch(pid_t p) { say("unwatch " + std::to_string(p)); }
void RestoreGuard::whole_tree() { say("whole-tree"); }

void RestoreGuard::end(bool killing) {
  if (fd_ < 0) return;
  if (!killing) say("done");
  close(fd_);
  fd_ = -1;
  while (waitpid(guard_, nullptr, 0) < 0 && errno == EINTR) {
  }
}

void RestoreGuard::done() { end(false); }
void RestoreGuard::clean_up() {
  say("keep-work");
  end(true);
}

int criu_action_script(const char* action) {
  const char* work = getenv(kRestoreWorkEnv);
  const char* init = getenv("CRTOOLS_INIT_PID");
  if (!work || !init || strcmp(action, "setup-namespaces") != 0) return 0;
  std::string path = std::string(work) + "/" + kRootPidFile, tmp = path + ".tmp";
  FILE* f = fopen(tmp.c_str(), "we");
  if (!f) return 0;  // the guard then knows the init from CRIU's log and pidfile
  fprintf(f, "%s\n", init);
  if (fclose(f) == 0) rename(tmp.c_str(), path.c_str());
  return 0;
}

}  // namespace ferry::cli
