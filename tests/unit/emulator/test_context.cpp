// Contexts: primary and created, the current-context stack, context-local storage,
// and that a destroyed context takes its memory and modules with it.
#include <thread>

#include "emu_test.hpp"

using emu_test::primary;

TEST_CASE("primary context: retain, state, release", "[context]") {
  REQUIRE(cuInit(0) == CUDA_SUCCESS);
  unsigned flags = 99;
  int active = 1;
  CU_OK(cuDevicePrimaryCtxGetState(2, &flags, &active));
  REQUIRE(active == 0);
  CU_OK(cuDevicePrimaryCtxSetFlags(2, CU_CTX_SCHED_BLOCKING_SYNC));
  CUcontext a, b;
  CU_OK(cuDevicePrimaryCtxRetain(&a, 2));
  CU_OK(cuDevicePrimaryCtxRetain(&b, 2));
  REQUIRE(a == b);
  CU_OK(cuDevicePrimaryCtxGetState(2, &flags, &active));
  REQUIRE(active == 1);
  REQUIRE(flags == CU_CTX_SCHED_BLOCKING_SYNC);
  CU_OK(cuCtxSetCurrent(a));
  CUdeviceptr p;
  CU_OK(cuMemAlloc(&p, 4096));
  CU_OK(cuDevicePrimaryCtxRelease(2));
  CU_OK(cuDevicePrimaryCtxGetState(2, &flags, &active));
  REQUIRE(active == 1);  // one reference left
  CU_OK(cuDevicePrimaryCtxRelease(2));
  CU_OK(cuDevicePrimaryCtxGetState(2, &flags, &active));
  REQUIRE(active == 0);
  // The allocation went with the context.
  CUdeviceptr base;
  size_t size;
  REQUIRE(cuMemGetAddressRange(&base, &size, p) == CUDA_ERROR_NOT_FOUND);
  REQUIRE(cuMemAlloc(&p, 16) == CUDA_ERROR_INVALID_CONTEXT);
  REQUIRE(cuDevicePrimaryCtxRelease(2) == CUDA_ERROR_INVALID_CONTEXT);
  CU_OK(cuCtxSetCurrent(nullptr));
}

TEST_CASE("created contexts push, pop and destroy", "[context]") {
  REQUIRE(cuInit(0) == CUDA_SUCCESS);
  CU_OK(cuCtxSetCurrent(nullptr));
  CUcontext c1, c2, cur;
  CU_OK(cuCtxCreate(&c1, nullptr, 0, 0));
  CU_OK(cuCtxGetCurrent(&cur));
  REQUIRE(cur == c1);
  CU_OK(cuCtxCreate(&c2, nullptr, 0, 2));
  CUdevice dev;
  CU_OK(cuCtxGetDevice(&dev));
  REQUIRE(dev == 2);
  CUcontext popped;
  CU_OK(cuCtxPopCurrent(&popped));
  REQUIRE(popped == c2);
  CU_OK(cuCtxGetCurrent(&cur));
  REQUIRE(cur == c1);
  CU_OK(cuCtxPushCurrent(c2));

  // Memory and a module of c2 are gone once c2 is destroyed.
  CUdeviceptr p;
  CU_OK(cuMemAlloc(&p, 1 << 20));
  CUfunction f = emu_test::kernel("add_one");
  CUdeviceptr g;
  size_t gsize;
  CU_OK(cuModuleGetGlobal(&g, &gsize, emu_test::test_module(), "g_counter"));
  CU_OK(cuCtxDestroy(c2));
  CU_OK(cuCtxGetCurrent(&cur));
  REQUIRE(cur == c1);
  int v = 0;
  REQUIRE(cuMemcpyDtoH(&v, p, sizeof v) == CUDA_ERROR_INVALID_VALUE);
  REQUIRE(cuMemcpyDtoH(&v, g, sizeof v) == CUDA_ERROR_INVALID_VALUE);
  CUdeviceptr q;
  CU_OK(cuMemAlloc(&q, 4096));
  int n = 1;
  void* args[] = {&q, &n};
  REQUIRE(cuLaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, nullptr, args, nullptr) == CUDA_ERROR_INVALID_HANDLE);
  REQUIRE(cuCtxDestroy(c2) == CUDA_ERROR_INVALID_CONTEXT);
  CU_OK(cuCtxDestroy(c1));
  CU_OK(cuCtxGetCurrent(&cur));
  REQUIRE(cur == nullptr);
  REQUIRE(cuCtxSynchronize() == CUDA_ERROR_INVALID_CONTEXT);
}

