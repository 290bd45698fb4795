// Virtual memory management: reservations honour a free hint, physical allocations
// map (possibly at several addresses), access must be granted, unmapped memory faults.
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <string>

#include "child.hpp"
#include "emu_test.hpp"

using emu_test::primary;

namespace {
CUmemAllocationProp prop(int dev, bool fd = false) {
  CUmemAllocationProp p{};
  p.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  p.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  p.location.id = dev;
  if (fd) p.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
  return p;
}
CUmemAccessDesc rw(int dev) {
  CUmemAccessDesc d{};
  d.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  d.location.id = dev;
  d.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  return d;
}
// Whether reading addr faults: the kernel cannot copy from it either (EFAULT). (Not a
// forked child's load: a child sees none of the device memory.)
bool faults(uintptr_t addr) {
  int p[2];
  if (pipe(p) != 0) return false;
  ssize_t n = write(p[1], reinterpret_cast<const void*>(addr), 1);
  int e = errno;
  close(p[0]);
  close(p[1]);
  return n < 0 && e == EFAULT;
}

// How many of this process's descriptors name `link`.
int fds_naming(const std::string& link) {
  int n = 0;
  std::error_code ec;
  for (auto& e : std::filesystem::directory_iterator("/proc/self/fd", ec))
    if (std::filesystem::read_symlink(e.path(), ec).string() == link) n++;
  return n;
}
}  // namespace

