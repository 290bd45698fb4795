// cuGetProcAddress: (name, cudaVersion, flags) -> exactly the ABI variant the real
// driver exports, per the table generated from the toolkit headers.
#include <dlfcn.h>

#include "emu_test.hpp"

namespace {

void* lookup(const char* name, int version, cuuint64_t flags, CUdriverProcAddressQueryResult* st = nullptr,
             CUresult* rc = nullptr) {
  void* p = nullptr;
  CUdriverProcAddressQueryResult s;
  CUresult r = cuGetProcAddress_v2(name, &p, version, flags, &s);
  if (st) *st = s;
  if (rc) *rc = r;
  return p;
}

void* exported(const char* variant) { return dlsym(RTLD_DEFAULT, variant); }

}  // namespace

TEST_CASE("GPA resolves each request to its ABI variant", "[gpa]") {
  REQUIRE(cuInit(0) == CUDA_SUCCESS);
  struct Case {
    const char* name;
    int version;
    cuuint64_t flags;
    const char* variant;
  };
  const Case cases[] = {
      {"cuMemAlloc", 3020, 0, "cuMemAlloc_v2"},
      {"cuMemcpyHtoD", 3020, 0, "cuMemcpyHtoD_v2"},
      {"cuMemcpyHtoD", 7000, 2, "cuMemcpyHtoD_v2_ptds"},
      {"cuMemcpyHtoD", 7000, 1, "cuMemcpyHtoD_v2"},
      {"cuMemcpyHtoDAsync", 7000, 2, "cuMemcpyHtoDAsync_v2_ptsz"},
      {"cuLaunchKernel", 4000, 0, "cuLaunchKernel"},
      {"cuLaunchKernel", 7000, 2, "cuLaunchKernel_ptsz"},
      {"cuLaunchKernel", 12000, 0, "cuLaunchKernel"},
      {"cuCtxSynchronize", 2000, 0, "cuCtxSynchronize"},
      {"cuCtxSynchronize", 13000, 0, "cuCtxSynchronize_v2"},
      {"cuStreamGetCaptureInfo", 10010, 0, "cuStreamGetCaptureInfo"},
      {"cuStreamGetCaptureInfo", 11030, 2, "cuStreamGetCaptureInfo_v2_ptsz"},
      {"cuStreamGetCaptureInfo", 12030, 0, "cuStreamGetCaptureInfo_v3"},
      {"cuGetProcAddress", 11030, 0, "cuGetProcAddress"},
      {"cuGetProcAddress", 12000, 0, "cuGetProcAddress_v2"},
      {"cuDevicePrimaryCtxRelease", 7000, 0, "cuDevicePrimaryCtxRelease"},
      {"cuDevicePrimaryCtxRelease", 11000, 0, "cuDevicePrimaryCtxRelease_v2"},
      {"cuCtxCreate", 3020, 0, "cuCtxCreate_v2"},
      {"cuCtxCreate", 12050, 0, "cuCtxCreate_v4"},
      {"cuEventRecord", 7000, 2, "cuEventRecord_ptsz"},
      {"cuMemAllocAsync", 11020, 2, "cuMemAllocAsync_ptsz"},
      {"cuLibraryLoadData", 12000, 0, "cuLibraryLoadData"},
      {"cuMemAddressReserve", 10020, 0, "cuMemAddressReserve"},
      // flags 2 without a per-thread variant falls back to the legacy one
      {"cuMemAlloc", 7000, 2, "cuMemAlloc_v2"},
  };
  for (const Case& c : cases) {
    INFO(c.name << " @" << c.version << " flags " << c.flags);
    CUdriverProcAddressQueryResult st;
    void* p = lookup(c.name, c.version, c.flags, &st);
    REQUIRE(st == CU_GET_PROC_ADDRESS_SUCCESS);
    REQUIRE(p != nullptr);
    REQUIRE(p == exported(c.variant));
  }
}

TEST_CASE("GPA reports missing symbols and too-old versions", "[gpa]") {
  REQUIRE(cuInit(0) == CUDA_SUCCESS);
  CUdriverProcAddressQueryResult st;
  CUresult rc;
  REQUIRE(lookup("", 0, 0, &st, &rc) == nullptr);
  REQUIRE(st == CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND);
  REQUIRE(rc == CUDA_ERROR_NOT_FOUND);
  REQUIRE(lookup("cuNoSuchFunction", 12000, 0, &st, &rc) == nullptr);
  REQUIRE(st == CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND);
  // cuLibraryLoadData appeared in 12.0
  REQUIRE(lookup("cuLibraryLoadData", 11080, 0, &st, &rc) == nullptr);
  REQUIRE(st == CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT);
  REQUIRE(rc == CUDA_ERROR_NOT_FOUND);
  // A version newer than the driver's own is refused.
  int v = 0;
  REQUIRE(cuDriverGetVersion(&v) == CUDA_SUCCESS);
  REQUIRE(v >= 13000);
  REQUIRE(lookup("cuMemAlloc", v + 10, 0, &st, &rc) == nullptr);
  REQUIRE(rc == CUDA_ERROR_INVALID_VALUE);
  // Known to the headers, not implemented by the emulator: a clean "not found".
  REQUIRE(lookup("cuGraphicsMapResources", 3000, 0, &st, &rc) == nullptr);
  REQUIRE(rc == CUDA_ERROR_NOT_FOUND);
}

TEST_CASE("GPA v1 (4 arguments) works for the 11.3 ABI", "[gpa]") {
  REQUIRE(cuInit(0) == CUDA_SUCCESS);
  void* gpa1 = lookup("cuGetProcAddress", 11030, 0);
  REQUIRE(gpa1 != nullptr);
  auto fn = reinterpret_cast<CUresult (*)(const char*, void**, int, cuuint64_t)>(gpa1);
  void* p = nullptr;
  REQUIRE(fn("cuMemFree", &p, 3020, 0) == CUDA_SUCCESS);
  REQUIRE(p == exported("cuMemFree_v2"));
}
