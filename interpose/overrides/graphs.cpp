// Stream capture, graphs and the captured work (see graphs.hpp for the mechanism).
#include "../graphs.hpp"

#include <cstring>
#include <map>
#include <memory>
#include <string>

#include "../contexts.hpp"
#include "../remap.hpp"
#include "../shim.hpp"
#include "../tracker.hpp"
#include "shim_decls.hpp"

using namespace ferry;

namespace ferry::graphs {

std::atomic<int> g_capturing{0};

namespace {

struct Capture {
  tr::Ctx* ctx = nullptr;
  std::shared_ptr<tr::Recipe> ops = std::make_shared<tr::Recipe>();
  std::string unrecordable;
};
std::map<CUstream, Capture>& captures() {  // by the program's (virtual) stream; under state().mu
  static auto* m = new std::map<CUstream, Capture>;
  return *m;
}

Capture* capture_of(CUstream h) {
  auto it = captures().find(h);
  return it == captures().end() ? nullptr : &it->second;
}

void add(CUstream h, tr::CapOp op) {
  auto& st = tr::state();
  std::lock_guard lk(st.mu);
  if (Capture* c = capture_of(h)) c->ops->push_back(std::move(op));
}

void unrecordable(CUstream h, const std::string& why) {
  auto& st = tr::state();
  std::lock_guard lk(st.mu);
  if (Capture* c = capture_of(h); c && c->unrecordable.empty()) c->unrecordable = why;
}

// Sizes of a kernel's parameters, from the driver.
bool param_layout(CUfunction f, std::vector<uint32_t>& offsets, std::vector<uint32_t>& sizes) {
  bool kernel = vh::is_virtual(f) && vh::obj(f)->kind == vh::Kind::Kernel;
  for (size_t i = 0; i < 4096; i++) {
    size_t off = 0, size = 0;
    CUresult r = kernel ? real::cuKernelGetParamInfo(reinterpret_cast<CUkernel>(vh::real(f)), i, &off, &size)
                        : real::cuFuncGetParamInfo(vh::real(f), i, &off, &size);
    if (r == CUDA_ERROR_INVALID_VALUE) return true;  // past the last parameter
    if (r != CUDA_SUCCESS) return false;
    offsets.push_back(static_cast<uint32_t>(off));
    sizes.push_back(static_cast<uint32_t>(size));
  }
  return false;
}

tr::Ctx* ctx_of_stream(CUstream h) {
  auto* s = vh::rec_of<tr::Stream>(h, vh::Kind::Stream);
  return s ? s->ctx : nullptr;
}

CUresult begin(CUstream h, CUresult r) {
  if (r != CUDA_SUCCESS || !active()) return r;
  auto& st = tr::state();
  std::lock_guard lk(st.mu);
  Capture c;
  c.ctx = ctx_of_stream(h);
  if (!c.ctx) c.unrecordable = "captured on a default stream";
  captures()[h] = std::move(c);
  g_capturing.fetch_add(1, std::memory_order_relaxed);
  return r;
}

CUresult end(CUstream h, CUgraph* out, CUresult r) {
  if (!active()) return r;
  auto& st = tr::state();
  std::lock_guard lk(st.mu);
  auto it = captures().find(h);
  if (it == captures().end()) return r;
  Capture c = std::move(it->second);
  captures().erase(it);
  g_capturing.fetch_sub(1, std::memory_order_relaxed);
  if (r != CUDA_SUCCESS || !out || !*out) return r;
  // Work that reached the graph through calls ferry does not record shows as extra nodes.
  size_t nodes = 0;
  if (c.unrecordable.empty() && real::cuGraphGetNodes(*out, nullptr, &nodes) == CUDA_SUCCESS &&
      nodes != c.ops->size())
    c.unrecordable = "the graph has " + std::to_string(nodes) + " nodes and ferry recorded " +
                     std::to_string(c.ops->size()) + " (work captured through calls or streams ferry does not follow)";
  auto* g = new tr::Graph;
  g->ctx = c.ctx;
  g->ops = std::move(c.ops);
  g->unrecordable = c.unrecordable;
  tr::enter(g, vh::Kind::Graph, *out, &tr::State::graphs);
  *out = vh::as<CUgraph>(g->v);
  return r;
}

CUresult instantiated(CUgraphExec* out, CUgraph g, unsigned long long flags, CUresult r) {
  if (r != CUDA_SUCCESS || !out || !*out || !vh::is_virtual(g) || vh::obj(g)->kind != vh::Kind::Graph) return r;
  auto& st = tr::state();
  std::lock_guard lk(st.mu);
  auto* src = vh::rec<tr::Graph>(g);
  auto* e = new tr::GraphExec;
  e->ctx = src->ctx;
  e->ops = src->ops;
  e->flags = flags;
  e->unrecordable = src->unrecordable;
  tr::enter(e, vh::Kind::GraphExec, *out, &tr::State::graph_execs);
  *out = vh::as<CUgraphExec>(e->v);
  return r;
}

template <class R, class H>
CUresult destroyed(H h, vh::Kind kind, std::set<R*> tr::State::*set, CUresult r) {
  if (r != CUDA_SUCCESS || !vh::is_virtual(h) || vh::obj(h)->kind != kind) return r;
  std::lock_guard lk(tr::state().mu);
  tr::leave(vh::rec<R>(h), set);
  return r;
}

CUstream ptsz(CUstream h) { return h ? h : CU_STREAM_PER_THREAD; }

}  // namespace

void record_kernel(CUstream h, CUfunction f, const unsigned grid[3], const unsigned block[3], unsigned smem,
                   void** params, void** extra, const CUlaunchAttribute* attrs, unsigned nattrs) {
  {
    auto& st = tr::state();
    std::lock_guard lk(st.mu);
    if (!capture_of(h)) return;
  }
  tr::CapOp op;
  op.kind = tr::CapOp::Kernel;
  op.func = f;
  for (int i = 0; i < 3; i++) op.grid[i] = grid[i], op.block[i] = block[i];
  op.smem = smem;
  for (unsigned i = 0; i < nattrs; i++) {
    if (attrs[i].id == CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_EVENT || attrs[i].id == CU_LAUNCH_ATTRIBUTE_LAUNCH_COMPLETION_EVENT)
      return unrecordable(h, "a captured launch carries an event attribute");
    op.attrs.push_back(attrs[i]);
  }
  if (params) {
    std::vector<uint32_t> sizes;
    if (!param_layout(f, op.offsets, sizes)) return unrecordable(h, "a captured kernel's parameters could not be sized");
    size_t total = 0;
    for (size_t i = 0; i < sizes.size(); i++) total = std::max<size_t>(total, op.offsets[i] + sizes[i]);
    op.args.assign(total, '\0');
    for (size_t i = 0; i < sizes.size(); i++) memcpy(op.args.data() + op.offsets[i], params[i], sizes[i]);
  } else if (extra) {
    const void* buf = nullptr;
    size_t n = 0;
    for (size_t i = 0; extra[i] != CU_LAUNCH_PARAM_END; i += 2) {
      if (extra[i] == CU_LAUNCH_PARAM_BUFFER_POINTER) buf = extra[i + 1];
      else if (extra[i] == CU_LAUNCH_PARAM_BUFFER_SIZE) n = *static_cast<const size_t*>(extra[i + 1]);
    }
    if (buf) op.args.assign(static_cast<const char*>(buf), n);
  }
  add(h, std::move(op));
}

void record_copy(CUstream h, int kind, uintptr_t dst, uintptr_t src, size_t bytes) {
  tr::CapOp op;
  op.kind = static_cast<tr::CapOp::Kind>(kind);
  op.dst = dst, op.src = src, op.bytes = bytes;
  add(h, std::move(op));
}

void record_set(CUstream h, int kind, uintptr_t dst, unsigned value, size_t count) {
  tr::CapOp op;
  op.kind = static_cast<tr::CapOp::Kind>(kind);
  op.dst = dst, op.value = value, op.bytes = count;
  add(h, std::move(op));
}

bool record_host_fn(CUstream h, CUhostFn fn, void* user) {
  CUstreamCaptureStatus status = CU_STREAM_CAPTURE_STATUS_NONE;
  if (real::cuStreamIsCapturing(vh::real(h), &status) != CUDA_SUCCESS || status == CU_STREAM_CAPTURE_STATUS_NONE)
    return false;
  tr::CapOp op;
  op.kind = tr::CapOp::HostFn;
  op.fn = fn, op.user = user;
  add(h, std::move(op));
  return true;
}

// ---- for the engine ----------------------------------------------------------------------

bool capture_in_progress() {
  auto& st = tr::state();
  std::lock_guard lk(st.mu);
  return !captures().empty();
}

std::string check() {
  auto& st = tr::state();
  std::lock_guard lk(st.mu);
  for (auto* g : st.graphs)
    if (!g->unrecordable.empty()) return "a CUDA graph ferry cannot re-create: " + g->unrecordable;
  for (auto* e : st.graph_execs)
    if (!e->unrecordable.empty()) return "a CUDA graph ferry cannot re-create: " + e->unrecordable;
  return "";
}

}  // namespace ferry::graphs

