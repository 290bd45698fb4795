// Thread names and /proc paths across a PID namespace.
//
// glibc names (and reads the name of) another thread through
// /proc/self/task/<tid>/comm, with the tid as the caller's PID namespace numbers it. A
// `ferry run --pid-namespace` job keeps the /proc of the namespace it came from (its own
// would need a mount namespace, which CRIU would then have to dump and restore), so
// there that path names no thread, or another one. The real driver (570 and later)
// writes its threads' names so during initialization, and stats /proc/<getpid()>/ns/pid,
// and fails with CUDA_ERROR_OPERATING_SYSTEM in a job; the job then has no GPU at all.
// Which of its /proc calls fails, and whether it names threads through
// pthread_setname_np or by opening the file itself, is not known, so all are caught:
// where /proc counts pids differently from the caller,
// - pthread_setname_np/getname_np for another thread look it up by the tid its
//   namespace gives it (the last field of NSpid in each task's status) and use the
//   directory /proc knows it by;
// - every call that names a path -- open, fopen, the stat family, statx, access,
//   readlink, realpath, opendir, with their *at, 64-bit, fortified and old-glibc names --
//   rewrites one that names the caller by its namespace's numbers -- /proc/<getpid()>/...,
//   and /proc/self/task/<tid>/... or /proc/<tid>/... of one of its threads -- to the
//   names /proc knows. Any other path is passed on untouched, at the cost of one compare.
//   Paths reached by raw system calls, and other processes' pids, are beyond it.
// Everywhere else these calls are glibc's. FERRY_TRACE_PROC=on reports each such path and
// thread name with its outcome on stderr: the driver's reasons are its own, and on a GPU
// machine without a debugger this is how one learns which path it could not use.
#include <dirent.h>
#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include <ferry_common/settings.hpp>

#include "pid_ns.hpp"

namespace ferry {
bool proc_is_foreign() {
  static int foreign = -1;
  if (foreign < 0) {
    char b[32] = {};
    // Not through readlink: the shim's own (below) asks this first.
    ssize_t n = syscall(SYS_readlinkat, AT_FDCWD, "/proc/self", b, sizeof b - 1);
    foreign = n > 0 && atoi(b) != getpid() ? 1 : 0;
  }
  return foreign == 1;
}
}  // namespace ferry

namespace {

using ferry::proc_is_foreign;

template <typename F>
F next(const char* name) {
  return reinterpret_cast<F>(dlsym(RTLD_NEXT, name));
}

// glibc's own definition of a call that may exist only under an old version: since 2.33
// the __xstat family is there for old binaries alone (the driver is one: it is built
// against an old glibc), which dlsym without a version does not find.
template <typename F>
F next_any(const char* name) {
  if (void* f = dlsym(RTLD_NEXT, name)) return reinterpret_cast<F>(f);
  for (const char* v : {"GLIBC_2.2.5", "GLIBC_2.4", "GLIBC_2.33"})
    if (void* f = dlvsym(RTLD_NEXT, name, v)) return reinterpret_cast<F>(f);
  return nullptr;
}

// Our own look-ups go to glibc directly, not through the rewriting below.
FILE* real_fopen(const char* path, const char* mode) {
  static auto real = next<FILE* (*)(const char*, const char*)>("fopen");
  return real(path, mode);
}
int real_open(const char* path, int flags) {
  static auto real = next<int (*)(const char*, int, ...)>("open");
  return real(path, flags);
}

// Whether paths and thread names are translated: where /proc is foreign, unless a test
// turns it off to show what happens without.
bool translating() {
  static int on = -1;
  if (on < 0) on = proc_is_foreign() && !ferry::settings::flag("FERRY_TEST_NO_PROC_TRANSLATION", false) ? 1 : 0;
  return on == 1;
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
    FILE* f = real_fopen(path, "re");
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
  return real_open(path, flags | O_CLOEXEC);
}

// The caller's pid as /proc numbers it; asked each time, since a fork or a restore changes it.
long host_pid() {
  char b[32] = {};
  return syscall(SYS_readlinkat, AT_FDCWD, "/proc/self", b, sizeof b - 1) > 0 ? atol(b) : 0;
}

// Digits at `p` up to '/' or the end: their value, with *end after them; -1 otherwise.
long leading_number(const char* p, const char** end) {
  long v = 0;
  const char* q = p;
  while (*q >= '0' && *q <= '9' && v < (1L << 40)) v = v * 10 + (*q++ - '0');
  if (q == p || (*q != '/' && *q != '\0')) return -1;
  *end = q;
  return v;
}

// `path` as /proc knows what it names, in `out`; false when it is to be used as it is.
bool proc_path(const char* path, char* out, size_t size) {
  if (!path || strncmp(path, "/proc/", 6) != 0 || !translating()) return false;
  const char* rest = nullptr;
  long task = 0;
  if (strncmp(path + 6, "self/task/", 10) == 0) {
    task = leading_number(path + 16, &rest);
  } else {
    long n = leading_number(path + 6, &rest);
    if (n < 0) return false;
    if (n == getpid()) {  // the process itself: perhaps one of its threads below
      if (strncmp(rest, "/task/", 6) == 0) {
        task = leading_number(rest + 6, &rest);
      } else {
        task = 0;
      }
    } else {
      task = n;  // /proc/<tid> names a thread too
    }
    // The directory itself rather than the /proc/self link to it: lstat and readlink of
    // /proc/<pid> see a directory, as they would with a /proc of the job's own.
    if (task == 0) return snprintf(out, size, "/proc/%ld%s", host_pid(), rest) < static_cast<int>(size);
  }
  if (task <= 0) return false;
  long at = proc_tid(static_cast<pid_t>(task));
  if (!at) return false;  // none of ours: perhaps already /proc's number
  return snprintf(out, size, "/proc/self/task/%ld%s", at, rest) < static_cast<int>(size);
}

bool tracing() {
  static int on = -1;
  if (on < 0) on = ferry::settings::flag("FERRY_TRACE_PROC", false) ? 1 : 0;
  return on == 1;
}

// With FERRY_TRACE_PROC: what `call` was asked (`asked`), what it used, and how it ended.
void trace(const char* call, const char* asked, const char* used, int err) {
  int saved = errno;  // the caller's, whatever looking up the setting does
  if (!asked || strncmp(asked, "/proc/", 6) != 0 || !proc_is_foreign() || !tracing()) {
    errno = saved;
    return;
  }
  fprintf(stderr, "ferry: %s(%s)%s%s: %s\n", call, asked, used != asked ? " as " : "", used != asked ? used : "",
          err ? strerror(err) : "ok");
  errno = saved;
}

// What a call returning R returns when it fails.
template <typename R>
R failure() {
  if constexpr (std::is_pointer_v<R>) {
    return nullptr;
  } else {
    return -1;
  }
}

int open_mode(int flags, va_list ap) {
  return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE ? va_arg(ap, int) : 0;
}

}  // namespace

