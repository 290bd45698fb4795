// The working directory of a job's init (`ferry run --pid-namespace` or `--host-pids`),
// and its lock.
//
// Why the init does not stay where the program was started: CRIU's parasite, in the
// first process of a dumped tree (the job's init), needs a /proc of the job's own PID
// namespace. The job sees the host's /proc, so the parasite makes a directory named
// "proc.crtools" in that process's working directory, mounts proc on it, opens it and
// removes it again. That fails in a read-only directory (a container's read-only root),
// where an interrupted dump left one, and when two jobs started in the same directory
// are dumped at the same moment (both parasites make the same name: seen in CI).
//
// So `ferry run` makes a directory for each job, <socket dir>/init-<16 hex digits>
// (mode 0700, on the socket directory's file system, which ferry needs writable
// anyway), and the init moves there once the program has been forked; the program keeps
// its own. Copies of one image (restored twice at once) share theirs, so a dump holds an
// exclusive flock(2) on it from before it looks at the job until CRIU is done, and first
// removes a "proc.crtools" an interrupted dump left there; a restore holds a shared one
// while CRIU restores (an exclusive one for a job of the host's pids, whose copies
// cannot run at once). The image names the directory ("init_dir" in its manifest, not
// among the files a restore needs); a restore makes it again where it is missing
// (another machine). It is removed when a dump ends its job and when the job ends by
// itself, unless a process still works there (a copy) or a dump or restore holds it; a
// job killed from outside keeps it (CRIU run by hand may have dumped it, and its restore
// needs the directory), until a `ferry run` finds it unused for a week. Whether a
// process works there is asked of the kernel by device and inode, not by path.
#pragma once

#include <sys/types.h>

#include <functional>
#include <string>

#include "locks.hpp"

namespace ferry::cli {

// Makes a new init directory; throws ClientError (kFixFirst) naming what failed.
std::string make_init_dir();

// Whether path is an init directory ferry made (by its name).
bool is_init_dir(const std::string& path);

// The dump's lock on the working directory of job init `init` (a host pid), whose path
// it returns in *path. An init directory is locked, waiting up to timeout_s for dumps
// and restores of copies to let go (calling waiting once first), and a "proc.crtools"
// an interrupted dump left in it is removed; any other directory (an image from before
// init directories) is not locked, and a "proc.crtools" in it is refused. Throws
// ClientError: kNoProcess when the init is gone, kRetryLater on the timeout, else
// kFixFirst.
FileLock lock_for_dump(pid_t init, std::string* path, int timeout_s, const std::function<void()>& waiting);

// The restore's lock on init directory path, made first (with its parents) where
// missing; waits as lock_for_dump does. Shared, so copies of one image restore at once;
// exclusive for a job of the host's pids, whose copies cannot, and must find each other's
// processes. Throws ClientError (kRetryLater on the timeout, else kFixFirst) naming what
// failed. meanwhile, called every 50 ms of the wait, may throw to give up.
FileLock lock_for_restore(const std::string& path, int timeout_s, const std::function<void()>& waiting,
                         bool exclusive = false, const std::function<void()>& meanwhile = {});

// Removes init directory path unless a process works in it (other than `except`, a
// process killed and not yet reaped) or a dump or restore holds it; a path that is no
// init directory ("" among them) is left alone.
void remove_init_dir_if_unused(const std::string& path, pid_t except = 0);

}  // namespace ferry::cli
