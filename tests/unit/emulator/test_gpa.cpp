// cuGetProcAddress: (name, cudaVersion, flags) -> exactly the ABI variant the real
// driver exports, per the table generated from the toolkit headers.
#include <dlfcn.h>

#include <fstream>
#include <set>
#include <sstream>
#include <string>

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
  // cuLibraryLoadData appeared in 12.0; driver 580 says so with success and the status
  REQUIRE(lookup("cuLibraryLoadData", 11080, 0, &st, &rc) == nullptr);
  REQUIRE(st == CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT);
  REQUIRE(rc == CUDA_SUCCESS);
  // with per-thread streams asked for, a name with per-thread variants gets one or none
  REQUIRE(lookup("cuMemcpyHtoD", 3020, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM, &st, &rc) == nullptr);
  REQUIRE(st == CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT);
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

TEST_CASE("GPA answers as NVIDIA's driver 580 did on an H200, wherever the emulator has the variant", "[gpa]") {
  REQUIRE(cuInit(0) == CUDA_SUCCESS);
  std::ifstream in(std::string(FERRY_TEST_SOURCE_DIR) + "/tests/data/gpa-h200-580.159.04.tsv");
  REQUIRE(in.good());
  std::string line;
  int compared = 0;
  std::set<std::string> not_simulated;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream f(line);
    std::string name, variant;
    int version = 0, result = 0, status = 0;
    cuuint64_t flags = 0;
    REQUIRE(static_cast<bool>(f >> name >> version >> flags >> result >> status >> variant));
    if (variant != "-" && !exported(variant.c_str())) {
      not_simulated.insert(variant);
      continue;
    }
    INFO(line);
    CUdriverProcAddressQueryResult st;
    CUresult rc;
    void* p = lookup(name.c_str(), version, flags, &st, &rc);
    CHECK(static_cast<int>(rc) == result);
    CHECK(static_cast<int>(st) == status);
    CHECK(p == (variant == "-" ? nullptr : exported(variant.c_str())));
    compared++;
  }
  CHECK(compared == 1701);
  // What the simulated GPU does not implement: the pre-3.2 ABI, explicit graph building, the linker.
  const std::set<std::string> known_gaps = {
      "cuCtxCreate", "cuCtxDestroy", "cuCtxPopCurrent", "cuCtxPushCurrent", "cuDeviceTotalMem",
      "cuGraphAddKernelNode", "cuGraphAddKernelNode_v2", "cuGraphInstantiate", "cuGraphInstantiate_v2",
      "cuLinkCreate_v2", "cuMemAlloc", "cuMemFree", "cuMemGetInfo", "cuMemcpy2DAsync", "cuMemcpyDtoDAsync",
      "cuMemcpyDtoH", "cuMemcpyHtoD", "cuMemcpyHtoDAsync", "cuMemsetD8", "cuModuleGetGlobal"};
  CHECK(not_simulated == known_gaps);
}
