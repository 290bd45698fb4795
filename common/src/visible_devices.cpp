#include "ferry_common/visible_devices.hpp"

#include <algorithm>
#include <cctype>

namespace ferry {

std::vector<int> visible_devices(const std::string& spec, const std::vector<std::string>& machine) {
  std::vector<int> v;
  const bool uuids = spec.rfind("GPU-", 0) == 0;
  size_t pos = 0;
  while (pos <= spec.size()) {
    size_t comma = spec.find(',', pos);
    std::string e = spec.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    pos = comma == std::string::npos ? spec.size() + 1 : comma + 1;
    int found = -1;
    if (uuids) {
      std::string want;
      if (e.rfind("GPU-", 0) == 0)
        for (char c : e.substr(4))
          if (c != '-') want += static_cast<char>(tolower(static_cast<unsigned char>(c)));
      int matches = 0;
      for (size_t i = 0; i < machine.size() && !want.empty(); i++)
        if (machine[i].rfind(want, 0) == 0) found = static_cast<int>(i), matches++;
      if (matches != 1) found = -1;  // none, or ambiguous
    } else {
      size_t b = e.find_first_not_of(" \t");
      size_t d = b == std::string::npos ? std::string::npos : e.find_first_not_of("0123456789", b);
      std::string digits = b == std::string::npos ? "" : e.substr(b, d == std::string::npos ? std::string::npos : d - b);
      if (!digits.empty() && digits.size() < 6 && std::stoi(digits) < static_cast<int>(machine.size()))
        found = std::stoi(digits);
    }
    if (found < 0) break;
    if (std::find(v.begin(), v.end(), found) != v.end()) return {};
    v.push_back(found);
  }
  return v;
}

std::string gpu_uuid_text(const std::string& hex) {
  if (hex.size() != 32) return "GPU-" + hex;
  return "GPU-" + hex.substr(0, 8) + "-" + hex.substr(8, 4) + "-" + hex.substr(12, 4) + "-" + hex.substr(16, 4) + "-" +
         hex.substr(20);
}

}  // namespace ferry
