#include "remap.hpp"

#include <algorithm>

namespace ferry::gx {

std::atomic<const std::vector<Moved>*> g_moved{nullptr};

CUdeviceptr translate(const std::vector<Moved>& t, CUdeviceptr p) {
  auto it = std::upper_bound(t.begin(), t.end(), p, [](CUdeviceptr v, const Moved& m) { return v < m.from; });
  if (it == t.begin()) return p;
  --it;
  return (p - it->from < it->size) ? it->to + (p - it->from) : p;
}

void publish(std::vector<Moved> moved) {
  std::erase_if(moved, [](const Moved& m) { return m.from == m.to || m.size == 0; });
  std::sort(moved.begin(), moved.end(), [](const Moved& a, const Moved& b) { return a.from < b.from; });
  // The old table is not freed: a driver callback thread (outside the gate) may still
  // be reading it, and tables change only at restores.
  g_moved.store(moved.empty() ? nullptr : new std::vector<Moved>(std::move(moved)), std::memory_order_release);
}

}  // namespace ferry::gx
