// Streams (worker thread per stream), events, host functions and callbacks.
#include <chrono>

#include "emu.hpp"

namespace ferry::emu {

namespace {

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void worker_loop(std::shared_ptr<Stream> s) {
  for (;;) {
    uint64_t seq;
    Op op;
    {
      std::unique_lock lk(s->mu);
      s->cv.wait(lk, [&] { return !s->queue.empty() || s->stopping; });
      if (s->queue.empty()) break;
      seq = s->queue.front().first;
      op = std::move(s->queue.front().second);
      s->queue.pop_front();
    }
    for (auto& d : op.deps) wait_for(d.stream, d.seq);
    CUresult r = op.run ? op.run() : CUDA_SUCCESS;
    if (r != CUDA_SUCCESS) {
      CUresult expected = CUDA_SUCCESS;
      s->ctx->sticky.compare_exchange_strong(expected, r);
    }
    s->completed.store(seq);
    announce_progress();
  }
}

uint64_t pending_tail(const std::shared_ptr<Stream>& t) {
  std::lock_guard lk(t->mu);
  return t->enqueued > t->completed.load() ? t->enqueued : 0;
}

}  // namespace

void announce_progress() {
  Driver& d = drv();
  std::lock_guard lk(d.progress_mu);
  d.progress_cv.notify_all();
}

void wait_for(const std::shared_ptr<Stream>& s, uint64_t seq) {
  if (s->completed.load() >= seq) return;
  Driver& d = drv();
  std::unique_lock lk(d.progress_mu);
  d.progress_cv.wait(lk, [&] { return s->completed.load() >= seq; });
}

std::shared_ptr<Stream> make_stream(Context* c, unsigned flags, int priority, bool legacy) {
  auto s = std::make_shared<Stream>();
  s->ctx = c;
  s->flags = flags;
  s->priority = priority;
  s->legacy = legacy;
  s->self = s;
  std::lock_guard lk(drv().mu);
  s->id = new_id();
  drv().live_streams.insert(s.get());
  return s;
}

bool capturing(const std::shared_ptr<Stream>& s) {
  std::lock_guard lk(s->mu);
  return s->capture != nullptr;
}

uint64_t enqueue(const std::shared_ptr<Stream>& s, Op op) {
  {
    // A capturing stream records the work; it runs when the graph is launched.
    std::lock_guard lk(s->mu);
    if (s->capture) {
      if (op.run) s->capture->ops.push_back(std::move(op.run));
      return 0;
    }
  }
  // Legacy default-stream semantics: the NULL stream waits for all blocking streams of
  // its context, and blocking streams wait for the NULL stream.
  Context* c = s->ctx;
  if (!(s->flags & CU_STREAM_NON_BLOCKING)) {
    std::vector<std::shared_ptr<Stream>> others;
    {
      std::lock_guard lk(drv().mu);
      if (s->legacy) {
        for (auto& t : c->streams)
          if (!(t->flags & CU_STREAM_NON_BLOCKING)) others.push_back(t);
        for (auto& [tid, t] : c->per_thread_streams) others.push_back(t);
      } else if (c->null_stream) {
        others.push_back(c->null_stream);
      }
    }
    for (auto& t : others)
      if (uint64_t tail = pending_tail(t)) op.deps.push_back(Dep{t, tail});
  }
  std::lock_guard lk(s->mu);
  uint64_t seq = ++s->enqueued;
  s->queue.emplace_back(seq, std::move(op));
  if (!s->worker_started) {
    s->worker_started = true;
    std::thread(worker_loop, s).detach();
  }
  s->cv.notify_one();
  return seq;
}

void sync_stream(const std::shared_ptr<Stream>& s) {
  uint64_t target;
  {
    std::lock_guard lk(s->mu);
    target = s->enqueued;
  }
  wait_for(s, target);
}

void sync_context(Context* c) {
  std::vector<std::shared_ptr<Stream>> all;
  {
    std::lock_guard lk(drv().mu);
    all.assign(c->streams.begin(), c->streams.end());
    for (auto& [tid, s] : c->per_thread_streams) all.push_back(s);
    if (c->null_stream) all.push_back(c->null_stream);
  }
  for (auto& s : all) sync_stream(s);
}

void stop_stream(const std::shared_ptr<Stream>& s) {
  {
    std::lock_guard lk(drv().mu);
    drv().live_streams.erase(s.get());
  }
  std::lock_guard lk(s->mu);
  s->stopping = true;  // the worker finishes what is queued, then exits
  s->cv.notify_all();
}

std::shared_ptr<Stream> resolve_stream(CUstream h, Context** ctx_out, CUresult* err) {
  *err = ensure_init();
  if (*err) return nullptr;
  if (h == nullptr || h == CU_STREAM_LEGACY || h == CU_STREAM_PER_THREAD) {
    Context* c = nullptr;
    *err = current_or_error(&c);
    if (*err) return nullptr;
    *ctx_out = c;
    std::lock_guard lk(drv().mu);
    if (h != CU_STREAM_PER_THREAD) return c->null_stream;
    auto& slot = c->per_thread_streams[std::this_thread::get_id()];
    if (!slot) {
      slot = std::make_shared<Stream>();
      slot->ctx = c;
      slot->per_thread = true;
      slot->self = slot;
      slot->id = new_id();
      drv().live_streams.insert(slot.get());
    }
    return slot;
  }
  auto* raw = reinterpret_cast<Stream*>(h);
  std::lock_guard lk(drv().mu);
  if (!drv().live_streams.count(raw) || !raw->ctx->alive) {
    *err = CUDA_ERROR_INVALID_HANDLE;
    return nullptr;
  }
  *ctx_out = raw->ctx;
  return raw->self.lock();
}

}  // namespace ferry::emu

