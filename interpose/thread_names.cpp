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
// - every glibc call that names a path -- open, fopen, the stat family, statx, access,
//   readlink, realpath, opendir, with their *at, 64-bit, fortified and old-glibc names --
//   rewrites one that names the caller by its namespace's numbers -- /proc/<getpid()>/...,
//   and /proc/self/task/<tid>/... or /proc/<tid>/... of one of its threads -- to the
//   names /proc knows, and so does one naming another process of the namespace
//   (translate() below lists the cases, and what it does with a number that means one
//   thing in the namespace and another in /proc). Any other path is passed on untouched,
//   at the cost of one compare. Paths reached by raw system calls, relative ones, and
//   other processes' threads are beyond it.
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
#include <algorithm>
#include <atomic>
#include <cstring>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include <ferry_common/settings.hpp>

#include "pid_ns.hpp"

namespace {
// The caller's pid as /proc numbers it; asked each time, since a fork or a restore changes
// it. 0 when /proc cannot say. Not through readlink: the shim's own (below) asks this.
long host_pid() {
  char b[32] = {};
  return syscall(SYS_readlinkat, AT_FDCWD, "/proc/self", b, sizeof b - 1) > 0 ? atol(b) : 0;
}
}  // namespace

namespace ferry {
bool proc_is_foreign() {
  static std::atomic<int> foreign{-1};
  int f = foreign.load(std::memory_order_relaxed);
  if (f < 0) {
    long self = host_pid();
    f = self > 0 && self != getpid() ? 1 : 0;
    foreign.store(f, std::memory_order_relaxed);
  }
  return f == 1;
}

bool in_job() {
  const char* job = ferry::settings::raw("FERRY_JOB");
  return proc_is_foreign() || (job && *job);
}
}  // namespace ferry

