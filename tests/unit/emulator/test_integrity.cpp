// The export tables and the integrity check cudart verifies (notes §6-7).
#include <pthread.h>
#include <unistd.h>

#include <cstdio>

#include "emu_test.hpp"
#include <ferry_common/integrity.hpp>

namespace {

std::string hex(const unsigned char* p, size_t n) {
  std::string s;
  char b[3];
  for (size_t i = 0; i < n; i++) {
    snprintf(b, sizeof b, "%02x", p[i]);
    s += b;
  }
  return s;
}

const void* table(const unsigned char (&uuid)[16]) {
  CUuuid id;
  memcpy(id.bytes, uuid, 16);
  const void* t = nullptr;
  REQUIRE(cuGetExportTable(&t, &id) == CUDA_SUCCESS);
  return t;
}

const unsigned char kCudartInterface[16] = {0x6b, 0xd5, 0xfb, 0x6c, 0x5b, 0xf4, 0xe7, 0x4a,
                                            0x89, 0x87, 0xd9, 0x39, 0x12, 0xfd, 0x9d, 0xf9};
const unsigned char kIntegrity[16] = {0xd4, 0x08, 0x20, 0x55, 0xbd, 0xe6, 0x70, 0x4b,
                                      0x8d, 0x34, 0xba, 0x12, 0x3c, 0x66, 0xe1, 0xf2};
const unsigned char kCls[16] = {0xc6, 0x93, 0x33, 0x6e, 0x11, 0x21, 0xdf, 0x11,
                                0xa8, 0xc3, 0x68, 0xf3, 0x55, 0xd8, 0x95, 0x93};
const unsigned char kBypass[16] = {0xf8, 0xcf, 0xf9, 0x51, 0x21, 0x46, 0x8b, 0x4e,
                                   0xb9, 0xe2, 0xfb, 0x46, 0x9e, 0x7c, 0x0d, 0xd9};

}  // namespace

TEST_CASE("MD2 matches RFC 1319", "[integrity]") {
  unsigned char out[16];
  ferry::integrity::md2(reinterpret_cast<const unsigned char*>(""), 0, out);
  REQUIRE(hex(out, 16) == "8350e5a3e24c153df2275c9f80692773");
  ferry::integrity::md2(reinterpret_cast<const unsigned char*>("abc"), 3, out);
  REQUIRE(hex(out, 16) == "da853b0d3f88d99b30283a69e6ded6bb");
  const char* alpha = "abcdefghijklmnopqrstuvwxyz";
  ferry::integrity::md2(reinterpret_cast<const unsigned char*>(alpha), 26, out);
  REQUIRE(hex(out, 16) == "4e8ddff3650292ab5a4108c3aa47940b");
}

TEST_CASE("integrity HMAC matches the specification's test vectors", "[integrity]") {
  ferry::integrity::Inputs in{};
  in.driver_version = 13000;
  in.version = 13002;
  in.pid = 4242;
  in.tid = 0x9e1c6740;
  in.cudart_table = 0x00007f0000101000ull;
  in.integrity_table = 0x00007f0000102000ull;
  in.fn_address = 0x00007f0000003210ull;
  in.unix_seconds = 1795698678;
  ferry::integrity::DeviceIdentity d{};
  for (int i = 0; i < 16; i++) d.uuid[i] = static_cast<unsigned char>(i + 1);
  d.pci_bus = 0x17;
  in.devices.push_back(d);
  unsigned char out[16];
  ferry::integrity::compute(in, out);
  REQUIRE(hex(out, 16) == "266f8f7ca36d937a891b08ba7ce3ad89");  // vector A
  in.devices.clear();
  ferry::integrity::compute(in, out);
  REQUIRE(hex(out, 16) == "7270f2b0e1deb6fbb470ddfe6cce52f8");  // vector B
  in.version = 13000;
  ferry::integrity::compute(in, out);
  REQUIRE(hex(out, 16) == "5c67cb031c184133e8d14c1faa83d38e");
  in.version = 13001;
  ferry::integrity::compute(in, out);
  REQUIRE(hex(out, 16) == "5c67cb031c184118e8d14c1faa83d38e");
}

