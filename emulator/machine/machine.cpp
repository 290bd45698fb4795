#include "machine.hpp"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include <ferry_common/settings.hpp>

namespace ferry::emu {

int machine_device_count() {
  long n = ferry::settings::count("FERRY_EMU_DEVICES", 2);
  return static_cast<int>(std::clamp<long>(n, 0, kMaxDevices));
}

std::string uuid_hex(const CUuuid& u) {
  char b[33];
  for (int i = 0; i < 16; i++) snprintf(b + 2 * i, 3, "%02x", static_cast<unsigned char>(u.bytes[i]));
  return b;
}

size_t parse_size(const char* s, size_t dflt) {
  if (!s || !*s) return dflt;
  auto v = ferry::settings::parse_size(s);
  return v ? static_cast<size_t>(*v) : dflt;
}

namespace {

// FERRY_EMU_DEVICE<n>="name=...,memory=8G,held=2G,cc=8.0,sms=108,uuid=<32 hex>,pci=0000:3b:00.0"
void apply_spec(DeviceConfig& c, const char* spec) {
  std::string s(spec);
  size_t pos = 0;
  while (pos < s.size()) {
    size_t comma = s.find(',', pos);
    std::string item = s.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    pos = comma == std::string::npos ? s.size() : comma + 1;
    size_t eq = item.find('=');
    if (eq == std::string::npos) continue;
    std::string k = item.substr(0, eq), v = item.substr(eq + 1);
    if (k == "name") {
      c.name = v;
    } else if (k == "memory") {
      c.total_mem = parse_size(v.c_str(), c.total_mem);
    } else if (k == "held") {
      c.held = parse_size(v.c_str(), 0);
    } else if (k == "cc") {
      int maj = 0, min = 0;
      if (sscanf(v.c_str(), "%d.%d", &maj, &min) >= 1) c.cc_major = maj, c.cc_minor = min;
    } else if (k == "sms") {
      c.sm_count = atoi(v.c_str());
    } else if (k == "uuid") {
      std::string hex;
      for (char ch : v)
        if (isxdigit(static_cast<unsigned char>(ch))) hex += ch;
      if (hex.size() == 32)
        for (int i = 0; i < 16; i++) c.uuid.bytes[i] = static_cast<char>(std::stoi(hex.substr(2 * i, 2), nullptr, 16));
    } else if (k == "pci") {
      unsigned dom = 0, bus = 0, dev = 0, fn = 0;
      if (sscanf(v.c_str(), "%x:%x:%x.%x", &dom, &bus, &dev, &fn) >= 3)
        c.pci_domain = static_cast<int>(dom), c.pci_bus = static_cast<int>(bus), c.pci_device = static_cast<int>(dev);
    }
  }
}

}  // namespace

DeviceConfig machine_device(int i) {
  DeviceConfig c;
  c.name = "ferry emulated GPU";
  c.total_mem = ferry::settings::size("FERRY_EMU_MEMORY", 16ull << 30);
  if (const char* cc = ferry::settings::raw("FERRY_EMU_CC")) sscanf(cc, "%d.%d", &c.cc_major, &c.cc_minor);
  const char tag[] = "ferry-emu-gpu";
  memcpy(c.uuid.bytes, tag, sizeof tag - 1);
  c.uuid.bytes[14] = static_cast<char>(0x40);
  c.uuid.bytes[15] = static_cast<char>(i);
  c.pci_bus = 0x17 + 0x10 * i;
  char var[32];
  snprintf(var, sizeof var, "FERRY_EMU_DEVICE%d", i);
  if (const char* spec = ferry::settings::raw(var)) apply_spec(c, spec);
  if (c.total_mem < kGranularity) c.total_mem = kGranularity;
  c.held = std::min(c.held, c.total_mem);
  return c;
}


}  // namespace ferry::emu
