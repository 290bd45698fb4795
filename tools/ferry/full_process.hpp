// Whole-process checkpoints (CPU state by CRIU, GPU state by ferry): what the CLI
// needs from the machine, and the pre-flight that `ferry check` reports.
//
// CRIU is found as FERRY_CRIU, else `criu` on PATH, else the private build that
// scripts/criu-setup.sh makes (FERRY_DEFAULT_CRIU, compiled in). It must be >= 4 and
// pass `criu check` (as root); set-up builds 4.2.1, the first that dumps TCP and UDP
// sockets on Linux >= 6.16. The driver must have NVIDIA's checkpoint API
// (cuCheckpointProcess*, CUDA 12.8 / driver r570 and later): ferry releases the GPU
// state itself, and the API makes the driver drop what is left before CRIU dumps.
//
// CRIU (x86) stops each task on its way out of the parasite with a hardware
// breakpoint. Some virtual machines accept the debug registers through ptrace but never
// fire them: CRIU then waits forever for the task to trap (measured on a Firecracker
// guest, AMD EPYC, kernel 6.18). ferry probes that once -- a traced child with a
// breakpoint on a function it then calls either traps or exits -- and where breakpoints
// do not fire, runs CRIU with CRIU_FAULT=130, CRIU's own switch to stop tasks by
// stepping through system calls instead (slower with many threads, same result).
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace ferry::cli {

// The criu binary to use (it may not exist; criu_report says why it cannot be used).
std::string criu_path();
// What `criu --version` says ("4.2.1"), "" when it does not answer like CRIU.
std::string criu_version(const std::string& criu);

// {"path", "version", "check"} of the CRIU to use, adding to problems what rules dumps out
// (not found, older than 4, not root, `criu check` failing) and to warnings what limits
// them. About 0.1 s (two runs of criu).
nlohmann::json criu_report(std::vector<std::string>& problems, std::vector<std::string>& warnings);

// Whether a hardware breakpoint set through ptrace fires on this machine (probed once).
// Where they do not, CRIU runs with CRIU_FAULT=130 (unless the caller sets CRIU_FAULT).
bool hardware_breakpoints_work();

// {"criu": {"path", "version", "check", "hardware_breakpoints"}, "driver_checkpoint_api": bool, "ready": bool,
//  "problems": [...], "warnings": [...]}; driver: a dlopen handle of the CUDA driver, or nullptr. A warning
// names what limits dumps without ruling them out (a CRIU that cannot dump TCP sockets here).
// driver_args: how `ferry run` is to find the same driver (--emulator, --real-driver P).
// As root it also starts the driver in a job's PID namespace (`ferry run --pid-namespace`
// of ferry's own `__driver-start`): "driver_in_job" {"ok", "cuInit", ..., "error",
// "proc_failures"}. Where that fails, the same in a `ferry run --host-pids` job:
// "driver_in_host_pids_job"; if the driver starts there, the PID namespace's failure is a
// warning (jobs can still be dumped, run with --host-pids), else a problem.
nlohmann::json full_process_report(void* driver, const std::vector<std::string>& driver_args);

// `ferry __driver-start`: cuInit, the device count, a context and an allocation on device
// 0 through libcuda.so.1 (the shim under ferry run, else the driver the loader finds); one
// JSON line of each call's result, with the pid as the process and as /proc see it. The
// GPU kit runs it too, in and out of PID namespaces.
int driver_start();

}  // namespace ferry::cli
