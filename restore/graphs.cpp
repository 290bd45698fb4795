// CUDA graphs come back from the recipes the shim recorded while the program captured
// them (interpose/graphs.hpp): each recipe is replayed into a fresh capture on a
// scratch stream of the graph's context -- device addresses are unchanged, handles go
// through their virtual objects -- and instantiated with the recorded flags.
#include <string>
#include <vector>

#include "driver.hpp"
#include "graphs.hpp"
#include "remap.hpp"
#include "restore.hpp"
#include "shim.hpp"
#include "tracker.hpp"

namespace ferry::engine {

void release_graphs() {
  auto& st = tr::state();
  std::lock_guard lk(st.mu);
  for (auto* e : st.graph_execs)
    if (e->v->real) {
      real::cuGraphExecDestroy(static_cast<CUgraphExec>(e->v->real));
      e->v->real = nullptr;
    }
  for (auto* g : st.graphs)
    if (g->v->real) {
      real::cuGraphDestroy(static_cast<CUgraph>(g->v->real));
      g->v->real = nullptr;
    }
}

namespace {

void replay(const tr::CapOp& op, CUstream s) {
  switch (op.kind) {
    case tr::CapOp::Kernel: {
      std::string args = op.args;
      std::vector<void*> ptrs;
      for (uint32_t off : op.offsets) ptrs.push_back(args.data() + off);
      size_t n = args.size();
      void* extra[] = {CU_LAUNCH_PARAM_BUFFER_POINTER, args.data(), CU_LAUNCH_PARAM_BUFFER_SIZE, &n, CU_LAUNCH_PARAM_END};
      bool by_buffer = op.offsets.empty() && !args.empty();
      CUlaunchConfig cfg{};
      cfg.gridDimX = op.grid[0], cfg.gridDimY = op.grid[1], cfg.gridDimZ = op.grid[2];
      cfg.blockDimX = op.block[0], cfg.blockDimY = op.block[1], cfg.blockDimZ = op.block[2];
      cfg.sharedMemBytes = op.smem;
      cfg.hStream = s;
      std::vector<CUlaunchAttribute> attrs = op.attrs;
      cfg.attrs = attrs.data();
      cfg.numAttrs = static_cast<unsigned>(attrs.size());
      check(real::cuLaunchKernelEx(&cfg, vh::real(op.func), by_buffer ? nullptr : ptrs.data(), by_buffer ? extra : nullptr),
            "re-capturing a kernel of a CUDA graph");
      break;
    }
    case tr::CapOp::Copy:
      check(real::cuMemcpyAsync(gx::dev(op.dst), gx::dev(op.src), op.bytes, s), "re-capturing a copy of a CUDA graph");
      break;
    case tr::CapOp::CopyHtoD:
      check(real::cuMemcpyHtoDAsync_v2(gx::dev(op.dst), reinterpret_cast<const void*>(op.src), op.bytes, s),
            "re-capturing a copy of a CUDA graph");
      break;
    case tr::CapOp::CopyDtoH:
      check(real::cuMemcpyDtoHAsync_v2(reinterpret_cast<void*>(op.dst), gx::dev(op.src), op.bytes, s),
            "re-capturing a copy of a CUDA graph");
      break;
    case tr::CapOp::CopyDtoD:
      check(real::cuMemcpyDtoDAsync_v2(gx::dev(op.dst), gx::dev(op.src), op.bytes, s), "re-capturing a copy of a CUDA graph");
      break;
    case tr::CapOp::Set8:
      check(real::cuMemsetD8Async(gx::dev(op.dst), static_cast<unsigned char>(op.value), op.bytes, s),
            "re-capturing a memset of a CUDA graph");
      break;
    case tr::CapOp::Set16:
      check(real::cuMemsetD16Async(gx::dev(op.dst), static_cast<unsigned short>(op.value), op.bytes, s),
            "re-capturing a memset of a CUDA graph");
      break;
    case tr::CapOp::Set32:
      check(real::cuMemsetD32Async(gx::dev(op.dst), op.value, op.bytes, s), "re-capturing a memset of a CUDA graph");
      break;
    case tr::CapOp::HostFn:
      check(real::cuLaunchHostFunc(s, graphs::host_trampoline(), graphs::host_trampoline_arg(op.fn, op.user)),
            "re-capturing a host function of a CUDA graph");
      break;
  }
}

// A fresh real graph from a recipe, captured on a scratch stream of the context.
CUgraph recapture(tr::Ctx* ctx, const tr::Recipe& ops) {
  CtxScope scope(ctx ? ctx->real : nullptr);
  CUstream s = nullptr;
  check(real::cuStreamCreate(&s, CU_STREAM_NON_BLOCKING), "creating a stream to re-capture a CUDA graph");
  CUgraph g = nullptr;
  try {
    check(real::cuStreamBeginCapture_v2(s, CU_STREAM_CAPTURE_MODE_RELAXED), "re-capturing a CUDA graph");
    try {
      for (const tr::CapOp& op : ops) replay(op, s);
    } catch (...) {
      real::cuStreamEndCapture(s, &g);
      if (g) real::cuGraphDestroy(g);
      throw;
    }
    check(real::cuStreamEndCapture(s, &g), "re-capturing a CUDA graph");
  } catch (...) {
    real::cuStreamDestroy_v2(s);
    throw;
  }
  real::cuStreamDestroy_v2(s);
  return g;
}

}  // namespace

void rebuild_graphs() {
  auto& st = tr::state();
  std::lock_guard lk(st.mu);
  for (auto* g : st.graphs) g->v->real = recapture(g->ctx, *g->ops);
  for (auto* e : st.graph_execs) {
    CUgraph g = recapture(e->ctx, *e->ops);
    CUgraphExec x = nullptr;
    CtxScope scope(e->ctx ? e->ctx->real : nullptr);
    CUresult r = real::cuGraphInstantiateWithFlags(&x, g, e->flags);
    real::cuGraphDestroy(g);
    check(r, "instantiating a re-captured CUDA graph");
    e->v->real = x;
  }
}

}  // namespace ferry::engine
