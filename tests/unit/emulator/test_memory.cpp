// Device memory: allocation, per-device address ranges, out-of-memory, poisoning of
// freed memory, pinned and registered host memory, copies and memsets, attributes.
#include <dlfcn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <numeric>

#include "emu_test.hpp"

using emu_test::primary;

TEST_CASE("allocations live in their device's own address range", "[memory]") {
  primary(0);
  CUdeviceptr a0, a1;
  std::vector<CUdeviceptr> on0(4), on2(4);
  for (auto& p : on0) CU_OK(cuMemAlloc(&p, 3 << 20));
  CU_OK(cuMemAlloc(&a0, 1000));
  primary(2);
  for (auto& p : on2) CU_OK(cuMemAlloc(&p, 3 << 20));
  CU_OK(cuMemAlloc(&a1, 1000));
  on0.push_back(a0);
  on2.push_back(a1);
  auto [lo0, hi0] = std::minmax_element(on0.begin(), on0.end());
  auto [lo2, hi2] = std::minmax_element(on2.begin(), on2.end());
  REQUIRE((*hi0 < *lo2 || *hi2 < *lo0));  // the two devices' ranges do not interleave
  for (size_t i = 0; i < 4; i++) CU_OK(cuMemFree(on2[i]));
  int ord = -1;
  CU_OK(cuPointerGetAttribute(&ord, CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, a0));
  REQUIRE(ord == 0);
  CU_OK(cuPointerGetAttribute(&ord, CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, a1));
  REQUIRE(ord == 2);
  unsigned type = 0;
  CU_OK(cuPointerGetAttribute(&type, CU_POINTER_ATTRIBUTE_MEMORY_TYPE, a1 + 10));
  REQUIRE(type == CU_MEMORYTYPE_DEVICE);
  CUdeviceptr base;
  size_t size;
  CU_OK(cuMemGetAddressRange(&base, &size, a1 + 999));
  REQUIRE(base == a1);
  REQUIRE(size == 1000);
  CU_OK(cuMemFree(a1));
  primary(0);
  CU_OK(cuMemFree(a0));
  REQUIRE(cuMemFree(a0) == CUDA_ERROR_INVALID_VALUE);  // double free
  for (size_t i = 0; i < 4; i++) CU_OK(cuMemFree(on0[i]));
}

TEST_CASE("out of memory is reported and nothing leaks", "[memory]") {
  primary(1);  // 512 MiB
  size_t free0, total;
  CU_OK(cuMemGetInfo(&free0, &total));
  REQUIRE(total == (512ull << 20));
  CUdeviceptr a, b;
  CU_OK(cuMemAlloc(&a, 400ull << 20));
  REQUIRE(cuMemAlloc(&b, 200ull << 20) == CUDA_ERROR_OUT_OF_MEMORY);
  size_t free1;
  CU_OK(cuMemGetInfo(&free1, &total));
  REQUIRE(free1 == free0 - (400ull << 20));
  CU_OK(cuMemFree(a));
  CU_OK(cuMemAlloc(&b, 500ull << 20));
  CU_OK(cuMemFree(b));
  CU_OK(cuMemGetInfo(&free1, &total));
  REQUIRE(free1 == free0);
  REQUIRE(cuMemAlloc(&b, 0) == CUDA_ERROR_INVALID_VALUE);
}

