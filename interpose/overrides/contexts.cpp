// Contexts and devices: virtual context handles, the mirrored current-context stack,
// primary-context reference counts, virtual device ordinals.
#include <atomic>
#include <cstdlib>
#include <string>

#include "../arena.hpp"
#include "../config.hpp"
#include "../contexts.hpp"
#include "../forked_children.hpp"
#include "../log.hpp"
#include "../shim.hpp"
#include "shim_decls.hpp"

using namespace ferry;

namespace {

std::atomic<bool> g_initialized{false};
std::atomic<InitHook> g_init_hook{nullptr};

// FERRY_DEVICE_MAP="2,0,1": the program's device i is physical device map[i]. A
// permutation of all devices; anything else is refused (identity kept).
void setup_devices() {
  int n = 0;
  if (real::cuDeviceGetCount(&n) != CUDA_SUCCESS) return;
  if (n > vh::kMaxDevices) n = vh::kMaxDevices;
  const std::string& map = config().device_map;
  int perm[vh::kMaxDevices];
  for (int i = 0; i < n; i++) perm[i] = i;
  if (!map.empty()) {
    int k = 0;
    bool seen[vh::kMaxDevices] = {};
    bool ok = true;
    size_t pos = 0;
    while (pos < map.size() && k < n) {
      int d = atoi(map.c_str() + pos);
      if (d < 0 || d >= n || seen[d]) ok = false;
      if (ok) seen[d] = true, perm[k] = d;
      k++;
      size_t c = map.find(',', pos);
      if (c == std::string::npos) break;
      pos = c + 1;
    }
    if (!ok || k != n) {
      FERRY_WARN("FERRY_DEVICE_MAP=%s is not a permutation of the %d devices; ignored", map.c_str(), n);
      for (int i = 0; i < n; i++) perm[i] = i;
    }
  }
  for (int p = 0; p < vh::kMaxDevices; p++) vh::g_pdev_to_vdev[p] = p;
  for (int i = 0; i < n; i++) {
    vh::g_vdev_to_pdev[i] = perm[i];
    vh::g_pdev_to_vdev[perm[i]] = i;
  }
  vh::g_device_count = n;
}

CUcontext vhandle(tr::Ctx* c) { return c ? vh::as<CUcontext>(c->v) : nullptr; }

// A real context that ferry never saw (made through an untracked path) still gets a
// record, so the mirror stack can hold it.
tr::Ctx* adopt(CUcontext real) {
  if (!real) return nullptr;
  if (tr::Ctx* c = tr::ctx_of_real(real)) return c;
  CUdevice d = 0;
  CUcontext saved = nullptr;
  real::cuCtxGetCurrent(&saved);
  real::cuCtxSetCurrent(real);
  real::cuCtxGetDevice(&d);
  real::cuCtxSetCurrent(saved);
  tr::Ctx* c = ctx::make_created(vh::virtual_device(d), real, 0);
  return c;
}

// `real` by reference: it is written by the call whose result is `r` (argument order).
CUresult create(CUcontext* pctx, CUdevice dev, unsigned flags, CUresult r, const CUcontext& real) {
  if (r != CUDA_SUCCESS) return r;
  tr::Ctx* c = ctx::make_created(dev, real, flags);
  ctx::push(c);
  if (pctx) *pctx = vhandle(c);
  return r;
}

CUresult destroy(CUcontext v) {
  tr::Ctx* c = ctx::of(v);
  CUresult r = real::cuCtxDestroy_v2(vh::real(v));
  if (r == CUDA_SUCCESS && c) {
    ctx::retire(c);
    ctx::drop_from_stack(c);
  }
  return r;
}

}  // namespace

namespace ferry {
bool initialized() { return g_initialized.load(std::memory_order_acquire); }
void set_init_hook(InitHook h) { g_init_hook.store(h, std::memory_order_release); }
}  // namespace ferry

CUresult ferry::ov::cuInit(unsigned int flags) {
  CUresult r = real::cuInit(flags);
  if (r == CUDA_SUCCESS && !g_initialized.load()) {
    static std::once_flag once;
    std::call_once(once, [] {
      gate::g_resync = ctx::resync_thread;
      setup_devices();
      arena::probe();
      forked::install();
      g_initialized.store(true, std::memory_order_release);
    });
    if (InitHook h = g_init_hook.load(std::memory_order_acquire); h && active()) h();
  }
  return r;
}

