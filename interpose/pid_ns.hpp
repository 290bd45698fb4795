// Whether this process runs in a PID namespace other than its /proc's. A `ferry run
// --pid-namespace` job keeps the host's /proc (thread_names.cpp says why), so this is
// how the shim knows it runs in a job, where a whole-process dump is possible.
#pragma once

namespace ferry {

// getpid() differs from the pid /proc/self names (cached; a fork or a restore keeps the namespace).
bool proc_is_foreign();

// This process is in a ferry job, where a whole-process dump is possible: a PID
// namespace of its own, or FERRY_JOB, which ferry run sets for a job of the host's pids
// (--host-pids), whose /proc is its own.
bool in_job();

}  // namespace ferry
