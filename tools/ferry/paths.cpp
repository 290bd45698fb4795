#include "paths.hpp"

#include <ferry_common/settings.hpp>

#include <unistd.h>

#include <climits>
#include <cstdlib>

namespace ferry::cli {

namespace {
bool exists(const std::string& p) { return access(p.c_str(), R_OK) == 0; }
std::string first_existing(std::initializer_list<std::string> candidates) {
  for (auto& c : candidates)
    if (exists(c)) return c;
  return *candidates.begin();
}
}  // namespace

std::string self_exe() {
  char buf[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return "./ferry";
  buf[n] = 0;
  return buf;
}

std::string self_dir() {
  std::string p = self_exe();
  return p.substr(0, p.rfind('/'));
}

std::string shim_path() {
  if (const char* s = settings::raw("FERRY_SHIM")) return s;
  std::string d = self_dir();
  return first_existing({d + "/../lib/libferry.so", d + "/../lib64/libferry.so", d + "/libferry.so"});
}

std::string emulator_driver() {
  std::string d = self_dir();
  return first_existing({d + "/../emulator/lib/libcuda.so.1", d + "/../lib/ferry-emulator/libcuda.so.1"});
}

std::string emulator_kernels() {
  if (const char* s = settings::raw("FERRY_EMU_KERNELS")) return s;
  std::string d = self_dir();
  return first_existing({d + "/../emu-kernels", d + "/../lib/ferry-emulator/kernels"});
}

}  // namespace ferry::cli
