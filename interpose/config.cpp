// The shim's configuration, read once from the FERRY_* settings (common's settings
// table) at load.
#include "config.hpp"

#include <fcntl.h>

#include <string>

#include <ferry_common/settings.hpp>

#include "log.hpp"

namespace ferry {

namespace {
// Constant-initialized or built on first use: the library constructor may run before
// this file's dynamic initializers would.
Config& cfg() {
  static Config* c = new Config;
  return *c;
}
}  // namespace

void read_config() {
  namespace st = settings;
  Config& c = cfg();
  c.real_driver = st::text("FERRY_REAL_DRIVER");
  c.refuse_on_error = st::text("FERRY_ON_ERROR") == "refuse";
  c.arena = st::flag("FERRY_ARENA", true);
  c.arena_base = st::size("FERRY_ARENA_BASE", c.arena_base);
  c.arena_size = st::size("FERRY_ARENA_SIZE", c.arena_size);
  c.device_map = st::text("FERRY_DEVICE_MAP");
  c.log_file = st::text("FERRY_LOG_FILE");
  c.on_signal = st::text("FERRY_ON_SIGNAL");
  c.control = st::flag("FERRY_CONTROL", true);
  c.fingerprints = st::flag("FERRY_FINGERPRINTS", true);
  c.test_enospc_after = static_cast<uint64_t>(st::count("FERRY_TEST_ENOSPC_AFTER", 0));
  int level = log::Warn;
  std::string v = st::text("FERRY_LOG");
  if (v.find("error") != std::string::npos) level = log::Error;
  if (v.find("warn") != std::string::npos) level = log::Warn;
  if (v.find("info") != std::string::npos) level = log::Info;
  if (v.find("debug") != std::string::npos) level = log::Debug;
  c.dump_state_at_exit = v.find("state") != std::string::npos;
  if (const char* s = st::raw("FERRY_DUMP_SIGNAL")) c.dump_signal = st::parse_signal(s);
  int fd = 2;
  if (!c.log_file.empty()) {
    int f = open(c.log_file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (f >= 0) fd = f;
  }
  log::configure(static_cast<log::Level>(level), fd);
}

const Config& config() { return cfg(); }

}  // namespace ferry
