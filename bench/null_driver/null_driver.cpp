// A driver that does nothing: every entry point the overhead benchmark (and the shim's
// start-up) touches returns at once. Calls through it cost only the call itself, so
// the difference with and without the shim is the shim's own cost.
#include <cuda.h>

#include <cstdint>

#define API extern "C" __attribute__((visibility("default")))

namespace {
uintptr_t g_next = 0x1000;
template <class T>
T fake() {
  g_next += 0x40;
  return reinterpret_cast<T>(g_next);
}
}  // namespace

API CUresult cuInit(unsigned) { return CUDA_SUCCESS; }
API CUresult cuDriverGetVersion(int* v) { *v = 13000; return CUDA_SUCCESS; }
API CUresult cuDeviceGetCount(int* n) { *n = 1; return CUDA_SUCCESS; }
API CUresult cuDeviceGet(CUdevice* d, int o) { *d = o; return o == 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_DEVICE; }
API CUresult cuGetExportTable(const void**, const CUuuid*) { return CUDA_ERROR_INVALID_VALUE; }
API CUresult cuDevicePrimaryCtxRetain(CUcontext* c, CUdevice) { *c = reinterpret_cast<CUcontext>(0x100); return CUDA_SUCCESS; }
API CUresult cuCtxSetCurrent(CUcontext) { return CUDA_SUCCESS; }
API CUresult cuCtxGetCurrent(CUcontext* c) { *c = reinterpret_cast<CUcontext>(0x100); return CUDA_SUCCESS; }
API CUresult cuCtxGetId(CUcontext, unsigned long long* id) { *id = 1; return CUDA_SUCCESS; }
API CUresult cuStreamCreate(CUstream* s, unsigned) { *s = fake<CUstream>(); return CUDA_SUCCESS; }
API CUresult cuStreamGetPriority(CUstream, int* p) { *p = 0; return CUDA_SUCCESS; }
API CUresult cuStreamGetId(CUstream, unsigned long long* id) { *id = 7; return CUDA_SUCCESS; }
API CUresult cuEventCreate(CUevent* e, unsigned) { *e = fake<CUevent>(); return CUDA_SUCCESS; }
API CUresult cuModuleLoadData(CUmodule* m, const void*) { *m = fake<CUmodule>(); return CUDA_SUCCESS; }
API CUresult cuModuleGetFunction(CUfunction* f, CUmodule, const char*) { *f = fake<CUfunction>(); return CUDA_SUCCESS; }
API CUresult cuMemGetAllocationGranularity(size_t* g, const CUmemAllocationProp*, CUmemAllocationGranularity_flags) {
  *g = 2u << 20;
  return CUDA_SUCCESS;
}
API CUresult cuMemAddressReserve(CUdeviceptr* p, size_t, size_t, CUdeviceptr hint, unsigned long long) {
  *p = hint;
  return CUDA_SUCCESS;
}
API CUresult cuMemAddressFree(CUdeviceptr, size_t) { return CUDA_SUCCESS; }

// The hot calls measured.
API CUresult cuLaunchKernel(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, CUstream,
                            void**, void**) {
  return CUDA_SUCCESS;
}
API CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr, const void*, size_t, CUstream) { return CUDA_SUCCESS; }
API CUresult cuEventRecord(CUevent, CUstream) { return CUDA_SUCCESS; }
API CUresult cuStreamQuery(CUstream) { return CUDA_SUCCESS; }
