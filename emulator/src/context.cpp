// Contexts: primary and created, the per-thread context stack, context-local storage.
#include <cstring>

#include "emu.hpp"

namespace ferry::emu {

namespace {
thread_local std::vector<Context*> t_stack;
}

Context* current_ctx() { return t_stack.empty() ? nullptr : t_stack.back(); }

bool valid_ctx(Context* c) {
  Driver& d = drv();
  std::lock_guard lk(d.mu);
  return c && d.contexts.count(c) && c->alive;
}

CUresult current_or_error(Context** out) {
  if (CUresult e = ensure_init()) return e;
  Context* c = current_ctx();
  if (!c || !valid_ctx(c)) return CUDA_ERROR_INVALID_CONTEXT;
  *out = c;
  return CUDA_SUCCESS;
}

void activate_ctx(Context* c) {
  c->alive = true;
  c->sticky = CUDA_SUCCESS;
  c->null_stream = make_stream(c, 0, 0, true);
  c->limits[CU_LIMIT_STACK_SIZE] = 1024;
  c->limits[CU_LIMIT_PRINTF_FIFO_SIZE] = 1 << 20;
  c->limits[CU_LIMIT_MALLOC_HEAP_SIZE] = 8 << 20;
}

void destroy_ctx_resources(Context* c) {
  Driver& d = drv();
  sync_context(c);
  std::vector<std::shared_ptr<Stream>> streams;
  std::map<void*, ClsEntry> cls;
  {
    std::lock_guard lk(d.mu);
    streams.assign(c->streams.begin(), c->streams.end());
    for (auto& [tid, s] : c->per_thread_streams) streams.push_back(s);
    if (c->null_stream) streams.push_back(c->null_stream);
    c->streams.clear();
    c->per_thread_streams.clear();
    c->null_stream.reset();
    cls.swap(c->cls);
  }
  for (auto& s : streams) stop_stream(s);
  // cudart keeps its per-context state here; its destructor may call back into us.
  for (auto& [key, e] : cls)
    if (e.dtor) e.dtor(reinterpret_cast<CUcontext>(c), key, e.value);
  std::lock_guard lk(d.mu);
  for (Module* m : std::vector<Module*>(c->modules.begin(), c->modules.end())) unload_module(m);
  c->modules.clear();
  for (auto it = d.ranges.begin(); it != d.ranges.end();) {
    Range& r = it->second;
    bool owned = r.ctx == c && (r.kind == RangeKind::DeviceAlloc || r.kind == RangeKind::Managed ||
                                r.kind == RangeKind::HostPinned || r.kind == RangeKind::HostRegistered);
    if (owned) {
      uintptr_t base = it->first;
      ++it;
      heap_free(d.ranges.at(base));
      continue;
    }
    ++it;
  }
  c->alive = false;
}

}  // namespace ferry::emu

using namespace ferry::emu;

namespace {

Context* as_ctx(CUcontext c) { return reinterpret_cast<Context*>(c); }

bool known_ctx(Context* c) {
  std::lock_guard lk(drv().mu);
  return c && drv().contexts.count(c);
}

void remove_from_stacks(Context* c) {
  // Only the calling thread's stack can be fixed up; other threads keep a dangling
  // current context and get CUDA_ERROR_INVALID_CONTEXT, as with the real driver.
  for (auto it = t_stack.begin(); it != t_stack.end();) it = (*it == c) ? t_stack.erase(it) : it + 1;
}

CUresult create_ctx(CUcontext* out, unsigned flags, CUdevice dev) {
  if (CUresult e = ensure_init()) return e;
  if (!out) return CUDA_ERROR_INVALID_VALUE;
  Device* d = device(dev);
  if (!d) return CUDA_ERROR_INVALID_DEVICE;
  if (flags & ~0xffu) return CUDA_ERROR_INVALID_VALUE;
  auto* c = new Context;
  c->dev = d;
  c->flags = flags;
  {
    std::lock_guard lk(drv().mu);
    c->id = new_id();
    drv().contexts.insert(c);
  }
  activate_ctx(c);
  t_stack.push_back(c);
  *out = reinterpret_cast<CUcontext>(c);
  return CUDA_SUCCESS;
}

}  // namespace

