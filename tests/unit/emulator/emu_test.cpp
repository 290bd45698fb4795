#include "emu_test.hpp"

#include <map>

#include "test_kernels_fatbin.h"

namespace emu_test {

CUmodule test_module() {
  static std::map<CUcontext, CUmodule> mods;
  CUcontext c = nullptr;
  REQUIRE(cuCtxGetCurrent(&c) == CUDA_SUCCESS);
  REQUIRE(c != nullptr);
  auto it = mods.find(c);
  if (it != mods.end()) return it->second;
  CUmodule m = nullptr;
  REQUIRE(cuModuleLoadData(&m, test_kernels_fatbin) == CUDA_SUCCESS);
  mods[c] = m;
  return m;
}

CUfunction kernel(const char* name) {
  CUfunction f = nullptr;
  REQUIRE(cuModuleGetFunction(&f, test_module(), name) == CUDA_SUCCESS);
  return f;
}

}  // namespace emu_test
