// Thread names across a PID namespace.
//
// glibc names (and reads the name of) another thread through
// /proc/self/task/<tid>/comm, with the tid as the caller's PID namespace numbers it. A
// `ferry run --pid-namespace` job keeps the /proc of the namespace it came from (its own
// would need a mount namespace, which CRIU would then have to dump and restore), so
// there that path names no thread, or another one. The real driver (580, on an H200)
// names its helper threads so during initialization and fails with
// CUDA_ERROR_OPERATING_SYSTEM when it cannot; the job then has no GPU at all. Where
// /proc counts pids differently from the caller, these two calls look the thread up by
// the tid its namespace gives it (the last field of NSpid in each task's status) and use
// the directory /proc knows it by. Everywhere else they are glibc's.
#include <dirent.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace {

// pid_t of the caller as /proc sees it differs from getpid(): /proc is another namespace's.
bool proc_is_foreign() {
  static int foreign = -1;
  if (foreign < 0) {
    char b[32] = {};
    ssize_t n = readlink("/proc/self", b, sizeof b - 1);
    foreign = n > 0 && atoi(b) != getpid() ? 1 : 0;
  }
  return foreign == 1;
}

// The tid of `th` in the caller's namespace: glibc encodes it in the thread's CPU clock id
// (the kernel's per-thread clock: ~tid << 3 | flags).
pid_t ns_tid(pthread_t th) {
  clockid_t c;
  if (pthread_getcpuclockid(th, &c) != 0) return -1;
  return static_cast<pid_t>(~(c >> 3));
}

// The /proc/self/task entry of the thread whose innermost NSpid is `tid`; 0 if none.
long proc_tid(pid_t tid) {
  DIR* d = opendir("/proc/self/task");
  if (!d) return 0;
  long found = 0;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    char path[300];
    snprintf(path, sizeof path, "/proc/self/task/%s/status", e->d_name);
    FILE* f = fopen(path, "re");
    if (!f) continue;
    char line[256];
    while (fgets(line, sizeof line, f)) {
      if (strncmp(line, "NSpid:", 6) != 0) continue;
      const char* last = strrchr(line, '\t');
      if (last && atol(last + 1) == tid) found = atol(e->d_name);
      break;
    }
    fclose(f);
    if (found) break;
  }
  closedir(d);
  return found;
}

// Opens the comm file of `th` by the name /proc knows it; -1 when that cannot be found.
int open_comm(pthread_t th, int flags) {
  pid_t tid = ns_tid(th);
  long at = tid > 0 ? proc_tid(tid) : 0;
  if (!at) return -1;
  char path[64];
  snprintf(path, sizeof path, "/proc/self/task/%ld/comm", at);
  return open(path, flags | O_CLOEXEC);
}

template <typename F>
F next(const char* name) {
  return reinterpret_cast<F>(dlsym(RTLD_NEXT, name));
}

}  // namespace

extern "C" {

__attribute__((visibility("default"))) int pthread_setname_np(pthread_t th, const char* name) {
  static auto real = next<int (*)(pthread_t, const char*)>("pthread_setname_np");
  if (!real) return ENOSYS;
  if (pthread_equal(th, pthread_self()) || !proc_is_foreign()) return real(th, name);
  size_t len = strlen(name);
  if (len > 15) return ERANGE;  // the kernel's limit, as glibc checks it
  int fd = open_comm(th, O_WRONLY);
  if (fd < 0) return real(th, name);
  ssize_t n = write(fd, name, len);
  int err = n < 0 ? errno : static_cast<size_t>(n) == len ? 0 : EIO;
  close(fd);
  return err;
}

__attribute__((visibility("default"))) int pthread_getname_np(pthread_t th, char* buf, size_t size) {
  static auto real = next<int (*)(pthread_t, char*, size_t)>("pthread_getname_np");
  if (!real) return ENOSYS;
  if (pthread_equal(th, pthread_self()) || !proc_is_foreign()) return real(th, buf, size);
  if (size < 16) return ERANGE;
  int fd = open_comm(th, O_RDONLY);
  if (fd < 0) return real(th, buf, size);
  ssize_t n = read(fd, buf, size - 1);
  int err = n < 0 ? errno : 0;
  close(fd);
  if (n >= 0) {
    if (n > 0 && buf[n - 1] == '\n') n--;
    buf[n] = '\0';
  }
  return err;
}

}  // extern "C"
