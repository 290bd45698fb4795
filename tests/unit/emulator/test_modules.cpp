// Modules and libraries: loading real fatbins, functions, __device__ globals per
// context, libraries loaded without a context, unloading.
#include "emu_test.hpp"
#include "test_kernels_fatbin.h"

using emu_test::primary;

TEST_CASE("module globals start at their initial values and are per context", "[modules]") {
  REQUIRE(cuInit(0) == CUDA_SUCCESS);
  CUcontext a, b;
  CU_OK(cuCtxCreate(&a, nullptr, 0, 0));
  CUmodule ma;
  CU_OK(cuModuleLoadData(&ma, test_kernels_fatbin));
  CUdeviceptr g;
  size_t size = 0;
  CU_OK(cuModuleGetGlobal(&g, &size, ma, "g_initialised"));
  REQUIRE(size == sizeof(int));
  int v = 0;
  CU_OK(cuMemcpyDtoH(&v, g, 4));
  REQUIRE(v == 7);
  CUfunction bump, read;
  CU_OK(cuModuleGetFunction(&bump, ma, "bump_counter"));
  int by = 5;
  void* args[] = {&by};
  CU_OK(cuLaunchKernel(bump, 1, 1, 1, 1, 1, 1, 0, nullptr, args, nullptr));
  CU_OK(cuLaunchKernel(bump, 1, 1, 1, 1, 1, 1, 0, nullptr, args, nullptr));

  CU_OK(cuCtxCreate(&b, nullptr, 0, 1));
  CUmodule mb;
  CU_OK(cuModuleLoadData(&mb, test_kernels_fatbin));
  CU_OK(cuModuleGetFunction(&read, mb, "read_globals"));
  CUdeviceptr out;
  CU_OK(cuMemAlloc(&out, 8));
  void* rargs[] = {&out};
  CU_OK(cuLaunchKernel(read, 1, 1, 1, 1, 1, 1, 0, nullptr, rargs, nullptr));
  int two[2];
  CU_OK(cuMemcpyDtoH(two, out, 8));
  REQUIRE(two[0] == 0);  // b's counter is untouched by a's launches
  REQUIRE(two[1] == 7);

  CU_OK(cuCtxPushCurrent(a));
  CU_OK(cuModuleGetGlobal(&g, &size, ma, "g_counter"));
  CU_OK(cuMemcpyDtoH(&v, g, 4));
  REQUIRE(v == 10);
  REQUIRE(cuModuleGetGlobal(&g, &size, ma, "no_such_global") == CUDA_ERROR_NOT_FOUND);
  REQUIRE(cuModuleGetGlobal(&g, &size, ma, "bump_counter") == CUDA_ERROR_NOT_FOUND);  // a function
  CU_OK(cuModuleUnload(ma));
  REQUIRE(cuMemcpyDtoH(&v, g, 4) == CUDA_ERROR_INVALID_VALUE);
  REQUIRE(cuModuleGetGlobal(&g, &size, ma, "g_counter") == CUDA_ERROR_INVALID_HANDLE);
  CU_OK(cuCtxDestroy(a));
  CU_OK(cuCtxDestroy(b));
}

TEST_CASE("libraries load without a context and give kernels usable in any context", "[modules]") {
  REQUIRE(cuInit(0) == CUDA_SUCCESS);
  CU_OK(cuCtxSetCurrent(nullptr));
  CUlibrary lib;
  CUlibraryOption opt = CU_LIBRARY_BINARY_IS_PRESERVED;
  void* val = reinterpret_cast<void*>(1);
  CU_OK(cuLibraryLoadData(&lib, test_kernels_fatbin, nullptr, nullptr, 0, &opt, &val, 1));
  CUkernel k;
  CU_OK(cuLibraryGetKernel(&k, lib, "add_one"));
  REQUIRE(cuLibraryGetKernel(&k, lib, "nope") == CUDA_ERROR_NOT_FOUND);
  CU_OK(cuLibraryGetKernel(&k, lib, "add_one"));
  unsigned count = 0;
  CU_OK(cuLibraryGetKernelCount(&count, lib));
  REQUIRE(count >= 10);
  const char* name = nullptr;
  CU_OK(cuKernelGetName(&name, k));
  REQUIRE(std::string(name) == "add_one");
  for (int dev : {0, 2}) {
    primary(dev);
    CUdeviceptr d;
    CU_OK(cuMemAlloc(&d, 4));
    CU_OK(cuMemsetD32(d, 10, 1));
    int n = 1;
    void* args[] = {&d, &n};
    // A CUkernel passed where a CUfunction is expected, as cudart does.
    CU_OK(cuLaunchKernel(reinterpret_cast<CUfunction>(k), 1, 1, 1, 1, 1, 1, 0, nullptr, args, nullptr));
    int v = 0;
    CU_OK(cuMemcpyDtoH(&v, d, 4));
    REQUIRE(v == 11);
    CUdeviceptr g;
    size_t size;
    CU_OK(cuLibraryGetGlobal(&g, &size, lib, "g_initialised"));
    CU_OK(cuMemcpyDtoH(&v, g, 4));
    REQUIRE(v == 7);
    CUfunction f;
    CU_OK(cuKernelGetFunction(&f, k));
    CUmodule m, fm;
    CU_OK(cuLibraryGetModule(&m, lib));
    CU_OK(cuFuncGetModule(&fm, f));
    REQUIRE(m == fm);
    CU_OK(cuMemFree(d));
  }
  CU_OK(cuLibraryUnload(lib));
  REQUIRE(cuLibraryGetKernel(&k, lib, "add_one") == CUDA_ERROR_INVALID_HANDLE);
}
