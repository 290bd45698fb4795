// Whole-process checkpoints: what `ferry check` finds on the machine. CRIU is the one
// scripts/setup.sh provides (built from Debian's source); CI runs as root, so these
// tests run there every time.
#include <catch2/catch_test_macros.hpp>

#include <sys/stat.h>

#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "process.hpp"
#include "temp_dir.hpp"

namespace {

const std::string kFerry = std::string(FERRY_TEST_BIN_DIR) + "/tools/ferry";

nlohmann::json check(std::map<std::string, std::string> env = {}) {
  auto r = ferry_test::run({kFerry, "check", "--emulator", "--format", "json"}, ferry_test::emu_env(env), 120);
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);  // whole-process problems do not fail the in-process pre-flight
  auto j = nlohmann::json::parse(r.out);
  CHECK(j["ok"] == true);
  REQUIRE(j.contains("full_process"));
  return j["full_process"];
}

// A stand-in criu that answers --version and check as told.
std::string fake_criu(const ferry_test::TempDir& t, const std::string& version, const std::string& check_output,
                      int check_rc) {
  std::string p = t / "criu";
  std::ofstream(p) << "#!/bin/sh\n"
                   << "case \"$1\" in\n"
                   << "  --version) echo 'Version: " << version << "';;\n"
                   << "  check) echo '" << check_output << "'; exit " << check_rc << ";;\n"
                   << "esac\n";
  chmod(p.c_str(), 0755);
  return p;
}

const std::string kFix = "run scripts/setup.sh as root (it builds CRIU 4.1.1) or set FERRY_CRIU to a CRIU >= 4";

}  // namespace

TEST_CASE("ferry check finds a CRIU >= 4 that passes criu check", "[full-process][criu]") {
  auto f = check();
  INFO(f.dump());
  CHECK(f["criu"]["version"].get<std::string>().rfind("4.", 0) == 0);
  CHECK(f["criu"]["check"] == "passed");
  // The simulated GPU does not implement NVIDIA's checkpoint API yet: not ready, and said so.
  CHECK(f["driver_checkpoint_api"] == false);
  CHECK(f["ready"] == false);
  REQUIRE(f["problems"].size() == 1);
  CHECK(f["problems"][0] == "the CUDA driver has no checkpoint API (cuCheckpointProcess*: CUDA 12.8, driver r570 or newer)");
}

TEST_CASE("a missing or unusable CRIU is named with the fix", "[full-process][criu]") {
  ferry_test::TempDir t("ferry-criu");
  SECTION("missing") {
    auto f = check({{"FERRY_CRIU", t / "nowhere/criu"}});
    CHECK(f["problems"][0] == "CRIU not found: " + (t / "nowhere/criu") + " is not an executable; " + kFix);
  }
  SECTION("too old") {
    std::string c = fake_criu(t, "3.17.1", "Looks good.", 0);
    auto f = check({{"FERRY_CRIU", c}});
    CHECK(f["problems"][0] ==
          c + " is CRIU 3.17.1; ferry needs 4.0 or newer (3.x fails on current kernels); " + kFix);
  }
  SECTION("failing criu check") {
    std::string c = fake_criu(t, "4.1.1", "Error (criu/vdso.c:1): vdso: Unexpected rt vDSO area bounds", 1);
    auto f = check({{"FERRY_CRIU", c}});
    CHECK(f["criu"]["check"] == "failed: Error (criu/vdso.c:1): vdso: Unexpected rt vDSO area bounds");
    CHECK(f["problems"][0] == "'" + c + " check' failed on this kernel: Error (criu/vdso.c:1): vdso: Unexpected rt vDSO "
                                        "area bounds; " + kFix);
  }
  SECTION("not CRIU at all") {
    auto f = check({{"FERRY_CRIU", "/bin/true"}});
    CHECK(f["problems"][0] == "/bin/true does not answer --version like CRIU does; " + kFix);
  }
}