using namespace ferry::graphs;

// ---- capture -------------------------------------------------------------------------------

CUresult ferry::ov::cuStreamBeginCapture(CUstream h) { return begin(h, real::cuStreamBeginCapture(vh::real(h))); }
CUresult ferry::ov::cuStreamBeginCapture_ptsz(CUstream h) {
  return begin(ptsz(h), real::cuStreamBeginCapture_ptsz(vh::real(h)));
}
CUresult ferry::ov::cuStreamBeginCapture_v2(CUstream h, CUstreamCaptureMode m) {
  return begin(h, real::cuStreamBeginCapture_v2(vh::real(h), m));
}
CUresult ferry::ov::cuStreamBeginCapture_v2_ptsz(CUstream h, CUstreamCaptureMode m) {
  return begin(ptsz(h), real::cuStreamBeginCapture_v2_ptsz(vh::real(h), m));
}
CUresult ferry::ov::cuStreamEndCapture(CUstream h, CUgraph* g) {
  return end(h, g, real::cuStreamEndCapture(vh::real(h), g));
}
CUresult ferry::ov::cuStreamEndCapture_ptsz(CUstream h, CUgraph* g) {
  return end(ptsz(h), g, real::cuStreamEndCapture_ptsz(vh::real(h), g));
}

// ---- graphs --------------------------------------------------------------------------------

