// Kernel launches on the simulated GPU: indexing, shared memory and barriers, warp
// operations, dynamic shared memory, argument passing, errors.
#include <algorithm>

#include "emu_test.hpp"

using emu_test::kernel;
using emu_test::primary;

TEST_CASE("grid and block indexing in three dimensions", "[launch]") {
  primary(0);
  CUfunction f = kernel("coords");
  const unsigned gx = 3, gy = 2, gz = 2, bx = 4, by = 3, bz = 2;
  const size_t n = gx * gy * gz * bx * by * bz;
  CUdeviceptr out;
  CU_OK(cuMemAlloc(&out, n * 16));
  void* args[] = {&out};
  CU_OK(cuLaunchKernel(f, gx, gy, gz, bx, by, bz, 0, nullptr, args, nullptr));
  std::vector<unsigned> h(n * 4);
  CU_OK(cuMemcpyDtoH(h.data(), out, n * 16));
  size_t i = 0;
  for (unsigned z = 0; z < gz; z++)
    for (unsigned y = 0; y < gy; y++)
      for (unsigned x = 0; x < gx; x++)
        for (unsigned tz = 0; tz < bz; tz++)
          for (unsigned ty = 0; ty < by; ty++)
            for (unsigned tx = 0; tx < bx; tx++, i++) {
              INFO("thread " << i);
              REQUIRE(h[4 * i + 0] == (x | (y << 10) | (z << 20)));
              REQUIRE(h[4 * i + 1] == (tx | (ty << 10) | (tz << 20)));
              REQUIRE(h[4 * i + 2] == (bx | (by << 10) | (bz << 20)));
              REQUIRE(h[4 * i + 3] == (gx | (gy << 10) | (gz << 20)));
            }
  CU_OK(cuMemFree(out));
}

TEST_CASE("shared memory and __syncthreads", "[launch]") {
  primary(0);
  const int block = 512, blocks = 6, n = block * blocks;
  std::vector<int> h(n);
  for (int i = 0; i < n; i++) h[i] = i * 3;
  CUdeviceptr d;
  CU_OK(cuMemAlloc(&d, n * 4));
  CU_OK(cuMemcpyHtoD(d, h.data(), n * 4));
  CU_OK(emu_test::launch(kernel("block_reverse"), blocks, block, {&d}));
  std::vector<int> out(n);
  CU_OK(cuMemcpyDtoH(out.data(), d, n * 4));
  for (int b = 0; b < blocks; b++)
    for (int t = 0; t < block; t++) REQUIRE(out[b * block + t] == h[b * block + block - 1 - t]);
  CU_OK(cuMemFree(d));
}

TEST_CASE("barrier reductions: count, and, or", "[launch]") {
  primary(0);
  const int block = 96;
  CUdeviceptr d;
  CU_OK(cuMemAlloc(&d, block * 16));
  CU_OK(emu_test::launch(kernel("sync_votes"), 1, block, {&d}));
  std::vector<int> out(block * 4);
  CU_OK(cuMemcpyDtoH(out.data(), d, block * 16));
  for (int t = 0; t < block; t++) {
    REQUIRE(out[4 * t + 0] == 32);  // t % 3 == 0 for 32 of 96 threads
    REQUIRE(out[4 * t + 1] == 1);
    REQUIRE(out[4 * t + 2] == 1);
    REQUIRE(out[4 * t + 3] == 0);
  }
  CU_OK(cuMemFree(d));
}

TEST_CASE("warp shuffles and ballots", "[launch]") {
  primary(0);
  const int block = 64;
  CUdeviceptr d;
  CU_OK(cuMemAlloc(&d, block * 12));
  CU_OK(emu_test::launch(kernel("warp_ops"), 1, block, {&d}));
  std::vector<int> out(block * 3);
  CU_OK(cuMemcpyDtoH(out.data(), d, block * 12));
  REQUIRE(out[0] == 32 * 33 / 2);                   // lane 0 of warp 0: 1..32
  REQUIRE(out[3 * 32] == (33 + 64) * 32 / 2);       // lane 0 of warp 1: 33..64
  REQUIRE(out[3 * 5 + 1] == 30);                    // lane 3 of warp 0 had 30
  REQUIRE(out[3 * 40 + 1] == 350);                  // lane 3 of warp 1 had 35*10
  REQUIRE(static_cast<unsigned>(out[3 * 7 + 2]) == 0xaaaaaaaau);
  CU_OK(cuMemFree(d));
}

TEST_CASE("dynamic shared memory and its limit", "[launch]") {
  primary(0);
  CUfunction f = kernel("dyn_smem");
  const int n = 200;
  CUdeviceptr d;
  CU_OK(cuMemAlloc(&d, n * 4));
  int count = n;
  CU_OK(emu_test::launch(f, 1, 256, {&d, &count}, nullptr, n * 4));
  std::vector<float> out(n);
  CU_OK(cuMemcpyDtoH(out.data(), d, n * 4));
  for (int t = 0; t < n; t++) REQUIRE(out[t] == static_cast<float>(n - 1 - t) * 0.5f);
  REQUIRE(emu_test::launch(f, 1, 256, {&d, &count}, nullptr, 64 * 1024) == CUDA_ERROR_INVALID_VALUE);
  CU_OK(cuFuncSetAttribute(f, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, 64 * 1024));
  CU_OK(emu_test::launch(f, 1, 256, {&d, &count}, nullptr, 64 * 1024));
  CU_OK(cuCtxSynchronize());
  CU_OK(cuMemFree(d));
}

