// CUDA graphs made by stream capture, followed so they can be re-created.
//
// A graph's nodes cannot be read back from the driver in a form that outlives its
// objects, so the shim writes down what the program captures: between
// cuStreamBeginCapture and cuStreamEndCapture on one of its streams, every kernel
// launch (function handle, shape, a copy of the arguments sized by
// cuFuncGetParamInfo), async copy, memset and host function on that stream is
// recorded as the program passed it. At cuStreamEndCapture the recipe is checked
// against the driver's node count: a graph with work ferry did not record (captured
// through other entry points, or joined from other streams) is marked, and checkpoints
// refuse it by name instead of restoring it wrong. Graphs and instantiated graphs get
// virtual handles. The recipes live in the tracker (tr::Graph, tr::GraphExec);
// restore/graphs.cpp replays them to rebuild the graphs and re-points the handles. Graphs built node by node (cuGraphAdd*Node) are not followed
// (those calls report themselves as untracked).
#pragma once

#include <cuda.h>

#include <atomic>
#include <string>

#include "handles.hpp"

namespace ferry::graphs {

extern std::atomic<int> g_capturing;  // captures in progress: launches look only when non-zero

inline bool maybe_capturing(CUstream h) {
  return __builtin_expect(g_capturing.load(std::memory_order_relaxed) != 0, 0) && vh::is_virtual(h);
}

// Recorders: called after the real call succeeded on a stream that may be capturing.
void record_kernel(CUstream h, CUfunction f, const unsigned grid[3], const unsigned block[3], unsigned smem,
                   void** params, void** extra, const CUlaunchAttribute* attrs, unsigned nattrs);
void record_copy(CUstream h, int kind, uintptr_t dst, uintptr_t src, size_t bytes);  // kind: tr::CapOp::Kind
void record_set(CUstream h, int kind, uintptr_t dst, unsigned value, size_t count);
// Host functions: true when h is capturing (the node runs many times, so the caller
// must not free its trampoline after one run); records the function.
bool record_host_fn(CUstream h, CUhostFn fn, void* user);
// The shim's host-function trampoline and a never-freed argument for it (streams.cpp).
CUhostFn host_trampoline();
void* host_trampoline_arg(CUhostFn fn, void* user);

// For the engine, with the world stopped.
std::string check();          // why a checkpoint must refuse ("" if it need not)
bool capture_in_progress();

}  // namespace ferry::graphs