TEST_CASE("granularity and the reservation hint", "[vmm]") {
  primary(0);
  CUmemAllocationProp p = prop(0);
  size_t g = 0;
  CU_OK(cuMemGetAllocationGranularity(&g, &p, CU_MEM_ALLOC_GRANULARITY_MINIMUM));
  REQUIRE(g == (2u << 20));
  const CUdeviceptr hint = 0x6a0000000000ull;  // clear of ASan's allocator at 0x600000000000
  CUdeviceptr r;
  const size_t big = 512 * g;  // 1 GiB: smaller reservations ignore the hint, as on an H200
  CU_OK(cuMemAddressReserve(&r, big, 0, hint, 0));
  REQUIRE(r == hint);
  // The same hint again is taken: the driver picks another address.
  CUdeviceptr r2;
  CU_OK(cuMemAddressReserve(&r2, big, 0, hint, 0));
  REQUIRE(r2 != hint);
  CU_OK(cuMemAddressFree(r2, big));
  // A free address, but a small reservation: placed where the driver likes.
  const CUdeviceptr free_hint = hint + 4 * big;
  CU_OK(cuMemAddressReserve(&r2, 2 * g, 0, free_hint, 0));
  REQUIRE(r2 != free_hint);
  CU_OK(cuMemAddressFree(r2, 2 * g));
  // A hint over existing host mappings is not honoured either.
  void* host = mmap(nullptr, 4 * g, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  CUdeviceptr aligned = (reinterpret_cast<CUdeviceptr>(host) + g - 1) / g * g;
  CUdeviceptr r3;
  CU_OK(cuMemAddressReserve(&r3, g, 0, aligned, 0));
  REQUIRE(r3 != aligned);
  CU_OK(cuMemAddressFree(r3, g));
  munmap(host, 4 * g);
  REQUIRE(cuMemAddressReserve(&r3, g + 1, 0, 0, 0) == CUDA_ERROR_INVALID_VALUE);
  CU_OK(cuMemAddressFree(r, big));
  REQUIRE(cuMemAddressFree(r, big) == CUDA_ERROR_INVALID_VALUE);
}

TEST_CASE("create, map, grant access, use, unmap, release", "[vmm]") {
  primary(0);
  const size_t g = 2u << 20;
  size_t free0, total;
  CU_OK(cuMemGetInfo(&free0, &total));
  CUdeviceptr r;
  CU_OK(cuMemAddressReserve(&r, 8 * g, 0, 0, 0));
  CUmemAllocationProp p = prop(0);
  CUmemGenericAllocationHandle h;
  CU_OK(cuMemCreate(&h, 2 * g, &p, 0));
  size_t free1;
  CU_OK(cuMemGetInfo(&free1, &total));
  REQUIRE(free1 == free0 - 2 * g);
  CU_OK(cuMemMap(r, 2 * g, 0, h, 0));
  // Mapped, but not yet accessible.
  int v = 42;
  REQUIRE(cuMemcpyHtoD(r, &v, 4) == CUDA_ERROR_INVALID_VALUE);
  REQUIRE(faults(r));
  CUmemAccessDesc a = rw(0);
  CU_OK(cuMemSetAccess(r, 2 * g, &a, 1));
  CU_OK(cuMemcpyHtoD(r + g + 8, &v, 4));
  REQUIRE_FALSE(faults(r + g + 8));
  // The same physical memory at a second address sees the same bytes.
  CU_OK(cuMemMap(r + 4 * g, 2 * g, 0, h, 0));
  CU_OK(cuMemSetAccess(r + 4 * g, 2 * g, &a, 1));
  int w = 0;
  CU_OK(cuMemcpyDtoH(&w, r + 5 * g + 8, 4));
  REQUIRE(w == 42);
  REQUIRE(cuMemMap(r + g, g, 0, h, 0) == CUDA_ERROR_INVALID_VALUE);  // overlaps a mapping
  // Kernels see it too.
  CUfunction f = emu_test::kernel("add_one");
  CUdeviceptr at = r + g + 8;
  int one = 1;
  CU_OK(emu_test::launch(f, 1, 1, {&at, &one}));
  CU_OK(cuCtxSynchronize());
  CU_OK(cuMemcpyDtoH(&w, r + 5 * g + 8, 4));
  REQUIRE(w == 43);
  CUmemGenericAllocationHandle again;
  CU_OK(cuMemRetainAllocationHandle(&again, reinterpret_cast<void*>(r)));
  REQUIRE(again == h);
  CU_OK(cuMemRelease(again));
  CU_OK(cuMemUnmap(r, 2 * g));
  REQUIRE(faults(r + g + 8));
  REQUIRE(cuMemcpyDtoH(&w, r + g + 8, 4) == CUDA_ERROR_INVALID_VALUE);
  CU_OK(cuMemRelease(h));  // still mapped at r + 4g: memory stays
  CU_OK(cuMemcpyDtoH(&w, r + 5 * g + 8, 4));
  REQUIRE(w == 43);
  CU_OK(cuMemUnmap(r + 4 * g, 2 * g));
  CU_OK(cuMemGetInfo(&free1, &total));
  REQUIRE(free1 == free0);
  CU_OK(cuMemAddressFree(r, 8 * g));
}

TEST_CASE("a child forked without exec sees none of the device memory (a GPU's is not in the process): VMM and "
          "allocations inaccessible, no device memory file; the driver's file stays; the parent keeps its memory",
          "[vmm][fork]") {
  primary(0);
  const size_t g = 2u << 20;
  CUdeviceptr r;
  CU_OK(cuMemAddressReserve(&r, 2 * g, 0, 0, 0));
  CUmemAllocationProp p = prop(0);
  CUmemGenericAllocationHandle h;
  CU_OK(cuMemCreate(&h, 2 * g, &p, 0));
  CU_OK(cuMemMap(r, 2 * g, 0, h, 0));
  CUmemAccessDesc a = rw(0);
  CU_OK(cuMemSetAccess(r, 2 * g, &a, 1));
  CUdeviceptr d;
  CU_OK(cuMemAlloc(&d, 4096));
  int v = 42;
  CU_OK(cuMemcpyHtoD(r + 8, &v, 4));
  CU_OK(cuMemcpyHtoD(d, &v, 4));
  REQUIRE(fds_naming("/memfd:ferry-emu-vram (deleted)") == 1);
  REQUIRE(fds_naming("anon_inode:[userfaultfd]") == 1);
  std::string got = ferry_test::report_from_child([&] {
    return std::string(faults(r + 8) ? "VMM inaccessible" : "VMM readable") + ", " +
           (faults(d) ? "allocation inaccessible" : "allocation readable") + ", device memory files " +
           std::to_string(fds_naming("/memfd:ferry-emu-vram (deleted)")) + ", driver files " +
           std::to_string(fds_naming("anon_inode:[userfaultfd]"));
  });
  CHECK(got == "VMM inaccessible, allocation inaccessible, device memory files 0, driver files 1");
  int w = 0, x = 0;
  CU_OK(cuMemcpyDtoH(&w, r + 8, 4));
  CU_OK(cuMemcpyDtoH(&x, d, 4));
  CHECK(w == 42);
  CHECK(x == 42);
  CHECK_FALSE(faults(r + 8));
  CU_OK(cuMemAlloc(&d, 4096));  // the driver's lock is free again after a fork
}

TEST_CASE("physical memory of one device can be mapped for another and shared by fd", "[vmm]") {
  primary(0);
  const size_t g = 2u << 20;
  CUmemAllocationProp p = prop(2, true);
  CUmemGenericAllocationHandle h;
  CU_OK(cuMemCreate(&h, g, &p, 0));
  CUdeviceptr r;
  CU_OK(cuMemAddressReserve(&r, g, 0, 0, 0));
  CU_OK(cuMemMap(r, g, 0, h, 0));
  CUmemAccessDesc a = rw(0);
  CU_OK(cuMemSetAccess(r, g, &a, 1));
  int dev = -1;
  CU_OK(cuPointerGetAttribute(&dev, CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, r));
  REQUIRE(dev == 2);
  int fd = -1;
  CU_OK(cuMemExportToShareableHandle(&fd, h, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0));
  REQUIRE(fd >= 0);
  CUmemGenericAllocationHandle imported;
  CU_OK(cuMemImportFromShareableHandle(&imported, reinterpret_cast<void*>(static_cast<intptr_t>(fd)),
                                       CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR));
  close(fd);
  CUdeviceptr r2;
  CU_OK(cuMemAddressReserve(&r2, g, 0, 0, 0));
  CU_OK(cuMemMap(r2, g, 0, imported, 0));
  CU_OK(cuMemSetAccess(r2, g, &a, 1));
  unsigned x = 0xfeedbeef, y = 0;
  CU_OK(cuMemcpyHtoD(r + 100, &x, 4));
  CU_OK(cuMemcpyDtoH(&y, r2 + 100, 4));
  REQUIRE(y == x);
  for (CUdeviceptr addr : {r, r2}) CU_OK(cuMemUnmap(addr, g));
  CU_OK(cuMemRelease(h));
  CU_OK(cuMemRelease(imported));
  CU_OK(cuMemAddressFree(r, g));
  CU_OK(cuMemAddressFree(r2, g));
}
