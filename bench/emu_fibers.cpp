// How the simulated GPU runs a block: one fiber per CUDA thread. This measures the
// cost per CUDA thread of a launch and per thread of a __syncthreads(), against the
// alternative design measured in the same run: one OS thread per CUDA thread, with
// std::barrier for __syncthreads().
#include <cuda.h>

#include <barrier>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

#include "bench_kernels_fatbin.h"

namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void ck(CUresult e, const char* what) {
  if (e != CUDA_SUCCESS) {
    fprintf(stderr, "emu_fibers: %s failed (%d)\n", what, e);
    exit(1);
  }
}

// Thread-per-CUDA-thread baseline: spawn and join `n` threads, `blocks` times.
double threads_launch(int blocks, int n) {
  double t0 = now();
  for (int b = 0; b < blocks; b++) {
    std::vector<std::thread> ts;
    ts.reserve(n);
    for (int i = 0; i < n; i++) ts.emplace_back([] {});
    for (auto& t : ts) t.join();
  }
  return now() - t0;
}

double threads_barrier(int n, int rounds) {
  std::barrier bar(n);
  std::vector<std::thread> ts;
  double t0 = now();
  for (int i = 0; i < n; i++)
    ts.emplace_back([&] {
      for (int r = 0; r < 2 * rounds; r++) bar.arrive_and_wait();
    });
  for (auto& t : ts) t.join();
  return now() - t0;
}

}  // namespace

int main() {
  setenv("FERRY_EMU_BLOCK_THREADS", "1", 0);  // one OS thread, as the baseline's per-block view
  setenv("FERRY_EMU_KERNELS", FERRY_BENCH_KERNEL_DIR, 0);
  ck(cuInit(0), "cuInit");
  CUcontext ctx;
  ck(cuDevicePrimaryCtxRetain(&ctx, 0), "retain");
  ck(cuCtxSetCurrent(ctx), "set current");
  CUmodule mod;
  ck(cuModuleLoadData(&mod, bench_kernels_fatbin), "load");
  CUfunction empty, sync;
  ck(cuModuleGetFunction(&empty, mod, "empty_kernel"), "get empty");
  ck(cuModuleGetFunction(&sync, mod, "sync_loop"), "get sync");
  CUdeviceptr out;
  ck(cuMemAlloc(&out, 4096), "alloc");

  printf("# per CUDA thread: fibers (emulator) vs one OS thread per CUDA thread (baseline)\n");
  printf("%-28s %12s %12s %8s\n", "case", "fiber ns", "thread ns", "ratio");
  for (int block : {32, 256, 1024}) {
    const int blocks = 64;
    ck(cuLaunchKernel(empty, blocks, 1, 1, block, 1, 1, 0, nullptr, nullptr, nullptr), "warm-up");
    ck(cuCtxSynchronize(), "sync");
    double t0 = now();
    const int reps = 5;
    for (int r = 0; r < reps; r++) ck(cuLaunchKernel(empty, blocks, 1, 1, block, 1, 1, 0, nullptr, nullptr, nullptr), "launch");
    ck(cuCtxSynchronize(), "sync");
    double fiber = (now() - t0) / (reps * blocks * block) * 1e9;
    double thread = threads_launch(4, block) / (4.0 * block) * 1e9;
    char name[64];
    snprintf(name, sizeof name, "launch, block %d", block);
    printf("%-28s %12.1f %12.1f %8.3f\n", name, fiber, thread, fiber / thread);
  }
  for (int block : {32, 256}) {
    int rounds = 2000;
    void* args[] = {&rounds, &out};
    double t0 = now();
    ck(cuLaunchKernel(sync, 1, 1, 1, block, 1, 1, 0, nullptr, args, nullptr), "launch sync");
    ck(cuCtxSynchronize(), "sync");
    double fiber = (now() - t0) / (2.0 * rounds * block) * 1e9;
    int trounds = block > 64 ? 200 : 2000;  // OS threads are slow enough to need fewer rounds
    double thread = threads_barrier(block, trounds) / (2.0 * trounds * block) * 1e9;
    char name[64];
    snprintf(name, sizeof name, "__syncthreads, block %d", block);
    printf("%-28s %12.1f %12.1f %8.3f\n", name, fiber, thread, fiber / thread);
  }
  return 0;
}
