// The arena on its own: address ranges per device, alignment, reuse, exhaustion, and
// allocations through the shim's cuMemAlloc (the simulated GPU is the real driver;
// FERRY_ARENA_SIZE=1G, set by shim_test.hpp, makes a device's range small).
#include <catch2/catch_test_macros.hpp>

#include <cuda.h>

#include <mutex>
#include <set>

#include "arena.hpp"
#include "config.hpp"
#include "shim_test.hpp"
#include "tracker.hpp"

using namespace ferry;

TEST_CASE("each device's addresses come from its own fixed range", "[arena]") {
  shim_test::init();
  std::lock_guard lk(tr::state().mu);
  const size_t g = arena::granularity();
  REQUIRE(g >= 4096);
  uintptr_t base = config().arena_base, size = config().arena_size;
  REQUIRE(size == 1ull << 30);
  uintptr_t a = 0, b = 0;
  REQUIRE(arena::carve(0, 3 * g, 0, 0, &a) == CUDA_SUCCESS);
  REQUIRE(arena::carve(1, g, 0, 0, &b) == CUDA_SUCCESS);
  CHECK(a == base);
  CHECK(b == base + size);
  CHECK(arena::range_of(a) == 0);
  CHECK(arena::range_of(a + 3 * g - 1) == 0);
  CHECK(arena::range_of(b) == 1);
  CHECK(arena::range_of(base - 1) == -1);
  arena::uncarve(0, a, 3 * g);
  arena::uncarve(1, b, g);
}

TEST_CASE("carving rounds to the granularity, honours alignment and hints, reuses what is given back",
          "[arena]") {
  shim_test::init();
  std::lock_guard lk(tr::state().mu);
  const size_t g = arena::granularity();
  uintptr_t a = 0, b = 0, c = 0, d = 0;
  REQUIRE(arena::carve(0, 1, 0, 0, &a) == CUDA_SUCCESS);  // one byte takes a whole granule
  REQUIRE(arena::carve(0, g, 4 * g, 0, &b) == CUDA_SUCCESS);
  CHECK(b % (4 * g) == 0);
  CHECK(b >= a + g);
  uintptr_t hint = config().arena_base + 10 * g;
  REQUIRE(arena::carve(0, g, 0, hint, &c) == CUDA_SUCCESS);
  CHECK(c == hint);
  arena::uncarve(0, a, 1);
  REQUIRE(arena::carve(0, g, 0, 0, &d) == CUDA_SUCCESS);
  CHECK(d == a);  // first fit: the block given back
  uintptr_t e = 0;
  CHECK(arena::carve(0, g, 0, hint, &e) == CUDA_SUCCESS);
  CHECK(e != hint);  // taken: the hint is not honoured, another address is
  for (auto [va, n] : {std::pair{b, g}, {c, g}, {d, g}, {e, g}}) arena::uncarve(0, va, n);
}

TEST_CASE("a device's range runs out; giving back makes room again", "[arena]") {
  shim_test::init();
  std::lock_guard lk(tr::state().mu);
  const size_t size = config().arena_size;
  uintptr_t a = 0, b = 0;
  CHECK(arena::carve(0, size + 1, 0, 0, &a) == CUDA_ERROR_OUT_OF_MEMORY);
  REQUIRE(arena::carve(0, size, 0, 0, &a) == CUDA_SUCCESS);
  CHECK(arena::carve(0, 1, 0, 0, &b) == CUDA_ERROR_OUT_OF_MEMORY);
  CHECK(arena::carve(1, 1, 0, 0, &b) == CUDA_SUCCESS);  // the other device is not affected
  arena::uncarve(1, b, 1);
  arena::uncarve(0, a, size);
  CHECK(arena::carve(0, size, 0, 0, &a) == CUDA_SUCCESS);
  arena::uncarve(0, a, size);
}

TEST_CASE("cuMemAlloc through the shim: small allocations share aligned chunks, large ones get pieces", "[arena]") {
  shim_test::init();
  CUcontext ctx = shim_test::primary(0);
  (void)ctx;
  CUdeviceptr s1 = 0, s2 = 0, big = 0;
  REQUIRE(cuMemAlloc(&s1, 100) == CUDA_SUCCESS);
  REQUIRE(cuMemAlloc(&s2, 1000) == CUDA_SUCCESS);
  CHECK(s1 % arena::kSmallAlign == 0);
  CHECK(s2 % arena::kSmallAlign == 0);
  CHECK(s1 != s2);
  CHECK((s1 > s2 ? s1 - s2 : s2 - s1) < (2u << 20));  // the same 2 MiB chunk
  REQUIRE(cuMemAlloc(&big, 3u << 20) == CUDA_SUCCESS);
  CHECK(big % arena::granularity() == 0);
  for (CUdeviceptr p : {s1, s2, big}) CHECK(arena::range_of(p) == 0);
  // Memory is usable and distinct.
  REQUIRE(cuMemsetD8(big, 0x5a, 3u << 20) == CUDA_SUCCESS);
  REQUIRE(cuMemsetD8(s1, 0x11, 100) == CUDA_SUCCESS);
  unsigned char back[4] = {};
  REQUIRE(cuMemcpyDtoH(back, big + (3u << 20) - 4, 4) == CUDA_SUCCESS);
  CHECK(back[3] == 0x5a);
  REQUIRE(cuMemFree(s1) == CUDA_SUCCESS);
  CHECK(cuMemFree(s1) == CUDA_ERROR_INVALID_VALUE);  // not an allocation any more
  CUdeviceptr again = 0;
  REQUIRE(cuMemAlloc(&again, 100) == CUDA_SUCCESS);
  CHECK(again == s1);  // first fit in the chunk
  // More than the device's 1 GiB range: the driver's answer, nothing half-made.
  CUdeviceptr huge = 0;
  CHECK(cuMemAlloc(&huge, size_t{2} << 30) == CUDA_ERROR_OUT_OF_MEMORY);
  CHECK(huge == 0);
  for (CUdeviceptr p : {again, s2, big}) CHECK(cuMemFree(p) == CUDA_SUCCESS);
}
