// Whole-process images: a job that survives the death of its processes.
//
// A job is what `ferry run --pid-namespace` starts: ferry's init as pid 1 of its own PID
// namespace and the program (and whatever it forks) below it -- or, with `--host-pids`,
// the same tree without the namespace (job.hpp), whose image a restore brings back only
// where its pids and thread ids are free (it checks first, and asks each CUDA process to
// listen again, since its pid did not change), and which a dump or a failed restore
// kills process by process. `ferry dump` saves all of it into one directory:
//
//   DIR/process.json   the manifest: format version, versions of ferry and CRIU, the
//                      process tree (namespace pids, names, command lines, which ones
//                      use CUDA and on which GPUs), the GPUs (name, compute capability,
//                      UUID, memory), the job's stdio (and descriptors from its
//                      launcher, --preserve-fds), its TCP listeners and
//                      connections, the parent image, and the size and XXH3-128 hash
//                      of every CRIU file
//   DIR/gpu/<nspid>/   ferry's GPU image of each CUDA process (image/ format: chunks,
//                      fingerprints, zstd; with a parent, its packs linked or its
//                      chunks copied in: the image stands alone)
//   DIR/cpu/           CRIU's images of the whole tree, and CRIU's dump log
//
// Dump, in this order (each step undone if a later one fails: the job goes on running
// on its GPUs):
//   0. what CRIU could not dump is refused before anything stops: a connection to
//      outside the job, one still being set up, a CRIU too old for the job's sockets
//      (sockets.hpp);
//   1. every CUDA process suspends to DIR/gpu/<nspid> (`ferry suspend --to`: all its
//      GPU memory and objects are saved and released; threads wait at their next CUDA
//      call), then closes its control socket (`detach`), so a restored copy never
//      re-binds a socket path another process owns;
//   2. NVIDIA's checkpoint API (lock, checkpoint) makes the driver let go of what is
//      left; with nothing on the GPU this is quick;
//   3. `criu dump` of the tree (with no CRIU plugins: NVIDIA's would redo step 2 its
//      own way), leaving the tasks stopped; the job's stdio and --preserve-fds (pipes,
//      terminals, Unix sockets, files outside the job) is recorded as external, TCP
//      connections inside the job are dumped with it (--tcp-established, in repair
//      mode), a network namespace of the job's own is external (sockets.hpp), and the
//      job's sockets are looked at again now that nothing can change;
//   4. process.json is written, every file synced, and the directory published
//      atomically (written as DIR.partial, then renamed; an existing DIR is replaced);
//   5. the job is killed (its TCP sockets, still in repair mode, close without a word
//      to anyone) -- or, with --leave-running, continued: its TCP sockets leave repair
//      mode, the driver restores and unlocks it, its control socket comes back, and it
//      resumes from the published image.
// A dump never kills the job before the image is published: if ferry itself dies on
// the way, the job waits (stopped or suspended), and `ferry resume PID` brings it back.
//
// Restore (`ferry restore DIR`): checks the manifest and the CRIU files' hashes, that
// nothing on this machine holds the job's TCP addresses, and that the target GPUs
// exist and have the memory the image needs (nothing starts otherwise), then runs
// `criu restore` with the restorer as the new init's parent (--restore-sibling: the
// job dies with `ferry restore` as it did with `ferry run`), the restorer's own
// stdin/stdout/stderr in place of the job's (--inherit-fd), and the restorer's fds 3..
// in place of those the job's launcher gave it (ferry run --preserve-fds), the job's TCP
// connections back in place (--tcp-established), and a new network namespace, loopback
// up, in place of its own (--inherit-fd of the key it was dumped with).
// Each CUDA process gets the GPUs of this machine from the driver (gpuPairs), listens
// again on a socket named by its new host pid, and resumes from DIR/gpu/<nspid> onto
// the devices asked for (--device, --device-map). If any of that fails the restored
// tree is killed: nothing is left half-running and the image is untouched. Then
// `ferry restore` waits for the job like `ferry run` and exits with its status.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "job.hpp"

