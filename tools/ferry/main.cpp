// ferry: the command-line tool. `ferry run -- CMD` starts a program under the shim.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "paths.hpp"

namespace {

void prepend_env(const char* var, const std::string& value, char sep) {
  const char* old = getenv(var);
  std::string v = value;
  if (old && *old) v += sep + std::string(old);
  setenv(var, v.c_str(), 1);
}

int run(const std::vector<std::string>& cmd, bool strict, bool emulator, const std::string& device_map,
        const std::string& log, const std::string& real_driver, bool no_arena) {
  std::string shim = ferry::cli::shim_path();
  if (access(shim.c_str(), R_OK) != 0) {
    fprintf(stderr, "ferry run: cannot find the shim %s (set FERRY_SHIM)\n", shim.c_str());
    return 2;
  }
  if (emulator) {
    std::string drv = ferry::cli::emulator_driver();
    if (access(drv.c_str(), R_OK) != 0) {
      fprintf(stderr, "ferry run: --emulator: the simulated GPU %s is not built\n", drv.c_str());
      return 2;
    }
    setenv("FERRY_REAL_DRIVER", drv.c_str(), 1);
    prepend_env("LD_LIBRARY_PATH", drv.substr(0, drv.rfind('/')), ':');
    setenv("FERRY_EMU_KERNELS", ferry::cli::emulator_kernels().c_str(), 0);
  }
  if (!real_driver.empty()) setenv("FERRY_REAL_DRIVER", real_driver.c_str(), 1);
  if (strict) setenv("FERRY_ON_ERROR", "refuse", 1);
  if (!device_map.empty()) setenv("FERRY_DEVICE_MAP", device_map.c_str(), 1);
  if (!log.empty()) setenv("FERRY_LOG", log.c_str(), 1);
  if (no_arena) setenv("FERRY_ARENA", "off", 1);
  prepend_env("LD_PRELOAD", shim, ' ');
  std::vector<char*> argv;
  for (auto& a : cmd) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  execvp(argv[0], argv.data());
  fprintf(stderr, "ferry run: cannot run %s: %s\n", argv[0], strerror(errno));
  return 127;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ferry: movable GPU jobs (checkpoint, restore, migrate)"};
  app.require_subcommand(1);

  auto* r = app.add_subcommand("run", "run a program under ferry's shim: ferry run [options] -- CMD [ARGS...]");
  std::vector<std::string> cmd;
  bool strict = false, emulator = false, no_arena = false;
  std::string device_map, log, real_driver;
  r->add_flag("--strict", strict, "refuse to start when ferry cannot work (instead of plain pass-through)");
  r->add_flag("--emulator", emulator, "run on the simulated GPU of this build");
  r->add_option("--device-map", device_map, "program device i is physical device MAP[i], e.g. 1,0");
  r->add_option("--log", log, "shim log level: error|warn|info|debug, add ,state to dump the device state at exit");
  r->add_option("--real-driver", real_driver, "absolute path of the real libcuda.so.1");
  r->add_flag("--no-arena", no_arena, "let the driver place allocations (no fixed addresses: no restore)");
  r->add_option("command", cmd, "the program and its arguments")->required()->expected(-1);

  CLI11_PARSE(app, argc, argv);
  if (r->parsed()) return run(cmd, strict, emulator, device_map, log, real_driver, no_arena);
  return 0;
}
