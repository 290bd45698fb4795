#include "contexts.hpp"

#include <vector>

#include "shim.hpp"
#include "shim_decls.hpp"

namespace ferry::ctx {

namespace {
thread_local std::vector<tr::Ctx*> t_stack;

unsigned long long real_id(CUcontext real) {
  unsigned long long id = 0;
  if (real && real::cuCtxGetId) real::cuCtxGetId(real, &id);
  return id;
}
}  // namespace

tr::Ctx* current() { return t_stack.empty() ? nullptr : t_stack.back(); }
void push(tr::Ctx* c) { t_stack.push_back(c); }
tr::Ctx* pop() {
  if (t_stack.empty()) return nullptr;
  tr::Ctx* c = t_stack.back();
  t_stack.pop_back();
  return c;
}
void set(tr::Ctx* c) {
  if (!c) {
    if (!t_stack.empty()) t_stack.pop_back();
  } else if (t_stack.empty()) {
    t_stack.push_back(c);
  } else {
    t_stack.back() = c;
  }
}
void drop_from_stack(tr::Ctx* c) {
  for (auto it = t_stack.begin(); it != t_stack.end();) it = (*it == c) ? t_stack.erase(it) : it + 1;
}

void resync_thread() {
  // Unbind whatever the driver still has for this thread (old, destroyed contexts);
  // bounded, in case the driver never reports an empty stack.
  for (int i = 0; i < 256; i++) {
    CUcontext cur = nullptr;
    real::cuCtxGetCurrent(&cur);
    if (!cur || real::cuCtxSetCurrent(nullptr) != CUDA_SUCCESS) break;
  }
  for (tr::Ctx* c : t_stack)
    if (c->alive && c->real) real::cuCtxPushCurrent_v2(c->real);
}

tr::Ctx* of(CUcontext v) {
  return vh::rec_of<tr::Ctx>(v, vh::Kind::Context);
}

tr::Ctx* of_or_current(CUcontext v) { return v ? of(v) : current(); }

tr::Ctx* primary(int vdev, CUcontext real) {
  auto& st = tr::state();
  std::lock_guard lk(st.mu);
  if (vdev < 0 || vdev >= vh::kMaxDevices) return nullptr;
  tr::Ctx*& c = st.primary[vdev];
  if (!c) {
    c = new tr::Ctx;
    c->vdev = vdev;
    c->primary = true;
    c->v = vh::make(vh::Kind::Context, real, c);
    st.contexts.push_back(c);
  }
  if (real && c->real != real) {
    if (c->real) st.ctx_by_real.erase(c->real);
    c->real = real;
    c->v->real = real;
    st.ctx_by_real[real] = c;
    if (!c->id) c->id = real_id(real);
  }
  return c;
}

tr::Ctx* make_created(int vdev, CUcontext real, unsigned flags) {
  auto& st = tr::state();
  std::lock_guard lk(st.mu);
  auto* c = new tr::Ctx;
  c->vdev = vdev;
  c->real = real;
  c->alive = true;
  c->flags = flags;
  c->id = real_id(real);
  c->v = vh::make(vh::Kind::Context, real, c);
  st.contexts.push_back(c);
  st.ctx_by_real[real] = c;
  return c;
}

void retire(tr::Ctx* c) {
  std::map<void*, tr::ClsEntry> cls;
  {
    auto& st = tr::state();
    std::lock_guard lk(st.mu);
    cls.swap(c->cls);
  }
  // cudart's destructors may call back into CUDA; no lock is held.
  for (auto& [key, e] : cls)
    if (e.dtor) e.dtor(vh::as<CUcontext>(c->v), key, e.value);
  tr::forget_context_objects(c);
  auto& st = tr::state();
  std::lock_guard lk(st.mu);
  c->alive = false;
  if (!c->primary) st.ctx_by_real.erase(c->real);
}

}  // namespace ferry::ctx
