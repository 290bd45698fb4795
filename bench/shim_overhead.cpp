// The shim's cost per call on the hot paths, measured in one process against the same
// calls made directly: both libraries are loaded side by side (the shim over a driver
// that does nothing, bench/null_driver), and each entry point is called through the
// pointer a program would hold. Prints ns per call, ns added and the ratio.
#include <cuda.h>
#include <dlfcn.h>
#include <stdlib.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

namespace {

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

template <class F>
double ns_per_call(F&& call, long n) {
  double best = 1e30;
  for (int rep = 0; rep < 5; rep++) {  // best of five: the machine is noisy
    double t0 = now();
    for (long i = 0; i < n; i++) call();
    best = std::min(best, (now() - t0) / static_cast<double>(n) * 1e9);
  }
  return best;
}

struct Api {
  CUresult (*cuInit)(unsigned);
  CUresult (*cuDevicePrimaryCtxRetain)(CUcontext*, CUdevice);
  CUresult (*cuCtxSetCurrent)(CUcontext);
  CUresult (*cuCtxGetCurrent)(CUcontext*);
  CUresult (*cuStreamCreate)(CUstream*, unsigned);
  CUresult (*cuEventCreate)(CUevent*, unsigned);
  CUresult (*cuModuleLoadData)(CUmodule*, const void*);
  CUresult (*cuModuleGetFunction)(CUfunction*, CUmodule, const char*);
  CUresult (*cuLaunchKernel)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, CUstream,
                             void**, void**);
  CUresult (*cuMemcpyHtoDAsync)(CUdeviceptr, const void*, size_t, CUstream);
  CUresult (*cuEventRecord)(CUevent, CUstream);
  CUresult (*cuStreamQuery)(CUstream);
};

template <class T>
void get(void* h, const char* name, T& out) {
  out = reinterpret_cast<T>(dlsym(h, name));
  if (!out) {
    fprintf(stderr, "shim_overhead: %s not found: %s\n", name, dlerror());
    exit(1);
  }
}

Api load(void* h) {
  Api a{};
  get(h, "cuInit", a.cuInit);
  get(h, "cuDevicePrimaryCtxRetain", a.cuDevicePrimaryCtxRetain);
  get(h, "cuCtxSetCurrent", a.cuCtxSetCurrent);
  get(h, "cuCtxGetCurrent", a.cuCtxGetCurrent);
  get(h, "cuStreamCreate", a.cuStreamCreate);
  get(h, "cuEventCreate", a.cuEventCreate);
  get(h, "cuModuleLoadData", a.cuModuleLoadData);
  get(h, "cuModuleGetFunction", a.cuModuleGetFunction);
  get(h, "cuLaunchKernel", a.cuLaunchKernel);
  get(h, "cuMemcpyHtoDAsync_v2", a.cuMemcpyHtoDAsync);
  get(h, "cuEventRecord", a.cuEventRecord);
  get(h, "cuStreamQuery", a.cuStreamQuery);
  return a;
}

}  // namespace

int main(int argc, char** argv) {
  long n = argc > 1 ? atol(argv[1]) : 20000000;
  std::string null_driver = FERRY_BENCH_NULL_DRIVER, shim = FERRY_BENCH_SHIM;
  setenv("FERRY_REAL_DRIVER", null_driver.c_str(), 1);
  void* hd = dlopen(null_driver.c_str(), RTLD_NOW | RTLD_LOCAL);
  void* hs = dlopen(shim.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!hd || !hs) {
    fprintf(stderr, "shim_overhead: %s\n", dlerror());
    return 1;
  }
  printf("# per call, single thread, %ld calls x best of 5; the driver returns at once\n", n);
  printf("%-22s %10s %10s %10s %8s\n", "call", "direct ns", "ferry ns", "added ns", "ratio");
  std::vector<std::pair<std::string, std::pair<double, double>>> rows;
  double direct_total = 0, shim_total = 0;
  for (int which = 0; which < 2; which++) {
    Api a = load(which == 0 ? hd : hs);
    CUcontext ctx;
    CUstream s;
    CUevent e;
    CUmodule m;
    CUfunction f;
    a.cuInit(0);
    a.cuDevicePrimaryCtxRetain(&ctx, 0);
    a.cuCtxSetCurrent(ctx);
    a.cuStreamCreate(&s, 0);
    a.cuEventCreate(&e, 0);
    a.cuModuleLoadData(&m, "// ptx\n");
    a.cuModuleGetFunction(&f, m, "k");
    static char host[64];
    CUdeviceptr dst = 0x500000000000ull;
    void* args[1] = {&dst};
    double t[5] = {
        ns_per_call([&] { a.cuLaunchKernel(f, 1, 1, 1, 32, 1, 1, 0, s, args, nullptr); }, n),
        ns_per_call([&] { a.cuMemcpyHtoDAsync(dst, host, sizeof host, s); }, n),
        ns_per_call([&] { a.cuEventRecord(e, s); }, n),
        ns_per_call([&] { a.cuStreamQuery(s); }, n),
        ns_per_call([&] {
          CUcontext c;
          a.cuCtxGetCurrent(&c);
        }, n),
    };
    const char* names[5] = {"cuLaunchKernel", "cuMemcpyHtoDAsync", "cuEventRecord", "cuStreamQuery", "cuCtxGetCurrent"};
    for (int i = 0; i < 5; i++) {
      if (which == 0) rows.push_back({names[i], {t[i], 0}});
      else rows[static_cast<size_t>(i)].second.second = t[i];
    }
  }
  double worst = 0;
  for (auto& [name, v] : rows) {
    printf("%-22s %10.2f %10.2f %10.2f %8.2f\n", name.c_str(), v.first, v.second, v.second - v.first,
           v.second / v.first);
    worst = std::max(worst, v.second - v.first);
    direct_total += v.first;
    shim_total += v.second;
  }
  printf("worst added: %.2f ns per call (target: at most 10 ns)\n", worst);
  return 0;
}
