#include "gate.hpp"

#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <condition_variable>
#include <mutex>
#include <thread>

#include "shim.hpp"

namespace ferry::gate {

std::atomic<uint32_t> g_closed{0};
std::atomic<bool> g_need_fence{true};  // until membarrier is known to work
thread_local Slot* t_slot = nullptr;

namespace {

std::mutex g_slots_mu;  // the slot list (threads register once)
Slot* g_slots = nullptr;
std::mutex g_world_mu;  // one stop-the-world at a time
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
  if (g_membarrier) {
    syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0);
  } else {
    std::atomic_thread_fence(std::memory_order_seq_cst);
  }
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
  (void)&t_exit;  // instantiate the thread-exit hook for this thread
  t_slot = s;
  return s;
}

void wait_open(Slot* s) {
  for (;;) {
    s->active.store(0, std::memory_order_release);
    {
      std::unique_lock lk(g_wait_mu);
      wait_cv().wait(lk, [] { return g_closed.load(std::memory_order_acquire) == 0; });
    }
    s->active.store(1, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (g_closed.load(std::memory_order_relaxed) == 0) return;
  }
}

void close() {
  g_world_mu.lock();
  init_membarrier();
  g_closed.store(1, std::memory_order_relaxed);
  full_barrier_everywhere();
  Slot* self = t_slot;
  for (;;) {
    bool busy = false;
    {
      std::lock_guard lk(g_slots_mu);
      for (Slot* it = g_slots; it; it = it->next)
        if (it != self && it->active.load(std::memory_order_acquire)) busy = true;
    }
    if (!busy) break;
    std::this_thread::yield();
  }
}

void open() {
  {
    std::lock_guard lk(g_wait_mu);
    g_closed.store(0, std::memory_order_release);
  }
  wait_cv().notify_all();
  g_world_mu.unlock();
}

bool closed() { return g_closed.load(std::memory_order_acquire) != 0; }

Bypass::Bypass() {
  Slot* s = t_slot;
  if (!s) s = register_thread();
  saved = s->bypass;
  s->bypass = 1;
}

Bypass::~Bypass() { t_slot->bypass = saved; }

}  // namespace ferry::gate
