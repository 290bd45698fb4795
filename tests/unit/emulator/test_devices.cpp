// Device count, identity and limits come from the environment (set by CTest:
// FERRY_EMU_DEVICES=3, FERRY_EMU_MEMORY=1G, FERRY_EMU_DEVICE1=...).
#include "emu_test.hpp"

TEST_CASE("devices are configured by the environment", "[devices]") {
  REQUIRE(cuInit(0) == CUDA_SUCCESS);
  int n = 0;
  CU_OK(cuDeviceGetCount(&n));
  REQUIRE(n == 3);
  char name[64];
  CU_OK(cuDeviceGetName(name, sizeof name, 1));
  REQUIRE(std::string(name) == "Test GPU one");
  CU_OK(cuDeviceGetName(name, sizeof name, 0));
  REQUIRE(std::string(name) == "ferry emulated GPU");
  size_t mem = 0;
  CU_OK(cuDeviceTotalMem(&mem, 1));
  REQUIRE(mem == (512ull << 20));
  CU_OK(cuDeviceTotalMem(&mem, 0));
  REQUIRE(mem == (1ull << 30));
  int major = 0, minor = 0, sms = 0;
  CU_OK(cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, 1));
  CU_OK(cuDeviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, 1));
  CU_OK(cuDeviceGetAttribute(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, 1));
  REQUIRE(major == 8);
  REQUIRE(minor == 0);
  REQUIRE(sms == 108);
  CU_OK(cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, 0));
  REQUIRE(major == 9);
  CUuuid u;
  CU_OK(cuDeviceGetUuid(&u, 1));
  const unsigned char want[16] = {0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77,
                                  0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff};
  REQUIRE(memcmp(u.bytes, want, 16) == 0);
  char bus[32];
  CU_OK(cuDeviceGetPCIBusId(bus, sizeof bus, 1));
  REQUIRE(std::string(bus) == "00000000:3B:00.0");
  CUdevice d = -1;
  CU_OK(cuDeviceGetByPCIBusId(&d, "0000:3b:00.0"));
  REQUIRE(d == 1);
  // distinct identities
  CUuuid u0, u2;
  CU_OK(cuDeviceGetUuid(&u0, 0));
  CU_OK(cuDeviceGetUuid(&u2, 2));
  REQUIRE(memcmp(u0.bytes, u2.bytes, 16) != 0);
}

TEST_CASE("bad device ordinals and attributes are refused", "[devices]") {
  REQUIRE(cuInit(0) == CUDA_SUCCESS);
  CUdevice d;
  REQUIRE(cuDeviceGet(&d, 3) == CUDA_ERROR_INVALID_DEVICE);
  REQUIRE(cuDeviceGet(&d, -1) == CUDA_ERROR_INVALID_DEVICE);
  int v;
  REQUIRE(cuDeviceGetAttribute(&v, static_cast<CUdevice_attribute>(100000), 0) == CUDA_ERROR_INVALID_VALUE);
  CUcontext c;
  REQUIRE(cuDevicePrimaryCtxRetain(&c, 7) == CUDA_ERROR_INVALID_DEVICE);
  int drv = 0;
  CU_OK(cuDriverGetVersion(&drv));
  REQUIRE(drv == 13000);
}

namespace {
std::string uuid_of(CUdevice d) {
  CUuuid u;
  CU_OK(cuDeviceGetUuid(&u, d));
  char b[33];
  for (int i = 0; i < 16; i++) snprintf(b + 2 * i, 3, "%02x", static_cast<unsigned char>(u.bytes[i]));
  return b;
}
}  // namespace

// As the driver reads it at cuInit (each test case is a process of its own).
TEST_CASE("CUDA_VISIBLE_DEVICES: indices, read like strtoul, choose and order the devices; the first naming no "
          "device ends the list",
          "[devices]") {
  setenv("CUDA_VISIBLE_DEVICES", " 2,1gpu,7,0", 1);
  REQUIRE(cuInit(0) == CUDA_SUCCESS);
  int n = 0;
  CU_OK(cuDeviceGetCount(&n));
  REQUIRE(n == 2);
  CHECK(uuid_of(0) == "66657272792d656d752d677075004002");  // the machine's GPU 2
  CHECK(uuid_of(1) == "00112233445566778899aabbccddeeff");
  char name[64];
  CU_OK(cuDeviceGetName(name, sizeof name, 1));
  CHECK(std::string(name) == "Test GPU one");
  CUdevice d;
  CHECK(cuDeviceGet(&d, 2) == CUDA_ERROR_INVALID_DEVICE);
}

TEST_CASE("CUDA_VISIBLE_DEVICES: UUIDs or prefixes naming one GPU; an index among them ends the list", "[devices]") {
  setenv("CUDA_VISIBLE_DEVICES", "GPU-00112233-4455,GPU-66657272-792d-656d-752d-677075004002,0", 1);
  REQUIRE(cuInit(0) == CUDA_SUCCESS);
  int n = 0;
  CU_OK(cuDeviceGetCount(&n));
  REQUIRE(n == 2);
  CHECK(uuid_of(0) == "00112233445566778899aabbccddeeff");
  CHECK(uuid_of(1) == "66657272792d656d752d677075004002");
}

TEST_CASE("CUDA_VISIBLE_DEVICES: a GPU named twice leaves none", "[devices]") {
  setenv("CUDA_VISIBLE_DEVICES", "1,0,1", 1);
  CHECK(cuInit(0) == CUDA_ERROR_NO_DEVICE);
}

TEST_CASE("CUDA_VISIBLE_DEVICES: a UUID prefix naming several GPUs names none", "[devices]") {
  // Every default UUID starts "ferry-emu-gpu" (66657272...): GPUs 0, 2 and 3 match.
  setenv("FERRY_EMU_DEVICES", "4", 1);
  setenv("CUDA_VISIBLE_DEVICES", "GPU-66657272,GPU-0011", 1);
  CHECK(cuInit(0) == CUDA_ERROR_NO_DEVICE);
}

TEST_CASE("CUDA_VISIBLE_DEVICES empty: no device, cuInit fails", "[devices]") {
  setenv("CUDA_VISIBLE_DEVICES", "", 1);
  CHECK(cuInit(0) == CUDA_ERROR_NO_DEVICE);
}
