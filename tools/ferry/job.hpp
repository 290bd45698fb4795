// A job in its own PID namespace (`ferry run --pid-namespace`), or without one
// (`ferry run --host-pids`).
//
// `ferry run` clones ferry's init into a new PID namespace (pid 1). The init closes
// every descriptor but 0, 1 and 2 (and those --preserve-fds keeps), starts a new session, forks the program (pid 2: it is not pid 1, so it keeps the
// default signal behaviour a program expects), moves to a working directory of its own
// (init_dir.hpp: CRIU's parasite needs one it can write), forwards every signal it is sent to the
// program, reaps whatever is re-parented to it, and exits with the program's status
// once nothing is left. `ferry run` itself stays outside: it forwards the signals it
// gets (a scheduler's SIGTERM, a terminal's ^C) to the init and exits with the
// program's status; if `ferry run` is killed outright, the job is killed with it. A job
// so isolated can be dumped by CRIU as one tree (the init and
// everything below it) and restored under the same pids while the original still runs;
// its processes name their control sockets by host pid (ferry_common/control.hpp), so
// jobs never collide.
//
// --host-pids is the same job without the namespace, for a CUDA driver that cannot start
// in one (driver-facts.md §16): the init is a child subreaper, so what the job's processes
// orphan stays in its tree, and the program dies with it (PR_SET_PDEATHSIG), as a
// namespace would see to. Its processes keep the host's pids, so CRIU restores it only
// where those pids (and its threads' ids) are free -- not beside the original. Killing
// the init ends nothing below it, so ending the job is the init's work: its parent-death
// signal (a `ferry run` killed outright) makes it stop, kill and reap its whole tree, as
// kill_tree (ferry's dump and restore) does from outside. An init killed outright itself
// leaves its tree to `ferry run` (or `ferry restore`), a subreaper too, which ends it
// likewise once it sees the init die (wait_job).
//
// --net-namespace adds a network namespace of the job's own to either: the init is cloned
// into it and brings its loopback up before the program starts (sockets.hpp says why).
#pragma once

#include <sys/types.h>

#include <functional>
#include <map>
#include <string>
#include <vector>

namespace ferry::cli {

// Replaces this process with argv (searched on PATH); on failure says why and exits 127.
[[noreturn]] void exec_command(const std::vector<std::string>& argv);

// What to do when ferry run (or ferry restore) receives a signal, instead of passing
// it on to the job: given the job's init (host pid), returns true when the job was
// dealt with (dumped: its end is then reported as success), false to pass the signal on.
using SignalActions = std::map<int, std::function<bool(pid_t init)>>;

// Runs argv (its environment already set) as the program of a new job; returns the
// exit status ferry run should end with (128+N when the program died of signal N; 0
// when a signal action dumped it). The job keeps descriptors 3 .. 2+keep_fds
// (--preserve-fds), which must be open: they stay in the init too, where a dump finds
// them as the job's stdio is found, outside the job (process_image.hpp).
int run_job(const std::vector<std::string>& argv, const SignalActions& actions = {}, bool host_pids = false,
            bool own_net = false, int keep_fds = 0);

// The signals ferry run passes on to its job (a scheduler's TERM, a terminal's ^C, ...).
std::vector<int> forwarded_signals();

// Notes the descriptors above 2 this process was started with (not close-on-exec), before
// it opens any of its own in their place, and puts /dev/null on a closed 0, 1 or 2:
// called first thing in main.
void note_launcher_fds();
// Whether this process was started with fd (above 2) open.
bool from_launcher(int fd);

// Whether no process has pid p (a zombie still has it).
bool no_process(pid_t p);
// Dead: a zombie, or no process at all.
bool dead(pid_t p);

// A /proc stat file from its state on ("S 1 ..."; the name before it may hold anything);
// "X" where it cannot be read (gone).
std::string stat_from_state(const std::string& path);

// The ids of pid's threads (its own among them), as /proc lists them; none when it is gone.
std::vector<pid_t> thread_ids(pid_t pid);

// The children of every thread of pid.
std::vector<pid_t> child_pids(pid_t pid);

// "812, 813": pids, for a message.
std::string pid_list(const std::vector<pid_t>& pids);

// Kills the process tree under root (stopped first, so that nothing in it forks
// meanwhile): a job without a PID namespace, where killing the init is not enough. The
// root, a job's init, reaps the rest and ends (exit 128+SIGKILL) -- within 30 s, or it is
// killed, and then this process reaps those that come to it (a subreaper). Returns the
// processes below root not reaped by then (their pids still taken); root itself is its
// parent's to reap.
std::vector<pid_t> kill_tree(pid_t root);

// Kills and reaps every process below this one, for at most 5 s (then names those left):
// what a job of the host's pids left to its `ferry run` or `ferry restore`, a subreaper
// too, when its init was killed outright (SIGKILL by hand, or kill_tree's last resort)
// or CRIU died restoring it.
void end_orphans();

// Whether the init of a job of the host's pids has been told to end and has not yet
// acted on it (its `ferry run` died while CRIU held the job stopped): an image dumped
// now may carry the signal, and its restore would end at once.
bool told_to_end(pid_t init);

// Waits for the job whose init (a child of this process) is init, passing on the
// signals this process gets, or acting on them; returns the status as run_job does.
// *killed (where given): whether the init itself died of a signal nobody here acted on.
// Where this process is a subreaper (`--host-pids`), it then kills and reaps whatever the
// job left below it -- an init killed outright leaves its whole tree here.
int wait_job(pid_t init, const SignalActions& actions = {}, bool* killed = nullptr);

}  // namespace ferry::cli
