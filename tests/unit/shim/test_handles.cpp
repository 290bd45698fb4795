// Virtual handles and device ordinals, and their translation.
#include <catch2/catch_test_macros.hpp>

#include <cuda.h>

#include <set>

#include "handles.hpp"
#include "shim_test.hpp"

using namespace ferry;

TEST_CASE("a virtual handle translates to its real object; others pass through", "[handles]") {
  shim_test::init();
  int rec = 7;
  vh::Obj* o = vh::make(vh::Kind::Stream, reinterpret_cast<void*>(0x1234), &rec);
  auto h = vh::as<CUstream>(o);
  CHECK(vh::is_virtual(h));
  CHECK(vh::real(h) == reinterpret_cast<CUstream>(0x1234));
  CHECK(vh::obj(h)->kind == vh::Kind::Stream);
  CHECK(vh::rec<int>(h) == &rec);
  // The NULL stream, the legacy and per-thread streams, and anything ferry never made.
  volatile uintptr_t stranger = 0xdead000;  // volatile: an address the compiler cannot see through
  for (CUstream s : {static_cast<CUstream>(nullptr), CU_STREAM_LEGACY, CU_STREAM_PER_THREAD,
                     reinterpret_cast<CUstream>(stranger)}) {
    CHECK_FALSE(vh::is_virtual(s));
    CHECK(vh::real(s) == s);
  }
  // Re-pointing the object is what a restore does: the program's copy keeps working.
  o->real = reinterpret_cast<void*>(0x5678);
  CHECK(vh::real(h) == reinterpret_cast<CUstream>(0x5678));
  vh::release(o);
}

TEST_CASE("released slots are not reused at once; serials tell reuses apart", "[handles]") {
  shim_test::init();
  vh::Obj* a = vh::make(vh::Kind::Event, reinterpret_cast<void*>(1), nullptr);
  uint32_t serial = a->serial;
  vh::release(a);
  std::set<vh::Obj*> seen;
  for (int i = 0; i < 8; i++) {
    vh::Obj* b = vh::make(vh::Kind::Event, reinterpret_cast<void*>(2), nullptr);
    CHECK(b != a);
    seen.insert(b);
  }
  CHECK(seen.size() == 8);
  for (vh::Obj* b : seen) {
    CHECK(b->serial != serial);
    vh::release(b);
  }
}

TEST_CASE("allocation handles translate as integers", "[handles]") {
  shim_test::init();
  vh::Obj* o = vh::make(vh::Kind::Alloc, reinterpret_cast<void*>(uintptr_t{0xabc}), nullptr);
  auto h = static_cast<CUmemGenericAllocationHandle>(reinterpret_cast<uintptr_t>(o));
  CHECK(vh::real_alloc(h) == 0xabc);
  volatile CUmemGenericAllocationHandle other = 42;  // not one of ours (volatile: not constant-folded)
  CHECK(vh::real_alloc(other) == 42);
  vh::release(o);
}

TEST_CASE("device ordinals go through the device map both ways", "[handles]") {
  shim_test::init();
  REQUIRE(vh::g_device_count == 2);
  CHECK(vh::real_device(0) == 0);
  CHECK(vh::real_device(1) == 1);
  vh::g_vdev_to_pdev[0] = 1, vh::g_vdev_to_pdev[1] = 0;
  vh::g_pdev_to_vdev[0] = 1, vh::g_pdev_to_vdev[1] = 0;
  CHECK(vh::real_device(0) == 1);
  CHECK(vh::virtual_device(1) == 0);
  CHECK(vh::real_device(5) == 5);  // out of range: unchanged (the driver says it is invalid)
  CUmemLocation l{};
  l.type = CU_MEM_LOCATION_TYPE_DEVICE;
  l.id = 0;
  vh::to_real(l);
  CHECK(l.id == 1);
  vh::to_virtual(l);
  CHECK(l.id == 0);
  l.type = CU_MEM_LOCATION_TYPE_HOST;
  l.id = 0;
  vh::to_real(l);
  CHECK(l.id == 0);  // only device locations are translated
  vh::g_vdev_to_pdev[0] = 0, vh::g_vdev_to_pdev[1] = 1;
  vh::g_pdev_to_vdev[0] = 0, vh::g_pdev_to_vdev[1] = 1;
}

TEST_CASE("a record is found only behind a handle of its kind", "[handles]") {
  shim_test::init();
  int rec = 1;
  vh::Obj* o = vh::make(vh::Kind::Pool, reinterpret_cast<void*>(9), &rec);
  auto pool = vh::as<CUmemoryPool>(o);
  CHECK(vh::rec_of<int>(pool, vh::Kind::Pool) == &rec);
  CHECK(vh::rec_of<int>(pool, vh::Kind::Stream) == nullptr);
  CHECK(vh::rec_of<int>(static_cast<CUmemoryPool>(nullptr), vh::Kind::Pool) == nullptr);
  vh::release(o);
}
