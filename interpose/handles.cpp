#include "handles.hpp"

#include <sys/mman.h>

#include <cstdio>
#include <cstdlib>
#include <deque>
#include <mutex>

namespace ferry::vh {

uintptr_t g_slab_lo = 0, g_slab_hi = 0;
int g_device_count = 0;
int g_vdev_to_pdev[kMaxDevices];
int g_pdev_to_vdev[kMaxDevices];

namespace {
constexpr size_t kSlabBytes = 1ull << 30;  // 32 M handles; only touched pages cost memory
constexpr size_t kReuseDelay = 4096;       // freed slots wait this many frees before reuse
std::mutex g_mu;
size_t g_next = 0;
uint32_t g_serial = 0;
std::deque<Obj*>& free_list() {  // built on first use: see loader.cpp on initialization order
  static auto* q = new std::deque<Obj*>;
  return *q;
}
}  // namespace

void init_slab() {
  void* p = mmap(nullptr, kSlabBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    fprintf(stderr, "ferry: cannot reserve memory for virtual handles\n");
    abort();
  }
  g_slab_lo = reinterpret_cast<uintptr_t>(p);
  g_slab_hi = g_slab_lo + kSlabBytes;
  for (int i = 0; i < kMaxDevices; i++) g_vdev_to_pdev[i] = g_pdev_to_vdev[i] = i;
}

Obj* make(Kind kind, void* real, void* rec) {
  std::lock_guard lk(g_mu);
  Obj* o;
  if (free_list().size() > kReuseDelay) {
    o = free_list().front();
    free_list().pop_front();
  } else {
    if ((g_next + 1) * sizeof(Obj) > kSlabBytes) {
      fprintf(stderr, "ferry: out of virtual handles\n");
      abort();
    }
    o = reinterpret_cast<Obj*>(g_slab_lo) + g_next++;
  }
  o->real = real;
  o->kind = kind;
  o->serial = ++g_serial;
  o->rec = rec;
  return o;
}

void release(Obj* o) {
  std::lock_guard lk(g_mu);
  o->kind = Kind::Free;
  o->rec = nullptr;
  free_list().push_back(o);
}

}  // namespace ferry::vh
