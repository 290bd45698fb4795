// Kernels for the emulator benchmarks.
extern "C" __global__ void empty_kernel() {}

extern "C" __global__ void sync_loop(int rounds, int* out) {
  __shared__ int s[1024];
  int acc = 0;
  for (int r = 0; r < rounds; r++) {
    s[threadIdx.x] = r + threadIdx.x;
    __syncthreads();
    acc += s[(threadIdx.x + 1) % blockDim.x];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = acc;
}
