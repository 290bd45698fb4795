// driver_paths: reaches the driver by every path a real process uses and checks that
// ferry's shim is in front of each: what comes back must be a virtual handle (or
// exactly the shim's entry point). Without the shim it says so and exits with 3.
#include <cuda.h>
#include <cuda_runtime.h>
#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

extern "C" int static_rt_create_stream(void** out);

static int failures = 0;
static int (*is_virtual)(const void*) = nullptr;

static void expect(bool ok, const char* path) {
  printf("%-58s %s\n", path, ok ? "intercepted" : "BYPASSED");
  if (!ok) failures++;
}

using StreamCreate = CUresult (*)(CUstream*, unsigned);

static bool makes_virtual_stream(void* fn) {
  if (!fn) return false;
  CUstream s = nullptr;
  if (reinterpret_cast<StreamCreate>(fn)(&s, 0) != CUDA_SUCCESS) return false;
  bool v = is_virtual(s);
  cuStreamDestroy(s);
  return v;
}

int main() {
  is_virtual = reinterpret_cast<int (*)(const void*)>(dlsym(RTLD_DEFAULT, "ferry_is_virtual_handle"));
  if (!is_virtual) {
    printf("driver_paths: not running under ferry\n");
    return 3;
  }
  if (cudaSetDevice(0) != cudaSuccess || cudaFree(nullptr) != cudaSuccess) {
    printf("driver_paths: no device\n");
    return 2;
  }
  CUcontext ctx = nullptr;
  cuCtxGetCurrent(&ctx);
  expect(is_virtual(ctx), "runtime API: the context cudart made current");

  cudaStream_t rs = nullptr;
  cudaStreamCreate(&rs);
  expect(is_virtual(rs), "runtime API: cudaStreamCreate");
  cudaStreamDestroy(rs);

  expect(makes_virtual_stream(reinterpret_cast<void*>(&cuStreamCreate)), "direct symbol (linked with -lcuda)");

  void* h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  expect(makes_virtual_stream(h ? dlsym(h, "cuStreamCreate") : nullptr), "dlopen(\"libcuda.so.1\") + dlsym");

  for (cuuint64_t flags : {0ull, 1ull, 2ull}) {
    void* fn = nullptr;
    CUdriverProcAddressQueryResult st;
    cuGetProcAddress_v2("cuStreamCreate", &fn, 12000, flags, &st);
    char name[80];
    snprintf(name, sizeof name, "cuGetProcAddress_v2(flags=%llu)", static_cast<unsigned long long>(flags));
    expect(makes_virtual_stream(fn), name);
    // And the ABI variant is exactly the one the flags ask for.
    void* q = nullptr;
    cuGetProcAddress_v2("cuStreamQuery", &q, 12000, flags, &st);
    void* want = dlsym(RTLD_DEFAULT, flags == 2 ? "cuStreamQuery_ptsz" : "cuStreamQuery");
    snprintf(name, sizeof name, "cuGetProcAddress_v2(cuStreamQuery, flags=%llu) variant",
             static_cast<unsigned long long>(flags));
    expect(q && q == want, name);
  }

  for (auto flag : {cudaEnableDefault, cudaEnablePerThreadDefaultStream}) {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult qr;
    cudaGetDriverEntryPointByVersion("cuStreamCreate", &fn, 12000, flag, &qr);
    expect(makes_virtual_stream(fn), flag == cudaEnableDefault ? "cudaGetDriverEntryPointByVersion(default)"
                                                               : "cudaGetDriverEntryPointByVersion(per-thread)");
  }

  void* s = nullptr;
  expect(static_rt_create_stream(&s) == 0 && is_virtual(s), "a library with its own static cudart");

  const char* abs = getenv("DRIVER_PATHS_REAL_DRIVER");
  if (abs) {
    void* ha = dlopen(abs, RTLD_NOW | RTLD_LOCAL);
    expect(makes_virtual_stream(ha ? dlsym(ha, "cuStreamCreate") : nullptr), "dlopen(absolute path of the driver)");
    auto gpa = reinterpret_cast<CUresult (*)(const char*, void**, int, cuuint64_t, CUdriverProcAddressQueryResult*)>(
        ha ? dlsym(ha, "cuGetProcAddress_v2") : nullptr);
    void* fn = nullptr;
    if (gpa) gpa("cuStreamCreate", &fn, 12000, 0, nullptr);
    expect(makes_virtual_stream(fn), "absolute-path driver: its cuGetProcAddress_v2");
  }
  printf("driver_paths: %d bypassed\n", failures);
  return failures ? 1 : 0;
}