// The program's count, not the machine's: cudart and the program numbered their devices
// when they started, and a restore onto a machine with another number of GPUs maps
// those numbers onto its devices instead of changing them.
CUresult ferry::ov::cuDeviceGetCount(int* count) {
  CUresult r = real::cuDeviceGetCount(count);
  if (r == CUDA_SUCCESS && count && vh::g_device_count > 0) *count = vh::g_device_count;
  return r;
}

CUresult ferry::ov::cuDeviceGet(CUdevice_v1* device, int ordinal) {
  if (ordinal < 0 || ordinal >= vh::g_device_count) return real::cuDeviceGet(device, ordinal);
  CUdevice p = 0;
  CUresult r = real::cuDeviceGet(&p, vh::real_device(ordinal));
  if (r == CUDA_SUCCESS && device) *device = ordinal;
  return r;
}

CUresult ferry::ov::cuDeviceGetByPCIBusId(CUdevice_v1* dev, const char* pciBusId) {
  CUdevice p = 0;
  CUresult r = real::cuDeviceGetByPCIBusId(&p, pciBusId);
  if (r == CUDA_SUCCESS && dev) *dev = vh::virtual_device(p);
  return r;
}

CUresult ferry::ov::cuCtxCreate(CUcontext* pctx, unsigned int flags, CUdevice_v1 dev) {
  CUcontext real = nullptr;
  return create(pctx, dev, flags, real::cuCtxCreate(&real, flags, vh::real_device(dev)), real);
}
CUresult ferry::ov::cuCtxCreate_v2(CUcontext* pctx, unsigned int flags, CUdevice_v1 dev) {
  CUcontext real = nullptr;
  return create(pctx, dev, flags, real::cuCtxCreate_v2(&real, flags, vh::real_device(dev)), real);
}
CUresult ferry::ov::cuCtxCreate_v3(CUcontext* pctx, CUexecAffinityParam* params, int n, unsigned int flags,
                                   CUdevice_v1 dev) {
  CUcontext real = nullptr;
  return create(pctx, dev, flags, real::cuCtxCreate_v3(&real, params, n, flags, vh::real_device(dev)), real);
}
CUresult ferry::ov::cuCtxCreate_v4(CUcontext* pctx, CUctxCreateParams* params, unsigned int flags, CUdevice dev) {
  if (params && params->cigParams) untracked_call(Variant::cuCtxCreate_v4, "cuCtxCreate_v4 (CIG)");
  CUcontext real = nullptr;
  return create(pctx, dev, flags, real::cuCtxCreate_v4(&real, params, flags, vh::real_device(dev)), real);
}

CUresult ferry::ov::cuCtxDestroy(CUcontext ctx) { return destroy(ctx); }
CUresult ferry::ov::cuCtxDestroy_v2(CUcontext ctx) { return destroy(ctx); }
CUresult ferry::ov::cuCtxDetach(CUcontext ctx) { return real::cuCtxDetach(vh::real(ctx)); }

CUresult ferry::ov::cuCtxAttach(CUcontext* pctx, unsigned int flags) {
  CUcontext real = nullptr;
  CUresult r = real::cuCtxAttach(&real, flags);
  if (r == CUDA_SUCCESS && pctx) *pctx = vhandle(adopt(real));
  return r;
}

CUresult ferry::ov::cuCtxPushCurrent_v2(CUcontext ctx) {
  CUresult r = real::cuCtxPushCurrent_v2(vh::real(ctx));
  if (r == CUDA_SUCCESS) ctx::push(ctx::of(ctx) ? ctx::of(ctx) : adopt(ctx));
  return r;
}
CUresult ferry::ov::cuCtxPushCurrent(CUcontext ctx) { return ferry::ov::cuCtxPushCurrent_v2(ctx); }

