#include "tracker.hpp"

#include <unistd.h>

#include <cinttypes>
#include <cstdarg>
#include <cstdio>

#include "arena.hpp"
#include "log.hpp"
#include "shim.hpp"

namespace ferry::tr {

State& state() {
  static State* s = new State;  // never destroyed: driver threads may call in during exit
  return *s;
}

Ctx* ctx_of_real(CUcontext real) {
  State& st = state();
  std::lock_guard lk(st.mu);
  auto it = st.ctx_by_real.find(real);
  return it == st.ctx_by_real.end() ? nullptr : it->second;
}

CUcontext virtual_ctx(CUcontext real) {
  if (!real) return nullptr;
  Ctx* c = ctx_of_real(real);
  return c ? vh::as<CUcontext>(c->v) : real;
}

void forget_context_objects(Ctx* c) {
  State& st = state();
  std::lock_guard lk(st.mu);
  for (auto it = st.streams.begin(); it != st.streams.end();) {
    if ((*it)->ctx == c) {
      vh::release((*it)->v);
      delete *it;
      it = st.streams.erase(it);
    } else {
      ++it;
    }
  }
  for (auto it = st.events.begin(); it != st.events.end();) {
    if ((*it)->ctx == c) {
      vh::release((*it)->v);
      delete *it;
      it = st.events.erase(it);
    } else {
      ++it;
    }
  }
  auto drop = [&](auto& set) {
    for (auto it = set.begin(); it != set.end();) {
      if ((*it)->ctx == c) {
        vh::release((*it)->v);
        delete *it;
        it = set.erase(it);
      } else {
        ++it;
      }
    }
  };
  drop(st.graphs);
  drop(st.graph_execs);
  for (auto it = st.modules.begin(); it != st.modules.end();) {
    Module* m = *it;
    if (m->ctx != c) {
      ++it;
      continue;
    }
    for (auto& [n, f] : m->functions) {
      vh::release(f->v);
      delete f;
    }
    if (m->library) m->library->modules.erase(c);
    vh::release(m->v);
    delete m;
    it = st.modules.erase(it);
  }
  std::vector<uintptr_t> owned;
  for (auto& [va, a] : st.allocs)
    if (a.ctx == c && a.kind != AllocKind::Async) owned.push_back(va);
  for (uintptr_t va : owned) {
    if (st.allocs.at(va).kind == AllocKind::Managed)
      st.allocs.erase(va);
    else
      arena::free(va);
  }
  for (auto it = st.host.begin(); it != st.host.end();)
    it = (it->second.ctx == c && !it->second.ours) ? st.host.erase(it) : std::next(it);
}

namespace {

void line(std::string& out, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
void line(std::string& out, const char* fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  out += buf;
  out += '\n';
}

const void* h(const vh::Obj* o) { return o; }

const char* kind_name(AllocKind k) {
  switch (k) {
    case AllocKind::Device: return "device";
    case AllocKind::Pitch: return "pitch";
    case AllocKind::Async: return "async";
    case AllocKind::Managed: return "managed";
  }
  return "?";
}

}  // namespace

std::string dump() {
  State& st = state();
  std::lock_guard lk(st.mu);
  std::string out;
  line(out, "# ferry device-state log, pid %d", static_cast<int>(getpid()));
  size_t n_ctx = 0, n_kernels = 0, n_functions = 0, alloc_bytes = 0;
  for (Ctx* c : st.contexts) {
    if (!c->alive) continue;
    n_ctx++;
    line(out, "context %p real=%p device=%d %s flags=%u retain=%d id=%llu cls=%zu", h(c->v),
         static_cast<void*>(c->real), c->vdev, c->primary ? "primary" : "created", c->flags, c->retain, c->id,
         c->cls.size());
  }
  for (Stream* s : st.streams)
    line(out, "stream %p real=%p context=%p flags=%u priority=%d", h(s->v), s->v->real, h(s->ctx->v), s->flags,
         s->priority);
  for (Event* e : st.events)
    line(out, "event %p real=%p context=%p flags=%u", h(e->v), e->v->real, h(e->ctx->v), e->flags);
  for (Library* l : st.libraries) {
    n_kernels += l->kernels.size();
    line(out, "library %p real=%p image=%p bytes=%zu preserved=%d kernels=%zu", h(l->v), l->v->real, l->image.ptr,
         l->image.bytes, l->preserved ? 1 : 0, l->kernels.size());
    for (auto& [name, k] : l->kernels) line(out, "kernel %p library=%p name=%s", h(k->v), h(l->v), name.c_str());
  }
  for (Module* m : st.modules) {
    n_functions += m->functions.size();
    line(out, "module %p real=%p context=%p library=%p bytes=%zu functions=%zu globals=%zu", h(m->v), m->v->real,
         h(m->ctx->v), m->library ? h(m->library->v) : nullptr, m->library ? m->library->image.bytes : m->image.bytes,
         m->functions.size(), m->globals.size());
    for (auto& [name, f] : m->functions) line(out, "function %p module=%p name=%s", h(f->v), h(m->v), name.c_str());
    for (auto& [name, g] : m->globals)
      line(out, "global module=%p name=%s addr=0x%llx size=%zu", h(m->v), name.c_str(), g.addr, g.size);
  }
  for (Pool* p : st.pools)
    line(out, "pool %p real=%p device=%d %s", h(p->v), p->v->real, p->vdev, p->is_default ? "default" : "created");
  for (auto& [va, a] : st.allocs) {
    alloc_bytes += a.size;
    line(out, "alloc 0x%" PRIxPTR " size=%zu span=%zu kind=%s device=%d context=%p%s", va, a.size, a.span,
         kind_name(a.kind), a.vdev, a.ctx ? h(a.ctx->v) : nullptr, a.chunk ? " chunk" : "");
  }
  for (auto& [va, r] : st.reservations)
    line(out, "reservation 0x%" PRIxPTR " size=%zu device=%d owner=%s", va, r.size, r.vdev,
         r.owner == Owner::App ? "program" : "arena");
  for (Phys* p : st.phys)
    line(out, "physical %p real=0x%llx size=%zu device=%d owner=%s handles=%d mappings=%d", p->v ? h(p->v) : nullptr,
         static_cast<unsigned long long>(p->real), p->size, p->vdev, p->owner == Owner::App ? "program" : "arena",
         p->handle_refs, p->map_refs);
  for (auto& [va, m] : st.mappings)
    line(out, "mapping 0x%" PRIxPTR " size=%zu physical=0x%llx offset=%zu access=%zu", va, m.size,
         static_cast<unsigned long long>(m.phys->real), m.offset, m.access.size());
  for (auto& [p, hm] : st.host)
    line(out, "host %p size=%zu flags=%u %s", hm.ptr, hm.size, hm.flags, hm.ours ? "alloc" : "registered");
  for (const void* f : st.registered_fatbins) line(out, "registered-fatbin %p", f);
  for (auto& u : st.untracked) line(out, "untracked %s", u.c_str());
  line(out,
       "summary contexts=%zu streams=%zu events=%zu libraries=%zu kernels=%zu modules=%zu functions=%zu pools=%zu "
       "allocs=%zu alloc_bytes=%zu reservations=%zu physical=%zu mappings=%zu host=%zu untracked=%zu",
       n_ctx, st.streams.size(), st.events.size(), st.libraries.size(), n_kernels, st.modules.size(), n_functions,
       st.pools.size(), st.allocs.size(), alloc_bytes, st.reservations.size(), st.phys.size(), st.mappings.size(),
       st.host.size(), st.untracked.size());
  return out;
}

void dump_to_log(const char* why, bool stop_world) {
  // A consistent picture: no call may change the log while it is written. (Not at
  // exit, where a thread blocked inside the driver would hold the dump forever.)
  if (stop_world) gate::close();
  std::string d = dump();
  if (stop_world) gate::open();
  std::string head = std::string("# dump on ") + why + "\n";
  log::raw(head.data(), head.size());
  log::raw(d.data(), d.size());
}

}  // namespace ferry::tr
