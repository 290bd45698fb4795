// flock(2) locks that order ferry's dumps and restores where they share a directory.
//
// Two places are shared. The working directory of a job's init is shared by copies of
// one image (init_dir.hpp). And an image directory DIR is shared by whoever dumps to it
// and whoever restores from it: copies of one job preempted together with the same
// `--on-signal TERM=dump:DIR` both write DIR.partial, and a dump that publishes DIR while
// a restore is still reading it would hand that restore another dump's GPU state, or
// remove CRIU's files under it. So DIR has a lock file beside it, DIR.lock: a dump holds
// it exclusively from before it looks at the job until DIR is published (or the dump is
// undone), a restore holds it shared from before it reads the manifest until the GPU
// state is read back. Under it, an image that a publish on a file system without
// RENAME_EXCHANGE (NFS) had moved aside when it died is put back (image::recover_dir).
// Both wait (saying so once) up to a timeout. The file is removed by
// whoever lets go last -- one who takes it after that finds it gone, and makes it again.
// Where DIR's parent is read-only, a restore goes on without the lock: nobody can dump
// there. Where the file system has no flock (NFS on a read-only descriptor, Lustre
// without -o flock) both go on without it, as before these locks existed.
//
// Lock order: an image directory's before an init directory's (a dump of one copy and
// a restore of another then never wait for each other in a circle).
#pragma once

#include <functional>
#include <string>

namespace ferry::cli {

// A flock(2) held for as long as this lives. Given a path, the file there is removed on
// release when it is still the locked one and nobody else holds or waits for it.
class FileLock {
 public:
  explicit FileLock(int fd = -1, std::string remove_at_end = {}) : fd_(fd), remove_(std::move(remove_at_end)) {}
  FileLock(FileLock&& o) noexcept : fd_(o.fd_), remove_(std::move(o.remove_)) { o.fd_ = -1; }
  FileLock& operator=(FileLock&&) = delete;
  ~FileLock();
  int fd() const { return fd_; }

 private:
  int fd_;
  std::string remove_;
};

// Whether fd and path are the same file (path not removed or replaced meanwhile).
bool same_file(int fd, const std::string& path);

// Takes flock `op` (LOCK_SH or LOCK_EX) on fd (open on path), waiting up to timeout_s: calls waiting
// once when it must wait, meanwhile every 50 ms of the wait (it may throw to give up),
// and throws ClientError(kRetryLater, busy) at the timeout. Without flock on the file
// system it returns at once, unlocked.
void acquire(int fd, const std::string& path, int op, int timeout_s, const std::string& busy, const std::function<void()>& waiting,
             const std::function<void()>& meanwhile = {});

// The lock on image directory dir (an absolute path without a trailing slash): exclusive
// for a dump, shared for a restore. Throws ClientError: kRetryLater at the timeout,
// kFixFirst when the lock file cannot be made for a dump.
FileLock lock_image(const std::string& dir, bool exclusive, int timeout_s, const std::function<void()>& waiting,
                    const std::function<void()>& meanwhile = {});

}  // namespace ferry::cli
