// The arena's cost in memory on a PyTorch-like allocation trace: the caching
// allocator's 2 MiB segments (small pool) and 20 MiB segments (large pool), large
// tensors rounded to 2 MiB, plus small buffers other libraries allocate directly
// (workspaces, scalars). Runs the shim over the simulated GPU in this process and
// reads the device-state log: physical bytes mapped and VA reserved, against the
// bytes requested (the baseline).
#include <cuda.h>
#include <dlfcn.h>
#include <stdlib.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace {
template <class T>
void get(void* h, const char* name, T& out) {
  out = reinterpret_cast<T>(dlsym(h, name));
  if (!out) {
    fprintf(stderr, "arena_overhead: %s not found\n", name);
    exit(1);
  }
}
size_t sum_field(const std::string& log, const std::string& kind, const std::string& field) {
  size_t total = 0;
  std::istringstream in(log);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(kind + " ", 0) != 0) continue;
    auto p = line.find(field + "=");
    if (p != std::string::npos) total += std::stoull(line.substr(p + field.size() + 1));
  }
  return total;
}
}  // namespace

int main() {
  setenv("FERRY_REAL_DRIVER", FERRY_BENCH_EMULATOR, 1);
  setenv("FERRY_EMU_MEMORY", "64G", 1);
  void* h = dlopen(FERRY_BENCH_SHIM, RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    fprintf(stderr, "arena_overhead: %s\n", dlerror());
    return 1;
  }
  CUresult (*init)(unsigned);
  CUresult (*retain)(CUcontext*, CUdevice);
  CUresult (*set)(CUcontext);
  CUresult (*alloc)(CUdeviceptr*, size_t);
  int (*dump)(const char*);
  get(h, "cuInit", init);
  get(h, "cuDevicePrimaryCtxRetain", retain);
  get(h, "cuCtxSetCurrent", set);
  get(h, "cuMemAlloc_v2", alloc);
  get(h, "ferry_dump_state", dump);
  CUcontext c;
  if (init(0) || retain(&c, 0) || set(c)) return 1;

  std::mt19937_64 rng(7);
  std::vector<size_t> trace;
  for (int i = 0; i < 200; i++) trace.push_back(2u << 20);   // small-pool segments
  for (int i = 0; i < 60; i++) trace.push_back(20u << 20);   // large-pool segments
  for (int i = 0; i < 40; i++) trace.push_back((12 + rng() % 200) * (2u << 20));  // big tensors, 2 MiB multiples
  for (int i = 0; i < 300; i++) trace.push_back(256 + rng() % (512 << 10));       // small direct buffers
  std::shuffle(trace.begin(), trace.end(), rng);
  size_t requested = 0;
  for (size_t s : trace) {
    CUdeviceptr p;
    if (alloc(&p, s) != CUDA_SUCCESS) {
      fprintf(stderr, "arena_overhead: allocation of %zu failed\n", s);
      return 1;
    }
    requested += s;
  }
  std::string path = "/tmp/ferry-arena-overhead.log";
  dump(path.c_str());
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  std::remove(path.c_str());
  size_t mapped = sum_field(ss.str(), "physical", "size");
  size_t reserved = sum_field(ss.str(), "reservation", "size");
  printf("# %zu allocations, %.1f MiB requested (the baseline)\n", trace.size(), requested / 1048576.0);
  printf("%-32s %12.1f MiB  overhead %6.2f%%\n", "physical memory mapped", mapped / 1048576.0,
         100.0 * (static_cast<double>(mapped) / static_cast<double>(requested) - 1));
  printf("%-32s %12.1f MiB  overhead %6.2f%%\n", "address space reserved", reserved / 1048576.0,
         100.0 * (static_cast<double>(reserved) / static_cast<double>(requested) - 1));
  printf("target: at most 5%% overhead\n");
  return 0;
}
