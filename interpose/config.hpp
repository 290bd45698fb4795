// The shim's configuration, read once at load from the FERRY_* settings (their names,
// types and defaults are in common's settings table, ferry_common/settings.hpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace ferry {

struct Config {
  std::string real_driver;       // FERRY_REAL_DRIVER: absolute path of the real libcuda.so.1
  bool refuse_on_error = false;  // FERRY_ON_ERROR=refuse (default passthrough)
  bool arena = true;             // FERRY_ARENA=off places allocations where the driver likes
  uintptr_t arena_base = 0x500000000000ull;  // FERRY_ARENA_BASE
  size_t arena_size = 2ull << 40;            // FERRY_ARENA_SIZE, per device
  std::string device_map;        // FERRY_DEVICE_MAP="1,0": program device i is physical map[i]
  std::string log_file;          // FERRY_LOG_FILE
  bool dump_state_at_exit = false;
  int dump_signal = 0;           // FERRY_DUMP_SIGNAL=USR2: dump the state log on that signal
  std::string on_signal;         // FERRY_ON_SIGNAL: read by the engine's signal handler
  bool control = true;           // FERRY_CONTROL=off: no control socket
  bool fingerprints = true;      // FERRY_FINGERPRINTS=off: incremental checkpoints read every chunk
  uint64_t test_enospc_after = 0;  // FERRY_TEST_ENOSPC_AFTER: test hook for a full disk
};

// Reads the settings (and opens FERRY_LOG_FILE); called once by the loader.
void read_config();
const Config& config();

}  // namespace ferry