TEST_CASE("arguments of every kind, by pointer array and by packed buffer", "[launch]") {
  primary(0);
  CUfunction f = kernel("mixed_args");
  struct Pair {
    int a;
    double b;
  };
  char c = -3;
  short s = 1234;
  Pair p{77, 2.5};
  float fl = 0.25f;
  double d = -1e100;
  long long ll = -(1ll << 40);
  CUdeviceptr out;
  CU_OK(cuMemAlloc(&out, 7 * 8));
  void* args[] = {&c, &s, &p, &fl, &d, &ll, &out};
  CU_OK(cuLaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, nullptr, args, nullptr));
  std::vector<double> h(7);
  CU_OK(cuMemcpyDtoH(h.data(), out, 56));
  REQUIRE(h == std::vector<double>{-3, 1234, 77, 2.5, 0.25, -1e100, static_cast<double>(ll)});

  // The same through CU_LAUNCH_PARAM_BUFFER_POINTER with natural alignment.
  alignas(8) unsigned char buf[64] = {};
  size_t off = 0;
  auto put = [&](const void* v, size_t size, size_t align) {
    off = (off + align - 1) / align * align;
    memcpy(buf + off, v, size);
    off += size;
  };
  ll = 5;
  put(&c, 1, 1);
  put(&s, 2, 2);
  put(&p, sizeof p, alignof(Pair));
  put(&fl, 4, 4);
  put(&d, 8, 8);
  put(&ll, 8, 8);
  put(&out, 8, 8);
  size_t size = off;
  void* extra[] = {CU_LAUNCH_PARAM_BUFFER_POINTER, buf, CU_LAUNCH_PARAM_BUFFER_SIZE, &size, CU_LAUNCH_PARAM_END};
  CU_OK(cuMemsetD8(out, 0, 56));
  CU_OK(cuLaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, nullptr, nullptr, extra));
  CU_OK(cuMemcpyDtoH(h.data(), out, 56));
  REQUIRE(h == std::vector<double>{-3, 1234, 77, 2.5, 0.25, -1e100, 5});
  CU_OK(cuMemFree(out));
}

TEST_CASE("launch errors: bad shapes, missing kernels, traps; divergent barriers release", "[launch]") {
  REQUIRE(cuInit(0) == CUDA_SUCCESS);
  CUcontext c;
  CU_OK(cuCtxCreate(&c, nullptr, 0, 0));
  CUfunction f = kernel("add_one");
  CUdeviceptr d;
  CU_OK(cuMemAlloc(&d, 4096));
  int n = 1;
  void* args[] = {&d, &n};
  REQUIRE(cuLaunchKernel(f, 1, 1, 1, 1025, 1, 1, 0, nullptr, args, nullptr) == CUDA_ERROR_INVALID_VALUE);
  REQUIRE(cuLaunchKernel(f, 0, 1, 1, 32, 1, 1, 0, nullptr, args, nullptr) == CUDA_ERROR_INVALID_VALUE);
  REQUIRE(cuLaunchKernel(f, 1, 70000, 1, 32, 1, 1, 0, nullptr, args, nullptr) == CUDA_ERROR_INVALID_VALUE);
  REQUIRE(cuLaunchKernel(nullptr, 1, 1, 1, 1, 1, 1, 0, nullptr, args, nullptr) == CUDA_ERROR_INVALID_HANDLE);
  CUfunction missing;
  REQUIRE(cuModuleGetFunction(&missing, emu_test::test_module(), "no_such_kernel") == CUDA_ERROR_NOT_FOUND);
  // Threads that exit count as arrived (Volta and later): the barrier releases.
  CU_OK(cuMemsetD32(d, 0, 64));
  CU_OK(emu_test::launch(kernel("divergent_barrier"), 1, 64, {&d}));
  CU_OK(cuCtxSynchronize());
  std::vector<int> wrote(64);
  CU_OK(cuMemcpyDtoH(wrote.data(), d, 256));
  REQUIRE(wrote == std::vector<int>(64, 1));
  CU_OK(cuCtxDestroy(c));

  CU_OK(cuCtxCreate(&c, nullptr, 0, 0));
  CU_OK(emu_test::launch(kernel("trap_kernel"), 2, 32, {}));
  REQUIRE(cuCtxSynchronize() == CUDA_ERROR_LAUNCH_FAILED);
  CU_OK(cuCtxDestroy(c));
}

TEST_CASE("atomics across blocks running on several threads", "[launch]") {
  primary(0);
  CUdeviceptr d;
  CU_OK(cuMemAlloc(&d, 4));
  CU_OK(cuMemsetD32(d, 0, 1));
  CU_OK(emu_test::launch(kernel("atomic_count"), 64, 128, {&d}));
  unsigned v = 0;
  CU_OK(cuMemcpyDtoH(&v, d, 4));
  REQUIRE(v == 64 * 128);
  CU_OK(cuMemFree(d));
}