namespace {

using ferry::proc_is_foreign;

// glibc's own definition of `name`. Since 2.33 the __xstat family is there for old
// binaries alone (the driver is one: it is built against an old glibc), under its old
// versions, which dlsym without a version does not find; those are asked by version first,
// so that a failed dlsym does not overwrite the caller's dlerror().
template <typename F>
F next_any(const char* name) {
  bool old_only = strncmp(name, "__", 2) == 0 && strstr(name, "xstat") != nullptr;
  if (!old_only)
    if (void* f = dlsym(RTLD_NEXT, name)) return reinterpret_cast<F>(f);
  for (const char* v : {"GLIBC_2.2.5", "GLIBC_2.4"})
    if (void* f = dlvsym(RTLD_NEXT, name, v)) return reinterpret_cast<F>(f);
  return old_only ? reinterpret_cast<F>(dlsym(RTLD_NEXT, name)) : nullptr;
}

// The definition in `slot`, looked up on first use. Not a function-local static: its
// guard would be held across dlsym, which waits for the loader's lock, while a library
// constructor run under that lock (inside dlopen) calls stat for the first time and waits
// for the guard. Two threads looking it up at once both store the same answer. Each
// wrapper also looks its definition up when the shim is loaded, in a constructor that
// runs before the shim's own (which loads the real driver, whose constructors may call
// them).
template <typename F>
F resolve(std::atomic<F>& slot, const char* name) {
  F f = slot.load(std::memory_order_acquire);
  if (!f) {
    f = next_any<F>(name);
    slot.store(f, std::memory_order_release);
  }
  return f;
}

// Our own look-ups go to glibc directly, not through the rewriting below: through the
// definitions the wrappers of the same names found (defined after them, at the end).
FILE* real_fopen(const char* path, const char* mode);
int real_open(const char* path, int flags);
DIR* real_opendir(const char* path);

std::atomic<int (*)(pthread_t, const char*)> g_setname{nullptr};
std::atomic<int (*)(pthread_t, char*, size_t)> g_getname{nullptr};
__attribute__((constructor(101))) void resolve_names() {
  resolve(g_setname, "pthread_setname_np");
  resolve(g_getname, "pthread_getname_np");
}

// The families of calls translated, which a test (and the GPU kit, to learn which of them
// the real driver needs) can turn off one by one.
enum Family : int { kOpen = 1, kStat = 2, kList = 4, kLink = 8, kNames = 16, kAll = 31 };

// A wrapped call's family, by its name: opendir lists; open, openat, fopen and their
// other names open; the stat family and access look; readlink and realpath follow links.
constexpr Family family_of(std::string_view name) {
  if (name.find("opendir") != name.npos) return kList;
  if (name.find("open") != name.npos) return kOpen;
  if (name.find("readlink") != name.npos || name.find("realpath") != name.npos) return kLink;
  return kStat;
}
static_assert(family_of("__openat64_2") == kOpen && family_of("opendir") == kList &&
              family_of("__fxstatat64") == kStat && family_of("faccessat") == kStat &&
              family_of("__realpath_chk") == kLink);

// The families FERRY_TEST_NO_PROC_TRANSLATION leaves untranslated: all for on/1/yes/true,
// else those it names (open, stat, list, link, names; comma-separated).
int untranslated() {
  std::string v = ferry::settings::text("FERRY_TEST_NO_PROC_TRANSLATION");
  if (v.empty()) return 0;
  if (auto all = ferry::settings::parse_flag(v)) return *all ? kAll : 0;
  int mask = 0;
  std::string_view rest = v;
  while (!rest.empty()) {
    std::string_view word = rest.substr(0, rest.find(','));
    rest.remove_prefix(std::min(rest.size(), word.size() + 1));
    int before = mask;
    for (auto [w, f] : {std::pair{"open", kOpen}, {"stat", kStat}, {"list", kList}, {"link", kLink}, {"names", kNames}})
      if (word == w) mask |= f;
    if (mask == before)  // a typo would otherwise leave everything translated, silently
      fprintf(stderr, "ferry: FERRY_TEST_NO_PROC_TRANSLATION: no family '%.*s' (open, stat, list, link, names)\n",
              static_cast<int>(word.size()), word.data());
  }
  return mask;
}

// Whether paths and thread names of `family` are translated: where /proc is foreign,
// unless a test turns them off to show what happens without.
bool translating(Family family) {
  static std::atomic<int> on{-1};  // the families translated
  int v = on.load(std::memory_order_relaxed);
  if (v < 0) {
    v = proc_is_foreign() ? kAll & ~untranslated() : 0;
    on.store(v, std::memory_order_relaxed);
  }
  return (v & family) != 0;
}

// The shim's own work inside a call the program made: not cancelled half-way (the glibc
// calls wrapped here are mostly no cancellation points, and several are noexcept, which a
// cancellation unwinding through them would end in std::terminate), and leaving errno as
// it was (a caller may look at errno after a call that succeeded).
class Quiet {
 public:
  Quiet() : errno_(errno) { pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &cancel_); }
  ~Quiet() {
    pthread_setcancelstate(cancel_, nullptr);
    errno = errno_;
  }
  Quiet(const Quiet&) = delete;
  Quiet& operator=(const Quiet&) = delete;

 private:
  int errno_;
  int cancel_ = PTHREAD_CANCEL_ENABLE;
};

// The tid of `th` in the caller's namespace: glibc encodes it in the thread's CPU clock id
// (the kernel's per-thread clock: ~tid << 3 | flags).
pid_t ns_tid(pthread_t th) {
  clockid_t c;
  if (pthread_getcpuclockid(th, &c) != 0) return -1;
  return static_cast<pid_t>(~(c >> 3));
}

// Whether `tid` is a thread of this process by its namespace's numbers: the kernel's own
// answer, without reading /proc (a number /proc gave, or another process's, is not).
bool own_thread(long tid) {
  return tid > 0 && tid <= INT_MAX && syscall(SYS_tgkill, getpid(), static_cast<pid_t>(tid), 0) == 0;
}

