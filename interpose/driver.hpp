// Calling the real driver from ferry's own code (the engine's layers, the graph
// re-capture): a failure becomes a ferry::Error naming what was being done and the
// driver's error name; a real context is made current for a scope.
#pragma once

#include <cuda.h>

#include <string>

#include <ferry_common/errors.hpp>

#include "shim_decls.hpp"

namespace ferry {

inline Error cuda_error(const char* what, CUresult r, ErrorClass cls = ErrorClass::Bug) {
  const char* name = nullptr;
  real::cuGetErrorName(r, &name);
  return Error(cls, std::string(what) + " failed: " + (name ? name : std::to_string(static_cast<int>(r))));
}
inline void check(CUresult r, const char* what, ErrorClass cls = ErrorClass::Bug) {
  if (r != CUDA_SUCCESS) throw cuda_error(what, r, cls);
}

// Makes a real context current on the calling thread for a scope.
struct CtxScope {
  bool pushed = false;
  explicit CtxScope(CUcontext real) {
    if (real) pushed = real::cuCtxPushCurrent_v2(real) == CUDA_SUCCESS;
  }
  ~CtxScope() {
    CUcontext c;
    if (pushed) real::cuCtxPopCurrent_v2(&c);
  }
  CtxScope(const CtxScope&) = delete;
  CtxScope& operator=(const CtxScope&) = delete;
};

}  // namespace ferry
