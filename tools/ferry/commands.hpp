// The ferry CLI's commands (each returns the process exit code, client.hpp's Exit).
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace ferry::cli {

struct Output {
  bool json = false;             // --format json: one JSON document on stdout
  std::string progress = "auto";  // auto (on a terminal) | always | never
  // A dump's one-line summary goes to stderr, "ferry: " before it: that of an --on-signal
  // dump, whose stdout is the job's own output.
  bool summary_on_stderr = false;
};

struct OpArgs {
  std::string dir, parent;
  bool leave_running = false, cont = false, stay_stopped = false, discard = false;
  bool read_all = false;  // --read-all: no GPU fingerprints
  int zstd = 0, device = -1, timeout = 0;
  std::string device_map;
  unsigned long staging_mb = 0;
};

int cmd_op(const std::string& op, pid_t pid, const OpArgs& a, const Output& out);
int cmd_status(pid_t pid, const Output& out);
int cmd_ps(const Output& out);
int cmd_inspect(const std::string& dir, const Output& out);
int cmd_verify(const std::string& dir, const Output& out);
int cmd_check(pid_t pid, bool emulator, const std::string& real_driver, const Output& out);

// "1,0" -> {1, 0}; throws std::invalid_argument.
std::vector<int> parse_device_map(const std::string& s);

}  // namespace ferry::cli
