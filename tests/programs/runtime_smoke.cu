// runtime_smoke: a tour of the CUDA runtime API a training program relies on, each
// result checked. Runs on a GPU and on the simulated one (shared and static cudart).
#include <cuda_runtime.h>

#include <cstdio>

__device__ float g_scale = 3.0f;
__constant__ int g_table[4];

__global__ void scale_add(float* y, const float* x, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = fmaf(g_scale, x[i], y[i]) + static_cast<float>(g_table[i % 4]);
}

__global__ void write_managed(int* p, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) p[i] = i * 2;
}

#ifndef FERRY_EMU_KERNEL_BUILD
#include <cstdlib>
#include <cstring>
#include <vector>

static int g_checks = 0, g_failures = 0;
#define EXPECT(cond)                                                     \
  do {                                                                   \
    g_checks++;                                                          \
    if (!(cond)) {                                                       \
      g_failures++;                                                      \
      fprintf(stderr, "runtime_smoke: line %d: %s\n", __LINE__, #cond); \
    }                                                                    \
  } while (0)
#define CK(call)                                                                                        \
  do {                                                                                                  \
    cudaError_t e_ = (call);                                                                            \
    g_checks++;                                                                                         \
    if (e_ != cudaSuccess) {                                                                            \
      g_failures++;                                                                                     \
      fprintf(stderr, "runtime_smoke: line %d: %s -> %s\n", __LINE__, #call, cudaGetErrorName(e_));   \
    }                                                                                                   \
  } while (0)

static void CUDART_CB host_fn(void* p) { *static_cast<int*>(p) += 1; }

int main() {
  int n = 0;
  CK(cudaGetDeviceCount(&n));
  EXPECT(n >= 1);
  int drv = 0, rt = 0;
  CK(cudaDriverGetVersion(&drv));
  CK(cudaRuntimeGetVersion(&rt));
  EXPECT(drv >= 13000);
  EXPECT(rt >= 13000);
  for (int d = 0; d < n; d++) {
    cudaDeviceProp p{};
    CK(cudaGetDeviceProperties(&p, d));
    EXPECT(p.totalGlobalMem > 0);
    EXPECT(p.warpSize == 32);
    EXPECT(p.maxThreadsPerBlock == 1024);
  }
  CK(cudaSetDevice(0));
  int dev = -1;
  CK(cudaGetDevice(&dev));
  EXPECT(dev == 0);
  size_t free_b = 0, total_b = 0;
  CK(cudaMemGetInfo(&free_b, &total_b));
  EXPECT(free_b > 0 && free_b <= total_b);

  // Memory, copies, symbols, a kernel.
  const int N = 10000;
  std::vector<float> hx(N), hy(N);
  for (int i = 0; i < N; i++) hx[i] = static_cast<float>(i) * 0.5f, hy[i] = 1.0f;
  float *x, *y;
  CK(cudaMalloc(&x, N * sizeof(float)));
  CK(cudaMalloc(&y, N * sizeof(float)));
  CK(cudaMemcpy(x, hx.data(), N * sizeof(float), cudaMemcpyHostToDevice));
  CK(cudaMemcpy(y, hy.data(), N * sizeof(float), cudaMemcpyDefault));
  int table[4] = {0, 10, 20, 30};
  CK(cudaMemcpyToSymbol(g_table, table, sizeof table));
  float scale = 0;
  CK(cudaMemcpyFromSymbol(&scale, g_scale, sizeof scale));
  EXPECT(scale == 3.0f);
  void* sym = nullptr;
  CK(cudaGetSymbolAddress(&sym, g_scale));
  EXPECT(sym != nullptr);
  size_t sym_size = 0;
  CK(cudaGetSymbolSize(&sym_size, g_table));
  EXPECT(sym_size == sizeof table);
  scale_add<<<(N + 255) / 256, 256>>>(y, x, N);
  CK(cudaGetLastError());
  CK(cudaDeviceSynchronize());
  CK(cudaMemcpy(hy.data(), y, N * sizeof(float), cudaMemcpyDeviceToHost));
  bool ok = true;
  for (int i = 0; i < N; i++) ok = ok && hy[i] == fmaf(3.0f, hx[i], 1.0f) + static_cast<float>(table[i % 4]);
  EXPECT(ok);
  cudaFuncAttributes fa{};
  CK(cudaFuncGetAttributes(&fa, scale_add));
  EXPECT(fa.maxThreadsPerBlock > 0);
  int blocks_per_sm = 0;
  CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, scale_add, 256, 0));
  EXPECT(blocks_per_sm > 0);

  // Pointer attributes.
  cudaPointerAttributes pa{};
  CK(cudaPointerGetAttributes(&pa, x));
  EXPECT(pa.type == cudaMemoryTypeDevice);
  EXPECT(pa.device == 0);
  CK(cudaPointerGetAttributes(&pa, hx.data()));
  EXPECT(pa.type == cudaMemoryTypeUnregistered);

  // Streams, events, host functions, async copies with pinned memory.
  cudaStream_t s1, s2;
  CK(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking));
  CK(cudaStreamCreate(&s2));
  cudaEvent_t e1, e2;
  CK(cudaEventCreate(&e1));
  CK(cudaEventCreateWithFlags(&e2, cudaEventDisableTiming));
  float* pinned = nullptr;
  CK(cudaHostAlloc(reinterpret_cast<void**>(&pinned), N * sizeof(float), cudaHostAllocDefault));
  CK(cudaEventRecord(e1, s1));
  CK(cudaMemcpyAsync(pinned, y, N * sizeof(float), cudaMemcpyDeviceToHost, s1));
  CK(cudaEventRecord(e2, s1));
  CK(cudaStreamWaitEvent(s2, e2, 0));
  int counter = 0;
  CK(cudaLaunchHostFunc(s2, host_fn, &counter));
  CK(cudaStreamSynchronize(s2));
  EXPECT(counter == 1);
  EXPECT(pinned[N - 1] == hy[N - 1]);
  float ms = -1;
  CK(cudaEventElapsedTime(&ms, e1, e1));
  EXPECT(ms == 0.0f);
  EXPECT(cudaEventQuery(e2) == cudaSuccess);
  std::vector<float> reg(256, 0.0f);
  CK(cudaHostRegister(reg.data(), reg.size() * sizeof(float), cudaHostRegisterDefault));
  CK(cudaMemcpyAsync(reg.data(), y, reg.size() * sizeof(float), cudaMemcpyDeviceToHost, s2));
  CK(cudaStreamSynchronize(s2));
  EXPECT(reg[5] == hy[5]);
  CK(cudaHostUnregister(reg.data()));

  // Stream-ordered allocation.
  float* tmp = nullptr;
  CK(cudaMallocAsync(&tmp, 1 << 20, s1));
  CK(cudaMemsetAsync(tmp, 0, 1 << 20, s1));
  CK(cudaFreeAsync(tmp, s1));
  cudaMemPool_t pool;
  CK(cudaDeviceGetDefaultMemPool(&pool, 0));
  CK(cudaMemPoolTrimTo(pool, 0));
  CK(cudaStreamSynchronize(s1));

  // Managed memory.
  int* m = nullptr;
  CK(cudaMallocManaged(&m, 100 * sizeof(int)));
  write_managed<<<1, 128>>>(m, 100);
  CK(cudaDeviceSynchronize());
  EXPECT(m[99] == 198);
  CK(cudaFree(m));

  // Errors come back as the runtime's codes.
  void* huge = nullptr;
  EXPECT(cudaMalloc(&huge, total_b * 4) == cudaErrorMemoryAllocation);
  EXPECT(cudaGetLastError() == cudaErrorMemoryAllocation);
  EXPECT(cudaGetLastError() == cudaSuccess);
  EXPECT(cudaSetDevice(n + 5) == cudaErrorInvalidDevice);

  if (n > 1) {
    CK(cudaSetDevice(1));
    float* other = nullptr;
    CK(cudaMalloc(&other, 64));
    cudaPointerAttributes oa{};
    CK(cudaPointerGetAttributes(&oa, other));
    EXPECT(oa.device == 1);
    CK(cudaFree(other));
    CK(cudaSetDevice(0));
  }

  CK(cudaEventDestroy(e1));
  CK(cudaEventDestroy(e2));
  CK(cudaStreamDestroy(s1));
  CK(cudaStreamDestroy(s2));
  CK(cudaFreeHost(pinned));
  CK(cudaFree(x));
  CK(cudaFree(y));
  CK(cudaDeviceReset());
  printf("runtime_smoke: %d checks, %d failed\n", g_checks, g_failures);
  return g_failures ? 1 : 0;
}
#endif