TEST_CASE("memory the machine's other tenants hold (held=) is not this process's: allocations, cuMemGetInfo, "
          "NVML's memory info leave it out (a driver restore: test_full_process.cpp)",
          "[memory]") {
  setenv("FERRY_EMU_DEVICE2", "held=768M", 1);  // of 1 GiB: 256 MiB left
  primary(2);
  size_t free0 = 0, total = 0;
  CU_OK(cuMemGetInfo(&free0, &total));
  REQUIRE(total == (1ull << 30));
  REQUIRE(free0 == (256ull << 20));
  CUdeviceptr a, b;
  CU_OK(cuMemAlloc(&a, 200ull << 20));
  REQUIRE(cuMemAlloc(&b, 100ull << 20) == CUDA_ERROR_OUT_OF_MEMORY);
  CUmemAllocationProp prop{};
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  prop.location.id = 2;
  CUmemGenericAllocationHandle h;
  REQUIRE(cuMemCreate(&h, 64ull << 20, &prop, 0) == CUDA_ERROR_OUT_OF_MEMORY);
  CU_OK(cuMemFree(a));
  CU_OK(cuMemCreate(&h, 64ull << 20, &prop, 0));
  CU_OK(cuMemRelease(h));

  // NVML, asked by UUID as ferry restore asks it: the same GPU ("ferry-emu-gpu", 0, 0x40,
  // 2 in NVML's form), the same memory.
  const std::string name = "GPU-66657272-792d-656d-752d-677075004002";
  void* lib = dlopen(FERRY_TEST_EMU_LIB_DIR "/libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
  REQUIRE(lib);
  struct Memory {
    unsigned long long total, free, used;
  } mem{};
  auto init = reinterpret_cast<int (*)()>(dlsym(lib, "nvmlInit_v2"));
  auto shutdown = reinterpret_cast<int (*)()>(dlsym(lib, "nvmlShutdown"));
  auto by_uuid = reinterpret_cast<int (*)(const char*, void**)>(dlsym(lib, "nvmlDeviceGetHandleByUUID"));
  auto info = reinterpret_cast<int (*)(void*, Memory*)>(dlsym(lib, "nvmlDeviceGetMemoryInfo"));
  REQUIRE((init && shutdown && by_uuid && info));
  void* handle = nullptr;
  REQUIRE(by_uuid(name.c_str(), &handle) == 1);  // NVML_ERROR_UNINITIALIZED
  REQUIRE(init() == 0);
  REQUIRE(by_uuid("GPU-00000000-0000-0000-0000-000000000000", &handle) == 6);  // NVML_ERROR_NOT_FOUND
  REQUIRE(by_uuid(name.c_str(), &handle) == 0);
  REQUIRE(info(handle, &mem) == 0);
  CHECK(mem.total == (1ull << 30));
  CHECK(mem.used == (768ull << 20));
  CHECK(mem.free == (256ull << 20));
  REQUIRE(shutdown() == 0);
}

TEST_CASE("freed device memory is poisoned: copies refuse it, accesses fault", "[memory]") {
  primary(0);
  CUdeviceptr p;
  CU_OK(cuMemAlloc(&p, 8192));
  CU_OK(cuMemsetD32(p, 0x12345678, 2048));
  unsigned v = 0;
  CU_OK(cuMemcpyDtoH(&v, p + 4, 4));
  REQUIRE(v == 0x12345678);
  CU_OK(cuMemFree(p));
  REQUIRE(cuMemcpyDtoH(&v, p, 4) == CUDA_ERROR_INVALID_VALUE);
  REQUIRE(cuMemsetD8(p, 0, 1) == CUDA_ERROR_INVALID_VALUE);
  // A raw host access to the freed range dies with SIGSEGV (checked in a child).
  fflush(nullptr);
  pid_t child = fork();
  if (child == 0) {
    volatile unsigned* raw = reinterpret_cast<volatile unsigned*>(p);
    unsigned x = *raw;
    _exit(static_cast<int>(x & 1));
  }
  int status = 0;
  waitpid(child, &status, 0);
  REQUIRE(WIFSIGNALED(status));
  REQUIRE(WTERMSIG(status) == SIGSEGV);
}

TEST_CASE("a kernel touching freed memory gets an illegal-address error, sticky on the context", "[memory]") {
  REQUIRE(cuInit(0) == CUDA_SUCCESS);
  CUcontext c;
  CU_OK(cuCtxCreate(&c, nullptr, 0, 0));
  CUfunction f = emu_test::kernel("add_one");
  CUdeviceptr p;
  CU_OK(cuMemAlloc(&p, 4096));
  CU_OK(cuMemFree(p));
  int n = 16;
  CU_OK(emu_test::launch(f, 1, 16, {&p, &n}));
  REQUIRE(cuCtxSynchronize() == CUDA_ERROR_ILLEGAL_ADDRESS);
  CUdeviceptr q;
  REQUIRE(cuMemAlloc(&q, 16) == CUDA_ERROR_ILLEGAL_ADDRESS);
  CU_OK(cuCtxDestroy(c));
  // Other contexts are unaffected.
  primary(0);
  CU_OK(cuMemAlloc(&q, 16));
  CU_OK(cuMemFree(q));
}

TEST_CASE("copies in every direction and memsets", "[memory]") {
  primary(0);
  const size_t n = 1 << 16;
  std::vector<int> h(n), back(n, 0);
  std::iota(h.begin(), h.end(), 7);
  CUdeviceptr a, b;
  CU_OK(cuMemAlloc(&a, n * 4));
  CU_OK(cuMemAlloc(&b, n * 4));
  CU_OK(cuMemcpyHtoD(a, h.data(), n * 4));
  CU_OK(cuMemcpyDtoD(b, a, n * 4));
  CU_OK(cuMemcpyDtoH(back.data(), b, n * 4));
  REQUIRE(back == h);
  CU_OK(cuMemcpy(a + 4, b, 8));  // unified copy, device to device
  CU_OK(cuMemcpyDtoH(back.data(), a, 12));
  REQUIRE(back[1] == 7);
  REQUIRE(back[2] == 8);
  CU_OK(cuMemsetD16(a, 0xabcd, 4));
  CU_OK(cuMemsetD8(a + 8, 0x11, 4));
  CU_OK(cuMemcpyDtoH(back.data(), a, 12));
  REQUIRE(static_cast<unsigned>(back[0]) == 0xabcdabcdu);
  REQUIRE(static_cast<unsigned>(back[2]) == 0x11111111u);
  // 2D: a 3x5 window with pitches.
  std::vector<unsigned char> src(10 * 8), dst(6 * 8, 0);
  std::iota(src.begin(), src.end(), 0);
  CUdeviceptr d2;
  size_t pitch;
  CU_OK(cuMemAllocPitch(&d2, &pitch, 5, 3, 4));
  REQUIRE(pitch >= 5);
  CUDA_MEMCPY2D c{};
  c.srcMemoryType = CU_MEMORYTYPE_HOST;
  c.srcHost = src.data();
  c.srcPitch = 10;
  c.srcXInBytes = 2;
  c.srcY = 1;
  c.dstMemoryType = CU_MEMORYTYPE_DEVICE;
  c.dstDevice = d2;
  c.dstPitch = pitch;
  c.WidthInBytes = 5;
  c.Height = 3;
  CU_OK(cuMemcpy2D(&c));
  CUDA_MEMCPY2D r{};
  r.srcMemoryType = CU_MEMORYTYPE_DEVICE;
  r.srcDevice = d2;
  r.srcPitch = pitch;
  r.dstMemoryType = CU_MEMORYTYPE_HOST;
  r.dstHost = dst.data();
  r.dstPitch = 6;
  r.WidthInBytes = 5;
  r.Height = 3;
  CU_OK(cuMemcpy2D(&r));
  for (int y = 0; y < 3; y++)
    for (int x = 0; x < 5; x++) REQUIRE(dst[y * 6 + x] == src[(y + 1) * 10 + 2 + x]);
  REQUIRE(cuMemcpyHtoD(a + n * 4 - 4, h.data(), 8) == CUDA_ERROR_INVALID_VALUE);  // past the end
  CU_OK(cuMemFree(a));
  CU_OK(cuMemFree(b));
  CU_OK(cuMemFree(d2));
}

TEST_CASE("pinned and registered host memory", "[memory]") {
  CUcontext ctx = primary(0);
  void* h = nullptr;
  CU_OK(cuMemHostAlloc(&h, 10000, CU_MEMHOSTALLOC_PORTABLE));
  unsigned type = 0;
  CU_OK(cuPointerGetAttribute(&type, CU_POINTER_ATTRIBUTE_MEMORY_TYPE, reinterpret_cast<CUdeviceptr>(h)));
  REQUIRE(type == CU_MEMORYTYPE_HOST);
  CUdeviceptr alias;
  CU_OK(cuMemHostGetDevicePointer(&alias, h, 0));
  REQUIRE(alias == reinterpret_cast<CUdeviceptr>(h));
  unsigned flags;
  CU_OK(cuMemHostGetFlags(&flags, h));
  REQUIRE(flags == CU_MEMHOSTALLOC_PORTABLE);
  CU_OK(cuMemFreeHost(h));
  REQUIRE(cuMemFreeHost(h) == CUDA_ERROR_INVALID_VALUE);

  std::vector<char> buf(1 << 16);
  CU_OK(cuMemHostRegister(buf.data(), buf.size(), 0));
  REQUIRE(cuMemHostRegister(buf.data() + 16, 16, 0) == CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED);
  CUcontext owner = nullptr;
  CU_OK(cuPointerGetAttribute(&owner, CU_POINTER_ATTRIBUTE_CONTEXT, reinterpret_cast<CUdeviceptr>(buf.data())));
  REQUIRE(owner == ctx);
  CU_OK(cuMemHostUnregister(buf.data()));
  REQUIRE(cuMemHostUnregister(buf.data()) == CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED);

  // Unregistered host memory: cuPointerGetAttributes answers "unregistered", not an error.
  CUpointer_attribute attrs[2] = {CU_POINTER_ATTRIBUTE_MEMORY_TYPE, CU_POINTER_ATTRIBUTE_CONTEXT};
  unsigned mt = 99;
  CUcontext c = ctx;
  void* data[2] = {&mt, &c};
  CU_OK(cuPointerGetAttributes(2, attrs, data, reinterpret_cast<CUdeviceptr>(buf.data())));
  REQUIRE(mt == 0);
  REQUIRE(c == nullptr);
  REQUIRE(cuPointerGetAttribute(&mt, CU_POINTER_ATTRIBUTE_MEMORY_TYPE, reinterpret_cast<CUdeviceptr>(buf.data())) ==
          CUDA_ERROR_INVALID_VALUE);
}

TEST_CASE("async copies follow pageable and pinned host semantics", "[memory]") {
  primary(0);
  CUstream s;
  CU_OK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
  CUfunction slow = emu_test::kernel("slow_add");
  const int n = 4096;
  CUdeviceptr d;
  CU_OK(cuMemAlloc(&d, n * 4));
  CU_OK(cuMemsetD32(d, 0, n));
  int rounds = 20000;
  int count = n;
  CU_OK(emu_test::launch(slow, n / 256, 256, {&d, &count, &rounds}, s));
  // Pageable source: staged at the call, so overwriting it right away is safe.
  std::vector<int> src(n, 5);
  CU_OK(cuMemcpyHtoDAsync(d, src.data(), n * 4, s));
  std::fill(src.begin(), src.end(), -1);
  // Pageable destination: complete when the call returns.
  std::vector<int> dst(n, 0);
  CU_OK(cuMemcpyDtoHAsync(dst.data(), d, n * 4, s));
  REQUIRE(dst[0] == 5);
  REQUIRE(dst[n - 1] == 5);
  // Pinned destination: the copy is ordered on the stream, complete after sync.
  int* pinned = nullptr;
  CU_OK(cuMemAllocHost(reinterpret_cast<void**>(&pinned), n * 4));
  CU_OK(emu_test::launch(slow, n / 256, 256, {&d, &count, &rounds}, s));
  CU_OK(cuMemcpyDtoHAsync(pinned, d, n * 4, s));
  CU_OK(cuStreamSynchronize(s));
  REQUIRE(pinned[0] == 6);
  REQUIRE(pinned[n - 1] == 6);
  CU_OK(cuMemFreeHost(pinned));
  CU_OK(cuMemFree(d));
  CU_OK(cuStreamDestroy(s));
}

TEST_CASE("stream-ordered allocation and pools", "[memory]") {
  primary(0);
  CUstream s;
  CU_OK(cuStreamCreate(&s, 0));
  CUmemoryPool def, cur;
  CU_OK(cuDeviceGetDefaultMemPool(&def, 0));
  CU_OK(cuDeviceGetMemPool(&cur, 0));
  REQUIRE(def == cur);
  CUdeviceptr p;
  CU_OK(cuMemAllocAsync(&p, 1 << 20, s));
  CUmemoryPool owner = nullptr;
  CU_OK(cuPointerGetAttribute(&owner, CU_POINTER_ATTRIBUTE_MEMPOOL_HANDLE, p));
  REQUIRE(owner == def);
  cuuint64_t used = 0;
  CU_OK(cuMemPoolGetAttribute(def, CU_MEMPOOL_ATTR_USED_MEM_CURRENT, &used));
  REQUIRE(used >= (1u << 20));
  CU_OK(cuMemsetD8Async(p, 1, 1 << 20, s));
  CU_OK(cuMemFreeAsync(p, s));
  REQUIRE(cuMemFreeAsync(p, s) == CUDA_ERROR_INVALID_VALUE);
  CU_OK(cuStreamSynchronize(s));
  CU_OK(cuMemPoolGetAttribute(def, CU_MEMPOOL_ATTR_USED_MEM_CURRENT, &used));
  REQUIRE(used == 0);
  unsigned char b;
  REQUIRE(cuMemcpyDtoH(&b, p, 1) == CUDA_ERROR_INVALID_VALUE);

  CUmemPoolProps props{};
  props.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
  props.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  props.location.id = 0;
  CUmemoryPool mine;
  CU_OK(cuMemPoolCreate(&mine, &props));
  cuuint64_t thr = 1 << 30;
  CU_OK(cuMemPoolSetAttribute(mine, CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, &thr));
  cuuint64_t got = 0;
  CU_OK(cuMemPoolGetAttribute(mine, CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, &got));
  REQUIRE(got == thr);
  CU_OK(cuMemAllocFromPoolAsync(&p, 4096, mine, s));
  CU_OK(cuMemPoolDestroy(mine));  // takes its allocations with it
  REQUIRE(cuMemcpyDtoH(&b, p, 1) == CUDA_ERROR_INVALID_VALUE);
  CU_OK(cuStreamDestroy(s));
}
