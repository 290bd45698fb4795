// shim_stress: many threads issuing CUDA driver calls at once -- streams, events,
// allocations of every size class, launches, copies -- while another thread keeps
// stopping the world when run under ferry: the shim's state dump, or with a third
// argument DIR the engine's operations in turn (checkpoint to DIR/N incrementally and
// running on, migration to the other device, suspend and resume). Prints a checksum of
// everything computed, which must not depend on the shim or the interleaving.
#include <cuda.h>
#include <dlfcn.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include <ferry/ferry.hpp>

#include "test_kernels_fatbin.h"

namespace {

std::atomic<int> g_errors{0};

void ck(CUresult e, const char* what) {
  if (e != CUDA_SUCCESS) {
    const char* n = nullptr;
    cuGetErrorName(e, &n);
    fprintf(stderr, "shim_stress: %s failed: %s\n", what, n ? n : "?");
    g_errors++;
  }
}

uint64_t worker(CUcontext ctx, CUfunction add_one, int id, int iters) {
  ck(cuCtxSetCurrent(ctx), "cuCtxSetCurrent");
  CUstream s;
  CUevent e;
  ck(cuStreamCreate(&s, id % 2 ? CU_STREAM_NON_BLOCKING : 0), "cuStreamCreate");
  ck(cuEventCreate(&e, CU_EVENT_DISABLE_TIMING), "cuEventCreate");
  // The cluster queries cuBLASLt makes: a function and a stream inside a configuration.
  CUlaunchConfig cfg{};
  cfg.gridDimX = cfg.gridDimY = cfg.gridDimZ = 1;
  cfg.blockDimX = 256;
  cfg.blockDimY = cfg.blockDimZ = 1;
  cfg.hStream = s;
  int clusters = -1, cluster_size = -1;
  ck(cuOccupancyMaxActiveClusters(&clusters, add_one, &cfg), "cuOccupancyMaxActiveClusters");
  ck(cuOccupancyMaxPotentialClusterSize(&cluster_size, add_one, &cfg), "cuOccupancyMaxPotentialClusterSize");
  uint64_t sum = static_cast<uint64_t>(clusters) * 7 + static_cast<uint64_t>(cluster_size);
  for (int it = 0; it < iters; it++) {
    // Just over 1 MiB (its own piece of the arena), and two sizes that share chunks.
    size_t n = (it % 3 == 0) ? 270000 : (it % 3 == 1) ? 700 : 3000;
    CUdeviceptr d;
    ck(cuMemAlloc(&d, n * sizeof(int)), "cuMemAlloc");
    ck(cuMemsetD32Async(d, static_cast<unsigned>(id * 1000 + it), n, s), "cuMemsetD32Async");
    int count = static_cast<int>(n);
    void* args[] = {&d, &count};
    int launches = (it % 3 == 0) ? 1 : 1 + it % 4;
    for (int k = 0; k < launches; k++)
      ck(cuLaunchKernel(add_one, static_cast<unsigned>((n + 255) / 256), 1, 1, 256, 1, 1, 0, s, args, nullptr),
         "cuLaunchKernel");
    ck(cuEventRecord(e, s), "cuEventRecord");
    CUresult q = cuEventQuery(e);
    if (q != CUDA_SUCCESS && q != CUDA_ERROR_NOT_READY) ck(q, "cuEventQuery");
    std::vector<int> host(n);
    ck(cuMemcpyDtoHAsync(host.data(), d, n * sizeof(int), s), "cuMemcpyDtoHAsync");
    ck(cuStreamSynchronize(s), "cuStreamSynchronize");
    int want = id * 1000 + it + launches;
    if (host[0] != want || host[n - 1] != want) {
      fprintf(stderr, "shim_stress: thread %d iteration %d: %d, want %d\n", id, it, host[0], want);
      g_errors++;
    }
    for (size_t i = 0; i < n; i += 97) sum = sum * 31 + static_cast<uint64_t>(host[i]);
    CUcontext cur = nullptr;
    ck(cuCtxGetCurrent(&cur), "cuCtxGetCurrent");
    if (cur != ctx) g_errors++;
    ck(cuMemFree(d), "cuMemFree");
  }
  ck(cuEventDestroy(e), "cuEventDestroy");
  ck(cuStreamDestroy(s), "cuStreamDestroy");
  return sum;
}

}  // namespace

int main(int argc, char** argv) {
  int threads = argc > 1 ? atoi(argv[1]) : 8;
  int iters = argc > 2 ? atoi(argv[2]) : 60;
  std::string engine_dir = argc > 3 ? argv[3] : "";
  ck(cuInit(0), "cuInit");
  CUcontext ctx;
  ck(cuDevicePrimaryCtxRetain(&ctx, 0), "retain");
  ck(cuCtxSetCurrent(ctx), "set current");
  CUmodule mod;
  ck(cuModuleLoadData(&mod, test_kernels_fatbin), "cuModuleLoadData");
  CUfunction add_one;
  ck(cuModuleGetFunction(&add_one, mod, "add_one"), "cuModuleGetFunction");
  if (g_errors) return 1;

  // Under ferry: keep stopping the world while the workers run.
  auto dump = reinterpret_cast<int (*)(const char*)>(dlsym(RTLD_DEFAULT, "ferry_dump_state"));
  std::atomic<bool> done{false};
  int stops = 0;
  int ops = 0;
  std::thread stopper([&] {
    while (dump && engine_dir.empty() && !done.load()) {
      if (dump("/dev/null") != 0) g_errors++;
      stops++;
      std::this_thread::yield();
    }
    int device = 0;
    std::string parent;
    while (!engine_dir.empty() && !done.load()) {
      ferry::Result r;
      std::string what;
      switch (ops % 3) {
        case 0: {
          ferry::Options o;
          o.dir = engine_dir + "/" + std::to_string(ops);
          o.parent = parent;
          o.leave_running = true;
          r = ferry::checkpoint(o);
          parent = o.dir;
          what = "checkpoint";
          break;
        }
        case 1:
          device = 1 - device;
          r = ferry::migrate(device);
          what = "migrate";
          break;
        default:
          r = ferry::suspend();
          if (r) r = ferry::resume();
          what = "suspend+resume";
      }
      if (!r) {
        fprintf(stderr, "shim_stress: %s failed: %s\n", what.c_str(), r.message.c_str());
        g_errors++;
        break;
      }
      ops++;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  });
  std::vector<uint64_t> sums(static_cast<size_t>(threads));
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; t++)
    ts.emplace_back([&, t] { sums[static_cast<size_t>(t)] = worker(ctx, add_one, t, iters); });
  for (auto& t : ts) t.join();
  done = true;
  stopper.join();
  uint64_t total = 0;
  for (uint64_t s : sums) total = total * 1000003 + s;
  ck(cuModuleUnload(mod), "cuModuleUnload");
  ck(cuDevicePrimaryCtxRelease(0), "release");
  printf("shim_stress: %d threads x %d iterations, checksum %016llx, errors %d\n", threads, iters,
         static_cast<unsigned long long>(total), g_errors.load());
  fprintf(stderr, "shim_stress: %d stops of the world, %d engine operations\n", stops, ops);
  return g_errors ? 1 : 0;
}
