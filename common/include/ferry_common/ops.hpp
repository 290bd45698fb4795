// The operations' contract: their options and statistics, and the one codec for each
// form they travel in -- JSON (the control socket, the CLI's --format json, the
// engine's status) and the C API's size-led structs (include/ferry/ferry_c.h). The
// engine, the CLI and the C entry points all convert through here, so a new option
// is added once.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

struct ferry_options;
struct ferry_result;

namespace ferry::ops {

struct Progress {
  std::function<void(const char* phase, uint64_t done, uint64_t total)> fn;
  void operator()(const char* phase, uint64_t done, uint64_t total) const {
    if (fn) fn(phase, done, total);
  }
};

struct Options {
  std::string dir;          // image directory (checkpoint, restore, suspend to disk)
  std::string parent;       // incremental: reference chunks of this image
  bool leave_running = false;
  bool stay_stopped = false;
  bool discard = false;     // suspend: drop the GPU state instead of keeping it
  int zstd_level = 0;
  std::vector<int> device_map;  // program device i -> physical device device_map[i]
  int device = -1;              // shorthand: the program's only device goes here
  // Program device -> the GPU it goes to, by UUID (32 hex digits), for a caller that
  // does not know the process's device numbering (a restore on another machine, another
  // CUDA_VISIBLE_DEVICES); devices not named stay where they are. Wins over the above.
  std::map<int, std::string> device_uuids;
  uint64_t staging_bytes = kDefaultStagingBytes;
  bool fingerprints = true;  // GPU fingerprints spare reading chunks unchanged since the parent
  Progress progress;

  static constexpr uint64_t kDefaultStagingBytes = 256ull << 20;
};

struct Stats {
  uint64_t device_bytes = 0;   // bytes of device memory in the snapshot
  uint64_t written = 0;        // bytes written to disk (after dedup and compression)
  uint64_t reused = 0;         // bytes referenced from the parent image
  uint64_t copied = 0;         // device bytes copied to the host
  double seconds = 0;          // the whole operation
  double stopped_seconds = 0;  // how long the program's CUDA calls were held
  uint64_t carried = 0;        // the parent's bytes copied into the image so it stands alone (not in written)
};

// JSON keys: dir, parent, leave_running, stay_stopped, discard, zstd, fingerprints,
// device, device_map, device_uuids ({"program device": "uuid"}), staging_mb. Only
// values that differ from the defaults are written. Reading throws
// ferry::Error(FixFirst) naming a key of the wrong type.
nlohmann::json to_json(const Options& o);
Options options_from_json(const nlohmann::json& j);

// Keys: device_bytes, written, reused, copied, seconds, stopped_seconds.
nlohmann::json to_json(const Stats& s);
Stats stats_from_json(const nlohmann::json& j);

// The C struct: fields past the caller's `size` keep their defaults, so a program
// built against an older ferry_c.h (a smaller struct) is still understood.
Options from_c(const ferry_options* c);
// Fills at most r->size bytes of the caller's result (0: the whole struct).
void to_c(const Stats& s, int code, const std::string& message, ferry_result* r);

}  // namespace ferry::ops
