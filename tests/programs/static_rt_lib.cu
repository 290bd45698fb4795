// A shared library with its own static cudart, like cuBLAS or NCCL: its runtime calls
// reach the driver through the cudart instance inside it, not the program's.
#include <cuda_runtime.h>

extern "C" __attribute__((visibility("default"))) int static_rt_create_stream(void** out) {
  cudaStream_t s = nullptr;
  cudaError_t e = cudaStreamCreate(&s);
  *out = s;
  return static_cast<int>(e);
}

extern "C" __attribute__((visibility("default"))) int static_rt_runtime_version() {
  int v = 0;
  cudaRuntimeGetVersion(&v);
  return v;
}
