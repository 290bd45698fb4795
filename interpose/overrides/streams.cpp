// Streams, events, host functions and stream callbacks, kernel launches with a config.
#include <cstring>
#include <vector>

#include "../contexts.hpp"
#include "../graphs.hpp"
#include "../shim.hpp"
#include "shim_decls.hpp"

using namespace ferry;

namespace {

CUstream ptsz(CUstream s) { return s ? s : CU_STREAM_PER_THREAD; }

tr::Stream* stream_rec(CUstream s) {
  return vh::rec_of<tr::Stream>(s, vh::Kind::Stream);
}

// The real handles below are taken by reference: they are written by the call whose
// result is `r`, and argument evaluation order is unspecified.
CUresult make_stream(CUstream* ph, unsigned flags, int priority, CUresult r, const CUstream& real) {
  if (r != CUDA_SUCCESS) return r;
  auto* s = new tr::Stream;
  s->ctx = ctx::current();
  s->flags = flags;
  s->priority = priority;
  real::cuStreamGetPriority(real, &s->priority);  // the driver clamps it
  real::cuStreamGetId(real, &s->id);
  {
    std::lock_guard lk(tr::state().mu);
    tr::enter(s, vh::Kind::Stream, real, &tr::State::streams);
  }
  if (ph) *ph = vh::as<CUstream>(s->v);
  return r;
}

CUresult destroy_stream(CUstream h) {
  tr::Stream* s = stream_rec(h);
  CUresult r = real::cuStreamDestroy_v2(vh::real(h));
  if (r == CUDA_SUCCESS && s) {
    std::lock_guard lk(tr::state().mu);
    tr::leave(s, &tr::State::streams);
  }
  return r;
}

CUresult stream_ctx(CUstream h, CUcontext* pctx, CUresult r, const CUcontext& real) {
  if (r != CUDA_SUCCESS || !pctx) return r;
  tr::Stream* s = stream_rec(h);
  *pctx = s && s->ctx ? vh::as<CUcontext>(s->ctx->v) : tr::virtual_ctx(real);
  return r;
}

CUresult stream_id(CUstream h, unsigned long long* id, CUresult r) {
  if (r != CUDA_SUCCESS || !id) return r;
  if (tr::Stream* s = stream_rec(h)) *id = s->id;  // stable across a restore
  return r;
}

CUresult stream_device(CUdevice* d, CUresult r, const CUdevice& p) {
  if (r == CUDA_SUCCESS && d) *d = vh::virtual_device(p);
  return r;
}

// Host functions and callbacks run on the driver's threads and may call CUDA while
// the world is stopped waiting for their stream: they bypass the gate.
// A host function captured into a graph runs at every launch: its trampoline stays.
struct HostFn {
  CUhostFn fn;
  void* user;
  bool persistent;
};
void CUDA_CB run_host_fn(void* p) {
  HostFn hf = *static_cast<HostFn*>(p);
  if (!hf.persistent) delete static_cast<HostFn*>(p);
  gate::Bypass bypass;
  hf.fn(hf.user);
}

struct Callback {
  CUstreamCallback fn;
  void* user;
  CUstream program_stream;
};
void CUDA_CB run_callback(CUstream, CUresult status, void* p) {
  Callback cb = *static_cast<Callback*>(p);
  delete static_cast<Callback*>(p);
  gate::Bypass bypass;
  cb.fn(cb.program_stream, status, cb.user);
}

CUresult host_fn(CUstream h, CUhostFn fn, void* user, bool per_thread) {
  if (!fn) return per_thread ? real::cuLaunchHostFunc_ptsz(vh::real(h), fn, user)
                             : real::cuLaunchHostFunc(vh::real(h), fn, user);
  CUstream key = per_thread && !h ? CU_STREAM_PER_THREAD : h;
  bool captured = graphs::maybe_capturing(key) && graphs::record_host_fn(key, fn, user);
  auto* hf = new HostFn{fn, user, captured};
  CUresult r = per_thread ? real::cuLaunchHostFunc_ptsz(vh::real(h), run_host_fn, hf)
                          : real::cuLaunchHostFunc(vh::real(h), run_host_fn, hf);
  if (r != CUDA_SUCCESS) delete hf;
  return r;
}

}  // namespace

CUhostFn ferry::graphs::host_trampoline() { return run_host_fn; }
void* ferry::graphs::host_trampoline_arg(CUhostFn fn, void* user) { return new HostFn{fn, user, true}; }

