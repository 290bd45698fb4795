#include "init_dir.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include <ferry_common/errors.hpp>

#include "client.hpp"
#include "locks.hpp"

namespace ferry::cli {

namespace {

constexpr char kPrefix[] = "init-";
constexpr size_t kHexDigits = 16;
constexpr char kParasiteDir[] = "proc.crtools";  // CRIU's name (criu/pie/parasite.c)

std::string error_text(int e) { return strerror(e); }

std::string busy(const std::string& path, int timeout_s) {
  return "a dump or restore of a copy of this job (its init works in " + path + " too) has held it for " +
         std::to_string(timeout_s) + " s; try again once that is done. Nothing was done";
}

// Whether a process other than `except` works in directory fd (true when /proc cannot
// be read: nothing is known then).
bool in_use(int fd, pid_t except) {
  struct stat dir;
  DIR* d = opendir("/proc");
  if (!d || fstat(fd, &dir) != 0) {
    if (d) closedir(d);
    return true;
  }
  bool used = false;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9' || atoi(e->d_name) == except) continue;
    struct stat cwd;
    if (stat((std::string("/proc/") + e->d_name + "/cwd").c_str(), &cwd) == 0 && cwd.st_dev == dir.st_dev &&
        cwd.st_ino == dir.st_ino) {
      used = true;
      break;
    }
  }
  closedir(d);
  return used;
}

void remove_if_unused(const std::string& path, pid_t except) {
  int fd = open(path.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return;
  FileLock lock(fd);
  if (flock(fd, LOCK_EX | LOCK_NB) != 0 || !same_file(fd, path) || in_use(fd, except)) return;
  unlinkat(fd, kParasiteDir, AT_REMOVEDIR);
  rmdir(path.c_str());
}

// Directories of jobs killed from outside are kept (job.cpp); those nobody has used
// for a week go, so they do not pile up.
void sweep(const std::string& base) {
  constexpr time_t kUnusedFor = 7 * 24 * 3600;
  std::vector<std::string> old;
  if (DIR* d = opendir(base.c_str())) {
    while (dirent* e = readdir(d)) {
      std::string path = base + "/" + e->d_name;
      struct stat sb;
      if (is_init_dir(path) && lstat(path.c_str(), &sb) == 0 && S_ISDIR(sb.st_mode) &&
          time(nullptr) - sb.st_mtime > kUnusedFor)
        old.push_back(path);
    }
    closedir(d);
  }
  for (auto& path : old) remove_if_unused(path, 0);
}

// Makes path's missing directories (mode 0700), as the socket directory would be made.
void make_parents(const std::string& path) {
  for (size_t at = path.find('/', 1); at != std::string::npos; at = path.find('/', at + 1)) {
    std::string part = path.substr(0, at);
    if (mkdir(part.c_str(), 0700) != 0 && errno != EEXIST)
      throw ClientError(kFixFirst, "cannot create " + part + ": " + error_text(errno));
  }
}

}  // namespace

std::string make_init_dir() {
  std::string base = own_socket_dir();
  sweep(base);
  std::random_device rd;
  for (int attempt = 0; attempt < 8; attempt++) {
    char hex[kHexDigits + 1];
    snprintf(hex, sizeof hex, "%08x%08x", rd(), rd());
    std::string path = base + "/" + kPrefix + hex;
    if (mkdir(path.c_str(), 0700) == 0) return path;
    if (errno != EEXIST) throw ClientError(kFixFirst, "cannot create " + path + ": " + error_text(errno));
  }
  throw ClientError(kFixFirst, "cannot create a directory of a new name in " + base);
}

bool is_init_dir(const std::string& path) {
  std::string name = path.substr(path.rfind('/') + 1);
  if (name.size() != sizeof kPrefix - 1 + kHexDigits || name.rfind(kPrefix, 0) != 0) return false;
  return name.find_first_not_of("0123456789abcdef", sizeof kPrefix - 1) == std::string::npos;
}

FileLock lock_for_dump(pid_t init, std::string* path, int timeout_s, const std::function<void()>& waiting) {
  std::string link = "/proc/" + std::to_string(init) + "/cwd";
  FileLock lock(open(link.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (lock.fd() < 0) {
    int e = errno;
    if (kill(init, 0) != 0 && errno == ESRCH) throw ClientError(kNoProcess, "job " + std::to_string(init) + " is gone");
    throw ClientError(kFixFirst, "cannot open the working directory of the job's init (" + link + "): " + error_text(e));
  }
  char buf[4096];
  ssize_t n = readlink(link.c_str(), buf, sizeof buf - 1);
  if (n <= 0) throw ClientError(kFixFirst, "cannot read " + link + ": " + error_text(errno));
  *path = std::string(buf, static_cast<size_t>(n));
  bool ours = is_init_dir(*path);
  if (ours) acquire(lock.fd(), *path, LOCK_EX, timeout_s, busy(*path, timeout_s), waiting);
  // Under the lock, a "proc.crtools" in an init directory is a dead dump's (CRIU's removes
  // its own before it lets go of the process).
  struct stat sb;
  if (fstatat(lock.fd(), kParasiteDir, &sb, AT_SYMLINK_NOFOLLOW) == 0) {
    std::string left = *path + "/" + kParasiteDir;
    if (ours) {
      umount2(left.c_str(), MNT_DETACH | UMOUNT_NOFOLLOW);  // the proc mount, if it is still there
      unlinkat(lock.fd(), kParasiteDir, AT_REMOVEDIR);
    }
    if (fstatat(lock.fd(), kParasiteDir, &sb, AT_SYMLINK_NOFOLLOW) == 0)
      throw ClientError(kFixFirst, left + " exists (an interrupted CRIU dump leaves it): CRIU makes a directory of "
                                          "that name in the working directory of the job's init to dump it; remove it "
                                          "(unmount it first if it is a mount point). Nothing was done; the job goes on "
                                          "running");
  }
  return lock;
}

FileLock lock_for_restore(const std::string& path, int timeout_s, const std::function<void()>& waiting,
                         bool exclusive, const std::function<void()>& meanwhile) {
  std::string parent = path.substr(0, path.rfind('/'));
  for (int attempt = 0; attempt < 8; attempt++) {
    make_parents(path);
    // Nobody else may plant the directory (or a link in its place) for the job's init.
    struct stat pb;
    if (lstat(parent.c_str(), &pb) != 0 || !S_ISDIR(pb.st_mode) || pb.st_uid != getuid() || (pb.st_mode & 022))
      throw ClientError(kFixFirst, parent + " (where the job's init works) is not a directory owned by uid " +
                                       std::to_string(getuid()) + " that only its owner may write; fix or remove it");
    if (mkdir(path.c_str(), 0700) != 0 && errno != EEXIST)
      throw ClientError(kFixFirst, "cannot create " + path + " (where the job's init works): " + error_text(errno));
    FileLock lock(open(path.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (lock.fd() < 0 && errno == ENOENT) continue;  // removed by another job's end since the mkdir
    if (lock.fd() < 0) throw ClientError(kFixFirst, "cannot open " + path + ": " + error_text(errno));
    acquire(lock.fd(), path, exclusive ? LOCK_EX : LOCK_SH, timeout_s, busy(path, timeout_s), waiting, meanwhile);
    // Removed by the end of another job that used it while this waited: make it again.
    if (same_file(lock.fd(), path)) return lock;
  }
  throw ClientError(kFixFirst, path + " keeps being removed while the restore makes it");
}

void remove_init_dir_if_unused(const std::string& path, pid_t except) {
  if (is_init_dir(path)) remove_if_unused(path, except);
}

}  // namespace ferry::cli