using namespace ferry::emu;

namespace {

CUstream ptsz(CUstream s) { return s ? s : CU_STREAM_PER_THREAD; }

Event* as_event(CUevent e) {
  auto* ev = reinterpret_cast<Event*>(e);
  std::lock_guard lk(drv().mu);
  return drv().events.count(ev) ? ev : nullptr;
}

CUresult stream_create(CUstream* ph, unsigned flags, int priority) {
  Context* c = nullptr;
  if (CUresult e = current_or_error(&c)) return e;
  if (!ph || (flags & ~1u)) return CUDA_ERROR_INVALID_VALUE;
  if (priority > 0) priority = 0;
  if (priority < -5) priority = -5;
  auto s = make_stream(c, flags, priority, false);
  {
    std::lock_guard lk(drv().mu);
    c->streams.insert(s);
  }
  *ph = reinterpret_cast<CUstream>(s.get());
  return CUDA_SUCCESS;
}

CUresult stream_query(CUstream h) {
  Context* c = nullptr;
  CUresult err;
  auto s = resolve_stream(h, &c, &err);
  if (!s) return err;
  std::lock_guard lk(s->mu);
  return s->completed.load() >= s->enqueued ? CUDA_SUCCESS : CUDA_ERROR_NOT_READY;
}

CUresult stream_sync(CUstream h) {
  Context* c = nullptr;
  CUresult err;
  auto s = resolve_stream(h, &c, &err);
  if (!s) return err;
  if (capturing(s)) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
  sync_stream(s);
  return c->sticky.load();
}

CUresult stream_wait_event(CUstream h, CUevent ev, unsigned flags) {
  Context* c = nullptr;
  CUresult err;
  auto s = resolve_stream(h, &c, &err);
  if (!s) return err;
  Event* e = as_event(ev);
  if (!e) return CUDA_ERROR_INVALID_HANDLE;
  if (flags & ~1u) return CUDA_ERROR_INVALID_VALUE;
  Op op;
  {
    std::lock_guard lk(e->mu);
    if (e->stream) op.deps.push_back(Dep{e->stream, e->seq});
  }
  enqueue(s, std::move(op));
  return CUDA_SUCCESS;
}

CUresult event_record(CUevent ev, CUstream h) {
  Event* e = as_event(ev);
  if (!e) return CUDA_ERROR_INVALID_HANDLE;
  Context* c = nullptr;
  CUresult err;
  auto s = resolve_stream(h, &c, &err);
  if (!s) return err;
  auto stamp = std::make_shared<std::atomic<int64_t>>(0);
  bool timing = !(e->flags & CU_EVENT_DISABLE_TIMING);
  uint64_t seq = enqueue(s, Op{{}, [stamp, timing]() {
                                 if (timing) stamp->store(now_ns());
                                 return CUDA_SUCCESS;
                               }});
  std::lock_guard lk(e->mu);
  e->stream = s;
  e->seq = seq;
  e->stamp_ns = stamp;
  return CUDA_SUCCESS;
}

CUresult stream_get_priority(CUstream h, int* p) {
  Context* c = nullptr;
  CUresult err;
  auto s = resolve_stream(h, &c, &err);
  if (!s) return err;
  if (!p) return CUDA_ERROR_INVALID_VALUE;
  *p = s->priority;
  return CUDA_SUCCESS;
}

CUresult stream_get_flags(CUstream h, unsigned* f) {
  Context* c = nullptr;
  CUresult err;
  auto s = resolve_stream(h, &c, &err);
  if (!s) return err;
  if (!f) return CUDA_ERROR_INVALID_VALUE;
  *f = s->flags;
  return CUDA_SUCCESS;
}

CUresult stream_get_id(CUstream h, unsigned long long* id) {
  Context* c = nullptr;
  CUresult err;
  auto s = resolve_stream(h, &c, &err);
  if (!s) return err;
  if (!id) return CUDA_ERROR_INVALID_VALUE;
  *id = s->id;
  return CUDA_SUCCESS;
}

CUresult stream_get_ctx(CUstream h, CUcontext* pctx) {
  Context* c = nullptr;
  CUresult err;
  auto s = resolve_stream(h, &c, &err);
  if (!s) return err;
  if (!pctx) return CUDA_ERROR_INVALID_VALUE;
  *pctx = reinterpret_cast<CUcontext>(c);
  return CUDA_SUCCESS;
}

CUresult stream_get_device(CUstream h, CUdevice* d) {
  Context* c = nullptr;
  CUresult err;
  auto s = resolve_stream(h, &c, &err);
  if (!s) return err;
  if (!d) return CUDA_ERROR_INVALID_VALUE;
  *d = c->dev->ordinal;
  return CUDA_SUCCESS;
}

CUresult launch_host_func(CUstream h, CUhostFn fn, void* user) {
  Context* c = nullptr;
  CUresult err;
  auto s = resolve_stream(h, &c, &err);
  if (!s) return err;
  if (!fn) return CUDA_ERROR_INVALID_VALUE;
  enqueue(s, Op{{}, [fn, user]() {
                  fn(user);
                  return CUDA_SUCCESS;
                }});
  return CUDA_SUCCESS;
}

CUresult add_callback(CUstream h, CUstreamCallback cb, void* user, unsigned flags) {
  Context* c = nullptr;
  CUresult err;
  auto s = resolve_stream(h, &c, &err);
  if (!s) return err;
  if (!cb || flags) return CUDA_ERROR_INVALID_VALUE;
  CUstream handle = h;
  enqueue(s, Op{{}, [cb, user, handle, c]() {
                  cb(handle, c->sticky.load(), user);
                  return CUDA_SUCCESS;
                }});
  return CUDA_SUCCESS;
}

CUresult stream_attr(CUstream h, CUstreamAttrID attr, CUstreamAttrValue* out, const CUstreamAttrValue* in) {
  Context* c = nullptr;
  CUresult err;
  auto s = resolve_stream(h, &c, &err);
  if (!s) return err;
  if (attr == CU_LAUNCH_ATTRIBUTE_PRIORITY) {
    if (out) out->priority = s->priority;
    if (in) s->priority = in->priority;
    return CUDA_SUCCESS;
  }
  if (out) *out = CUstreamAttrValue{};
  return CUDA_SUCCESS;
}


}  // namespace