extern "C" {

__attribute__((visibility("default"))) int pthread_setname_np(pthread_t th, const char* name) {
  static auto real = next<int (*)(pthread_t, const char*)>("pthread_setname_np");
  if (!real) return ENOSYS;
  if (pthread_equal(th, pthread_self()) || !proc_is_foreign()) return real(th, name);
  size_t len = strlen(name);
  const char* how = "";  // which way it went, for FERRY_TRACE_PROC
  int err = 0, fd = -1;
  if (!translating()) {
    how = ", untranslated";
    err = real(th, name);
  } else if (len > 15) {
    return ERANGE;  // the kernel's limit, as glibc checks it
  } else if ((fd = open_comm(th, O_WRONLY)) < 0) {
    how = ": no such thread in /proc, glibc's";
    err = real(th, name);
  } else {
    ssize_t n = write(fd, name, len);
    err = n < 0 ? errno : static_cast<size_t>(n) == len ? 0 : EIO;
    close(fd);
  }
  if (tracing())
    fprintf(stderr, "ferry: pthread_setname_np(tid %d, %s)%s: %s\n", static_cast<int>(ns_tid(th)), name, how,
            err ? strerror(err) : "ok");
  return err;
}

__attribute__((visibility("default"))) int pthread_getname_np(pthread_t th, char* buf, size_t size) {
  static auto real = next<int (*)(pthread_t, char*, size_t)>("pthread_getname_np");
  if (!real) return ENOSYS;
  if (pthread_equal(th, pthread_self()) || !translating()) return real(th, buf, size);
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

#define FERRY_PROC_PATH(path)         \
  const char* asked_ = path;           \
  char translated_[4096];              \
  if (proc_path(path, translated_, sizeof translated_)) path = translated_

#define FERRY_OPEN(name)                                                    \
  __attribute__((visibility("default"))) int name(const char* path, int flags, ...) { \
    static auto real = next<int (*)(const char*, int, ...)>(#name);         \
    va_list ap;                                                             \
    va_start(ap, flags);                                                    \
    int mode = open_mode(flags, ap);                                        \
    va_end(ap);                                                             \
    FERRY_PROC_PATH(path);                                                  \
    int r = real(path, flags, mode);                                        \
    trace(#name, asked_, path, r < 0 ? errno : 0);                          \
    return r;                                                               \
  }
FERRY_OPEN(open)
FERRY_OPEN(open64)

#define FERRY_OPENAT(name)                                                              \
  __attribute__((visibility("default"))) int name(int dir, const char* path, int flags, ...) { \
    static auto real = next<int (*)(int, const char*, int, ...)>(#name);                \
    va_list ap;                                                                         \
    va_start(ap, flags);                                                                \
    int mode = open_mode(flags, ap);                                                    \
    va_end(ap);                                                                         \
    FERRY_PROC_PATH(path);                                                              \
    int r = real(dir, path, flags, mode);                                               \
    trace(#name, asked_, path, r < 0 ? errno : 0);                                      \
    return r;                                                                           \
  }
FERRY_OPENAT(openat)
FERRY_OPENAT(openat64)

// What _FORTIFY_SOURCE makes of open(path, flags) without a mode.
#define FERRY_OPEN_2(name)                                                      \
  __attribute__((visibility("default"))) int name(const char* path, int flags) { \
    static auto real = next<int (*)(const char*, int)>(#name);                 \
    FERRY_PROC_PATH(path);                                                      \
    int r = real(path, flags);                                                  \
    trace(#name, asked_, path, r < 0 ? errno : 0);                              \
    return r;                                                                   \
  }
FERRY_OPEN_2(__open_2)
FERRY_OPEN_2(__open64_2)

#define FERRY_FOPEN(name)                                                              \
  __attribute__((visibility("default"))) FILE* name(const char* path, const char* mode) { \
    static auto real = next<FILE* (*)(const char*, const char*)>(#name);               \
    FERRY_PROC_PATH(path);                                                             \
    FILE* f = real(path, mode);                                                        \
    trace(#name, asked_, path, f ? 0 : errno);                                         \
    return f;                                                                          \
  }
FERRY_FOPEN(fopen)
FERRY_FOPEN(fopen64)

// The calls that name a file without opening it: the real driver stats
// /proc/<getpid()>/ns/pid while it initializes (an strace of its start, in NVIDIA's
// cuda-checkpoint issue 10), so with the host's /proc it would look at another process's
// namespace. What a program lists (opendir), checks (access) or follows (readlink,
// realpath) under its own /proc directory is translated the same way. glibc declares most
// of them noexcept; a call this glibc lacks fails with ENOSYS.
#define FERRY_PATH_CALL(R, name, params, args, path, failed, ...)                    \
  __attribute__((visibility("default"))) R name params __VA_ARGS__ {                 \
    static auto real = next_any<R(*) params>(#name);                                 \
    if (!real) {                                                                     \
      errno = ENOSYS;                                                                \
      return failure<R>();                                                           \
    }                                                                                \
    FERRY_PROC_PATH(path);                                                           \
    R r = real args;                                                                 \
    trace(#name, asked_, path, (failed) ? errno : 0);                                \
    return r;                                                                        \
  }

FERRY_PATH_CALL(int, stat, (const char* p, struct stat* b), (p, b), p, r < 0, noexcept)
FERRY_PATH_CALL(int, stat64, (const char* p, struct stat64* b), (p, b), p, r < 0, noexcept)
FERRY_PATH_CALL(int, lstat, (const char* p, struct stat* b), (p, b), p, r < 0, noexcept)
FERRY_PATH_CALL(int, lstat64, (const char* p, struct stat64* b), (p, b), p, r < 0, noexcept)
FERRY_PATH_CALL(int, fstatat, (int d, const char* p, struct stat* b, int f), (d, p, b, f), p, r < 0, noexcept)
FERRY_PATH_CALL(int, fstatat64, (int d, const char* p, struct stat64* b, int f), (d, p, b, f), p, r < 0, noexcept)
FERRY_PATH_CALL(int, __xstat, (int v, const char* p, struct stat* b), (v, p, b), p, r < 0)
FERRY_PATH_CALL(int, __xstat64, (int v, const char* p, struct stat64* b), (v, p, b), p, r < 0)
FERRY_PATH_CALL(int, __lxstat, (int v, const char* p, struct stat* b), (v, p, b), p, r < 0)
FERRY_PATH_CALL(int, __lxstat64, (int v, const char* p, struct stat64* b), (v, p, b), p, r < 0)
FERRY_PATH_CALL(int, __fxstatat, (int v, int d, const char* p, struct stat* b, int f), (v, d, p, b, f), p, r < 0)
FERRY_PATH_CALL(int, __fxstatat64, (int v, int d, const char* p, struct stat64* b, int f), (v, d, p, b, f), p,
                r < 0)
FERRY_PATH_CALL(int, statx, (int d, const char* p, int f, unsigned int m, struct statx* b), (d, p, f, m, b), p,
                r < 0, noexcept)
FERRY_PATH_CALL(int, access, (const char* p, int m), (p, m), p, r < 0, noexcept)
FERRY_PATH_CALL(int, faccessat, (int d, const char* p, int m, int f), (d, p, m, f), p, r < 0, noexcept)
FERRY_PATH_CALL(ssize_t, readlink, (const char* p, char* b, size_t n), (p, b, n), p, r < 0, noexcept)
FERRY_PATH_CALL(ssize_t, readlinkat, (int d, const char* p, char* b, size_t n), (d, p, b, n), p, r < 0, noexcept)
FERRY_PATH_CALL(ssize_t, __readlink_chk, (const char* p, char* b, size_t n, size_t bn), (p, b, n, bn), p, r < 0,
                noexcept)
FERRY_PATH_CALL(ssize_t, __readlinkat_chk, (int d, const char* p, char* b, size_t n, size_t bn), (d, p, b, n, bn),
                p, r < 0, noexcept)
FERRY_PATH_CALL(DIR*, opendir, (const char* p), (p), p, !r)
FERRY_PATH_CALL(char*, realpath, (const char* p, char* b), (p, b), p, !r, noexcept)
FERRY_PATH_CALL(char*, __realpath_chk, (const char* p, char* b, size_t bn), (p, b, bn), p, !r, noexcept)

}  // extern "C"