TEST_CASE("export tables have the layout cudart reads", "[integrity]") {
  REQUIRE(cuInit(0) == CUDA_SUCCESS);
  auto* cudart = static_cast<void* const*>(table(kCudartInterface));
  REQUIRE(reinterpret_cast<uintptr_t>(cudart[0]) == 13 * sizeof(void*));
  for (int i = 1; i < 13; i++) REQUIRE(cudart[i] != nullptr);
  auto* cls = static_cast<void* const*>(table(kCls));
  REQUIRE(reinterpret_cast<uintptr_t>(cls[0]) > 0x10000);  // no size word: slot 0 is a function
  CUuuid bypass;
  memcpy(bypass.bytes, kBypass, 16);
  const void* t = nullptr;
  REQUIRE(cuGetExportTable(&t, &bypass) == CUDA_ERROR_INVALID_VALUE);

  // CUDART_INTERFACE[2] hands out the primary context without activating it.
  auto get_primary = reinterpret_cast<CUresult (*)(CUcontext*, CUdevice)>(cudart[2]);
  CUcontext c = nullptr;
  REQUIRE(get_primary(&c, 1) == CUDA_SUCCESS);
  unsigned flags = 1;
  int active = 1;
  REQUIRE(cuDevicePrimaryCtxGetState(1, &flags, &active) == CUDA_SUCCESS);
  REQUIRE(active == 0);
  CUcontext retained = nullptr;
  REQUIRE(cuDevicePrimaryCtxRetain(&retained, 1) == CUDA_SUCCESS);
  REQUIRE(retained == c);
  REQUIRE(cuDevicePrimaryCtxRelease(1) == CUDA_SUCCESS);
}

TEST_CASE("the integrity slot hashes this process, thread, tables and devices", "[integrity]") {
  REQUIRE(cuInit(0) == CUDA_SUCCESS);
  auto* cudart = static_cast<void* const*>(table(kCudartInterface));
  auto* ic = static_cast<void* const*>(table(kIntegrity));
  REQUIRE(reinterpret_cast<uintptr_t>(ic[0]) == 3 * sizeof(void*));
  auto check = reinterpret_cast<CUresult (*)(uint32_t, uint64_t, uint64_t*)>(ic[1]);
  uint64_t got[2] = {};
  REQUIRE(check(13002, 1795698678, got) == CUDA_SUCCESS);

  ferry::integrity::Inputs in{};
  in.driver_version = 13000;
  in.version = 13002;
  in.pid = static_cast<uint32_t>(getpid());
  in.tid = static_cast<uint32_t>(pthread_self());
  in.cudart_table = reinterpret_cast<uint64_t>(cudart);
  in.integrity_table = reinterpret_cast<uint64_t>(ic);
  in.fn_address = reinterpret_cast<uint64_t>(ic[1]);
  in.unix_seconds = 1795698678;
  int n = 0;
  REQUIRE(cuDeviceGetCount(&n) == CUDA_SUCCESS);
  for (int d = 0; d < n; d++) {
    ferry::integrity::DeviceIdentity id{};
    CUuuid u;
    REQUIRE(cuDeviceGetUuid(&u, d) == CUDA_SUCCESS);
    memcpy(id.uuid, u.bytes, 16);
    REQUIRE(cuDeviceGetAttribute(&id.pci_domain, CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID, d) == CUDA_SUCCESS);
    REQUIRE(cuDeviceGetAttribute(&id.pci_bus, CU_DEVICE_ATTRIBUTE_PCI_BUS_ID, d) == CUDA_SUCCESS);
    REQUIRE(cuDeviceGetAttribute(&id.pci_device, CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID, d) == CUDA_SUCCESS);
    in.devices.push_back(id);
  }
  unsigned char want[16];
  ferry::integrity::compute(in, want);
  REQUIRE(memcmp(got, want, 16) == 0);
}
