#include "gate.hpp"

#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <condition_variable>
#include <mutex>
#include <thread>

#include "shim.hpp"

namespace ferry::gate {

std::atomic<uint32_t> g_word{0};
void (*g_resync)() = nullptr;
std::atomic<bool> g_need_fence{true};  // until membarrier is known to work
thread_local Slot* t_slot = nullptr;

namespace {

std::mutex g_slots_mu;  // the slot list (threads register once)
Slot* g_slots = nullptr;
// One stop-the-world at a time; a flag, not a mutex, because open() may run on
// another thread than the close() it ends.
std::mutex g_world_mu;
std::condition_variable g_world_cv;
bool g_world_held = false;
std::mutex g_wait_mu;   // calls waiting for the gate to reopen
std::condition_variable& wait_cv() {  // built on first use: see loader.cpp on initialization order
  static auto* cv = new std::condition_variable;
  return *cv;
}
bool g_membarrier = false;

struct ThreadExit {
  ~ThreadExit() {
    if (Slot* s = t_slot) {
      s->active.store(0, std::memory_order_release);
      s->in_use.store(false, std::memory_order_release);  // the slot goes to the next new thread
      t_slot = nullptr;
    }
  }
};
thread_local ThreadExit t_exit;

void init_membarrier() {
  static std::once_flag once;
  std::call_once(once, [] {
    long q = syscall(SYS_membarrier, MEMBARRIER_CMD_QUERY, 0, 0);
    if (q >= 0 && (q & MEMBARRIER_CMD_PRIVATE_EXPEDITED) &&
        syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0) {
      g_membarrier = true;
      g_need_fence.store(false);
    }
  });
}

void full_barrier_everywhere() {
#if defined(__SANITIZE_THREAD__)
  // enter() uses seq_cst operations under TSan (see gate.hpp): nothing to add.
#else
  if (g_membarrier) {
    syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0);
  } else {
    std::atomic_thread_fence(std::memory_order_seq_cst);
  }
#endif
}

}  // namespace

Slot* register_thread() {
  ensure_loaded();
  init_membarrier();
  Slot* s = nullptr;
  {
    std::lock_guard lk(g_slots_mu);
    for (Slot* it = g_slots; it; it = it->next) {
      bool expected = false;
      if (it->in_use.compare_exchange_strong(expected, true)) {
        s = it;
        break;
      }
    }
    if (!s) {
      s = new Slot;
      s->next = g_slots;
      g_slots = s;
    }
  }
  s->depth = 0;
  s->bypass = 0;
  s->active.store(0, std::memory_order_relaxed);
  s->seen = g_word.load(std::memory_order_acquire) & ~1u;
  (void)&t_exit;  // instantiate the thread-exit hook for this thread
  t_slot = s;
  return s;
}

void slow_path(Slot* s) {
  for (;;) {
    uint32_t w = g_word.load(std::memory_order_seq_cst);
    if (w & 1u) {
      s->active.store(0, std::memory_order_release);
      {
        std::unique_lock lk(g_wait_mu);
        wait_cv().wait(lk, [] { return (g_word.load(std::memory_order_acquire) & 1u) == 0; });
      }
      s->active.store(1, std::memory_order_seq_cst);  // pairs with close()'s seq_cst fetch_or
      continue;  // closed again meanwhile? look once more
    }
    if ((w >> 1) != (s->seen >> 1) && g_resync) g_resync();
    s->seen = w;
    return;
  }
}

void close() {
  {
    std::unique_lock lk(g_world_mu);
    g_world_cv.wait(lk, [] { return !g_world_held; });
    g_world_held = true;
  }
  init_membarrier();
  g_word.fetch_or(1u, std::memory_order_seq_cst);
  full_barrier_everywhere();
  Slot* self = t_slot;
  for (;;) {
    bool busy = false;
    {
      std::lock_guard lk(g_slots_mu);
      for (Slot* it = g_slots; it; it = it->next)
        if (it != self && it->active.load(std::memory_order_seq_cst)) busy = true;
    }
    if (!busy) break;
    std::this_thread::yield();
  }
}

void open(bool new_epoch) {
  {
    std::lock_guard lk(g_wait_mu);
    uint32_t w = g_word.load(std::memory_order_relaxed) & ~1u;
    if (new_epoch) w += 2;
    g_word.store(w, std::memory_order_release);
  }
  wait_cv().notify_all();
  {
    std::lock_guard lk(g_world_mu);
    g_world_held = false;
  }
  g_world_cv.notify_one();
}


Bypass::Bypass() {
  Slot* s = t_slot;
  if (!s) s = register_thread();
  saved = s->bypass;
  s->bypass = 1;
}

Bypass::~Bypass() { t_slot->bypass = saved; }

}  // namespace ferry::gate
