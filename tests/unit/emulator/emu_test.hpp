// Helpers for the emulator's unit tests: they call the driver API of the simulated
// GPU directly (linked against its libcuda.so.1).
#pragma once

#include <cuda.h>

#include <catch2/catch_test_macros.hpp>

#include <cstring>
#include <string>
#include <vector>

#define CU_OK(call) REQUIRE((call) == CUDA_SUCCESS)

namespace emu_test {

inline std::string err_name(CUresult e) {
  const char* n = nullptr;
  cuGetErrorName(e, &n);
  return n ? n : "?";
}

// Makes device `dev`'s primary context current (retained once per process).
inline CUcontext primary(int dev = 0) {
  REQUIRE(cuInit(0) == CUDA_SUCCESS);
  static CUcontext ctx[16] = {};
  if (!ctx[dev]) REQUIRE(cuDevicePrimaryCtxRetain(&ctx[dev], dev) == CUDA_SUCCESS);
  REQUIRE(cuCtxSetCurrent(ctx[dev]) == CUDA_SUCCESS);
  return ctx[dev];
}

// The test kernels (tests/kernels/test_kernels.cu) loaded into the current context.
CUmodule test_module();
CUfunction kernel(const char* name);

inline CUresult launch(CUfunction f, unsigned grid, unsigned block, std::vector<void*> args, CUstream s = nullptr,
                       unsigned smem = 0) {
  return cuLaunchKernel(f, grid, 1, 1, block, 1, 1, smem, s, args.data(), nullptr);
}

}  // namespace emu_test