// ---- streams ---------------------------------------------------------------------------

FERRY_EXPORT CUresult cuStreamCreate(CUstream* ph, unsigned int flags) { return stream_create(ph, flags, 0); }
FERRY_EXPORT CUresult cuStreamCreateWithPriority(CUstream* ph, unsigned int flags, int priority) {
  return stream_create(ph, flags, priority);
}

FERRY_EXPORT CUresult cuStreamDestroy_v2(CUstream h) {
  if (CUresult e = ensure_init()) return e;
  if (!h || h == CU_STREAM_LEGACY || h == CU_STREAM_PER_THREAD) return CUDA_ERROR_INVALID_HANDLE;
  Context* c = nullptr;
  CUresult err;
  auto s = resolve_stream(h, &c, &err);
  if (!s) return err;
  {
    std::lock_guard lk(drv().mu);
    c->streams.erase(s);
  }
  stop_stream(s);  // queued work still completes, as with the real driver
  return CUDA_SUCCESS;
}
FERRY_EXPORT CUresult cuStreamDestroy(CUstream h) { return cuStreamDestroy_v2(h); }

FERRY_EXPORT CUresult cuStreamQuery(CUstream h) { return stream_query(h); }
FERRY_EXPORT CUresult cuStreamQuery_ptsz(CUstream h) { return stream_query(ptsz(h)); }
FERRY_EXPORT CUresult cuStreamSynchronize(CUstream h) { return stream_sync(h); }
FERRY_EXPORT CUresult cuStreamSynchronize_ptsz(CUstream h) { return stream_sync(ptsz(h)); }
FERRY_EXPORT CUresult cuStreamWaitEvent(CUstream h, CUevent e, unsigned int f) { return stream_wait_event(h, e, f); }
FERRY_EXPORT CUresult cuStreamWaitEvent_ptsz(CUstream h, CUevent e, unsigned int f) {
  return stream_wait_event(ptsz(h), e, f);
}
FERRY_EXPORT CUresult cuStreamGetPriority(CUstream h, int* p) { return stream_get_priority(h, p); }
FERRY_EXPORT CUresult cuStreamGetPriority_ptsz(CUstream h, int* p) { return stream_get_priority(ptsz(h), p); }
FERRY_EXPORT CUresult cuStreamGetFlags(CUstream h, unsigned int* f) { return stream_get_flags(h, f); }
FERRY_EXPORT CUresult cuStreamGetFlags_ptsz(CUstream h, unsigned int* f) { return stream_get_flags(ptsz(h), f); }
FERRY_EXPORT CUresult cuStreamGetId(CUstream h, unsigned long long* id) { return stream_get_id(h, id); }
FERRY_EXPORT CUresult cuStreamGetId_ptsz(CUstream h, unsigned long long* id) { return stream_get_id(ptsz(h), id); }
FERRY_EXPORT CUresult cuStreamGetCtx(CUstream h, CUcontext* c) { return stream_get_ctx(h, c); }
FERRY_EXPORT CUresult cuStreamGetCtx_ptsz(CUstream h, CUcontext* c) { return stream_get_ctx(ptsz(h), c); }
FERRY_EXPORT CUresult cuStreamGetCtx_v2(CUstream h, CUcontext* c, CUgreenCtx* g) {
  if (g) *g = nullptr;
  return stream_get_ctx(h, c);
}
FERRY_EXPORT CUresult cuStreamGetCtx_v2_ptsz(CUstream h, CUcontext* c, CUgreenCtx* g) {
  return cuStreamGetCtx_v2(ptsz(h), c, g);
}
FERRY_EXPORT CUresult cuStreamGetDevice(CUstream h, CUdevice* d) { return stream_get_device(h, d); }
FERRY_EXPORT CUresult cuStreamGetDevice_ptsz(CUstream h, CUdevice* d) { return stream_get_device(ptsz(h), d); }
FERRY_EXPORT CUresult cuLaunchHostFunc(CUstream h, CUhostFn fn, void* u) { return launch_host_func(h, fn, u); }
FERRY_EXPORT CUresult cuLaunchHostFunc_ptsz(CUstream h, CUhostFn fn, void* u) { return launch_host_func(ptsz(h), fn, u); }
FERRY_EXPORT CUresult cuStreamAddCallback(CUstream h, CUstreamCallback cb, void* u, unsigned int f) {
  return add_callback(h, cb, u, f);
}
FERRY_EXPORT CUresult cuStreamAddCallback_ptsz(CUstream h, CUstreamCallback cb, void* u, unsigned int f) {
  return add_callback(ptsz(h), cb, u, f);
}
FERRY_EXPORT CUresult cuStreamAttachMemAsync(CUstream h, CUdeviceptr, size_t, unsigned int) {
  Context* c = nullptr;
  CUresult err;
  return resolve_stream(h, &c, &err) ? CUDA_SUCCESS : err;
}
FERRY_EXPORT CUresult cuStreamAttachMemAsync_ptsz(CUstream h, CUdeviceptr p, size_t n, unsigned int f) {
  return cuStreamAttachMemAsync(ptsz(h), p, n, f);
}
FERRY_EXPORT CUresult cuStreamGetAttribute(CUstream h, CUstreamAttrID a, CUstreamAttrValue* v) {
  if (!v) return CUDA_ERROR_INVALID_VALUE;
  return stream_attr(h, a, v, nullptr);
}
FERRY_EXPORT CUresult cuStreamGetAttribute_ptsz(CUstream h, CUstreamAttrID a, CUstreamAttrValue* v) {
  return cuStreamGetAttribute(ptsz(h), a, v);
}
FERRY_EXPORT CUresult cuStreamSetAttribute(CUstream h, CUstreamAttrID a, const CUstreamAttrValue* v) {
  if (!v) return CUDA_ERROR_INVALID_VALUE;
  return stream_attr(h, a, nullptr, v);
}
FERRY_EXPORT CUresult cuStreamSetAttribute_ptsz(CUstream h, CUstreamAttrID a, const CUstreamAttrValue* v) {
  return cuStreamSetAttribute(ptsz(h), a, v);
}
FERRY_EXPORT CUresult cuStreamCopyAttributes(CUstream dst, CUstream src) {
  CUstreamAttrValue v{};
  if (CUresult e = stream_attr(src, CU_LAUNCH_ATTRIBUTE_PRIORITY, &v, nullptr)) return e;
  return stream_attr(dst, CU_LAUNCH_ATTRIBUTE_PRIORITY, nullptr, &v);
}
FERRY_EXPORT CUresult cuStreamCopyAttributes_ptsz(CUstream dst, CUstream src) {
  return cuStreamCopyAttributes(ptsz(dst), ptsz(src));
}
FERRY_EXPORT CUresult cuThreadExchangeStreamCaptureMode(CUstreamCaptureMode* mode) {
  return mode ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

// ---- events ----------------------------------------------------------------------------

FERRY_EXPORT CUresult cuEventCreate(CUevent* ph, unsigned int flags) {
  Context* c = nullptr;
  if (CUresult e = current_or_error(&c)) return e;
  if (!ph || (flags & ~0xfu)) return CUDA_ERROR_INVALID_VALUE;
  if ((flags & CU_EVENT_INTERPROCESS) && !(flags & CU_EVENT_DISABLE_TIMING)) return CUDA_ERROR_INVALID_VALUE;
  auto* e = new Event;
  e->ctx = c;
  e->flags = flags;
  std::lock_guard lk(drv().mu);
  drv().events.insert(e);
  *ph = reinterpret_cast<CUevent>(e);
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuEventDestroy_v2(CUevent ev) {
  if (CUresult e = ensure_init()) return e;
  Event* e = as_event(ev);
  if (!e) return CUDA_ERROR_INVALID_HANDLE;
  std::lock_guard lk(drv().mu);
  drv().events.erase(e);
  delete e;  // pending record ops hold only their own stamp, not the event
  return CUDA_SUCCESS;
}
FERRY_EXPORT CUresult cuEventDestroy(CUevent ev) { return cuEventDestroy_v2(ev); }

FERRY_EXPORT CUresult cuEventRecord(CUevent e, CUstream h) { return event_record(e, h); }
FERRY_EXPORT CUresult cuEventRecord_ptsz(CUevent e, CUstream h) { return event_record(e, ptsz(h)); }
FERRY_EXPORT CUresult cuEventRecordWithFlags(CUevent e, CUstream h, unsigned int flags) {
  if (flags & ~1u) return CUDA_ERROR_INVALID_VALUE;
  return event_record(e, h);
}
FERRY_EXPORT CUresult cuEventRecordWithFlags_ptsz(CUevent e, CUstream h, unsigned int flags) {
  return cuEventRecordWithFlags(e, ptsz(h), flags);
}

FERRY_EXPORT CUresult cuEventQuery(CUevent ev) {
  if (CUresult e = ensure_init()) return e;
  Event* e = as_event(ev);
  if (!e) return CUDA_ERROR_INVALID_HANDLE;
  std::lock_guard lk(e->mu);
  if (!e->stream) return CUDA_SUCCESS;
  return e->stream->completed.load() >= e->seq ? CUDA_SUCCESS : CUDA_ERROR_NOT_READY;
}

FERRY_EXPORT CUresult cuEventSynchronize(CUevent ev) {
  if (CUresult e = ensure_init()) return e;
  Event* e = as_event(ev);
  if (!e) return CUDA_ERROR_INVALID_HANDLE;
  std::shared_ptr<Stream> s;
  uint64_t seq;
  {
    std::lock_guard lk(e->mu);
    s = e->stream;
    seq = e->seq;
  }
  if (s) wait_for(s, seq);
  return e->ctx->sticky.load();
}

FERRY_EXPORT CUresult cuEventElapsedTime(float* ms, CUevent start, CUevent end) {
  if (CUresult e = ensure_init()) return e;
  if (!ms) return CUDA_ERROR_INVALID_VALUE;
  Event* a = as_event(start);
  Event* b = as_event(end);
  if (!a || !b) return CUDA_ERROR_INVALID_HANDLE;
  if ((a->flags | b->flags) & CU_EVENT_DISABLE_TIMING) return CUDA_ERROR_INVALID_HANDLE;
  std::shared_ptr<std::atomic<int64_t>> sa, sb;
  for (Event* e : {a, b}) {
    std::lock_guard lk(e->mu);
    if (!e->stream) return CUDA_ERROR_INVALID_HANDLE;
    if (e->stream->completed.load() < e->seq) return CUDA_ERROR_NOT_READY;
  }
  {
    std::lock_guard lk(a->mu);
    sa = a->stamp_ns;
  }
  {
    std::lock_guard lk(b->mu);
    sb = b->stamp_ns;
  }
  *ms = static_cast<float>(static_cast<double>(sb->load() - sa->load()) / 1e6);
  return CUDA_SUCCESS;
}
FERRY_EXPORT CUresult cuEventElapsedTime_v2(float* ms, CUevent start, CUevent end) {
  return cuEventElapsedTime(ms, start, end);
}

// ---- stream memory operations: waits spin on host memory, writes are ordered ops ------

namespace {

bool value_ready(uintptr_t addr, uint64_t want, unsigned flags, bool is64) {
  uint64_t v = is64 ? __atomic_load_n(reinterpret_cast<uint64_t*>(addr), __ATOMIC_ACQUIRE)
                    : __atomic_load_n(reinterpret_cast<uint32_t*>(addr), __ATOMIC_ACQUIRE);
  if (!is64) want &= 0xffffffffu;
  switch (flags & 0x3) {
    case CU_STREAM_WAIT_VALUE_GEQ:
      return is64 ? static_cast<int64_t>(v - want) >= 0 : static_cast<int32_t>(static_cast<uint32_t>(v - want)) >= 0;
    case CU_STREAM_WAIT_VALUE_EQ: return v == want;
    case CU_STREAM_WAIT_VALUE_AND: return (v & want) != 0;
    default: return ~(v | want) != 0;  // NOR
  }
}

CUresult mem_op(CUstream h, CUdeviceptr addr, uint64_t value, unsigned flags, bool wait, bool is64) {
  Context* c = nullptr;
  CUresult err;
  auto s = resolve_stream(h, &c, &err);
  if (!s) return err;
  if (addr % (is64 ? 8 : 4)) return CUDA_ERROR_INVALID_VALUE;
  if (CUresult e = check_device_access(addr, is64 ? 8 : 4)) return e;
  if (wait) {
    enqueue(s, Op{{}, [=]() {
                    while (!value_ready(addr, value, flags, is64)) std::this_thread::yield();
                    return CUDA_SUCCESS;
                  }});
  } else {
    enqueue(s, Op{{}, [=]() {
                    if (is64)
                      __atomic_store_n(reinterpret_cast<uint64_t*>(addr), value, __ATOMIC_RELEASE);
                    else
                      __atomic_store_n(reinterpret_cast<uint32_t*>(addr), static_cast<uint32_t>(value), __ATOMIC_RELEASE);
                    return CUDA_SUCCESS;
                  }});
  }
  return CUDA_SUCCESS;
}

CUresult batch_mem_op(CUstream h, unsigned count, CUstreamBatchMemOpParams* ops, unsigned flags) {
  if (flags || (count && !ops)) return CUDA_ERROR_INVALID_VALUE;
  for (unsigned i = 0; i < count; i++) {
    CUresult e = CUDA_SUCCESS;
    switch (ops[i].operation) {
      case CU_STREAM_MEM_OP_WAIT_VALUE_32:
        e = mem_op(h, ops[i].waitValue.address, ops[i].waitValue.value, ops[i].waitValue.flags, true, false);
        break;
      case CU_STREAM_MEM_OP_WAIT_VALUE_64:
        e = mem_op(h, ops[i].waitValue.address, ops[i].waitValue.value64, ops[i].waitValue.flags, true, true);
        break;
      case CU_STREAM_MEM_OP_WRITE_VALUE_32:
        e = mem_op(h, ops[i].writeValue.address, ops[i].writeValue.value, 0, false, false);
        break;
      case CU_STREAM_MEM_OP_WRITE_VALUE_64:
        e = mem_op(h, ops[i].writeValue.address, ops[i].writeValue.value64, 0, false, true);
        break;
      case CU_STREAM_MEM_OP_FLUSH_REMOTE_WRITES:
      case CU_STREAM_MEM_OP_BARRIER:
        break;
      default: return CUDA_ERROR_INVALID_VALUE;
    }
    if (e) return e;
  }
  return CUDA_SUCCESS;
}

}  // namespace

#define FERRY_MEMOP(name, wait, is64, T)                                                                     \
  FERRY_EXPORT CUresult name(CUstream s, CUdeviceptr a, T v, unsigned int f) { return mem_op(s, a, v, f, wait, is64); } \
  FERRY_EXPORT CUresult name##_ptsz(CUstream s, CUdeviceptr a, T v, unsigned int f) {                          \
    return mem_op(ptsz(s), a, v, f, wait, is64);                                                             \
  }                                                                                                          \
  FERRY_EXPORT CUresult name##_v2(CUstream s, CUdeviceptr a, T v, unsigned int f) { return mem_op(s, a, v, f, wait, is64); } \
  FERRY_EXPORT CUresult name##_v2_ptsz(CUstream s, CUdeviceptr a, T v, unsigned int f) {                       \
    return mem_op(ptsz(s), a, v, f, wait, is64);                                                             \
  }
