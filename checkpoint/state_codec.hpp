// How the serialized state writes what is not JSON-native: handles and addresses as
// hex text, CUDA property structs as the hex of their bytes.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>

#include <nlohmann/json.hpp>

namespace ferry::engine {

inline std::string hex(uint64_t v) {
  char b[24];
  snprintf(b, sizeof b, "0x%llx", static_cast<unsigned long long>(v));
  return b;
}
inline std::string hex(const void* p) { return hex(reinterpret_cast<uint64_t>(p)); }
inline uint64_t unhex(const nlohmann::json& j) { return std::stoull(j.get<std::string>(), nullptr, 16); }

// Raw bytes of a POD as hex text (CUDA property structs), and back.
template <class T>
std::string pod_hex(const T& v) {
  const auto* b = reinterpret_cast<const unsigned char*>(&v);
  std::string s;
  char t[3];
  for (size_t i = 0; i < sizeof v; i++) {
    snprintf(t, sizeof t, "%02x", b[i]);
    s += t;
  }
  return s;
}
template <class T>
T pod_unhex(const std::string& s) {
  T v{};
  auto* b = reinterpret_cast<unsigned char*>(&v);
  for (size_t i = 0; i < sizeof v && 2 * i + 1 < s.size(); i++) b[i] = static_cast<unsigned char>(std::stoi(s.substr(2 * i, 2), nullptr, 16));
  return v;
}

}  // namespace ferry::engine
