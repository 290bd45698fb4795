// driver_saxpy: y = a*x + y, repeated, through the CUDA driver API only: an explicit
// context, the kernel image loaded from a fatbin embedded in the program
// (cuModuleLoadData), cuLaunchKernel on a created stream, a __device__ counter read
// back with cuModuleGetGlobal. The result is compared bit for bit with the same
// computation on the host. --iter-delay-ms paces the iterations (each one finished and
// reported on stdout) so another process can checkpoint or migrate it midway.
#include <cuda.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "saxpy_kernels_fatbin.h"

namespace {

void check(CUresult e, const char* what, int line) {
  if (e == CUDA_SUCCESS) return;
  const char* name = nullptr;
  const char* text = nullptr;
  cuGetErrorName(e, &name);
  cuGetErrorString(e, &text);
  fprintf(stderr, "driver_saxpy: %s failed (line %d): %s (%s)\n", what, line, text ? text : "?", name ? name : "?");
  exit(1);
}
#define CK(call) check((call), #call, __LINE__)

float value(uint64_t i, uint64_t salt) {
  uint64_t z = (i + 1) * 0x9e3779b97f4a7c15ull ^ salt;
  z = (z ^ (z >> 31)) * 0xbf58476d1ce4e5b9ull;
  return static_cast<float>(static_cast<int32_t>(z >> 40) - (1 << 23)) / static_cast<float>(1 << 23);
}

}  // namespace

int main(int argc, char** argv) {
  int n = 1 << 20, iters = 20, device = 0, delay_ms = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--n") n = atoi(argv[i + 1]);
    else if (a == "--iters") iters = atoi(argv[i + 1]);
    else if (a == "--device") device = atoi(argv[i + 1]);
    else if (a == "--iter-delay-ms") delay_ms = atoi(argv[i + 1]);
    else {
      fprintf(stderr, "usage: driver_saxpy [--n N] [--iters N] [--device N] [--iter-delay-ms N]\n");
      return 2;
    }
  }
  CK(cuInit(0));
  CUdevice dev;
  CK(cuDeviceGet(&dev, device));
  char name[128];
  CK(cuDeviceGetName(name, sizeof name, dev));
  CUcontext ctx;
  CK(cuCtxCreate(&ctx, nullptr, 0, dev));
  CUmodule mod;
  CK(cuModuleLoadData(&mod, saxpy_kernels_fatbin));
  CUfunction fn;
  CK(cuModuleGetFunction(&fn, mod, "saxpy"));
  CUstream stream;
  CK(cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING));

  std::vector<float> x(static_cast<size_t>(n)), y(static_cast<size_t>(n));
  for (int i = 0; i < n; i++) x[i] = value(static_cast<uint64_t>(i), 1), y[i] = value(static_cast<uint64_t>(i), 2);
  CUdeviceptr dx, dy;
  size_t bytes = sizeof(float) * static_cast<size_t>(n);
  CK(cuMemAlloc(&dx, bytes));
  CK(cuMemAlloc(&dy, bytes));
  CK(cuMemcpyHtoD(dx, x.data(), bytes));
  CK(cuMemcpyHtoD(dy, y.data(), bytes));

  unsigned threads = 256, grid = static_cast<unsigned>((n + 255) / 256);
  for (int it = 0; it < iters; it++) {
    float a = 0.5f + 0.001f * static_cast<float>(it);
    void* args[] = {&a, &dx, &dy, &n};
    CK(cuLaunchKernel(fn, grid, 1, 1, threads, 1, 1, 0, stream, args, nullptr));
    if (delay_ms) {
      CK(cuStreamSynchronize(stream));
      printf("iteration %d\n", it + 1);
      fflush(stdout);
      std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
    }
  }
  CK(cuStreamSynchronize(stream));
  std::vector<float> out(static_cast<size_t>(n));
  CK(cuMemcpyDtoH(out.data(), dy, bytes));
  CUdeviceptr counter;
  size_t counter_size = 0;
  CK(cuModuleGetGlobal(&counter, &counter_size, mod, "saxpy_launches"));
  unsigned launches = 0;
  CK(cuMemcpyDtoH(&launches, counter, sizeof launches));

  for (int it = 0; it < iters; it++) {
    float a = 0.5f + 0.001f * static_cast<float>(it);
    for (int i = 0; i < n; i++) y[i] = std::fma(a, x[i], y[i]);
  }
  size_t mismatches = 0;
  uint64_t h = 0xcbf29ce484222325ull;
  for (int i = 0; i < n; i++) {
    uint32_t a, b;
    memcpy(&a, &out[i], 4);
    memcpy(&b, &y[i], 4);
    if (a != b) mismatches++;
    for (int k = 0; k < 4; k++) h = (h ^ ((a >> (8 * k)) & 0xff)) * 0x100000001b3ull;
  }
  printf("driver_saxpy: %s, n=%d, iters=%d, global %zu bytes, launches counted %u\n", name, n, iters, counter_size,
         launches);
  printf("checksum %016llx, host comparison: %s\n", static_cast<unsigned long long>(h),
         mismatches ? "MISMATCH" : "bit-identical");
  CK(cuMemFree(dx));
  CK(cuMemFree(dy));
  CK(cuStreamDestroy(stream));
  CK(cuModuleUnload(mod));
  CK(cuCtxDestroy(ctx));
  return (mismatches == 0 && launches == static_cast<unsigned>(iters)) ? 0 : 1;
}