CUresult ferry::ov::cuGraphInstantiateWithFlags(CUgraphExec* e, CUgraph g, unsigned long long flags) {
  return instantiated(e, g, flags, real::cuGraphInstantiateWithFlags(e, vh::real(g), flags));
}
CUresult ferry::ov::cuGraphInstantiate(CUgraphExec* e, CUgraph g, CUgraphNode* err_node, char* log, size_t n) {
  return instantiated(e, g, 0, real::cuGraphInstantiate(e, vh::real(g), err_node, log, n));
}
CUresult ferry::ov::cuGraphInstantiate_v2(CUgraphExec* e, CUgraph g, CUgraphNode* err_node, char* log, size_t n) {
  return instantiated(e, g, 0, real::cuGraphInstantiate_v2(e, vh::real(g), err_node, log, n));
}
namespace {

CUresult with_params(CUresult (*fn)(CUgraphExec*, CUgraph, CUDA_GRAPH_INSTANTIATE_PARAMS*), CUgraphExec* e, CUgraph g,
                     CUDA_GRAPH_INSTANTIATE_PARAMS* p) {
  if (!p) return fn(e, vh::real(g), p);
  CUDA_GRAPH_INSTANTIATE_PARAMS q = *p;
  q.hUploadStream = vh::real(p->hUploadStream);
  CUresult r = instantiated(e, g, q.flags, fn(e, vh::real(g), &q));
  p->result_out = q.result_out;
  p->hErrNode_out = q.hErrNode_out;
  return r;
}

}  // namespace

CUresult ferry::ov::cuGraphInstantiateWithParams(CUgraphExec* e, CUgraph g, CUDA_GRAPH_INSTANTIATE_PARAMS* p) {
  return with_params(real::cuGraphInstantiateWithParams, e, g, p);
}
CUresult ferry::ov::cuGraphInstantiateWithParams_ptsz(CUgraphExec* e, CUgraph g, CUDA_GRAPH_INSTANTIATE_PARAMS* p) {
  return with_params(real::cuGraphInstantiateWithParams_ptsz, e, g, p);
}
CUresult ferry::ov::cuGraphDestroy(CUgraph g) {
  return destroyed(g, vh::Kind::Graph, &tr::State::graphs, real::cuGraphDestroy(vh::real(g)));
}
CUresult ferry::ov::cuGraphExecDestroy(CUgraphExec e) {
  return destroyed(e, vh::Kind::GraphExec, &tr::State::graph_execs, real::cuGraphExecDestroy(vh::real(e)));
}

