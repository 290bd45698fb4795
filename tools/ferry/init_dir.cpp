#include "init_dir.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include <ferry_common/errors.hpp>

#include "client.hpp"

namespace ferry::cli {

namespace {

constexpr char kPrefix[] = "init-";
constexpr size_t kHexDigits = 16;
constexpr char kParasiteDir[] = "proc.crtools";  // CRIU's name (criu/pie/parasite.c)

std::string error_text(int e) { return strerror(e); }

// Whether fd and path are the same directory (path not removed or replaced meanwhile).
bool same_dir(int fd, const std::string& path) {
  struct stat a, b;
  return fstat(fd, &a) == 0 && stat(path.c_str(), &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

// Every process's working directory; false when /proc cannot be read (nothing is known).
bool working_dirs(std::set<std::string>* dirs) {
  DIR* d = opendir("/proc");
  if (!d) return false;
  char buf[4096];
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    ssize_t n = readlink((std::string("/proc/") + e->d_name + "/cwd").c_str(), buf, sizeof buf - 1);
    if (n > 0) dirs->insert(std::string(buf, static_cast<size_t>(n)));
  }
  closedir(d);
  return true;
}

void remove_if_unused(const std::string& path, const std::set<std::string>* used) {
  int fd = open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  DirLock lock(fd);
  if (flock(fd, LOCK_EX | LOCK_NB) != 0 || !same_dir(fd, path)) return;
  std::set<std::string> now;
  if (!used && !working_dirs(&now)) return;
  if ((used ? *used : now).count(path)) return;
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
  std::set<std::string> used;
  if (old.empty() || !working_dirs(&used)) return;
  for (auto& path : old) remove_if_unused(path, &used);
}

}  // namespace

DirLock::~DirLock() {
  if (fd_ >= 0) close(fd_);
}

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

DirLock lock_for_dump(pid_t init, std::string* path, int timeout_s, const std::function<void()>& waiting) {
  std::string link = "/proc/" + std::to_string(init) + "/cwd";
  char buf[4096];
  ssize_t n = readlink(link.c_str(), buf, sizeof buf - 1);
  int fd = open(link.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (n <= 0 || fd < 0)
    throw ClientError(kFixFirst, "cannot open the working directory of the job's init (" + link +
                                     "): " + error_text(errno));
  DirLock lock(fd);
  *path = std::string(buf, static_cast<size_t>(n));
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  for (bool told = false; flock(fd, LOCK_EX | LOCK_NB) != 0;) {
    if (errno != EWOULDBLOCK && errno != EINTR)
      throw ClientError(kFixFirst, "cannot lock " + *path + ": " + error_text(errno));
    if (std::chrono::steady_clock::now() >= until)
      throw ClientError(kRetryLater, "another dump or restore of a job whose init works in " + *path +
                                         " (a copy of this one) has held it for " + std::to_string(timeout_s) +
                                         " s; try again once it is done");
    if (!told) waiting(), told = true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  // Under the lock, a "proc.crtools" here is a dead dump's (CRIU's removes its own before
  // it lets go of the process).
  struct stat sb;
  if (fstatat(fd, kParasiteDir, &sb, AT_SYMLINK_NOFOLLOW) == 0) {
    std::string left = *path + "/" + kParasiteDir;
    if (is_init_dir(*path)) {
      umount2(left.c_str(), MNT_DETACH);  // the proc mount, if it is still there
      unlinkat(fd, kParasiteDir, AT_REMOVEDIR);
    }
    if (fstatat(fd, kParasiteDir, &sb, AT_SYMLINK_NOFOLLOW) == 0)
      throw ClientError(kFixFirst, left + " exists (an interrupted CRIU dump leaves it): CRIU makes a directory of "
                                          "that name in the working directory of the job's init to dump it; remove it "
                                          "(unmount it first if it is a mount point). Nothing was done; the job goes on "
                                          "running");
  }
  return lock;
}

DirLock lock_for_restore(const std::string& path) {
  std::string parent = path.substr(0, path.rfind('/'));
  for (int attempt = 0; attempt < 8; attempt++) {
    if (!parent.empty() && mkdir(parent.c_str(), 0700) != 0 && errno != EEXIST)
      throw ClientError(kFixFirst, "cannot create " + parent + ": " + error_text(errno));
    if (mkdir(path.c_str(), 0700) != 0 && errno != EEXIST)
      throw ClientError(kFixFirst, "cannot create " + path + " (where the job's init works): " + error_text(errno));
    int fd = open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) throw ClientError(kFixFirst, "cannot open " + path + ": " + error_text(errno));
    DirLock lock(fd);
    while (flock(fd, LOCK_SH) != 0)
      if (errno != EINTR) throw ClientError(kFixFirst, "cannot lock " + path + ": " + error_text(errno));
    // Removed by the end of another job that used it while this waited: make it again.
    if (same_dir(fd, path)) return lock;
  }
  throw ClientError(kFixFirst, path + " keeps being removed while the restore makes it");
}

void remove_init_dir_if_unused(const std::string& path) {
  if (is_init_dir(path)) remove_if_unused(path, nullptr);
}

}  // namespace ferry::cli
