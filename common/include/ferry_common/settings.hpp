// Every FERRY_* environment setting, in one table: name, type, default and help.
//
// The shim, the CLI and the simulated GPU read their settings only through this module
// (settings::raw and the typed readers below), so a value means the same to all of
// them: FERRY_ARENA_SIZE=64g is 64 GiB to the shim and to `ferry check` alike. The
// table is also the documentation's source: a test checks that docs/shim.md and
// docs/emulator.md list exactly the settings of their scope.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace ferry::settings {

enum class Type { Flag, Size, Address, Count, Path, Text, Choice, DeviceMap, Signal };

// Who reads a setting, and so which document lists it.
enum Scope : unsigned { Shim = 1, Cli = 2, Emulator = 4, Test = 8 };

struct Setting {
  const char* name;  // a trailing "<n>" stands for a decimal index (FERRY_EMU_DEVICE0, ...)
  Type type;
  unsigned scope;
  const char* default_text;  // as documented ("" when unset means "none")
  const char* help;
};

inline constexpr Setting kSettings[] = {
    // ---- the shim (docs/shim.md) ----
    {"FERRY_REAL_DRIVER", Type::Path, Shim, "searched",
     "absolute path of the real libcuda.so.1 (default: the first one on LD_LIBRARY_PATH or in the usual "
     "system directories that is neither the shim nor the toolkit's stub)"},
    {"FERRY_ON_ERROR", Type::Choice, Shim, "passthrough",
     "refuse: exit 1 when ferry cannot work; passthrough: say so once and forward every call unchanged"},
    {"FERRY_ARENA", Type::Flag, Shim, "on", "off: let the driver place allocations (the process can then not be restored)"},
    {"FERRY_ARENA_BASE", Type::Address, Shim | Cli, "0x500000000000", "first address of the arena"},
    {"FERRY_ARENA_SIZE", Type::Size, Shim | Cli, "2T", "size of each device's arena range (k, m, g, t suffixes)"},
    {"FERRY_DEVICE_MAP", Type::DeviceMap, Shim, "identity",
     "the program's device i is physical device map[i] (a permutation, e.g. 1,0)"},
    {"FERRY_LOG", Type::Text, Shim, "warn", "error, warn, info or debug; add ,state to dump the device-state log at exit"},
    {"FERRY_LOG_FILE", Type::Path, Shim, "stderr", "where messages and dumps go"},
    {"FERRY_DUMP_SIGNAL", Type::Signal, Shim, "off", "USR1 or USR2: dump the device-state log, world stopped, on that signal"},
    {"FERRY_ON_SIGNAL", Type::Text, Shim, "off",
     "SIGNAL=checkpoint:DIR[;...]: on that signal, checkpoint to DIR and exit (0 when the image is complete)"},
    {"FERRY_CONTROL", Type::Flag, Shim, "on", "off: no control socket (the C++ API and signals still work)"},
    {"FERRY_SOCKET_DIR", Type::Path, Shim | Cli, "/tmp/ferry-UID", "directory of the control sockets (mode 0700)"},
    {"FERRY_TRACE_PROC", Type::Flag, Shim, "off",
     "on: report on stderr each /proc path the program uses in a PID namespace (and what it became) and each "
     "thread it names, with the outcome: why a job's driver cannot start there"},
    {"FERRY_FORK_RELEASE", Type::Choice, Shim, "job",
     "in a child forked without exec once CUDA is initialized (a DataLoader's workers), replace the driver's "
     "inherited descriptors and mappings, which CRIU cannot dump, by /dev/null and inaccessible memory: job (in a "
     "ferry run --pid-namespace or --host-pids job), on (always) or off"},
    {"FERRY_JOB", Type::Text, Shim, "",
     "set by ferry run for the processes of a job it starts (pid-namespace or host-pids): where a whole-process "
     "dump is possible, so FERRY_FORK_RELEASE=job acts (a job in a PID namespace is known without it)"},
    {"FERRY_NVML_RELEASE", Type::Flag, Shim, "on",
     "off: leave NVML alone in a whole-process dump (where the driver's checkpoint releases NVML's files itself)"},
    {"FERRY_FINGERPRINTS", Type::Flag, Shim, "on",
     "off: incremental checkpoints read every chunk instead of comparing GPU fingerprints"},
    // ---- the CLI (docs/control.md) ----
    {"FERRY_SHIM", Type::Path, Cli, "next to ferry", "the libferry.so that ferry run preloads"},
    {"FERRY_CRIU", Type::Path, Cli, "criu on PATH, else the build of scripts/criu-setup.sh",
     "the criu binary for whole-process dumps (CRIU >= 4)"},
    // ---- the simulated GPU (docs/emulator.md) ----
    {"FERRY_EMU_DEVICES", Type::Count, Emulator, "2", "number of devices (up to 16)"},
    {"FERRY_EMU_MEMORY", Type::Size, Emulator, "16G", "memory per device (512M, 16G, ...)"},
    {"FERRY_EMU_CC", Type::Text, Emulator, "9.0", "compute capability of every device (8.0)"},
    {"FERRY_EMU_DEVICE<n>", Type::Text, Emulator, "",
     "per device: name=...,memory=...,held=...,cc=8.0,sms=108,uuid=<32 hex>,pci=0000:3b:00.0 (held: memory the "
     "machine's other tenants hold there)"},
    {"FERRY_EMU_KERNELS", Type::Path, Emulator | Cli, "", "kernel libraries to search (files or directories, ':'-separated)"},
    {"FERRY_EMU_BLOCK_THREADS", Type::Count, Emulator, "CPU count (max 16)", "OS threads running the blocks of one launch"},
    {"FERRY_EMU_FIBER_STACK", Type::Size, Emulator, "64K", "stack size of one CUDA thread"},
    {"FERRY_EMU_LOG", Type::Count, Emulator, "0", "1: log what the driver does to stderr"},
    {"FERRY_EMU_PAIRS_SAME_CHIP", Type::Flag, Emulator, "off",
     "on: a restore by this process refuses GPU pairs to another chip even for GPUs the process had not opened (the "
     "stricter reading of NVIDIA's \"same chip type\")"},
    {"FERRY_EMU_TRACE_GPA", Type::Path, Emulator, "", "append every cuGetProcAddress request and its outcome to this file"},
    // ---- test hooks (never documented for users) ----
    {"FERRY_TEST_ENOSPC_AFTER", Type::Count, Test, "", "the image writer fails with ENOSPC after this many bytes"},
    {"FERRY_TEST_OP_DELAY_MS", Type::Count, Test, "", "each engine operation starts its work this many milliseconds late"},
    {"FERRY_EMU_TEST_BREAK_INTEGRITY", Type::Flag, Test, "", "the emulator answers the integrity check wrongly"},
    {"FERRY_TEST_NO_PROC_TRANSLATION", Type::Text, Test, "",
     "the shim leaves /proc paths and thread names in a PID namespace as they are (as before its fix): on for "
     "all, or the families named (open, stat, list, link, names; comma-separated)"},
};

// The table entry for a name (FERRY_EMU_DEVICE3 finds FERRY_EMU_DEVICE<n>), or nullptr.
const Setting* find(std::string_view name);

// The variable's value, or nullptr when unset. Aborts on a name missing from the table:
// every setting ferry reads must be documented there.
const char* raw(const char* name);

// "64g" -> 64 GiB; "512M", "2T", "4096", "0x1000" (k/m/g/t, either case, an optional
// "iB"/"B" after it; powers of 1024). nullopt for anything else (or on overflow).
std::optional<uint64_t> parse_size(std::string_view text);
// on/off, 1/0, true/false, yes/no (either case).
std::optional<bool> parse_flag(std::string_view text);
// TERM, SIGTERM, USR1, 15, ...; 0 when not a signal.
int parse_signal(std::string_view text);

// Typed readers: the default when unset; an unparsable value is reported once on
// stderr as "ferry: NAME=VALUE is not a ..." and the default used.
uint64_t size(const char* name, uint64_t dflt);
bool flag(const char* name, bool dflt);
long count(const char* name, long dflt);
std::string text(const char* name, const std::string& dflt = {});

const char* type_name(Type t);

}  // namespace ferry::settings
