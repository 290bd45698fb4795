// Kernels of driver_saxpy, loaded through the driver API from an embedded fatbin.
// fmaf keeps the result bit-identical between a GPU, the simulated GPU and the host
// check in driver_saxpy.cpp.

__device__ unsigned int saxpy_launches;  // bumped once per launch; read with cuModuleGetGlobal

extern "C" __global__ void saxpy(float a, const float* x, float* y, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i == 0) saxpy_launches += 1;
  if (i < n) y[i] = fmaf(a, x[i], y[i]);
}
