// The answer cudart expects from INTEGRITY_CHECK[1] (specified in
// docs/driver-facts.md §7): HMAC-MD2 with a fixed 16-byte key over the
// driver version, the call's version, pid, thread, the two table addresses handed to
// cudart, the called slot's address, cudart's timestamp and every device's UUID and
// PCI ids. Versions ending in 0 and 1 get fixed answers. Header-only and free of
// driver state so the shim can re-hash tables it substitutes with the same code.
#pragma once

#include <pthread.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

namespace ferry::integrity {

struct DeviceIdentity {
  unsigned char uuid[16];
  int32_t pci_domain, pci_bus, pci_device;
};

struct Inputs {
  uint32_t driver_version;
  uint32_t version;
  uint32_t pid;
  uint32_t tid;  // low 32 bits of pthread_self()
  uint64_t cudart_table;
  uint64_t integrity_table;
  uint64_t fn_address;
  uint64_t unix_seconds;
  std::vector<DeviceIdentity> devices;
};

// The inputs of a call made on this thread now, for the tables at these addresses
// (the called function is the integrity table's slot 1); the devices are the caller's.
inline Inputs inputs_here(uint32_t driver_version, uint32_t version, uint64_t unix_seconds, const void* cudart_table,
                          void* const* integrity_table) {
  Inputs in{};
  in.driver_version = driver_version;
  in.version = version;
  in.pid = static_cast<uint32_t>(getpid());
  in.tid = static_cast<uint32_t>(pthread_self());
  in.cudart_table = reinterpret_cast<uint64_t>(cudart_table);
  in.integrity_table = reinterpret_cast<uint64_t>(integrity_table);
  in.fn_address = reinterpret_cast<uint64_t>(integrity_table[1]);
  in.unix_seconds = unix_seconds;
  return in;
}

namespace detail {
// RFC 1319's permutation of 0..255 built from the digits of pi.
inline const unsigned char* md2_sbox() {
  static const unsigned char s[256] = {
      0x29, 0x2e, 0x43, 0xc9, 0xa2, 0xd8, 0x7c, 0x01, 0x3d, 0x36, 0x54, 0xa1, 0xec, 0xf0, 0x06, 0x13, 0x62, 0xa7, 0x05,
      0xf3, 0xc0, 0xc7, 0x73, 0x8c, 0x98, 0x93, 0x2b, 0xd9, 0xbc, 0x4c, 0x82, 0xca, 0x1e, 0x9b, 0x57, 0x3c, 0xfd, 0xd4,
      0xe0, 0x16, 0x67, 0x42, 0x6f, 0x18, 0x8a, 0x17, 0xe5, 0x12, 0xbe, 0x4e, 0xc4, 0xd6, 0xda, 0x9e, 0xde, 0x49, 0xa0,
      0xfb, 0xf5, 0x8e, 0xbb, 0x2f, 0xee, 0x7a, 0xa9, 0x68, 0x79, 0x91, 0x15, 0xb2, 0x07, 0x3f, 0x94, 0xc2, 0x10, 0x89,
      0x0b, 0x22, 0x5f, 0x21, 0x80, 0x7f, 0x5d, 0x9a, 0x5a, 0x90, 0x32, 0x27, 0x35, 0x3e, 0xcc, 0xe7, 0xbf, 0xf7, 0x97,
      0x03, 0xff, 0x19, 0x30, 0xb3, 0x48, 0xa5, 0xb5, 0xd1, 0xd7, 0x5e, 0x92, 0x2a, 0xac, 0x56, 0xaa, 0xc6, 0x4f, 0xb8,
      0x38, 0xd2, 0x96, 0xa4, 0x7d, 0xb6, 0x76, 0xfc, 0x6b, 0xe2, 0x9c, 0x74, 0x04, 0xf1, 0x45, 0x9d, 0x70, 0x59, 0x64,
      0x71, 0x87, 0x20, 0x86, 0x5b, 0xcf, 0x65, 0xe6, 0x2d, 0xa8, 0x02, 0x1b, 0x60, 0x25, 0xad, 0xae, 0xb0, 0xb9, 0xf6,
      0x1c, 0x46, 0x61, 0x69, 0x34, 0x40, 0x7e, 0x0f, 0x55, 0x47, 0xa3, 0x23, 0xdd, 0x51, 0xaf, 0x3a, 0xc3, 0x5c, 0xf9,
      0xce, 0xba, 0xc5, 0xea, 0x26, 0x2c, 0x53, 0x0d, 0x6e, 0x85, 0x28, 0x84, 0x09, 0xd3, 0xdf, 0xcd, 0xf4, 0x41, 0x81,
      0x4d, 0x52, 0x6a, 0xdc, 0x37, 0xc8, 0x6c, 0xc1, 0xab, 0xfa, 0x24, 0xe1, 0x7b, 0x08, 0x0c, 0xbd, 0xb1, 0x4a, 0x78,
      0x88, 0x95, 0x8b, 0xe3, 0x63, 0xe8, 0x6d, 0xe9, 0xcb, 0xd5, 0xfe, 0x3b, 0x00, 0x1d, 0x39, 0xf2, 0xef, 0xb7, 0x0e,
      0x66, 0x58, 0xd0, 0xe4, 0xa6, 0x77, 0x72, 0xf8, 0xeb, 0x75, 0x4b, 0x0a, 0x31, 0x44, 0x50, 0xb4, 0x8f, 0xed, 0x1f,
      0x1a, 0xdb, 0x99, 0x8d, 0x33, 0x9f, 0x11, 0x83, 0x14};
  return s;
}

inline void md2_compress(unsigned char x[48], const unsigned char b[16]) {
  const unsigned char* s = md2_sbox();
  for (int j = 0; j < 16; j++) {
    x[16 + j] = b[j];
    x[32 + j] = static_cast<unsigned char>(b[j] ^ x[j]);
  }
  unsigned t = 0;
  for (unsigned round = 0; round < 18; round++) {
    for (int k = 0; k < 48; k++) {
      x[k] = static_cast<unsigned char>(x[k] ^ s[t]);
      t = x[k];
    }
    t = (t + round) & 0xff;
  }
}
}  // namespace detail

// MD2 (RFC 1319) of `data`, 16 bytes into `out`.
inline void md2(const unsigned char* data, size_t n, unsigned char out[16]) {
  const unsigned char* s = detail::md2_sbox();
  std::vector<unsigned char> m(data, data + n);
  size_t pad = 16 - (n % 16);
  m.insert(m.end(), pad, static_cast<unsigned char>(pad));
  unsigned char x[48] = {}, c[16] = {};
  unsigned char l = 0;
  for (size_t off = 0; off < m.size(); off += 16) {
    const unsigned char* b = &m[off];
    for (int j = 0; j < 16; j++) {
      c[j] = static_cast<unsigned char>(c[j] ^ s[b[j] ^ l]);
      l = c[j];
    }
    detail::md2_compress(x, b);
  }
  detail::md2_compress(x, c);
  std::memcpy(out, x, 16);
}

// Fills result[16]; the layout of the message is little-endian with no padding.
inline void compute(const Inputs& in, unsigned char result[16]) {
  static const unsigned char fixed0[16] = {0x5c, 0x67, 0xcb, 0x03, 0x1c, 0x18, 0x41, 0x33,
                                           0xe8, 0xd1, 0x4c, 0x1f, 0xaa, 0x83, 0xd3, 0x8e};
  static const unsigned char fixed1[16] = {0x5c, 0x67, 0xcb, 0x03, 0x1c, 0x18, 0x41, 0x18,
                                           0xe8, 0xd1, 0x4c, 0x1f, 0xaa, 0x83, 0xd3, 0x8e};
  if (in.version % 10 == 0) return void(std::memcpy(result, fixed0, 16));
  if (in.version % 10 == 1) return void(std::memcpy(result, fixed1, 16));
  static const unsigned char key[16] = {0x14, 0x6a, 0xdd, 0xae, 0x53, 0xa9, 0xa7, 0x52,
                                        0xaa, 0x08, 0x41, 0x36, 0x0b, 0xf5, 0x5a, 0x9f};
  std::vector<unsigned char> msg;
  auto put = [&msg](uint64_t v, int bytes) {
    for (int i = 0; i < bytes; i++) msg.push_back(static_cast<unsigned char>(v >> (8 * i)));
  };
  for (int i = 0; i < 16; i++) msg.push_back(key[i] ^ 0x36);
  put(in.driver_version, 4);
  put(in.version, 4);
  put(in.pid, 4);
  put(in.tid, 4);
  put(in.cudart_table, 8);
  put(in.integrity_table, 8);
  put(in.fn_address, 8);
  put(in.unix_seconds, 8);
  for (const auto& d : in.devices) {
    msg.insert(msg.end(), d.uuid, d.uuid + 16);
    put(static_cast<uint32_t>(d.pci_domain), 4);
    put(static_cast<uint32_t>(d.pci_bus), 4);
    put(static_cast<uint32_t>(d.pci_device), 4);
  }
  unsigned char inner[16];
  md2(msg.data(), msg.size(), inner);
  unsigned char outer_msg[32];
  for (int i = 0; i < 16; i++) outer_msg[i] = key[i] ^ 0x5c;
  std::memcpy(outer_msg + 16, inner, 16);
  md2(outer_msg, 32, result);
}

}  // namespace ferry::integrity