FERRY_EXPORT CUresult cuCtxCreate_v2(CUcontext* pctx, unsigned int flags, CUdevice dev) {
  return create_ctx(pctx, flags, dev);
}

FERRY_EXPORT CUresult cuCtxCreate_v3(CUcontext* pctx, CUexecAffinityParam*, int numParams, unsigned int flags,
                                     CUdevice dev) {
  if (numParams < 0) return CUDA_ERROR_INVALID_VALUE;
  return create_ctx(pctx, flags, dev);
}

FERRY_EXPORT CUresult cuCtxCreate_v4(CUcontext* pctx, CUctxCreateParams* params, unsigned int flags, CUdevice dev) {
  if (params && (params->numExecAffinityParams || params->cigParams)) return CUDA_ERROR_NOT_SUPPORTED;
  return create_ctx(pctx, flags, dev);
}

FERRY_EXPORT CUresult cuCtxDestroy_v2(CUcontext ctx) {
  if (CUresult e = ensure_init()) return e;
  Context* c = as_ctx(ctx);
  if (!known_ctx(c) || !c->alive || c->primary) return CUDA_ERROR_INVALID_CONTEXT;
  destroy_ctx_resources(c);
  remove_from_stacks(c);
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuCtxPushCurrent_v2(CUcontext ctx) {
  if (CUresult e = ensure_init()) return e;
  Context* c = as_ctx(ctx);
  if (!known_ctx(c)) return CUDA_ERROR_INVALID_CONTEXT;
  t_stack.push_back(c);
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuCtxPopCurrent_v2(CUcontext* pctx) {
  if (CUresult e = ensure_init()) return e;
  if (t_stack.empty()) return CUDA_ERROR_INVALID_CONTEXT;
  if (pctx) *pctx = reinterpret_cast<CUcontext>(t_stack.back());
  t_stack.pop_back();
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuCtxSetCurrent(CUcontext ctx) {
  if (CUresult e = ensure_init()) return e;
  Context* c = as_ctx(ctx);
  if (!c) {
    if (!t_stack.empty()) t_stack.pop_back();
    return CUDA_SUCCESS;
  }
  // cudart makes the primary context current before it retains it.
  if (!known_ctx(c)) return CUDA_ERROR_INVALID_CONTEXT;
  if (t_stack.empty())
    t_stack.push_back(c);
  else
    t_stack.back() = c;
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuCtxGetCurrent(CUcontext* pctx) {
  if (CUresult e = ensure_init()) return e;
  if (!pctx) return CUDA_ERROR_INVALID_VALUE;
  *pctx = reinterpret_cast<CUcontext>(current_ctx());
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuCtxGetDevice(CUdevice* dev) {
  if (CUresult e = ensure_init()) return e;
  if (!dev) return CUDA_ERROR_INVALID_VALUE;
  Context* c = current_ctx();
  if (!c || !known_ctx(c)) return CUDA_ERROR_INVALID_CONTEXT;
  *dev = c->dev->ordinal;
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuCtxGetDevice_v2(CUdevice* dev, CUcontext ctx) {
  if (!ctx) return cuCtxGetDevice(dev);
  if (CUresult e = ensure_init()) return e;
  if (!dev) return CUDA_ERROR_INVALID_VALUE;
  Context* c = as_ctx(ctx);
  if (!known_ctx(c)) return CUDA_ERROR_INVALID_CONTEXT;
  *dev = c->dev->ordinal;
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuCtxGetFlags(unsigned int* flags) {
  Context* c = nullptr;
  if (CUresult e = current_or_error(&c)) return e;
  if (!flags) return CUDA_ERROR_INVALID_VALUE;
  *flags = c->flags;
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuCtxSetFlags(unsigned int flags) {
  Context* c = nullptr;
  if (CUresult e = current_or_error(&c)) return e;
  c->flags = flags;
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuCtxGetId(CUcontext ctx, unsigned long long* id) {
  if (CUresult e = ensure_init()) return e;
  Context* c = ctx ? as_ctx(ctx) : current_ctx();
  if (!id) return CUDA_ERROR_INVALID_VALUE;
  if (!known_ctx(c)) return CUDA_ERROR_INVALID_CONTEXT;
  *id = c->id;
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuCtxGetApiVersion(CUcontext ctx, unsigned int* version) {
  if (CUresult e = ensure_init()) return e;
  Context* c = ctx ? as_ctx(ctx) : current_ctx();
  if (!version) return CUDA_ERROR_INVALID_VALUE;
  if (!known_ctx(c)) return CUDA_ERROR_INVALID_CONTEXT;
  *version = 3020;
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuCtxSynchronize() {
  Context* c = nullptr;
  if (CUresult e = current_or_error(&c)) return e;
  sync_context(c);
  return c->sticky.load();
}

FERRY_EXPORT CUresult cuCtxSynchronize_v2(CUcontext ctx) {
  if (!ctx) return cuCtxSynchronize();
  Context* c = as_ctx(ctx);
  if (!valid_ctx(c)) return CUDA_ERROR_INVALID_CONTEXT;
  sync_context(c);
  return c->sticky.load();
}

FERRY_EXPORT CUresult cuCtxGetLimit(size_t* value, CUlimit limit) {
  Context* c = nullptr;
  if (CUresult e = current_or_error(&c)) return e;
  if (!value || limit < 0 || limit >= CU_LIMIT_MAX) return CUDA_ERROR_INVALID_VALUE;
  *value = c->limits[limit];
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuCtxSetLimit(CUlimit limit, size_t value) {
  Context* c = nullptr;
  if (CUresult e = current_or_error(&c)) return e;
  if (limit < 0 || limit >= CU_LIMIT_MAX) return CUDA_ERROR_INVALID_VALUE;
  if (limit == CU_LIMIT_SHMEM_SIZE || limit == CU_LIMIT_CIG_ENABLED) return CUDA_ERROR_INVALID_VALUE;
  c->limits[limit] = value;
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuCtxGetCacheConfig(CUfunc_cache* config) {
  Context* c = nullptr;
  if (CUresult e = current_or_error(&c)) return e;
  if (!config) return CUDA_ERROR_INVALID_VALUE;
  *config = CU_FUNC_CACHE_PREFER_NONE;
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuCtxSetCacheConfig(CUfunc_cache) {
  Context* c = nullptr;
  return current_or_error(&c);
}

FERRY_EXPORT CUresult cuCtxGetSharedMemConfig(CUsharedconfig* config) {
  Context* c = nullptr;
  if (CUresult e = current_or_error(&c)) return e;
  if (!config) return CUDA_ERROR_INVALID_VALUE;
  *config = CU_SHARED_MEM_CONFIG_FOUR_BYTE_BANK_SIZE;
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuCtxSetSharedMemConfig(CUsharedconfig) {
  Context* c = nullptr;
  return current_or_error(&c);
}

FERRY_EXPORT CUresult cuCtxGetStreamPriorityRange(int* least, int* greatest) {
  if (CUresult e = ensure_init()) return e;
  if (least) *least = 0;
  if (greatest) *greatest = -5;
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuCtxResetPersistingL2Cache() {
  Context* c = nullptr;
  return current_or_error(&c);
}

FERRY_EXPORT CUresult cuCtxEnablePeerAccess(CUcontext peer, unsigned int flags) {
  Context* c = nullptr;
  if (CUresult e = current_or_error(&c)) return e;
  if (flags) return CUDA_ERROR_INVALID_VALUE;
  Context* p = as_ctx(peer);
  if (!valid_ctx(p)) return CUDA_ERROR_INVALID_CONTEXT;
  if (p->dev == c->dev) return CUDA_ERROR_INVALID_DEVICE;
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuCtxDisablePeerAccess(CUcontext peer) {
  Context* c = nullptr;
  if (CUresult e = current_or_error(&c)) return e;
  return valid_ctx(as_ctx(peer)) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_CONTEXT;
}

// ---- primary contexts -------------------------------------------------------------------

FERRY_EXPORT CUresult cuDevicePrimaryCtxRetain(CUcontext* pctx, CUdevice dev) {
  if (CUresult e = ensure_init()) return e;
  if (!pctx) return CUDA_ERROR_INVALID_VALUE;
  Device* d = device(dev);
  if (!d) return CUDA_ERROR_INVALID_DEVICE;
  Context* c = d->primary;
  bool activate = false;
  {
    std::lock_guard lk(drv().mu);
    if (c->retain++ == 0 && !c->alive) activate = true;
    if (activate) c->flags = d->primary_flags;
  }
  if (activate) activate_ctx(c);
  *pctx = reinterpret_cast<CUcontext>(c);
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev) {
  if (CUresult e = ensure_init()) return e;
  Device* d = device(dev);
  if (!d) return CUDA_ERROR_INVALID_DEVICE;
  Context* c = d->primary;
  bool destroy = false;
  {
    std::lock_guard lk(drv().mu);
    if (c->retain <= 0) return CUDA_ERROR_INVALID_CONTEXT;
    destroy = --c->retain == 0 && c->alive;
  }
  if (destroy) destroy_ctx_resources(c);
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuDevicePrimaryCtxRelease(CUdevice dev) { return cuDevicePrimaryCtxRelease_v2(dev); }

FERRY_EXPORT CUresult cuDevicePrimaryCtxGetState(CUdevice dev, unsigned int* flags, int* active) {
  if (CUresult e = ensure_init()) return e;
  Device* d = device(dev);
  if (!d) return CUDA_ERROR_INVALID_DEVICE;
  if (!flags || !active) return CUDA_ERROR_INVALID_VALUE;
  std::lock_guard lk(drv().mu);
  *flags = d->primary->alive ? d->primary->flags : d->primary_flags;
  *active = d->primary->alive ? 1 : 0;
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuDevicePrimaryCtxSetFlags_v2(CUdevice dev, unsigned int flags) {
  if (CUresult e = ensure_init()) return e;
  Device* d = device(dev);
  if (!d) return CUDA_ERROR_INVALID_DEVICE;
  if (flags & ~0xffu) return CUDA_ERROR_INVALID_VALUE;
  std::lock_guard lk(drv().mu);
  d->primary_flags = flags;
  if (d->primary->alive) d->primary->flags = flags;
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuDevicePrimaryCtxSetFlags(CUdevice dev, unsigned int flags) {
  Device* d = device(dev);
  if (d && d->primary->alive) return CUDA_ERROR_PRIMARY_CONTEXT_ACTIVE;
  return cuDevicePrimaryCtxSetFlags_v2(dev, flags);
}

FERRY_EXPORT CUresult cuDevicePrimaryCtxReset_v2(CUdevice dev) {
  if (CUresult e = ensure_init()) return e;
  Device* d = device(dev);
  if (!d) return CUDA_ERROR_INVALID_DEVICE;
  Context* c = d->primary;
  if (c->alive) destroy_ctx_resources(c);
  std::lock_guard lk(drv().mu);
  c->retain = 0;
  d->primary_flags = 0;
  return CUDA_SUCCESS;
}

FERRY_EXPORT CUresult cuDevicePrimaryCtxReset(CUdevice dev) { return cuDevicePrimaryCtxReset_v2(dev); }

// ---- context-local storage (export table CONTEXT_LOCAL_STORAGE_V0301) -----------------

namespace ferry::emu {

CUresult cls_put(CUcontext ctx, void* key, void* value, void (*dtor)(CUcontext, void*, void*)) {
  Context* c = ctx ? as_ctx(ctx) : current_ctx();
  if (!c || !known_ctx(c)) return CUDA_ERROR_INVALID_CONTEXT;
  std::lock_guard lk(drv().mu);
  c->cls[key] = ClsEntry{value, dtor};
  return CUDA_SUCCESS;
}

CUresult cls_delete(CUcontext ctx, void* key) {
  Context* c = ctx ? as_ctx(ctx) : current_ctx();
  if (!c || !known_ctx(c)) return CUDA_ERROR_INVALID_CONTEXT;
  std::lock_guard lk(drv().mu);
  return c->cls.erase(key) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

CUresult cls_get(void** value, CUcontext ctx, void* key) {
  Context* c = ctx ? as_ctx(ctx) : current_ctx();
  if (!c || !known_ctx(c)) return CUDA_ERROR_INVALID_HANDLE;
  std::lock_guard lk(drv().mu);
  auto it = c->cls.find(key);
  if (it == c->cls.end()) return CUDA_ERROR_INVALID_HANDLE;
  if (value) *value = it->second.value;
  return CUDA_SUCCESS;
}

}  // namespace ferry::emu

// The CUDA 2.0 API: detach drops the creator's reference, which destroys the context.
FERRY_EXPORT CUresult cuCtxDetach(CUcontext ctx) { return cuCtxDestroy_v2(ctx); }
