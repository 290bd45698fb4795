// Names its own /proc entries by the pid and tid its PID namespace gives it, through every
// call that takes a path (the shim translates them in a job that keeps the host's /proc),
// and compares each answer with what the same call says through /proc/self. Prints one
// line per call, "<call> ok" or "<call> wrong: <why>"; exits 0 when all are ok.
//
// The second thread matters: in the host's /proc, /proc/<pid in the job> is some other
// process, which most likely has no thread of that second number, so a call the shim
// does not translate fails visibly instead of answering for the wrong process by chance.
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>

namespace {

int failures = 0;

void report(const char* call, bool ok, const std::string& why) {
  if (ok) {
    printf("%s ok\n", call);
  } else {
    printf("%s wrong: %s\n", call, why.c_str());
    failures++;
  }
}

std::string err(long r) { return r < 0 ? std::string(strerror(errno)) : "answered for another file"; }

}  // namespace

// The entry points a binary built against glibc < 2.33 calls (the driver is one), bound as
// such a binary binds them: by version, at load time (dlvsym would refuse the shim's
// unversioned definitions, which the dynamic linker's binding accepts).
extern "C" {
int old_xstat(int, const char*, struct stat*);
int old_lxstat(int, const char*, struct stat*);
int old_fxstatat(int, int, const char*, struct stat*, int);
int old_xstat64(int, const char*, struct stat64*);
int old_lxstat64(int, const char*, struct stat64*);
int old_fxstatat64(int, int, const char*, struct stat64*, int);
// What _FORTIFY_SOURCE turns calls into where it knows the buffer's size (Ubuntu's
// compilers fortify by default); declared here since only a fortified build's headers do.
ssize_t __readlink_chk(const char*, char*, size_t, size_t) noexcept;
ssize_t __readlinkat_chk(int, const char*, char*, size_t, size_t) noexcept;
char* __realpath_chk(const char*, char*, size_t) noexcept;
int __open_2(const char*, int);
int __open64_2(const char*, int);
int __openat_2(int, const char*, int);
int __openat64_2(int, const char*, int);
}
__asm__(".symver old_xstat,__xstat@GLIBC_2.2.5");
__asm__(".symver old_lxstat,__lxstat@GLIBC_2.2.5");
__asm__(".symver old_fxstatat,__fxstatat@GLIBC_2.4");
__asm__(".symver old_xstat64,__xstat64@GLIBC_2.2.5");
__asm__(".symver old_lxstat64,__lxstat64@GLIBC_2.2.5");
__asm__(".symver old_fxstatat64,__fxstatat64@GLIBC_2.4");

namespace {

pid_t second_tid = 0;
pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
bool done = false;

void* second(void*) {
  pthread_setname_np(pthread_self(), "proc-paths-2");  // its own name: no /proc involved
  pthread_mutex_lock(&mu);
  second_tid = static_cast<pid_t>(syscall(SYS_gettid));
  pthread_cond_broadcast(&cv);
  while (!done) pthread_cond_wait(&cv, &mu);
  pthread_mutex_unlock(&mu);
  return nullptr;
}

}  // namespace

