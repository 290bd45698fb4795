// The engine: checkpoint, suspend, resume, migrate and restore of the GPU state of the
// process the shim lives in.
//
// Every operation runs with the world stopped (gate closed, every context drained):
//   snapshot  the device-state log is serialized and every byte of device memory is
//             copied out, into an image or host RAM (checkpoint/checkpoint.hpp);
//   release   every real object is destroyed and every byte of GPU memory returned;
//   rebuild   everything is re-created on the target devices behind the same virtual
//             handles (restore/restore.hpp).
// The world is stopped and reopened by a guard (World, engine.cpp): whichever way an
// operation leaves -- success, error, or an exception from a layer below -- the gate
// is reopened unless the operation decided to keep the program stopped or suspended.
// States: running -> stopped (checkpoint, world still stopped) -> running (resume);
// running -> suspended (GPU released; snapshot in RAM or an image) -> running
// (resume, possibly on other devices). One operation at a time.
#pragma once

#include <nlohmann/json.hpp>

#include <ferry_common/errors.hpp>
#include <ferry_common/ops.hpp>

namespace ferry::engine {

using Options = ops::Options;
using Stats = ops::Stats;
using Progress = ops::Progress;

// ---- engine.cpp --------------------------------------------------------------------
Stats checkpoint(const Options& o);
Stats suspend(const Options& o);
Stats resume(const Options& o);
Stats migrate(const Options& o);
Stats restore(const Options& o);
// {"state": "running|stopped|suspended", "devices": [...], "last": {...}, ...}
nlohmann::json status();

// Called around each operation (the C++ API's hooks).
using Hook = void (*)(const char* op, int after, void* user);
void add_hook(Hook h, void* user);

}  // namespace ferry::engine
