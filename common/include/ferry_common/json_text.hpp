// Names in JSON. JSON text is UTF-8; a path, a command line or a socket name need not be,
// and nlohmann::json throws when it dumps one that is not. Where the text is for a
// reader -- a report, a control reply, a manifest's informative fields -- the bad bytes
// become U+FFFD instead, so that one odd name never turns the whole into an internal
// error. Where a program reads a name back it must stay exact: callers check exact()
// first and refuse it, or keep a hex copy beside it.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

namespace ferry::json_text {

// j as JSON text, any bytes that are not UTF-8 replaced.
inline std::string lossy(const nlohmann::json& j, int indent = -1) {
  return j.dump(indent, ' ', false, nlohmann::json::error_handler_t::replace);
}

// Whether s goes into JSON as it is.
inline bool exact(const std::string& s) {
  try {
    (void)nlohmann::json(s).dump();
    return true;
  } catch (const nlohmann::json::exception&) {
    return false;
  }
}

// s as lossy() writes it and a reader gets it back.
inline std::string as_recorded(const std::string& s) { return nlohmann::json::parse(lossy(s)).get<std::string>(); }

// Bytes as lower-case hex digits, two per byte: the exact copy of a name JSON cannot
// carry (and how GPU UUIDs are written).
inline std::string hex(const std::string& bytes) {
  static const char digits[] = "0123456789abcdef";
  std::string h;
  for (unsigned char c : bytes) h += {digits[c >> 4], digits[c & 15]};
  return h;
}

// hex()'s bytes back; h's shape (an even count of hex digits) is the caller's to check.
inline std::string unhex(const std::string& h) {
  std::string bytes;
  for (size_t i = 0; i + 1 < h.size(); i += 2) bytes += static_cast<char>(std::stoi(h.substr(i, 2), nullptr, 16));
  return bytes;
}

}  // namespace ferry::json_text