namespace {

CUresult callback(CUstream h, CUstreamCallback fn, void* user, unsigned flags, bool per_thread) {
  if (!fn) return per_thread ? real::cuStreamAddCallback_ptsz(vh::real(h), fn, user, flags)
                             : real::cuStreamAddCallback(vh::real(h), fn, user, flags);
  auto* cb = new Callback{fn, user, h};
  CUresult r = per_thread ? real::cuStreamAddCallback_ptsz(vh::real(h), run_callback, cb, flags)
                          : real::cuStreamAddCallback(vh::real(h), run_callback, cb, flags);
  if (r != CUDA_SUCCESS) delete cb;
  return r;
}

// A launch configuration with its stream (and events in its attributes) translated.
struct RealConfig {
  CUlaunchConfig cfg;
  std::vector<CUlaunchAttribute> attrs;
  explicit RealConfig(const CUlaunchConfig* c) : cfg(*c) {
    cfg.hStream = vh::real(c->hStream);
    if (c->attrs && c->numAttrs) {
      attrs.assign(c->attrs, c->attrs + c->numAttrs);
      for (auto& a : attrs) {
        if (a.id == CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_EVENT)
          a.value.programmaticEvent.event = vh::real(a.value.programmaticEvent.event);
        if (a.id == CU_LAUNCH_ATTRIBUTE_LAUNCH_COMPLETION_EVENT)
          a.value.launchCompletionEvent.event = vh::real(a.value.launchCompletionEvent.event);
      }
      cfg.attrs = attrs.data();
    }
  }
};

// The graph of a capture in progress is handed out as the driver's handle: the program
// gets its virtual handle from cuStreamEndCapture, and nodes added to it directly come
// through untracked entry points (and show in the node count checked at the end).
CUresult capture_graph(CUresult r, CUgraph*) { return r; }

}  // namespace

CUresult ferry::ov::cuStreamCreate(CUstream* ph, unsigned int flags) {
  CUstream real = nullptr;
  return make_stream(ph, flags, 0, real::cuStreamCreate(&real, flags), real);
}
CUresult ferry::ov::cuStreamCreateWithPriority(CUstream* ph, unsigned int flags, int priority) {
  CUstream real = nullptr;
  return make_stream(ph, flags, priority, real::cuStreamCreateWithPriority(&real, flags, priority), real);
}
CUresult ferry::ov::cuStreamDestroy(CUstream h) { return destroy_stream(h); }
CUresult ferry::ov::cuStreamDestroy_v2(CUstream h) { return destroy_stream(h); }

CUresult ferry::ov::cuStreamGetCtx(CUstream h, CUcontext* pctx) {
  CUcontext real = nullptr;
  return stream_ctx(h, pctx, real::cuStreamGetCtx(vh::real(h), &real), real);
}
CUresult ferry::ov::cuStreamGetCtx_ptsz(CUstream h, CUcontext* pctx) {
  CUcontext real = nullptr;
  return stream_ctx(h, pctx, real::cuStreamGetCtx_ptsz(vh::real(h), &real), real);
}
CUresult ferry::ov::cuStreamGetCtx_v2(CUstream h, CUcontext* pctx, CUgreenCtx* green) {
  CUcontext real = nullptr;
  return stream_ctx(h, pctx, real::cuStreamGetCtx_v2(vh::real(h), &real, green), real);
}
CUresult ferry::ov::cuStreamGetCtx_v2_ptsz(CUstream h, CUcontext* pctx, CUgreenCtx* green) {
  CUcontext real = nullptr;
  return stream_ctx(h, pctx, real::cuStreamGetCtx_v2_ptsz(vh::real(h), &real, green), real);
}
CUresult ferry::ov::cuStreamGetId(CUstream h, unsigned long long* id) {
  return stream_id(h, id, real::cuStreamGetId(vh::real(h), id));
}
CUresult ferry::ov::cuStreamGetId_ptsz(CUstream h, unsigned long long* id) {
  return stream_id(h, id, real::cuStreamGetId_ptsz(vh::real(h), id));
}
CUresult ferry::ov::cuStreamGetDevice(CUstream h, CUdevice* d) {
  CUdevice p = 0;
  return stream_device(d, real::cuStreamGetDevice(vh::real(h), &p), p);
}
CUresult ferry::ov::cuStreamGetDevice_ptsz(CUstream h, CUdevice* d) {
  CUdevice p = 0;
  return stream_device(d, real::cuStreamGetDevice_ptsz(vh::real(h), &p), p);
}

CUresult ferry::ov::cuStreamGetCaptureInfo_v2(CUstream h, CUstreamCaptureStatus* st, cuuint64_t* id, CUgraph* g,
                                              const CUgraphNode** deps, size_t* n) {
  return capture_graph(real::cuStreamGetCaptureInfo_v2(vh::real(h), st, id, g, deps, n), g);
}
CUresult ferry::ov::cuStreamGetCaptureInfo_v2_ptsz(CUstream h, CUstreamCaptureStatus* st, cuuint64_t* id, CUgraph* g,
                                                   const CUgraphNode** deps, size_t* n) {
  return capture_graph(real::cuStreamGetCaptureInfo_v2_ptsz(vh::real(h), st, id, g, deps, n), g);
}
CUresult ferry::ov::cuStreamGetCaptureInfo_v3(CUstream h, CUstreamCaptureStatus* st, cuuint64_t* id, CUgraph* g,
                                              const CUgraphNode** deps, const CUgraphEdgeData** e, size_t* n) {
  return capture_graph(real::cuStreamGetCaptureInfo_v3(vh::real(h), st, id, g, deps, e, n), g);
}
CUresult ferry::ov::cuStreamGetCaptureInfo_v3_ptsz(CUstream h, CUstreamCaptureStatus* st, cuuint64_t* id, CUgraph* g,
                                                   const CUgraphNode** deps, const CUgraphEdgeData** e, size_t* n) {
  return capture_graph(real::cuStreamGetCaptureInfo_v3_ptsz(vh::real(h), st, id, g, deps, e, n), g);
}

