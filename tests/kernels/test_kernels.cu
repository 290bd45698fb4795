// Kernels the emulator's unit tests launch through the driver API (loaded from the
// embedded fatbin, run from the host kernel library built from this same file).
#include <ferry_emu/portable.h>

__device__ int g_counter;                // per-context global, starts at 7
__device__ int g_initialised = 7;

extern "C" __global__ void add_one(int* p, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) p[i] += 1;
}

// Every thread writes its coordinates at its linear position in the whole grid.
extern "C" __global__ void coords(unsigned* out) {
  unsigned bx = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  unsigned tx = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  unsigned i = bx * (blockDim.x * blockDim.y * blockDim.z) + tx;
  out[4 * i + 0] = blockIdx.x | (blockIdx.y << 10) | (blockIdx.z << 20);
  out[4 * i + 1] = threadIdx.x | (threadIdx.y << 10) | (threadIdx.z << 20);
  out[4 * i + 2] = blockDim.x | (blockDim.y << 10) | (blockDim.z << 20);
  out[4 * i + 3] = gridDim.x | (gridDim.y << 10) | (gridDim.z << 20);
}

// Reverses each block's slice through shared memory: needs the barrier to be real.
extern "C" __global__ void block_reverse(int* data) {
  __shared__ int s[1024];
  int t = threadIdx.x;
  int base = blockIdx.x * blockDim.x;
  s[t] = data[base + t];
  __syncthreads();
  data[base + t] = s[blockDim.x - 1 - t];
}

extern "C" __global__ void sync_votes(int* out) {
  int t = threadIdx.x;
  out[4 * t + 0] = __syncthreads_count(t % 3 == 0);
  out[4 * t + 1] = __syncthreads_and(t >= 0);
  out[4 * t + 2] = __syncthreads_or(t == 5);
  out[4 * t + 3] = __syncthreads_and(t != 5);
}

extern "C" __global__ void warp_ops(int* out) {
  int t = threadIdx.x;
  int v = t + 1;
  for (int off = 16; off > 0; off /= 2) v += __shfl_down_sync(0xffffffffu, v, off);
  out[3 * t + 0] = v;                                     // lane 0: sum of its warp
  out[3 * t + 1] = __shfl_sync(0xffffffffu, t * 10, 3);   // lane 3's value
  out[3 * t + 2] = static_cast<int>(__ballot_sync(0xffffffffu, t % 2));
}

// Threads below half the block wait at a barrier the others never reach: they exit.
extern "C" __global__ void divergent_barrier(int* out) {
  if (threadIdx.x < blockDim.x / 2) __syncthreads();
  out[threadIdx.x] = 1;
}

extern "C" __global__ void dyn_smem(float* out, int n) {
  FERRY_DYNAMIC_SHARED(float, s);
  int t = threadIdx.x;
  if (t < n) s[t] = static_cast<float>(t) * 0.5f;
  __syncthreads();
  if (t < n) out[t] = s[n - 1 - t];
}

extern "C" __global__ void bump_counter(int by) {
  if (blockIdx.x == 0 && threadIdx.x == 0) g_counter += by;
}

extern "C" __global__ void read_globals(int* out) {
  out[0] = g_counter;
  out[1] = g_initialised;
}

// A mix of parameter types, to check the argument unpacking (and the `extra` form).
struct Pair {
  int a;
  double b;
};
extern "C" __global__ void mixed_args(char c, short s, Pair p, float f, double d, long long ll, double* out) {
  out[0] = c;
  out[1] = s;
  out[2] = p.a;
  out[3] = p.b;
  out[4] = f;
  out[5] = d;
  out[6] = static_cast<double>(ll);
}

extern "C" __global__ void slow_add(int* p, int n, int rounds) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  int v = p[i];
  for (int r = 0; r < rounds; r++) v = (v * 3 + 1) % 1000003;
  p[i] = (v == -1) ? 0 : p[i] + 1;  // = p[i] + 1, after some work the compiler must keep
}

extern "C" __global__ void trap_kernel() { __trap(); }

extern "C" __global__ void atomic_count(unsigned* counter) { atomicAdd(counter, 1u); }