FERRY_MEMOP(cuStreamWaitValue32, true, false, cuuint32_t)
FERRY_MEMOP(cuStreamWaitValue64, true, true, cuuint64_t)
FERRY_MEMOP(cuStreamWriteValue32, false, false, cuuint32_t)
FERRY_MEMOP(cuStreamWriteValue64, false, true, cuuint64_t)
#undef FERRY_MEMOP

FERRY_EXPORT CUresult cuStreamBatchMemOp(CUstream s, unsigned int n, CUstreamBatchMemOpParams* p, unsigned int f) {
  return batch_mem_op(s, n, p, f);
}
FERRY_EXPORT CUresult cuStreamBatchMemOp_ptsz(CUstream s, unsigned int n, CUstreamBatchMemOpParams* p, unsigned int f) {
  return batch_mem_op(ptsz(s), n, p, f);
}
FERRY_EXPORT CUresult cuStreamBatchMemOp_v2(CUstream s, unsigned int n, CUstreamBatchMemOpParams* p, unsigned int f) {
  return batch_mem_op(s, n, p, f);
}
FERRY_EXPORT CUresult cuStreamBatchMemOp_v2_ptsz(CUstream s, unsigned int n, CUstreamBatchMemOpParams* p,
                                                 unsigned int f) {
  return batch_mem_op(ptsz(s), n, p, f);
}
