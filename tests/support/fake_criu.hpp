// A stand-in for CRIU where a test needs one that answers differently, and the kernel
// facts that decide what a real one can do here.
#pragma once

#include <sys/stat.h>
#include <sys/utsname.h>

#include <cstdio>
#include <fstream>
#include <string>

namespace ferry_test {

// An executable dir/criu that answers --version and check as told (and nothing else).
inline std::string fake_criu(const std::string& dir, const std::string& version, const std::string& check_output,
                             int check_rc) {
  std::string p = dir + "/criu";
  std::ofstream(p) << "#!/bin/sh\n"
                   << "case \"$1\" in\n"
                   << "  --version) echo 'Version: " << version << "';;\n"
                   << "  check) echo '" << check_output << "'; exit " << check_rc << ";;\n"
                   << "esac\n";
  chmod(p.c_str(), 0755);
  return p;
}

// "6.18.44-..." of the running kernel, and whether it is at least major.minor.
inline std::string kernel_release() {
  utsname u{};
  uname(&u);
  return u.release;
}
inline bool kernel_at_least(int major, int minor) {
  int a = 0, b = 0;
  sscanf(kernel_release().c_str(), "%d.%d", &a, &b);
  return a > major || (a == major && b >= minor);
}

}  // namespace ferry_test