// The /proc/self/task entry of the thread whose innermost NSpid is `tid`; 0 if none.
long proc_tid(pid_t tid) {
  DIR* d = real_opendir("/proc/self/task");
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

// Another process of the caller's PID namespace, by its number there: its number in
// /proc, read from a pidfd's fdinfo (whose "Pid:" is given in the numbering of the /proc
// it is read through). 0 when `n` names no process there (a thread of another process,
// for one; a worker already reaped), or pidfds are missing (before Linux 5.3) or refused
// (a seccomp profile): the number then keeps the meaning /proc gives it, as before.
// Raw system calls: this runs inside the wrappers of open and read.
long other_process(long n) {
  if (n <= 0 || n > INT_MAX) return 0;
  int fd = static_cast<int>(syscall(SYS_pidfd_open, static_cast<pid_t>(n), 0));
  if (fd < 0) return 0;
  char path[64];
  snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
  int info = static_cast<int>(syscall(SYS_openat, AT_FDCWD, path, O_RDONLY | O_CLOEXEC));
  long pid = 0;
  if (info >= 0) {
    char buf[1024];
    ssize_t len = syscall(SYS_read, info, buf, sizeof buf - 1);
    if (len > 0) {
      buf[len] = '\0';
      const char* at = strstr(buf, "\nPid:\t");
      if (at) pid = atol(at + 6);
    }
    syscall(SYS_close, info);
  }
  syscall(SYS_close, fd);
  return pid > 0 ? pid : 0;
}

// Digits at `p` up to '/' or the end: their value, with *end after them; -1 otherwise
// (and for a leading zero, which /proc never writes and does not accept).
long leading_number(const char* p, const char** end) {
  if (p[0] == '0' && p[1] >= '0' && p[1] <= '9') return -1;
  long v = 0;
  const char* q = p;
  while (*q >= '0' && *q <= '9' && v < (1L << 40)) v = v * 10 + (*q++ - '0');
  if (q == p || (*q != '/' && *q != '\0')) return -1;
  *end = q;
  return v;
}

bool fits(int n, size_t size) { return n > 0 && static_cast<size_t>(n) < size; }

// What a /proc path in the namespace's numbers names, as /proc numbers it:
//   /proc/<getpid()>/...            -> /proc/<host pid>/... (the directory, not the
//                                      /proc/self link: lstat and readlink see what a
//                                      /proc of the job's own would show)
//   /proc/<t>/...                   -> /proc/<host tid>/... for another of its threads
//   .../task/<t>/... below either   -> .../task/<host tid>/... when t is one of its threads
//   /proc/self/task/<t>/...         -> /proc/self/task/<host tid>/..., the same way
//   /proc/<p>/...                   -> /proc/<host pid of p>/... for another process of
//                                      the namespace (a child, the job's init), with what
//                                      is below it as it is
// A number that names nothing in the caller's namespace (the kernel says) is used as it
// is: a number that listing /proc or a task directory gave, most likely. A number that
// names something in both -- the host numbers small enough to meet the namespace's, as
// in a container -- is taken in the namespace's numbering, the one the program got from
// getpid, gettid or fork and the driver uses; FERRY_TRACE_PROC shows the result.
bool translate(const char* path, char* out, size_t size) {
  const char* rest = nullptr;
  // A thread of the caller by the namespace's number: its host number, or 0.
  auto host_tid = [](long t) { return own_thread(t) ? proc_tid(static_cast<pid_t>(t)) : 0L; };
  if (strncmp(path + 6, "self/task/", 10) == 0) {
    long at = host_tid(leading_number(path + 16, &rest));
    return at && fits(snprintf(out, size, "/proc/self/task/%ld%s", at, rest), size);
  }
  long n = leading_number(path + 6, &rest);
  if (n <= 0) return false;
  long base = n == getpid() ? host_pid() : host_tid(n);
  if (n != getpid() && !base) {
    long other = other_process(n);
    return other && fits(snprintf(out, size, "/proc/%ld%s", other, rest), size);
  }
  const char* after = nullptr;
  long at = strncmp(rest, "/task/", 6) == 0 ? host_tid(leading_number(rest + 6, &after)) : 0;
  if (base && at) return fits(snprintf(out, size, "/proc/%ld/task/%ld%s", base, at, after), size);
  if (base) return fits(snprintf(out, size, "/proc/%ld%s", base, rest), size);
  // /proc cannot say who the caller is (host_pid failed): through the /proc/self link.
  if (at) return fits(snprintf(out, size, "/proc/self/task/%ld%s", at, after), size);
  return fits(snprintf(out, size, "/proc/self%s", rest), size);
}

// `path` as /proc knows what it names, in `out`; false when it is to be used as it is.
bool proc_path(Family family, const char* path, char* out, size_t size) {
  if (!path || strncmp(path, "/proc/", 6) != 0) return false;
  Quiet q;  // before translating(), whose first call reads /proc and the environment
  return translating(family) && translate(path, out, size);
}

bool tracing() {
  static std::atomic<int> on{-1};
  int v = on.load(std::memory_order_relaxed);
  if (v < 0) {
    v = ferry::settings::flag("FERRY_TRACE_PROC", false) ? 1 : 0;
    on.store(v, std::memory_order_relaxed);
  }
  return v == 1;
}

// With FERRY_TRACE_PROC: what `call` was asked (`asked`), what it used, and how it ended.
void trace(const char* call, const char* asked, const char* used, int err) {
  if (!asked || strncmp(asked, "/proc/", 6) != 0 || !tracing() || !proc_is_foreign()) return;
  Quiet q;
  fprintf(stderr, "ferry: %s(%s)%s%s: %s\n", call, asked, used != asked ? " as " : "", used != asked ? used : "",
          err ? strerror(err) : "ok");
}

// `p`, of which the compiler knows nothing: glibc declares these paths nonnull, so it would
// drop a null check on them, and a null path must reach glibc (EFAULT, or for statx and
// fstatat with AT_EMPTY_PATH, an answer).
inline const char* opaque(const char* p) {
  asm("" : "+r"(p));
  return p;
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
  auto real = resolve(g_setname, "pthread_setname_np");
  if (!real) return ENOSYS;
  if (pthread_equal(th, pthread_self()) || !proc_is_foreign()) return real(th, name);
  Quiet q;
  size_t len = strlen(name);
  const char* how = "";  // which way it went, for FERRY_TRACE_PROC
  int err = 0, fd = -1;
  if (!translating(kNames)) {
    how = ", untranslated";
    err = real(th, name);
  } else if (len > 15) {
    return ERANGE;  // the kernel's limit, as glibc checks it
  } else if ((fd = open_comm(th, O_WRONLY)) < 0) {
    // Not glibc's way: it would open the comm file by the namespace's tid, which in this
    // /proc may be another of our threads.
    how = ": no such thread in /proc";
    err = ENOENT;
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
  auto real = resolve(g_getname, "pthread_getname_np");
  if (!real) return ENOSYS;
  if (pthread_equal(th, pthread_self()) || !translating(kNames)) return real(th, buf, size);
  if (size < 16) return ERANGE;
  Quiet q;
  int fd = open_comm(th, O_RDONLY);
  if (fd < 0) return ENOENT;  // not glibc's way, as above
  ssize_t n = read(fd, buf, size - 1);
  int err = n < 0 ? errno : 0;
  close(fd);
  if (n >= 0) {
    if (n > 0 && buf[n - 1] == '\n') n--;
    buf[n] = '\0';
  }
  return err;
}

// Each call that names a path: glibc's definition (`Real`, looked up once), and for a path
// under /proc an out-of-line slow path that translates it -- so that only /proc paths pay
// for the look-ups and the path buffer on the stack (a signal handler on a small
// alternate stack may well call stat). A call this glibc lacks fails with ENOSYS.
//   FERRY_PATH(R, name, Real, (params), (args), path, failed): call_<name>(params)
#define FERRY_PATH(R, name, Real, params, args, path, failed)                         \
  static std::atomic<Real> glibc_##name{nullptr};                                     \
  __attribute__((constructor(101))) static void resolve_##name() { resolve(glibc_##name, #name); } \
  __attribute__((noinline)) static R slow_##name params {                             \
    auto real = glibc_##name.load(std::memory_order_acquire);                         \
    const char* asked_ = path;                                                        \
    char translated_[4096];                                                           \
    constexpr Family family_ = family_of(#name);                                      \
    if (proc_path(family_, path, translated_, sizeof translated_)) path = translated_; \
    R r = real args;                                                                  \
    trace(#name, asked_, path, (failed) ? errno : 0);                                 \
    return r;                                                                         \
  }                                                                                   \
  static inline R call_##name params {                                                \
    auto real = resolve(glibc_##name, #name);                                         \
    if (!real) {                                                                      \
      errno = ENOSYS;                                                                 \
      return failure<R>();                                                            \
    }                                                                                 \
    if (!opaque(path) || strncmp(path, "/proc/", 6) != 0) return real args;           \
    return slow_##name args;                                                          \
  }

// A call with a fixed list of arguments; `...` is its exception specification (glibc
// declares most of them noexcept).
#define FERRY_PATH_CALL(R, name, params, args, path, failed, ...)                     \
  FERRY_PATH(R, name, R(*) params, params, args, path, failed)                        \
  __attribute__((visibility("default"))) R name params __VA_ARGS__ { return call_##name args; }

// open and openat take their mode only with O_CREAT or O_TMPFILE.
#define FERRY_OPEN(name)                                                              \
  FERRY_PATH(int, name, int (*)(const char*, int, ...), (const char* p, int f, int m), (p, f, m), p, r < 0) \
  __attribute__((visibility("default"))) int name(const char* p, int f, ...) {        \
    va_list ap;                                                                       \
    va_start(ap, f);                                                                  \
    int m = open_mode(f, ap);                                                         \
    va_end(ap);                                                                       \
    return call_##name(p, f, m);                                                      \
  }
#define FERRY_OPENAT(name)                                                            \
  FERRY_PATH(int, name, int (*)(int, const char*, int, ...), (int d, const char* p, int f, int m), (d, p, f, m), p, \
             r < 0)                                                                   \
  __attribute__((visibility("default"))) int name(int d, const char* p, int f, ...) { \
    va_list ap;                                                                       \
    va_start(ap, f);                                                                  \
    int m = open_mode(f, ap);                                                         \
    va_end(ap);                                                                       \
    return call_##name(d, p, f, m);                                                   \
  }

FERRY_OPEN(open)
FERRY_OPEN(open64)
FERRY_OPENAT(openat)
FERRY_OPENAT(openat64)
// What _FORTIFY_SOURCE makes of open(path, flags) and openat(dir, path, flags) without a mode.
FERRY_PATH_CALL(int, __open_2, (const char* p, int f), (p, f), p, r < 0)
FERRY_PATH_CALL(int, __open64_2, (const char* p, int f), (p, f), p, r < 0)
FERRY_PATH_CALL(int, __openat_2, (int d, const char* p, int f), (d, p, f), p, r < 0)
FERRY_PATH_CALL(int, __openat64_2, (int d, const char* p, int f), (d, p, f), p, r < 0)
FERRY_PATH_CALL(FILE*, fopen, (const char* p, const char* m), (p, m), p, !r)
FERRY_PATH_CALL(FILE*, fopen64, (const char* p, const char* m), (p, m), p, !r)

// The calls that name a file without opening it: the real driver stats
// /proc/<getpid()>/ns/pid while it initializes (an strace of its start, in NVIDIA's
// cuda-checkpoint issue 10), so with the host's /proc it would look at another process's
// namespace. What a program lists (opendir), checks (access) or follows (readlink,
// realpath) under its own /proc directory is translated the same way.
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

namespace {
FILE* real_fopen(const char* path, const char* mode) { return resolve(glibc_fopen, "fopen")(path, mode); }
int real_open(const char* path, int flags) { return resolve(glibc_open, "open")(path, flags); }
DIR* real_opendir(const char* path) { return resolve(glibc_opendir, "opendir")(path); }
}  // namespace
