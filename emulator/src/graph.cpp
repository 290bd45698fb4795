// CUDA graphs made by stream capture. Between cuStreamBeginCapture and
// cuStreamEndCapture, work enqueued on the stream is appended to a graph instead of
// running (enqueue() in stream.cpp); an instantiated graph is a shared copy of that
// list, and cuGraphLaunch enqueues one operation that runs the list in order. Only
// single-stream capture is simulated: the capture order is the dependency order.
#include <atomic>

#include "emu.hpp"

using namespace ferry::emu;

namespace {

CUstream ptsz(CUstream s) { return s ? s : CU_STREAM_PER_THREAD; }
std::atomic<uint64_t> g_capture_ids{0};

Graph* as_graph(CUgraph g) {
  auto* p = reinterpret_cast<Graph*>(g);
  return p && p->magic == 0x47524148 ? p : nullptr;
}
GraphExec* as_exec(CUgraphExec e) {
  auto* p = reinterpret_cast<GraphExec*>(e);
  return p && p->magic == 0x47455845 ? p : nullptr;
}

CUresult begin_capture(CUstream h, CUstreamCaptureMode mode) {
  Context* c = nullptr;
  CUresult err;
  auto s = resolve_stream(h, &c, &err);
  if (!s) return err;
  if (s->legacy) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;  // the legacy NULL stream cannot capture
  if (mode != CU_STREAM_CAPTURE_MODE_GLOBAL && mode != CU_STREAM_CAPTURE_MODE_THREAD_LOCAL &&
      mode != CU_STREAM_CAPTURE_MODE_RELAXED)
    return CUDA_ERROR_INVALID_VALUE;
  std::lock_guard lk(s->mu);
  if (s->capture) return CUDA_ERROR_ILLEGAL_STATE;
  s->capture = std::make_shared<Graph>();
  s->capture->ctx = c;
  s->capture_id = ++g_capture_ids;
  return CUDA_SUCCESS;
}

CUresult end_capture(CUstream h, CUgraph* out) {
  Context* c = nullptr;
  CUresult err;
  auto s = resolve_stream(h, &c, &err);
  if (!s) return err;
  if (!out) return CUDA_ERROR_INVALID_VALUE;
  std::lock_guard lk(s->mu);
  if (!s->capture) return CUDA_ERROR_ILLEGAL_STATE;
  auto* g = new Graph;
  g->ctx = c;
  g->ops = std::move(s->capture->ops);
  s->capture.reset();
  *out = reinterpret_cast<CUgraph>(g);
  return CUDA_SUCCESS;
}

CUresult capture_info(CUstream h, CUstreamCaptureStatus* st, cuuint64_t* id, CUgraph* graph, const CUgraphNode** deps,
                      size_t* n) {
  Context* c = nullptr;
  CUresult err;
  auto s = resolve_stream(h, &c, &err);
  if (!s) return err;
  if (!st) return CUDA_ERROR_INVALID_VALUE;
  std::lock_guard lk(s->mu);
  *st = s->capture ? CU_STREAM_CAPTURE_STATUS_ACTIVE : CU_STREAM_CAPTURE_STATUS_NONE;
  if (s->capture) {
    if (id) *id = s->capture_id;
    if (graph) *graph = reinterpret_cast<CUgraph>(s->capture.get());
    if (deps) *deps = nullptr;
    if (n) *n = 0;
  }
  return CUDA_SUCCESS;
}

CUresult instantiate(CUgraphExec* out, CUgraph hg) {
  Graph* g = as_graph(hg);
  if (!out || !g) return CUDA_ERROR_INVALID_VALUE;
  auto* e = new GraphExec;
  e->ctx = g->ctx;
  e->ops = std::make_shared<const std::vector<std::function<CUresult()>>>(g->ops);
  *out = reinterpret_cast<CUgraphExec>(e);
  return CUDA_SUCCESS;
}

CUresult graph_launch(CUgraphExec he, CUstream h) {
  GraphExec* e = as_exec(he);
  if (!e) return CUDA_ERROR_INVALID_VALUE;
  Context* c = nullptr;
  CUresult err;
  auto s = resolve_stream(h, &c, &err);
  if (!s) return err;
  if (c != e->ctx) return CUDA_ERROR_INVALID_CONTEXT;
  if (CUresult st = c->sticky.load()) return st;
  auto ops = e->ops;
  enqueue(s, Op{{}, [ops]() {
                  for (auto& op : *ops)
                    if (CUresult r = op()) return r;
                  return CUDA_SUCCESS;
                }});
  return CUDA_SUCCESS;
}

CUresult graph_upload(CUgraphExec he, CUstream h) {
  if (!as_exec(he)) return CUDA_ERROR_INVALID_VALUE;
  Context* c = nullptr;
  CUresult err;
  return resolve_stream(h, &c, &err) ? CUDA_SUCCESS : err;
}

}  // namespace

