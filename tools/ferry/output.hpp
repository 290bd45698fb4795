// What the CLI's commands print: sizes for people, progress lines on stderr, errors as
// text or as one JSON document with the exit code of their class.
#pragma once

#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <ferry_common/json_text.hpp>

#include "client.hpp"
#include "commands.hpp"

namespace ferry::cli {

using Clock = std::chrono::steady_clock;

inline std::string hex(uint64_t v) {
  char s[24];
  snprintf(s, sizeof s, "0x%llx", static_cast<unsigned long long>(v));
  return s;
}

inline std::string human(uint64_t b) {
  const char* unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(b);
  int u = 0;
  while (v >= 1024 && u < 4) v /= 1024, u++;
  char s[32];
  snprintf(s, sizeof s, u ? "%.1f %s" : "%.0f %s", v, unit[u]);
  return s;
}

// "a", "a and b", "a, b and c": a list in a sentence.
inline std::string list_text(const std::vector<std::string>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); i++) s += (i == 0 ? "" : i + 1 == v.size() ? " and " : ", ") + v[i];
  return s;
}

// "1", "1 and 2", "0, 1 and 2": descriptor numbers in a sentence.
inline std::string numbers_text(const std::vector<int>& v) {
  std::vector<std::string> words;
  for (int n : v) words.push_back(std::to_string(n));
  return list_text(words);
}

// ", N copied in" for an image that copied some of its parent's chunks to stand alone
// (image.hpp; stored bytes with their headers), "" for one that linked them all.
inline std::string carried_text(uint64_t carried) {
  return carried ? ", " + human(carried) + " copied in" : "";
}

// inspect's line for an image's parent: whether it stands alone (image.hpp), or which of
// its chunks (`some`) an older ferry left to be read from the parent chain.
inline std::string parent_text(const std::string& parent, bool alone, const char* some) {
  return "  parent: " + parent + " (" +
         (alone ? "only what changed since was written; what did not is linked or copied in: the image stands alone"
                : std::string(some) + " are read from there") +
         ")\n";
}

// Progress on stderr: one updating line on a terminal, else a line per phase (and at
// most one every two seconds within a phase).
struct ProgressView {
  bool enabled, tty;
  std::string phase;
  Clock::time_point phase_start{}, last{};
  ProgressView(const Output& o) {
    tty = isatty(2);
    enabled = !o.json && (o.progress == "always" || (o.progress == "auto" && tty));
  }
  void operator()(const nlohmann::json& p) {
    if (!enabled) return;
    std::string ph = p.value("phase", "");
    uint64_t done = p.value("done", 0ull), total = p.value("total", 0ull);
    auto now = Clock::now();
    bool fresh = ph != phase;
    if (fresh) {
      if (tty && !phase.empty()) fputc('\n', stderr);
      phase = ph;
      phase_start = now;
    }
    double secs = std::chrono::duration<double>(now - phase_start).count();
    std::string line = "  " + ph;
    if (total) {
      char b[160];
      snprintf(b, sizeof b, " %s / %s (%3.0f%%)", human(done).c_str(), human(total).c_str(),
               100.0 * static_cast<double>(done) / static_cast<double>(total));
      line += b;
      if (secs > 0.05 && done) line += "  " + human(static_cast<uint64_t>(static_cast<double>(done) / secs)) + "/s";
    }
    if (tty) {
      fprintf(stderr, "\r%-72s", line.c_str());
    } else if (fresh || (total && done == total) || now - last > std::chrono::seconds(2)) {
      fprintf(stderr, "%s\n", line.c_str());
      last = now;
    }
    fflush(stderr);
  }
  ~ProgressView() {
    if (enabled && tty && !phase.empty()) fputc('\n', stderr);
  }
};

// Whether s can go into JSON as it is (ferry_common/json_text.hpp).
inline bool json_text(const std::string& s) { return ::ferry::json_text::exact(s); }

// JSON as text for a reader, names that are not UTF-8 replaced (ferry_common/json_text.hpp).
// Only where a name is read back by a program must it stay exact (a stdio file's CRIU key
// keeps a hex copy; a path sent to a job is refused instead, see require_utf8).
inline std::string json_string(const nlohmann::json& j, int indent = 1) { return ::ferry::json_text::lossy(j, indent); }

inline void print_json(const nlohmann::json& j) { printf("%s\n", json_string(j).c_str()); }

using ::ferry::json_text::as_recorded;

inline nlohmann::json failure_json(int code, const std::string& cls, const std::string& msg) {
  return {{"ok", false}, {"class", cls}, {"error", msg}, {"exit", code}};
}

inline std::string class_of(int code) {
  std::string cls = code == kNoProcess ? "no-process" : code == kUsage ? "usage" : "bug";
  for (const auto& c : kErrorClasses)
    if (c.exit_code == code) cls = c.name;
  return cls;
}

inline std::string class_of(const ClientError& e) { return class_of(e.code); }

inline int fail(const Output& out, int code, const std::string& cls, const std::string& msg) {
  if (out.json)
    print_json(failure_json(code, cls, msg));
  else
    fprintf(stderr, "ferry: %s\n", msg.c_str());
  return code;
}

inline int fail(const Output& out, const ClientError& e) { return fail(out, e.code, class_of(e), e.message); }


}  // namespace ferry::cli
