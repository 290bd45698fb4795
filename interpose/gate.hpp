// The gate: every intercepted call marks itself in flight; a stop-the-world closes
// the gate, waits until no call is in flight, and holds later calls until it reopens.
//
// The hot path touches only the calling thread's own slot: a plain store of its
// "active" flag, a compiler barrier, a load of the shared "closed" flag (read-only,
// so its cache line stays shared), and a plain store on the way out. The closer pays
// for the memory ordering: it sets "closed", runs membarrier(PRIVATE_EXPEDITED), which
// makes every running thread of the process execute a full fence, and only then reads
// the slots. Either a thread's "active" store is visible to the closer, or that thread
// sees "closed" and backs off. Without membarrier (old kernel, seccomp) the hot path
// falls back to a fence of its own.
//
// The shared word also carries an epoch: a restore that replaced the real contexts
// opens the gate with a new epoch, and each thread, at its next outermost call, sees
// the change (the same one load and compare) and re-syncs its driver-side context
// stack with the shim's mirror (the resync hook) before the call proceeds.
//
// Nested calls (a wrapper reached again from inside a call) count depth, so only the
// outermost call marks the slot. Application callbacks that the driver runs on its own
// threads (host functions, stream callbacks) bypass the gate: they must be able to
// call CUDA while the world is stopped waiting for exactly those streams to drain.
#pragma once

#include <atomic>
#include <cstdint>

namespace ferry::gate {

struct Slot {
  std::atomic<uint32_t> active{0};
  uint32_t seen = 0;  // the gate word this thread last passed (open, its epoch)
  uint32_t depth = 0;
  uint32_t bypass = 0;
  std::atomic<bool> in_use{true};
  Slot* next = nullptr;
};

// Bit 0: closed; the rest: the epoch.
extern std::atomic<uint32_t> g_word;
extern std::atomic<bool> g_need_fence;
extern thread_local Slot* t_slot __attribute__((tls_model("initial-exec")));

Slot* register_thread();
// The gate was closed or the epoch changed: wait, re-sync, go on.
void slow_path(Slot* s);
// Called on a thread that passes the gate for the first time in a new epoch.
extern void (*g_resync)();

inline void enter() {
  Slot* s = t_slot;
  if (__builtin_expect(s == nullptr, 0)) s = register_thread();
  if (s->depth++ != 0 || s->bypass) return;
#if defined(__SANITIZE_THREAD__)
  // TSan models neither fences nor membarrier: under it the store and the load are a
  // plain seq_cst pair, which close()'s seq_cst fetch_or and loads order correctly.
  s->active.store(1, std::memory_order_seq_cst);
  if (__builtin_expect(g_word.load(std::memory_order_seq_cst) != s->seen, 0)) slow_path(s);
#else
  s->active.store(1, std::memory_order_relaxed);
  if (__builtin_expect(g_need_fence.load(std::memory_order_relaxed), 0))
    std::atomic_thread_fence(std::memory_order_seq_cst);
  else
    std::atomic_signal_fence(std::memory_order_seq_cst);
  if (__builtin_expect(g_word.load(std::memory_order_relaxed) != s->seen, 0)) slow_path(s);
#endif
}

inline void exit() {
  Slot* s = t_slot;
  if (--s->depth == 0) s->active.store(0, std::memory_order_release);
}

// Stop-the-world: close() returns once no other thread is inside an intercepted call;
// calls made after it wait until open(). Closers are serialized; open() may come from
// another thread than close() (a suspend and the resume that ends it). new_epoch: the
// real contexts changed, every thread re-syncs.
void close();
void open(bool new_epoch = false);

// The world stopped for a scope (a short inspection such as a state dump).
struct Stopped {
  Stopped() { close(); }
  ~Stopped() { open(); }
  Stopped(const Stopped&) = delete;
  Stopped& operator=(const Stopped&) = delete;
};

// Runs fn(arg) with the calling thread exempt from the gate (driver-run callbacks).
struct Bypass {
  Bypass();
  ~Bypass();
  uint32_t saved;
};

}  // namespace ferry::gate

namespace ferry {
struct GateGuard {
  GateGuard() { gate::enter(); }
  ~GateGuard() { gate::exit(); }
  GateGuard(const GateGuard&) = delete;
  GateGuard& operator=(const GateGuard&) = delete;
};
}  // namespace ferry