FERRY_EXPORT CUresult cuStreamBeginCapture(CUstream h) { return begin_capture(h, CU_STREAM_CAPTURE_MODE_GLOBAL); }
FERRY_EXPORT CUresult cuStreamBeginCapture_ptsz(CUstream h) {
  return begin_capture(ptsz(h), CU_STREAM_CAPTURE_MODE_GLOBAL);
}
FERRY_EXPORT CUresult cuStreamBeginCapture_v2(CUstream h, CUstreamCaptureMode m) { return begin_capture(h, m); }
FERRY_EXPORT CUresult cuStreamBeginCapture_v2_ptsz(CUstream h, CUstreamCaptureMode m) {
  return begin_capture(ptsz(h), m);
}
FERRY_EXPORT CUresult cuStreamEndCapture(CUstream h, CUgraph* g) { return end_capture(h, g); }
FERRY_EXPORT CUresult cuStreamEndCapture_ptsz(CUstream h, CUgraph* g) { return end_capture(ptsz(h), g); }
FERRY_EXPORT CUresult cuStreamIsCapturing(CUstream h, CUstreamCaptureStatus* st) {
  return capture_info(h, st, nullptr, nullptr, nullptr, nullptr);
}
FERRY_EXPORT CUresult cuStreamIsCapturing_ptsz(CUstream h, CUstreamCaptureStatus* st) {
  return capture_info(ptsz(h), st, nullptr, nullptr, nullptr, nullptr);
}
FERRY_EXPORT CUresult cuStreamGetCaptureInfo(CUstream h, CUstreamCaptureStatus* st, cuuint64_t* id) {
  return capture_info(h, st, id, nullptr, nullptr, nullptr);
}
FERRY_EXPORT CUresult cuStreamGetCaptureInfo_ptsz(CUstream h, CUstreamCaptureStatus* st, cuuint64_t* id) {
  return capture_info(ptsz(h), st, id, nullptr, nullptr, nullptr);
}
FERRY_EXPORT CUresult cuStreamGetCaptureInfo_v2(CUstream h, CUstreamCaptureStatus* st, cuuint64_t* id, CUgraph* g,
                                                const CUgraphNode** deps, size_t* n) {
  return capture_info(h, st, id, g, deps, n);
}
FERRY_EXPORT CUresult cuStreamGetCaptureInfo_v2_ptsz(CUstream h, CUstreamCaptureStatus* st, cuuint64_t* id,
                                                     CUgraph* g, const CUgraphNode** deps, size_t* n) {
  return capture_info(ptsz(h), st, id, g, deps, n);
}
FERRY_EXPORT CUresult cuStreamGetCaptureInfo_v3(CUstream h, CUstreamCaptureStatus* st, cuuint64_t* id, CUgraph* g,
                                                const CUgraphNode** deps, const CUgraphEdgeData** edges, size_t* n) {
  if (edges) *edges = nullptr;
  return capture_info(h, st, id, g, deps, n);
}
FERRY_EXPORT CUresult cuStreamGetCaptureInfo_v3_ptsz(CUstream h, CUstreamCaptureStatus* st, cuuint64_t* id,
                                                     CUgraph* g, const CUgraphNode** deps,
                                                     const CUgraphEdgeData** edges, size_t* n) {
  if (edges) *edges = nullptr;
  return capture_info(ptsz(h), st, id, g, deps, n);
}
FERRY_EXPORT CUresult cuGraphInstantiateWithFlags(CUgraphExec* e, CUgraph g, unsigned long long flags) {
  // Upload and device-launch flags change nothing here; auto-free has no allocations to free.
  if (flags & ~static_cast<unsigned long long>(CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH |
                                               CUDA_GRAPH_INSTANTIATE_FLAG_UPLOAD |
                                               CUDA_GRAPH_INSTANTIATE_FLAG_USE_NODE_PRIORITY))
    return CUDA_ERROR_INVALID_VALUE;
  return instantiate(e, g);
}
FERRY_EXPORT CUresult cuGraphInstantiateWithParams(CUgraphExec* e, CUgraph g, CUDA_GRAPH_INSTANTIATE_PARAMS* p) {
  if (!p) return CUDA_ERROR_INVALID_VALUE;
  CUresult r = cuGraphInstantiateWithFlags(e, g, p->flags);
  p->result_out = r == CUDA_SUCCESS ? CUDA_GRAPH_INSTANTIATE_SUCCESS : CUDA_GRAPH_INSTANTIATE_ERROR;
  p->hErrNode_out = nullptr;
  return r;
}
FERRY_EXPORT CUresult cuGraphInstantiateWithParams_ptsz(CUgraphExec* e, CUgraph g, CUDA_GRAPH_INSTANTIATE_PARAMS* p) {
  return cuGraphInstantiateWithParams(e, g, p);
}
FERRY_EXPORT CUresult cuGraphLaunch(CUgraphExec e, CUstream h) { return graph_launch(e, h); }
FERRY_EXPORT CUresult cuGraphLaunch_ptsz(CUgraphExec e, CUstream h) { return graph_launch(e, ptsz(h)); }
FERRY_EXPORT CUresult cuGraphUpload(CUgraphExec e, CUstream h) { return graph_upload(e, h); }
FERRY_EXPORT CUresult cuGraphUpload_ptsz(CUgraphExec e, CUstream h) { return graph_upload(e, ptsz(h)); }
FERRY_EXPORT CUresult cuGraphExecDestroy(CUgraphExec he) {
  GraphExec* e = as_exec(he);
  if (!e) return CUDA_ERROR_INVALID_VALUE;
  e->magic = 0;
  delete e;
  return CUDA_SUCCESS;
}
FERRY_EXPORT CUresult cuGraphDestroy(CUgraph hg) {
  Graph* g = as_graph(hg);
  if (!g) return CUDA_ERROR_INVALID_VALUE;
  g->magic = 0;
  delete g;
  return CUDA_SUCCESS;
}
// Nodes are not separate objects here: the count is what callers use.
FERRY_EXPORT CUresult cuGraphGetNodes(CUgraph hg, CUgraphNode* nodes, size_t* n) {
  Graph* g = as_graph(hg);
  if (!g || !n) return CUDA_ERROR_INVALID_VALUE;
  if (nodes)
    for (size_t i = 0; i < *n && i < g->ops.size(); i++) nodes[i] = reinterpret_cast<CUgraphNode>(g->ops.data() + i);
  *n = g->ops.size();
  return CUDA_SUCCESS;
}