namespace ferry::cli {

// process.json's newest format: 1, or 2 when the job's TCP connections (inside the job)
// must be brought back -- an older ferry would not ask CRIU to --, or 3 when the job has
// the host's pids (--host-pids), which an older ferry would not check are free, or 4 when
// it holds descriptors from its launcher (ferry run --preserve-fds), which an older ferry
// would fill with its own.
// 5 when a stdio file's name is not UTF-8 (its CRIU key kept as key_hex), or 6 when the
// job has a network namespace of its own (--net-namespace), which an older ferry would not make.
constexpr int kProcessFormat = 6;

struct DumpArgs {
  std::string dir, parent;
  bool leave_running = false;
  int zstd = 0;
  unsigned long staging_mb = 0;
  bool read_all = false;
  int lock_timeout_s = 60;  // how long the driver may wait for queued GPU work
  // CRIU copies files that are open but deleted into the image only up to this size
  // (its own default, 1 MiB, refuses a PyTorch DataLoader's shared-memory batches).
  uint64_t ghost_limit = 1ull << 30;
  // Set (where given) when the dump failed at its parent: reading it, or writing a GPU
  // half that builds on it. --incremental's fallback to a whole dump retries only then.
  bool* parent_failed = nullptr;
};

struct RestoreArgs {
  std::string dir;
  int device = -1;
  std::string device_map;
  bool emulator = false;
  std::string real_driver;
  // Return once the job runs again: the restore, and then the wait for the job, go on in
  // a child of this process in a session of its own, which stays the job's parent (its
  // ferry: a scheduler's signal goes there). The job keeps this command's stdio.
  bool detach = false;
  // Every check a restore makes before it starts anything (the image's CPU half hashed,
  // its stdio, TCP addresses, pids and files here, the GPUs and their memory), and where
  // each process's GPU memory would go; nothing is started. For a scheduler choosing a
  // machine: exit 0, or the restore's refusal and exit code.
  bool dry_run = false;
};

// `ferry dump PID DIR`: PID is the job's `ferry run`, its init, or any process in it.
int cmd_dump(pid_t pid, const DumpArgs& a, const Output& out);

// Why a whole-process dump to dir could not work here, as far as is known before the job
// runs ("" when it could): CRIU missing or not run as root, or no directory to write dir
// in (check_criu false: the directory only). ferry run and ferry restore check their
// --on-signal dumps with it at the start, not when the scheduler's signal comes and a
// failed dump costs the job.
std::string dump_preflight(const std::string& dir, bool check_criu = true);
// `ferry restore DIR`: runs the restored job until it ends; returns its exit status.
int cmd_restore_process(const RestoreArgs& a, const Output& out, const SignalActions& actions = {});

// `ferry resume PID` of a process that an interrupted dump left without its control
// socket: continues the job, has the driver give its GPUs back, and waits for the
// socket. False when pid is not such a process. dir: where its GPU image is now, when
// the dump published it before dying ("" otherwise).
bool recover_detached(pid_t pid, std::string* dir);

// `ferry resume PID` where PID is a job's process without CUDA (its ferry run, init, a
// launcher): a job an interrupted dump (or a SIGSTOP) left stopped is continued, its TCP
// sockets out of CRIU's repair mode first. The job's CUDA processes are returned in
// `forward` instead, to be resumed by their own sockets, when an interrupted dump left
// them without one (their recovery continues the whole tree) or when nothing is
// stopped (one may be suspended). nullopt when pid uses CUDA or is in no job; throws
// ClientError while a dump of the job is in progress.
struct StoppedJob {
  pid_t init = 0;
  size_t continued = 0;        // processes that were stopped
  std::vector<pid_t> forward;  // CUDA processes to resume instead
  std::string problems;        // sockets that could not leave repair mode ("; ..." each)
};
std::optional<StoppedJob> resume_job(pid_t pid);

// What would keep `ferry dump` from dumping the job of pid: {"job_init", "dumpable",
// "problems"} (not in a job; established TCP connections, which CRIU refuses).
nlohmann::json dump_blockers(pid_t pid);

// The job pid is in, for `ferry ps`: its init; the `ferry run` or `ferry restore` that waits
// for it, where a scheduler's signal goes (0 when the init's parent is no ferry: a job
// CRIU restored by hand); whether it keeps the host's pids. nullopt: in no job.
struct JobOf {
  pid_t init = 0, ferry = 0;
  bool host_pids = false;
  bool own_net = false;  // a network namespace of its own (ferry run --net-namespace)
};
std::optional<JobOf> job_of(pid_t pid);

// True when dir holds a whole-process image (process.json).
bool is_process_image(const std::string& dir);
int inspect_process_image(const std::string& dir, const Output& out);
int verify_process_image(const std::string& dir, const Output& out);

}  // namespace ferry::cli
