// One CUDA graph replayed in a loop, through the runtime API: stream capture records a
// kernel that evolves a state vector (and bumps a __device__ counter), a
// device-to-device copy, a memset and a kernel that hashes the copy; every step
// launches the graph and prints the hash. --eager runs the same work without a graph
// and must print the same (with the default pool's release threshold it set at the
// start); --step-delay-ms paces the steps so another process can
// checkpoint, suspend or migrate the program between them; --memset2d adds a 2D
// memset, which ferry does not record in a capture (a graph it must refuse to move).
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#ifndef FERRY_EMU_KERNEL_BUILD  // the host kernel library of the simulated GPU takes the kernels only
#include <cuda_runtime.h>
#endif

#define CK(x)                                                                                        \
  do {                                                                                               \
    cudaError_t e_ = (x);                                                                            \
    if (e_ != cudaSuccess) {                                                                         \
      fprintf(stderr, "graph_loop: %s failed (line %d): %s\n", #x, __LINE__, cudaGetErrorString(e_)); \
      exit(1);                                                                                       \
    }                                                                                                \
  } while (0)

__device__ unsigned long long g_steps;

__global__ void evolve(float* x, const float* w, int n, float a) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] = x[i] * a + w[i % 64] * 0.001f;
  if (i == 0) g_steps++;
}

__global__ void hash(const float* y, int n, unsigned long long* out) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  unsigned long long h = *out ^ 1469598103934665603ull;
  for (int i = 0; i < n; i++) {
    unsigned int bits;
    memcpy(&bits, &y[i], 4);
    h = (h ^ bits) * 1099511628211ull;
  }
  *out = h ^ g_steps;
}

#ifndef FERRY_EMU_KERNEL_BUILD
int main(int argc, char** argv) {
  int steps = 30, delay_ms = 0;
  bool eager = false, memset2d = false, print_device = false;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--steps") && i + 1 < argc) steps = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--step-delay-ms") && i + 1 < argc) delay_ms = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--eager")) eager = true;
    else if (!strcmp(argv[i], "--memset2d")) memset2d = true;  // work ferry does not record
    // Each step, the GPU as the program asks after it (what NCCL looks NVML up by).
    else if (!strcmp(argv[i], "--print-device")) print_device = true;
    else {
      fprintf(stderr, "usage: graph_loop [--steps N] [--step-delay-ms N] [--eager] [--memset2d] [--print-device]\n");
      return 64;
    }
  }
  const int n = 4096;
  std::vector<float> hx(n), hw(64);
  for (int i = 0; i < n; i++) hx[i] = static_cast<float>(i % 97) * 0.01f;
  for (int i = 0; i < 64; i++) hw[i] = static_cast<float>(i) - 32.0f;
  float *x, *w, *y;
  unsigned long long* h;
  CK(cudaMalloc(&x, n * sizeof(float)));
  CK(cudaMalloc(&w, 64 * sizeof(float)));
  CK(cudaMalloc(&y, n * sizeof(float)));
  CK(cudaMalloc(&h, sizeof(unsigned long long)));
  CK(cudaMemcpy(x, hx.data(), n * sizeof(float), cudaMemcpyHostToDevice));
  CK(cudaMemcpy(w, hw.data(), 64 * sizeof(float), cudaMemcpyHostToDevice));
  cudaStream_t s;
  CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  // A pool attribute, as training programs set it: it must survive a move.
  cudaMemPool_t pool;
  CK(cudaDeviceGetDefaultMemPool(&pool, 0));
  unsigned long long threshold = 64ull << 20;
  CK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold));
  auto work = [&] {
    evolve<<<n / 256, 256, 0, s>>>(x, w, n, 0.999f);
    CK(cudaMemcpyAsync(y, x, n * sizeof(float), cudaMemcpyDeviceToDevice, s));
    CK(cudaMemsetAsync(h, 0, sizeof(unsigned long long), s));
    if (memset2d) CK(cudaMemset2DAsync(y, 64, 0, 4, 1, s));
    hash<<<1, 1, 0, s>>>(y, n, h);
  };
  cudaGraphExec_t exec = nullptr;
  cudaGraph_t graph = nullptr;
  if (!eager) {
    CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    work();
    CK(cudaStreamEndCapture(s, &graph));
    CK(cudaGraphInstantiate(&exec, graph, 0));
  }
  unsigned long long host = 0;
  for (int step = 1; step <= steps; step++) {
    if (eager)
      work();
    else
      CK(cudaGraphLaunch(exec, s));
    CK(cudaMemcpyAsync(&host, h, sizeof host, cudaMemcpyDeviceToHost, s));
    CK(cudaStreamSynchronize(s));
    printf("step %d hash %016llx\n", step, host);
    if (print_device) {
      int dev = -1;
      char bus[32] = {};
      cudaDeviceProp p;
      CK(cudaGetDevice(&dev));
      CK(cudaDeviceGetPCIBusId(bus, sizeof bus, dev));
      CK(cudaGetDeviceProperties(&p, dev));
      int attr_bus = -1;
      CK(cudaDeviceGetAttribute(&attr_bus, cudaDevAttrPciBusId, dev));
      printf("step %d device %d bus %s attr-bus %02x props-bus %02x uuid ", step, dev, bus, attr_bus, p.pciBusID);
      for (int i = 0; i < 16; i++) printf("%02x", static_cast<unsigned char>(p.uuid.bytes[i]));
      printf(" memory %zu\n", p.totalGlobalMem);
    }
    fflush(stdout);
    if (delay_ms) std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
  }
  threshold = 0;
  CK(cudaDeviceGetDefaultMemPool(&pool, 0));
  CK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold));
  printf("final hash %016llx, pool release threshold %llu\n", host, threshold);
  if (!eager) {
    CK(cudaGraphExecDestroy(exec));
    CK(cudaGraphDestroy(graph));
  }
  CK(cudaStreamDestroy(s));
  return 0;
}
#endif
