#include "locks.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <thread>

#include <ferry_image/image.hpp>

#include "client.hpp"

namespace ferry::cli {

namespace fs = std::filesystem;

FileLock::~FileLock() {
  if (fd_ < 0) return;
  // Taken exclusively without waiting, nobody else holds it or is blocked in flock on it
  // (one who opened it and waits would take it after this close, find the path gone,
  // and make it again).
  if (!remove_.empty() && flock(fd_, LOCK_EX | LOCK_NB) == 0 && same_file(fd_, remove_)) unlink(remove_.c_str());
  close(fd_);
}

bool same_file(int fd, const std::string& path) {
  struct stat a, b;
  return fstat(fd, &a) == 0 && stat(path.c_str(), &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

void acquire(int fd, const std::string& path, int op, int timeout_s, const std::string& busy, const std::function<void()>& waiting,
             const std::function<void()>& meanwhile) {
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  for (bool told = false; flock(fd, op | LOCK_NB) != 0;) {
    if (errno == EINTR) continue;
    if (errno == EBADF || errno == ENOLCK || errno == ENOSYS || errno == EOPNOTSUPP) return;
    if (errno != EWOULDBLOCK) throw ClientError(kFixFirst, "cannot lock " + path + ": " + strerror(errno));
    if (std::chrono::steady_clock::now() >= until) throw ClientError(kRetryLater, busy);
    if (!told) waiting(), told = true;
    if (meanwhile) meanwhile();
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

FileLock lock_image(const std::string& dir, bool exclusive, int timeout_s, const std::function<void()>& waiting,
                    const std::function<void()>& meanwhile) {
  // One file whatever the spelling of DIR's parent (a symlink to it, say); a bind mount
  // of it shows the same file.
  fs::path d(dir);
  std::error_code ec;
  fs::path parent = fs::weakly_canonical(d.parent_path(), ec);
  const std::string path = (ec ? d.parent_path() : parent).string() + "/" + d.filename().string() + ".lock";
  const std::string busy = "another ferry has been " + std::string(exclusive ? "restoring from or dumping to " : "dumping to ") +
                           dir + " for " + std::to_string(timeout_s) + " s (it holds " + path +
                           "); try again once that is done. Nothing was done";
  for (int attempt = 0; attempt < 8; attempt++) {
    int fd = open(path.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0 && !exclusive) fd = open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
      if (!exclusive && (errno == ENOENT || errno == EROFS || errno == EACCES || errno == EPERM)) return FileLock();
      throw ClientError(kFixFirst, "cannot create " + path + " (the lock that keeps dumps to and restores from " + dir +
                                       " apart): " + strerror(errno));
    }
    FileLock lock(fd, path);
    acquire(fd, path, exclusive ? LOCK_EX : LOCK_SH, timeout_s, busy, waiting, meanwhile);
    if (!same_file(fd, path)) continue;
    image::recover_dir(dir);  // an image a publish that died left aside (NFS) is put back
    return lock;
  }
  throw ClientError(kFixFirst, path + " keeps being removed while this ferry waits for it");
}

}  // namespace ferry::cli
