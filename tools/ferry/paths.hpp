// Where the pieces of a ferry installation (or build tree) are, found relative to
// the running ferry executable: <prefix>/tools/ferry (build tree) or <prefix>/bin/ferry.
#pragma once

#include <string>

namespace ferry::cli {

std::string self_exe();  // this program, by absolute path
std::string self_dir();
// libferry.so: FERRY_SHIM, else next to the executable's prefix.
std::string shim_path();
// The simulated GPU's libcuda.so.1 and its kernel-library directory (build tree).
std::string emulator_driver();
std::string emulator_kernels();

}  // namespace ferry::cli