int main() {
  pthread_t th;
  pthread_create(&th, nullptr, second, nullptr);
  pthread_mutex_lock(&mu);
  while (!second_tid) pthread_cond_wait(&cv, &mu);
  pthread_mutex_unlock(&mu);

  const std::string me = "/proc/" + std::to_string(getpid());
  const std::string thread = me + "/task/" + std::to_string(second_tid);  // exists only if translated
  const std::string ns = me + "/ns/pid";
  struct stat want{};
  if (stat("/proc/self/ns/pid", &want) != 0) {
    printf("no /proc/self/ns/pid: %s\n", strerror(errno));
    return 2;
  }
  auto same = [&](const struct stat& b) { return b.st_dev == want.st_dev && b.st_ino == want.st_ino; };

  struct stat b{};
  struct stat64 b64{};
  int r = stat(ns.c_str(), &b);
  report("stat", r == 0 && same(b), err(r));
  r = stat64(ns.c_str(), &b64);
  report("stat64", r == 0 && b64.st_ino == want.st_ino, err(r));
  r = fstatat(AT_FDCWD, ns.c_str(), &b, 0);
  report("fstatat", r == 0 && same(b), err(r));
  r = fstatat64(AT_FDCWD, ns.c_str(), &b64, 0);
  report("fstatat64", r == 0 && b64.st_ino == want.st_ino, err(r));
  r = lstat64(thread.c_str(), &b64);
  report("lstat64", r == 0 && S_ISDIR(b64.st_mode), err(r));
  r = lstat(me.c_str(), &b);  // the directory itself, not a link to it
  if (r == 0 && S_ISDIR(b.st_mode)) r = lstat(thread.c_str(), &b);
  report("lstat", r == 0 && S_ISDIR(b.st_mode), err(r));
  struct statx sx{};
  r = statx(AT_FDCWD, ns.c_str(), 0, STATX_INO, &sx);
  report("statx", r == 0 && sx.stx_ino == want.st_ino, err(r));
  r = old_xstat(1, ns.c_str(), &b);  // 1: the x86-64 kernel's stat layout (_STAT_VER)
  report("__xstat", r == 0 && same(b), err(r));
  r = old_lxstat(1, thread.c_str(), &b);
  report("__lxstat", r == 0 && S_ISDIR(b.st_mode), err(r));
  r = old_fxstatat(1, AT_FDCWD, ns.c_str(), &b, 0);
  report("__fxstatat", r == 0 && same(b), err(r));
  r = old_xstat64(1, ns.c_str(), &b64);
  report("__xstat64", r == 0 && b64.st_ino == want.st_ino, err(r));
  r = old_lxstat64(1, thread.c_str(), &b64);
  report("__lxstat64", r == 0 && S_ISDIR(b64.st_mode), err(r));
  r = old_fxstatat64(1, AT_FDCWD, ns.c_str(), &b64, 0);
  report("__fxstatat64", r == 0 && b64.st_ino == want.st_ino, err(r));

  r = access(thread.c_str(), R_OK);
  report("access", r == 0, err(r));
  r = faccessat(AT_FDCWD, thread.c_str(), R_OK, 0);
  report("faccessat", r == 0, err(r));

  char want_link[PATH_MAX] = {}, got[PATH_MAX] = {};
  if (readlink("/proc/self/ns/pid", want_link, sizeof want_link - 1) < 0) return 2;
  ssize_t n = readlink(ns.c_str(), got, sizeof got - 1);
  report("readlink", n > 0 && strcmp(got, want_link) == 0, err(n));
  memset(got, 0, sizeof got);
  n = readlinkat(AT_FDCWD, ns.c_str(), got, sizeof got - 1);
  report("readlinkat", n > 0 && strcmp(got, want_link) == 0, err(n));
  memset(got, 0, sizeof got);
  n = __readlink_chk(ns.c_str(), got, sizeof got - 1, sizeof got);
  report("__readlink_chk", n > 0 && strcmp(got, want_link) == 0, err(n));
  memset(got, 0, sizeof got);
  n = __readlinkat_chk(AT_FDCWD, ns.c_str(), got, sizeof got - 1, sizeof got);
  report("__readlinkat_chk", n > 0 && strcmp(got, want_link) == 0, err(n));

  char want_path[PATH_MAX] = {}, got_path[PATH_MAX] = {};
  const char* rw = realpath("/proc/self/exe", want_path);
  const char* rg = realpath((me + "/exe").c_str(), got_path);
  report("realpath", rw && rg && strcmp(want_path, got_path) == 0, rg ? "answered for another file" : strerror(errno));
  memset(got_path, 0, sizeof got_path);
  rg = __realpath_chk((me + "/exe").c_str(), got_path, sizeof got_path);
  report("__realpath_chk", rw && rg && strcmp(want_path, got_path) == 0,
         rg ? "answered for another file" : strerror(errno));

  // The threads as a listing gives them (by /proc's numbers), then each looked at by the
  // name the listing gave, under the process's own number -- what psutil's threads() does.
  int entries = 0, usable = 0;
  if (DIR* d = opendir((me + "/task").c_str())) {
    while (dirent* e = readdir(d)) {
      if (e->d_name[0] == '.') continue;
      entries++;
      usable += stat((me + "/task/" + e->d_name + "/stat").c_str(), &b) == 0;
    }
    closedir(d);
  }
  report("opendir", entries == 2, std::to_string(entries) + " threads listed, not 2");
  report("listed-threads", entries == 2 && usable == 2, std::to_string(usable) + " of them usable by those names");
  entries = 0;
  if (DIR* d = opendir((me + "/task/").c_str())) {
    while (dirent* e = readdir(d)) entries += e->d_name[0] != '.';
    closedir(d);
  }
  report("opendir-slash", entries == 2, std::to_string(entries) + " threads listed, not 2");

  // Every name of open, each given the second thread's comm file.
  const std::string comm_path = thread + "/comm";
  const char* cp = comm_path.c_str();
  auto opened = [&](const char* call, int fd) {
    report(call, fd >= 0, err(fd));
    if (fd >= 0) close(fd);
  };
  opened("open", open(cp, O_RDONLY));
  opened("__open_2", __open_2(cp, O_RDONLY));
  opened("__openat_2", __openat_2(AT_FDCWD, cp, O_RDONLY));
  opened("__open64_2", __open64_2(cp, O_RDONLY));
  opened("__openat64_2", __openat64_2(AT_FDCWD, cp, O_RDONLY));
  opened("open64", open64(cp, O_RDONLY));
  opened("openat", openat(AT_FDCWD, cp, O_RDONLY));
  opened("openat64", openat64(AT_FDCWD, cp, O_RDONLY));
  for (auto [call, f] : {std::pair{"fopen", fopen(cp, "r")}, {"fopen64", fopen64(cp, "r")}}) {
    report(call, f != nullptr, err(f ? 0 : -1));
    if (f) fclose(f);
  }

  // Another thread's name, which glibc reads under /proc/self/task by the namespace's tid.
  char name[32] = {};
  r = pthread_getname_np(th, name, sizeof name);
  report("pthread_getname_np", r == 0 && strcmp(name, "proc-paths-2") == 0,
         r ? std::string(strerror(r)) : std::string("got ") + name);
  // A call that succeeds leaves errno alone, translated or not.
  errno = 12345;
  r = stat(ns.c_str(), &b);
  report("errno-kept", r == 0 && errno == 12345, r ? err(r) : "errno " + std::to_string(errno));
  // A null path reaches glibc (and the kernel), which says EFAULT, rather than crashing.
  const char* volatile null_path = nullptr;
  errno = 0;
  r = stat(null_path, &b);
  int e = errno;
  int r2 = access(null_path, R_OK);
  report("null-path", r == -1 && e == EFAULT && r2 == -1 && errno == EFAULT,
         "stat " + std::to_string(r) + " (" + strerror(e) + "), access " + std::to_string(r2));
  // The second thread by its own number, as /proc/<tid> names a thread.
  char comm[32] = {};
  int fd = open(("/proc/" + std::to_string(second_tid) + "/comm").c_str(), O_RDONLY);
  n = fd >= 0 ? read(fd, comm, sizeof comm - 1) : -1;
  report("proc-tid", n > 0 && strcmp(comm, "proc-paths-2\n") == 0, fd < 0 ? err(fd) : std::string("read ") + comm);
  if (fd >= 0) close(fd);
  // A child, by the number fork gave (what a launcher does with its workers' pids).
  int ready[2], hold[2];
  if (pipe(ready) != 0 || pipe(hold) != 0) return 2;
  pid_t child = fork();
  if (child == 0) {
    prctl(PR_SET_NAME, "proc-paths-c");
    char c = 1;
    if (write(ready[1], &c, 1) != 1) _exit(1);
    close(hold[1]);
    ssize_t ignored = read(hold[0], &c, 1);  // until the parent closes its end
    (void)ignored;
    _exit(0);
  }
  char c = 0;
  if (child < 0 || read(ready[0], &c, 1) != 1) return 2;
  memset(comm, 0, sizeof comm);
  fd = open(("/proc/" + std::to_string(child) + "/comm").c_str(), O_RDONLY);
  n = fd >= 0 ? read(fd, comm, sizeof comm - 1) : -1;
  report("child", n > 0 && strcmp(comm, "proc-paths-c\n") == 0, fd < 0 ? err(fd) : std::string("read ") + comm);
  if (fd >= 0) close(fd);
  close(hold[1]);
  waitpid(child, nullptr, 0);


  pthread_mutex_lock(&mu);
  done = true;
  pthread_cond_broadcast(&cv);
  pthread_mutex_unlock(&mu);
  pthread_join(th, nullptr);
  return failures ? 1 : 0;
}