// ---- captured work -------------------------------------------------------------------------

namespace {

CUresult launch(CUresult (*fn)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                               CUstream, void**, void**),
                CUstream key, CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                unsigned smem, CUstream h, void** params, void** extra) {
  CUresult r = fn(vh::real(f), gx, gy, gz, bx, by, bz, smem, vh::real(h), params, extra);
  if (r == CUDA_SUCCESS && maybe_capturing(key)) {
    unsigned grid[3] = {gx, gy, gz}, block[3] = {bx, by, bz};
    record_kernel(key, f, grid, block, smem, params, extra, nullptr, 0);
  }
  return r;
}

}  // namespace

CUresult ferry::ov::cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                                   unsigned bz, unsigned smem, CUstream h, void** params, void** extra) {
  return launch(real::cuLaunchKernel, h, f, gx, gy, gz, bx, by, bz, smem, h, params, extra);
}
CUresult ferry::ov::cuLaunchKernel_ptsz(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                                        unsigned bz, unsigned smem, CUstream h, void** params, void** extra) {
  return launch(real::cuLaunchKernel_ptsz, ptsz(h), f, gx, gy, gz, bx, by, bz, smem, h, params, extra);
}

#define FERRY_COPY(NAME, KIND, DST_T, SRC_T, DST_X, SRC_X, KEY)                                         \
  CUresult ferry::ov::NAME(DST_T dst, SRC_T src, size_t n, CUstream h) {                              \
    CUresult r = real::NAME(DST_X, SRC_X, n, vh::real(h));                                             \
    if (r == CUDA_SUCCESS && maybe_capturing(KEY))                                                     \
      record_copy(KEY, tr::CapOp::KIND, (uintptr_t)(dst), (uintptr_t)(src), n);                        \
    return r;                                                                                          \
  }
FERRY_COPY(cuMemcpyAsync, Copy, CUdeviceptr, CUdeviceptr, gx::dev(dst), gx::dev(src), h)
FERRY_COPY(cuMemcpyAsync_ptsz, Copy, CUdeviceptr, CUdeviceptr, gx::dev(dst), gx::dev(src), ptsz(h))
FERRY_COPY(cuMemcpyDtoDAsync_v2, CopyDtoD, CUdeviceptr, CUdeviceptr, gx::dev(dst), gx::dev(src), h)
FERRY_COPY(cuMemcpyDtoDAsync_v2_ptsz, CopyDtoD, CUdeviceptr, CUdeviceptr, gx::dev(dst), gx::dev(src), ptsz(h))
FERRY_COPY(cuMemcpyHtoDAsync_v2, CopyHtoD, CUdeviceptr, const void*, gx::dev(dst), src, h)
FERRY_COPY(cuMemcpyHtoDAsync_v2_ptsz, CopyHtoD, CUdeviceptr, const void*, gx::dev(dst), src, ptsz(h))
FERRY_COPY(cuMemcpyDtoHAsync_v2, CopyDtoH, void*, CUdeviceptr, dst, gx::dev(src), h)
FERRY_COPY(cuMemcpyDtoHAsync_v2_ptsz, CopyDtoH, void*, CUdeviceptr, dst, gx::dev(src), ptsz(h))
#undef FERRY_COPY

#define FERRY_SET(NAME, KIND, T, KEY)                                               \
  CUresult ferry::ov::NAME(CUdeviceptr dst, T value, size_t n, CUstream h) {        \
    CUresult r = real::NAME(gx::dev(dst), value, n, vh::real(h));                   \
    if (r == CUDA_SUCCESS && maybe_capturing(KEY)) record_set(KEY, tr::CapOp::KIND, dst, value, n); \
    return r;                                                                       \
  }
FERRY_SET(cuMemsetD8Async, Set8, unsigned char, h)
FERRY_SET(cuMemsetD8Async_ptsz, Set8, unsigned char, ptsz(h))
FERRY_SET(cuMemsetD16Async, Set16, unsigned short, h)
FERRY_SET(cuMemsetD16Async_ptsz, Set16, unsigned short, ptsz(h))
FERRY_SET(cuMemsetD32Async, Set32, unsigned int, h)
FERRY_SET(cuMemsetD32Async_ptsz, Set32, unsigned int, ptsz(h))
#undef FERRY_SET