CUresult ferry::ov::cuCtxPopCurrent_v2(CUcontext* pctx) {
  CUcontext real = nullptr;
  CUresult r = real::cuCtxPopCurrent_v2(&real);
  if (r != CUDA_SUCCESS) return r;
  tr::Ctx* c = ctx::pop();
  if (pctx) *pctx = c ? vhandle(c) : tr::virtual_ctx(real);
  return r;
}
CUresult ferry::ov::cuCtxPopCurrent(CUcontext* pctx) { return ferry::ov::cuCtxPopCurrent_v2(pctx); }

CUresult ferry::ov::cuCtxSetCurrent(CUcontext ctx) {
  CUresult r = real::cuCtxSetCurrent(vh::real(ctx));
  if (r == CUDA_SUCCESS) ctx::set(ctx ? (ctx::of(ctx) ? ctx::of(ctx) : adopt(ctx)) : nullptr);
  return r;
}

CUresult ferry::ov::cuCtxGetCurrent(CUcontext* pctx) {
  if (!initialized() || !pctx) return real::cuCtxGetCurrent(pctx);
  *pctx = vhandle(ctx::current());
  return CUDA_SUCCESS;
}

CUresult ferry::ov::cuCtxGetDevice(CUdevice_v1* device) {
  CUdevice p = 0;
  CUresult r = real::cuCtxGetDevice(&p);
  if (r == CUDA_SUCCESS && device) *device = vh::virtual_device(p);
  return r;
}

CUresult ferry::ov::cuCtxGetDevice_v2(CUdevice* device, CUcontext ctx) {
  CUdevice p = 0;
  CUresult r = real::cuCtxGetDevice_v2(&p, vh::real(ctx));
  if (r == CUDA_SUCCESS && device) *device = vh::virtual_device(p);
  return r;
}

CUresult ferry::ov::cuCtxGetId(CUcontext ctx, unsigned long long* id) {
  unsigned long long real_id = 0;
  CUresult r = real::cuCtxGetId(vh::real(ctx), &real_id);
  if (r != CUDA_SUCCESS || !id) return r;
  tr::Ctx* c = ctx::of_or_current(ctx);
  *id = (c && c->id) ? c->id : real_id;  // stable across a restore
  return r;
}

CUresult ferry::ov::cuDevicePrimaryCtxRetain(CUcontext* pctx, CUdevice_v1 dev) {
  CUcontext real = nullptr;
  CUresult r = real::cuDevicePrimaryCtxRetain(&real, vh::real_device(dev));
  if (r != CUDA_SUCCESS) return r;
  tr::Ctx* c = ctx::primary(dev, real);
  {
    auto& st = tr::state();
    std::lock_guard lk(st.mu);
    c->retain++;
    c->alive = true;
  }
  if (pctx) *pctx = vhandle(c);
  return r;
}

namespace {
CUresult primary_release(CUdevice dev, CUresult r) {
  if (r != CUDA_SUCCESS) return r;
  tr::Ctx* c = ctx::primary(dev, nullptr);
  bool last = false;
  {
    auto& st = tr::state();
    std::lock_guard lk(st.mu);
    if (c->retain > 0 && --c->retain == 0) last = true;
  }
  if (last) ctx::retire(c);
  return r;
}
CUresult primary_reset(CUdevice dev, CUresult r) {
  if (r != CUDA_SUCCESS) return r;
  tr::Ctx* c = ctx::primary(dev, nullptr);
  if (c->alive) ctx::retire(c);
  auto& st = tr::state();
  std::lock_guard lk(st.mu);
  c->retain = 0;
  return r;
}
}  // namespace

CUresult ferry::ov::cuDevicePrimaryCtxRelease(CUdevice_v1 dev) {
  return primary_release(dev, real::cuDevicePrimaryCtxRelease(vh::real_device(dev)));
}
CUresult ferry::ov::cuDevicePrimaryCtxRelease_v2(CUdevice_v1 dev) {
  return primary_release(dev, real::cuDevicePrimaryCtxRelease_v2(vh::real_device(dev)));
}
CUresult ferry::ov::cuDevicePrimaryCtxReset(CUdevice_v1 dev) {
  return primary_reset(dev, real::cuDevicePrimaryCtxReset(vh::real_device(dev)));
}
CUresult ferry::ov::cuDevicePrimaryCtxReset_v2(CUdevice_v1 dev) {
  return primary_reset(dev, real::cuDevicePrimaryCtxReset_v2(vh::real_device(dev)));
}
