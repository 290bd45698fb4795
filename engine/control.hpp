// The control plane of a process under the shim.
//
// - A Unix socket (common/include/ferry_common/control.hpp says where) served by a
//   thread started when the process initializes CUDA; each connection gets its own
//   thread, is checked by peer credentials (the process's own user or root), and
//   carries one JSON request answered with progress lines and one reply. Operations
//   are serialized by the engine; status answers while one runs.
// - FERRY_ON_SIGNAL="TERM=checkpoint:DIR[;USR1=checkpoint:DIR2]": on that signal the
//   process checkpoints to DIR and exits (0 when the image is complete, 1 if not), so
//   a scheduler's preemption signal leaves a restorable image behind.
// - FERRY_CONTROL=off: no socket.
// A forked child has no listener; it starts its own if it initializes CUDA.
#pragma once

namespace ferry::control {

// Starts the listener once per process (called at cuInit).
void start();

}  // namespace ferry::control