TEST_CASE("the current context is per thread", "[context]") {
  CUcontext mine = primary(0);
  CUcontext theirs = reinterpret_cast<CUcontext>(1);
  std::thread t([&] { cuCtxGetCurrent(&theirs); });
  t.join();
  REQUIRE(theirs == nullptr);
  CUcontext cur;
  CU_OK(cuCtxGetCurrent(&cur));
  REQUIRE(cur == mine);
}

namespace {
// CONTEXT_LOCAL_STORAGE_V0301, as cudart uses it.
struct Cls {
  CUresult (*put)(CUcontext, void*, void*, void (*)(CUcontext, void*, void*));
  CUresult (*del)(CUcontext, void*);
  CUresult (*get)(void**, CUcontext, void*);
};
Cls cls_table() {
  const unsigned char id[16] = {0xc6, 0x93, 0x33, 0x6e, 0x11, 0x21, 0xdf, 0x11,
                                0xa8, 0xc3, 0x68, 0xf3, 0x55, 0xd8, 0x95, 0x93};
  CUuuid u;
  memcpy(u.bytes, id, 16);
  const void* t = nullptr;
  REQUIRE(cuGetExportTable(&t, &u) == CUDA_SUCCESS);
  auto* slots = static_cast<void* const*>(t);
  Cls c;
  memcpy(&c.put, &slots[0], sizeof(void*));
  memcpy(&c.del, &slots[1], sizeof(void*));
  memcpy(&c.get, &slots[2], sizeof(void*));
  return c;
}
int g_dtor_calls = 0;
void* g_dtor_value = nullptr;
void dtor(CUcontext, void*, void* value) {
  g_dtor_calls++;
  g_dtor_value = value;
}
}  // namespace

TEST_CASE("context-local storage: put, get, delete, destructor on destroy", "[context]") {
  REQUIRE(cuInit(0) == CUDA_SUCCESS);
  Cls cls = cls_table();
  static int key1, key2, value1, value2;
  CUcontext c;
  CU_OK(cuCtxCreate(&c, nullptr, 0, 0));
  void* out = nullptr;
  REQUIRE(cls.get(&out, nullptr, &key1) == CUDA_ERROR_INVALID_HANDLE);
  CU_OK(cls.put(nullptr, &key1, &value1, dtor));
  CU_OK(cls.put(c, &key2, &value2, dtor));
  CU_OK(cls.get(&out, nullptr, &key1));
  REQUIRE(out == &value1);
  CU_OK(cls.get(&out, c, &key2));
  REQUIRE(out == &value2);
  CU_OK(cls.del(nullptr, &key2));
  REQUIRE(cls.get(&out, nullptr, &key2) == CUDA_ERROR_INVALID_HANDLE);
  g_dtor_calls = 0;
  CU_OK(cuCtxDestroy(c));
  REQUIRE(g_dtor_calls == 1);
  REQUIRE(g_dtor_value == &value1);
}

TEST_CASE("cudart's start-up order: primary context current before retain", "[context]") {
  REQUIRE(cuInit(0) == CUDA_SUCCESS);
  Cls cls = cls_table();
  const unsigned char id[16] = {0x6b, 0xd5, 0xfb, 0x6c, 0x5b, 0xf4, 0xe7, 0x4a,
                                0x89, 0x87, 0xd9, 0x39, 0x12, 0xfd, 0x9d, 0xf9};
  CUuuid u;
  memcpy(u.bytes, id, 16);
  const void* t = nullptr;
  CU_OK(cuGetExportTable(&t, &u));
  auto get_primary = reinterpret_cast<CUresult (*)(CUcontext*, CUdevice)>(static_cast<void* const*>(t)[2]);
  std::thread th([&] {
    CUcontext pc;
    static int key;
    void* v;
    CU_OK(get_primary(&pc, 0));
    REQUIRE(cls.get(&v, nullptr, &key) == CUDA_ERROR_INVALID_HANDLE);
    CU_OK(cuCtxSetCurrent(pc));
    CUcontext r;
    CU_OK(cuDevicePrimaryCtxRetain(&r, 0));
    REQUIRE(r == pc);
    CUdevice d;
    CU_OK(cuCtxGetDevice(&d));
    REQUIRE(d == 0);
    CU_OK(cls.put(nullptr, &key, &key, nullptr));
    CU_OK(cls.get(&v, nullptr, &key));
    REQUIRE(v == &key);
    CU_OK(cuDevicePrimaryCtxRelease(0));
  });
  th.join();
}
