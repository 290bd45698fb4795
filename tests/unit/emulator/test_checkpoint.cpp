// The driver's checkpoint on the simulated GPU lets go of device memory as a GPU's
// driver does: the contents move into the process's own memory, the device pages are
// dropped, and a restore puts back every byte (the process checkpoints itself here).
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <vector>

#include "emu_test.hpp"

using emu_test::primary;

namespace {

// How many of the pages of [p, p+n) are resident.
size_t resident_pages(CUdeviceptr p, size_t n) {
  std::vector<unsigned char> v(n / 4096);
  REQUIRE(mincore(reinterpret_cast<void*>(p), n, v.data()) == 0);
  size_t k = 0;
  for (unsigned char c : v) k += c & 1;
  return k;
}

// A pattern with whole pages of zeros in it (the emulator keeps no copy of those).
std::vector<uint32_t> pattern(size_t bytes, uint32_t seed) {
  std::vector<uint32_t> v(bytes / 4);
  for (size_t i = 0; i < v.size(); i++) v[i] = (i / 1024) % 3 == 1 ? 0 : static_cast<uint32_t>(i * 2654435761u + seed);
  return v;
}

}  // namespace

TEST_CASE("the driver's checkpoint moves device memory into the process and a restore brings back every byte",
          "[checkpoint]") {
  primary(0);
  const size_t n = 8u << 20;
  CUdeviceptr heap = 0;
  CU_OK(cuMemAlloc(&heap, n));
  CUmemAllocationProp prop{};
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  prop.location.id = 0;
  CUmemGenericAllocationHandle h = 0;
  CU_OK(cuMemCreate(&h, n, &prop, 0));
  CUdeviceptr va = 0;
  CU_OK(cuMemAddressReserve(&va, n, 0, 0, 0));
  CU_OK(cuMemMap(va, n, 0, h, 0));
  CUmemAccessDesc rw{};
  rw.location = prop.location;
  rw.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  CU_OK(cuMemSetAccess(va, n, &rw, 1));
  auto a = pattern(n, 1), b = pattern(n, 7);
  CU_OK(cuMemcpyHtoD(heap, a.data(), n));
  CU_OK(cuMemcpyHtoD(va, b.data(), n));
  CHECK(resident_pages(heap, n) > 0);
  CHECK(resident_pages(va, n) > 0);

  const int me = getpid();
  CUcheckpointLockArgs lock{};
  lock.timeoutMs = 10000;
  CU_OK(cuCheckpointProcessLock(me, &lock));
  CU_OK(cuCheckpointProcessCheckpoint(me, nullptr));
  // Released: no page of either allocation is left (CRIU would find nothing there).
  CHECK(resident_pages(heap, n) == 0);
  CHECK(resident_pages(va, n) == 0);
  CU_OK(cuCheckpointProcessRestore(me, nullptr));
  CU_OK(cuCheckpointProcessUnlock(me, nullptr));

  std::vector<uint32_t> got(n / 4);
  CU_OK(cuMemcpyDtoH(got.data(), heap, n));
  CHECK(got == a);
  CU_OK(cuMemcpyDtoH(got.data(), va, n));
  CHECK(got == b);
  CU_OK(cuMemUnmap(va, n));
  CU_OK(cuMemRelease(h));
  CU_OK(cuMemAddressFree(va, n));
  CU_OK(cuMemFree(heap));
}
