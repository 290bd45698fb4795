// A fresh directory under /tmp for one test, removed with its contents at the end.
#pragma once

#include <stdlib.h>

#include <filesystem>
#include <string>

namespace ferry_test {

struct TempDir {
  std::string path;
  explicit TempDir(const std::string& prefix = "ferry-test") {
    std::string t = "/tmp/" + prefix + "-XXXXXX";
    path = mkdtemp(t.data());
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string operator/(const std::string& n) const { return path + "/" + n; }
};

}  // namespace ferry_test
