// What is left of a restore when `ferry restore` dies half-way (kill -9, a terminal's ^C).
//
// `criu restore` runs as ferry's child and makes the job's init ferry's child too
// (--restore-sibling), so that ferry can wait for the job and pass signals on. Killed
// half-way, ferry leaves CRIU stuck with half-restored processes that wait for it
// forever, or a whole restored job whose GPUs the driver never gives back (it stays
// locked) -- processes that look alive and do nothing. The init gets its parent-death
// signal back only at the very end of CRIU's restore, so the kernel does not help.
//
// So before CRIU starts, ferry forks a guard: a process of its own session (a
// terminal's ^C does not reach it) that ignores the usual termination signals, holds no
// descriptor but the read end of a pipe from ferry, and waits on it. Ferry tells it what
// to kill (CRIU, then the restored init) and, once the restore is over -- the job handed
// back to its program, or killed and cleaned up by ferry itself -- that it is done. An
// end of the pipe without "done" means ferry died: the guard kills CRIU and the
// restored init, whose death ends every process of the job's PID namespace. The guard
// finds the init three ways, for the three stages of CRIU's restore: until the job's
// descriptors are restored, every process CRIU forks holds CRIU's log, which is
// particular to this restore; from its "setup-namespaces" stage, the action script
// (ferry itself, run by CRIU with CRTOOLS_SCRIPT_ACTION set) has written the init's pid
// to the restore's work directory; at the end, CRIU's --pidfile has. Nothing is left
// running; the image is never written to.
#pragma once

#include <sys/types.h>

#include <string>

namespace ferry::cli {

class RestoreGuard {
 public:
  // Starts the guard of a restore whose work directory is work_dir.
  explicit RestoreGuard(std::string work_dir);
  ~RestoreGuard();  // done()
  RestoreGuard(const RestoreGuard&) = delete;
  RestoreGuard& operator=(const RestoreGuard&) = delete;

  // p is to be killed should this process die before done().
  void watch(pid_t p);
  // The restore is over: the guard ends without killing anything.
  void done();

 private:
  int fd_ = -1;
  pid_t guard_ = -1;
};

// The environment CRIU runs with during a restore: its action scripts are this program,
// which writes the pid of the restored init for the guard (see above).
constexpr char kRestoreWorkEnv[] = "FERRY_RESTORE_WORK";
// The file the init's pid is written to, in the work directory.
constexpr char kRootPidFile[] = "root.pid";

// Ferry run as CRIU's action script (CRTOOLS_SCRIPT_ACTION set): writes the restored
// init's pid where kRestoreWorkEnv says; returns the exit status (0: CRIU goes on).
int criu_action_script(const char* action);

}  // namespace ferry::cli
