// Shim unit tests run the shim's objects inside the test process, with the simulated
// GPU as the real driver (FERRY_REAL_DRIVER, set by CTest: the shim loads the driver
// before main).
#pragma once

#include <catch2/catch_test_macros.hpp>

#include <cuda.h>
#include <stdlib.h>

#include "config.hpp"

namespace shim_test {

// Two simulated devices, each with a 1 GiB arena range (small enough to exhaust).
// The shim read its settings when it was loaded; these are read again before cuInit.
inline void init() {
  setenv("FERRY_EMU_DEVICES", "2", 1);
  setenv("FERRY_EMU_MEMORY", "1G", 1);
  setenv("FERRY_ARENA_SIZE", "1G", 1);  // the smallest range a driver reserves where asked
  ferry::read_config();
  REQUIRE(cuInit(0) == CUDA_SUCCESS);
}

// The primary context of program device d, made current.
inline CUcontext primary(int d) {
  CUdevice dev = 0;
  REQUIRE(cuDeviceGet(&dev, d) == CUDA_SUCCESS);
  CUcontext c = nullptr;
  REQUIRE(cuDevicePrimaryCtxRetain(&c, dev) == CUDA_SUCCESS);
  REQUIRE(cuCtxSetCurrent(c) == CUDA_SUCCESS);
  return c;
}

}  // namespace shim_test