CUresult ferry::ov::cuEventCreate(CUevent* ph, unsigned int flags) {
  CUevent real = nullptr;
  CUresult r = real::cuEventCreate(&real, flags);
  if (r != CUDA_SUCCESS) return r;
  auto* e = new tr::Event;
  e->ctx = ctx::current();
  e->flags = flags;
  {
    std::lock_guard lk(tr::state().mu);
    tr::enter(e, vh::Kind::Event, real, &tr::State::events);
  }
  if (ph) *ph = vh::as<CUevent>(e->v);
  return r;
}

namespace {
CUresult destroy_event(CUevent h) {
  CUresult r = real::cuEventDestroy_v2(vh::real(h));
  if (auto* e = vh::rec_of<tr::Event>(h, vh::Kind::Event); r == CUDA_SUCCESS && e) {
    std::lock_guard lk(tr::state().mu);
    tr::leave(e, &tr::State::events);
  }
  return r;
}
}  // namespace

CUresult ferry::ov::cuEventDestroy(CUevent h) { return destroy_event(h); }
CUresult ferry::ov::cuEventDestroy_v2(CUevent h) { return destroy_event(h); }

CUresult ferry::ov::cuLaunchHostFunc(CUstream h, CUhostFn fn, void* user) { return host_fn(h, fn, user, false); }
CUresult ferry::ov::cuLaunchHostFunc_ptsz(CUstream h, CUhostFn fn, void* user) { return host_fn(ptsz(h), fn, user, true); }
CUresult ferry::ov::cuStreamAddCallback(CUstream h, CUstreamCallback fn, void* user, unsigned int flags) {
  return callback(h, fn, user, flags, false);
}
CUresult ferry::ov::cuStreamAddCallback_ptsz(CUstream h, CUstreamCallback fn, void* user, unsigned int flags) {
  return callback(h, fn, user, flags, true);
}

namespace {

void record_ex(CUstream key, const CUlaunchConfig* c, CUfunction f, void** params, void** extra) {
  unsigned grid[3] = {c->gridDimX, c->gridDimY, c->gridDimZ}, block[3] = {c->blockDimX, c->blockDimY, c->blockDimZ};
  graphs::record_kernel(key, f, grid, block, c->sharedMemBytes, params, extra, c->attrs, c->numAttrs);
}

}  // namespace

CUresult ferry::ov::cuLaunchKernelEx(const CUlaunchConfig* config, CUfunction f, void** params, void** extra) {
  if (!config) return real::cuLaunchKernelEx(config, vh::real(f), params, extra);
  RealConfig rc(config);
  CUresult r = real::cuLaunchKernelEx(&rc.cfg, vh::real(f), params, extra);
  if (r == CUDA_SUCCESS && graphs::maybe_capturing(config->hStream)) record_ex(config->hStream, config, f, params, extra);
  return r;
}
// Queries about a launch: nothing to keep, its handles translated.
CUresult ferry::ov::cuOccupancyMaxActiveClusters(int* n, CUfunction f, const CUlaunchConfig* config) {
  if (!config) return real::cuOccupancyMaxActiveClusters(n, vh::real(f), config);
  RealConfig rc(config);
  return real::cuOccupancyMaxActiveClusters(n, vh::real(f), &rc.cfg);
}
CUresult ferry::ov::cuOccupancyMaxPotentialClusterSize(int* n, CUfunction f, const CUlaunchConfig* config) {
  if (!config) return real::cuOccupancyMaxPotentialClusterSize(n, vh::real(f), config);
  RealConfig rc(config);
  return real::cuOccupancyMaxPotentialClusterSize(n, vh::real(f), &rc.cfg);
}

CUresult ferry::ov::cuLaunchKernelEx_ptsz(const CUlaunchConfig* config, CUfunction f, void** params, void** extra) {
  if (!config) return real::cuLaunchKernelEx_ptsz(config, vh::real(f), params, extra);
  RealConfig rc(config);
  CUresult r = real::cuLaunchKernelEx_ptsz(&rc.cfg, vh::real(f), params, extra);
  CUstream key = config->hStream ? config->hStream : CU_STREAM_PER_THREAD;
  if (r == CUDA_SUCCESS && graphs::maybe_capturing(key)) record_ex(key, config, f, params, extra);
  return r;
}
