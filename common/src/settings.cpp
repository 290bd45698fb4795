#include <ferry_common/settings.hpp>

#include <signal.h>
#include <unistd.h>

#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace ferry::settings {

namespace {

bool ieq(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); i++)
    if (tolower(static_cast<unsigned char>(a[i])) != tolower(static_cast<unsigned char>(b[i]))) return false;
  return true;
}

// Written with write(2): this may run inside the shim's constructor, before stdio is
// known to be usable by the program.
void complain(const char* name, const char* value, const char* what) {
  char b[512];
  int n = snprintf(b, sizeof b, "ferry: %s=%s is not %s; using the default\n", name, value, what);
  if (n > 0) {
    ssize_t ignored = ::write(2, b, static_cast<size_t>(n) < sizeof b ? static_cast<size_t>(n) : sizeof b - 1);
    (void)ignored;
  }
}

}  // namespace

const Setting* find(std::string_view name) {
  for (const Setting& s : kSettings)
    if (name == s.name) return &s;
  for (const Setting& s : kSettings) {
    std::string_view n = s.name;
    if (n.size() > 3 && n.substr(n.size() - 3) == "<n>") {
      std::string_view stem = n.substr(0, n.size() - 3);
      if (name.size() > stem.size() && name.substr(0, stem.size()) == stem) {
        std::string_view rest = name.substr(stem.size());
        bool digits = true;
        for (char c : rest) digits = digits && isdigit(static_cast<unsigned char>(c));
        if (digits) return &s;
      }
    }
  }
  return nullptr;
}

const char* raw(const char* name) {
  if (!find(name)) {
    char b[256];
    int n = snprintf(b, sizeof b, "ferry: internal error: the setting %s is not in the settings table\n", name);
    ssize_t ignored = ::write(2, b, static_cast<size_t>(n));
    (void)ignored;
    abort();
  }
  return getenv(name);
}

std::optional<uint64_t> parse_size(std::string_view t) {
  while (!t.empty() && isspace(static_cast<unsigned char>(t.back()))) t.remove_suffix(1);
  while (!t.empty() && isspace(static_cast<unsigned char>(t.front()))) t.remove_prefix(1);
  if (t.empty()) return std::nullopt;
  unsigned shift = 0;
  // The unit: an optional "B" or "iB" after the letter, e.g. 64g, 64G, 64GB, 64GiB.
  std::string_view num = t;
  auto strip = [&](std::string_view suffix) {
    if (num.size() > suffix.size() && ieq(num.substr(num.size() - suffix.size()), suffix)) {
      num.remove_suffix(suffix.size());
      return true;
    }
    return false;
  };
  bool is_hex = t.size() > 2 && t[0] == '0' && (t[1] == 'x' || t[1] == 'X');
  if (!is_hex) {
    if (!strip("ib")) strip("b");
    if (!num.empty()) {
      switch (tolower(static_cast<unsigned char>(num.back()))) {
        case 'k': shift = 10; break;
        case 'm': shift = 20; break;
        case 'g': shift = 30; break;
        case 't': shift = 40; break;
        default: break;
      }
      if (shift) num.remove_suffix(1);
    }
  }
  if (num.empty()) return std::nullopt;
  uint64_t v = 0;
  size_t i = 0;
  unsigned base = 10;
  if (is_hex) base = 16, i = 2;
  if (i >= num.size()) return std::nullopt;
  for (; i < num.size(); i++) {
    int c = tolower(static_cast<unsigned char>(num[i]));
    unsigned d;
    if (c >= '0' && c <= '9')
      d = static_cast<unsigned>(c - '0');
    else if (base == 16 && c >= 'a' && c <= 'f')
      d = static_cast<unsigned>(c - 'a' + 10);
    else
      return std::nullopt;
    if (v > (UINT64_MAX - d) / base) return std::nullopt;
    v = v * base + d;
  }
  if (shift && v > (UINT64_MAX >> shift)) return std::nullopt;
  return v << shift;
}

std::optional<bool> parse_flag(std::string_view t) {
  for (const char* y : {"on", "1", "true", "yes"})
    if (ieq(t, y)) return true;
  for (const char* n : {"off", "0", "false", "no"})
    if (ieq(t, n)) return false;
  return std::nullopt;
}

int parse_signal(std::string_view t) {
  if (t.size() > 3 && ieq(t.substr(0, 3), "SIG")) t.remove_prefix(3);
  struct Named {
    const char* name;
    int sig;
  };
  static constexpr Named kNames[] = {{"TERM", SIGTERM}, {"INT", SIGINT},   {"USR1", SIGUSR1},
                                     {"USR2", SIGUSR2}, {"HUP", SIGHUP},   {"XCPU", SIGXCPU},
                                     {"QUIT", SIGQUIT}, {"ALRM", SIGALRM}};
  for (const Named& n : kNames)
    if (ieq(t, n.name)) return n.sig;
  if (t.empty() || t.size() > 2) return 0;
  int v = 0;
  for (char c : t) {
    if (!isdigit(static_cast<unsigned char>(c))) return 0;
    v = v * 10 + (c - '0');
  }
  return v > 0 && v < 64 ? v : 0;
}

namespace {

std::optional<long> parse_count(std::string_view t) {
  std::string text(t);
  char* end = nullptr;
  long v = strtol(text.c_str(), &end, 10);
  if (end == text.c_str() || *end != 0) return std::nullopt;
  return v;
}

// The value of `name` through `parse`; unset: the default; unparsable: a message
// saying what was expected, and the default.
template <class T, class Parse>
T read(const char* name, T dflt, Parse parse, const char* expected) {
  const char* s = raw(name);
  if (!s || !*s) return dflt;
  if (auto v = parse(s)) return static_cast<T>(*v);
  complain(name, s, expected);
  return dflt;
}

}  // namespace

uint64_t size(const char* name, uint64_t dflt) {
  return read(name, dflt, parse_size, "a size (like 512M, 64g, 2T or 0x1000)");
}
bool flag(const char* name, bool dflt) { return read(name, dflt, parse_flag, "on or off"); }
long count(const char* name, long dflt) { return read(name, dflt, parse_count, "a number"); }

std::string text(const char* name, const std::string& dflt) {
  const char* s = raw(name);
  return s ? std::string(s) : dflt;
}

const char* type_name(Type t) {
  switch (t) {
    case Type::Flag: return "on/off";
    case Type::Size: return "size";
    case Type::Address: return "address";
    case Type::Count: return "number";
    case Type::Path: return "path";
    case Type::Text: return "text";
    case Type::Choice: return "choice";
    case Type::DeviceMap: return "device map";
    case Type::Signal: return "signal";
  }
  return "?";
}

}  // namespace ferry::settings
