// What is left of a restore when `ferry restore` dies half-way (kill -9, a terminal's ^C).
//
// `criu restore` runs as ferry's child and makes the job's init ferry's child too
// (--restore-sibling), so that ferry can wait for the job and pass signals on. Killed
// half-way, ferry leaves CRIU stuck with half-restored processes that wait for it
// forever, or a whole restored job whose GPUs the driver never gives back (it stays
// locked) -- processes that look alive and do nothing. The init gets its parent-death
// signal back only at the very end of CRIU's restore, so the kernel does not help.
//
// So ferry forks a guard first, before it loads the CUDA driver: a process of its own
// session (a terminal's ^C does not reach it) that ignores the usual termination
// signals, has /dev/null for stdio and nothing else open but its end of a socket pair
// from ferry, and waits on it. Ferry tells it the restore's work directory and the
// init's directory, and which CRIU to kill (withdrawn before CRIU is reaped, so that a
// reused pid is never killed). Once the restore is over -- the job handed back to its
// program, or refused before CRIU, or CRIU's own failure cleaned up -- ferry says it is
// done. An end of the socket without "done" means ferry died (or saw CRIU die without
// cleaning up): the guard kills CRIU and the restored init, whose death ends every
// process of the job's PID namespace (a job without one, its whole tree), then removes the work directory and the init's
// directory if nothing uses it. It finds the init three ways, one per stage of CRIU's
// restore: every process CRIU forks writes to CRIU's log, particular to this restore,
// while it runs CRIU's code; from CRIU's "setup-namespaces" stage, the action script
// (ferry itself, run by CRIU with CRTOOLS_SCRIPT_ACTION set) has written the init's pid
// to the work directory; at the end, CRIU's --pidfile has. The image is never written to.
#pragma once

#include <sys/types.h>

#include <string>

namespace ferry::cli {

class RestoreGuard {
 public:
  RestoreGuard();   // forks the guard (without one, a restore goes on as before)
  ~RestoreGuard();  // done(), or clean_up() when an exception is unwinding the restore
  RestoreGuard(const RestoreGuard&) = delete;
  RestoreGuard& operator=(const RestoreGuard&) = delete;

  void work_dir(const std::string& path);
  void init_dir(const std::string& path);
  // p is to be killed should this process die before done(), until unwatch(p).
  void watch(pid_t p);
  void unwatch(pid_t p);
  // The job has no PID namespace (`ferry run --host-pids`): the init is killed with every
  // process below it.
  void whole_tree();
  // The restore is over: the guard ends without killing anything.
  void done();
  // The restore failed in a way that may have left processes (CRIU killed by a signal):
  // the guard kills what it knows of now, keeps the work directory (its log), and ends.
  void clean_up();

 private:
  void say(const std::string& line);
  void end(bool killing);
  int fd_ = -1;
  pid_t guard_ = -1;
};

// The environment CRIU runs with during a restore: its action scripts are this program,
// which writes the pid of the restored init for the guard (see above).
constexpr char kRestoreWorkEnv[] = "FERRY_RESTORE_WORK";
// In the work directory: the file the action script writes the init's pid to, CRIU's
// --pidfile and CRIU's log.
constexpr char kRootPidFile[] = "root.pid";
constexpr char kCriuPidFile[] = "init.pid";
constexpr char kCriuLog[] = "restore.log";

// Ferry run as CRIU's action script (CRTOOLS_SCRIPT_ACTION set): writes the restored
// init's pid where kRestoreWorkEnv says; returns the exit status (0: CRIU goes on).
int criu_action_script(const char* action);

}  // namespace ferry::cli
