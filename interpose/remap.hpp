// Addresses of __device__ globals that moved in a restore.
//
// A module's globals live in memory the driver places when it loads the module, so
// after a restore reloads it they may sit elsewhere. cudart looks a global's address
// up once (cudaMemcpyToSymbol, cudaGetSymbolAddress) and keeps it; the shim answers
// every later lookup with the first address it handed out, and translates device
// addresses passed by value to any entry point (the generated wrappers call dev())
// from the old place to the new one. The table is immutable once published and
// replaced only while the world is stopped; the hot path is one load and a branch
// that is never taken until something moved. A kernel argument holding a global's old
// address cannot be translated (docs/engine.md, limitations).
#pragma once

#include <cuda.h>

#include <atomic>
#include <cstdint>
#include <vector>

namespace ferry::gx {

struct Moved {
  uintptr_t from = 0;  // the address the program knows
  size_t size = 0;
  uintptr_t to = 0;    // where the global lives now
};

extern std::atomic<const std::vector<Moved>*> g_moved;

CUdeviceptr translate(const std::vector<Moved>& t, CUdeviceptr p);

inline CUdeviceptr dev(CUdeviceptr p) {
  const std::vector<Moved>* t = g_moved.load(std::memory_order_acquire);
  return __builtin_expect(t != nullptr, 0) ? translate(*t, p) : p;
}

// Publishes a new table (world stopped). Entries with from == to are dropped.
void publish(std::vector<Moved> moved);

}  // namespace ferry::gx
