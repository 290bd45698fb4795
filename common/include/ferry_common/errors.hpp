// The error taxonomy: every failure ferry reports has a class a scheduler can act on.
// This table is the one place that maps a class to its name (control socket JSON,
// `--format json`), its CLI exit code (sysexits.h values) and its C API code
// (include/ferry/ferry_c.h).
#pragma once

#include <exception>
#include <optional>
#include <string>
#include <string_view>

#include <ferry/ferry_c.h>

namespace ferry {

enum class ErrorClass {
  RetryLater,  // transient: try the same operation again later
  FixFirst,    // the request or the environment must change (arguments, space, device)
  DataLost,    // the image is damaged or incomplete: its data cannot be trusted
  Bug,         // ferry itself failed
};

struct ErrorClassInfo {
  ErrorClass cls;
  const char* name;
  int exit_code;
  int c_code;
  const char* meaning;
};

inline constexpr ErrorClassInfo kErrorClasses[] = {
    {ErrorClass::RetryLater, "retry-later", 75, FERRY_RETRY_LATER, "transient: try again later"},
    {ErrorClass::FixFirst, "fix-first", 78, FERRY_FIX_FIRST, "the request or the environment must change"},
    {ErrorClass::DataLost, "data-lost", 74, FERRY_DATA_LOST, "the image is damaged or incomplete"},
    {ErrorClass::Bug, "bug", 70, FERRY_BUG, "ferry itself failed"},
};

// Exit codes of the CLI that are not error classes.
namespace exit_code {
inline constexpr int kOk = 0;
inline constexpr int kFailed = 1;      // a check found problems
inline constexpr int kUsage = 64;      // the command line is wrong
inline constexpr int kNoProcess = 69;  // no such process, or it does not run under ferry
}  // namespace exit_code

constexpr const ErrorClassInfo& info(ErrorClass c) {
  for (const auto& i : kErrorClasses)
    if (i.cls == c) return i;
  return kErrorClasses[3];
}
constexpr const char* class_name(ErrorClass c) { return info(c).name; }
// An unknown name is a bug (exit 70): the process and the CLI disagree.
inline std::optional<ErrorClass> class_from_name(std::string_view name) {
  for (const auto& i : kErrorClasses)
    if (name == i.name) return i.cls;
  return std::nullopt;
}
inline int exit_code_for(std::string_view class_name) {
  auto c = class_from_name(class_name);
  return info(c ? *c : ErrorClass::Bug).exit_code;
}

struct Error : std::exception {
  ErrorClass cls;
  std::string message;
  Error(ErrorClass c, std::string m) : cls(c), message(std::move(m)) {}
  const char* what() const noexcept override { return message.c_str(); }
};

}  // namespace ferry
