// The shim (ferry run) on the simulated GPU: transparent, complete, and clear when it
// cannot work.
#include <catch2/catch_test_macros.hpp>

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include "process.hpp"

using ferry_test::emu_env;
using ferry_test::lines_with;
using ferry_test::read_file;
using ferry_test::run;

namespace {

const std::string kBin = FERRY_TEST_BIN_DIR;
const std::string kFerry = kBin + "/tools/ferry";

std::vector<std::string> under_ferry(std::vector<std::string> cmd, std::vector<std::string> opts = {}) {
  std::vector<std::string> v = {kFerry, "run", "--emulator"};
  v.insert(v.end(), opts.begin(), opts.end());
  v.push_back("--");
  v.insert(v.end(), cmd.begin(), cmd.end());
  return v;
}

std::string temp_path(const char* tag) {
  char buf[] = "/tmp/ferry-test-XXXXXX";
  int fd = mkstemp(buf);
  if (fd >= 0) close(fd);
  return std::string(buf) + "-" + tag;
}

// Lines of stdout that are results (timings go to stderr).
std::string results(const ferry_test::Result& r) { return r.out; }

}  // namespace

TEST_CASE("programs under ferry run print exactly what they print without it", "[shim]") {
  const std::vector<std::vector<std::string>> programs = {
      {kBin + "/examples/mlp_trainer", "--steps", "30"},
      {kBin + "/examples/mlp_trainer", "--steps", "12", "--opt", "sgd", "--lr", "0.3", "--ballast-mb", "24"},
      {kBin + "/examples/driver_saxpy", "--n", "100000", "--iters", "5"},
      {kBin + "/examples/driver_saxpy", "--n", "1000", "--iters", "3", "--device", "1"},
      {kBin + "/tests/programs/runtime_smoke"},
      {kBin + "/tests/programs/runtime_smoke_static"},
      {kBin + "/tests/programs/shim_stress", "8", "30"},
  };
  for (const auto& p : programs) {
    auto plain = run(p, emu_env());
    auto shimmed = run(under_ferry(p), emu_env());
    INFO(p[0] << "\nplain: " << plain.err << "\nferry: " << shimmed.err);
    REQUIRE(plain.exit_code == 0);
    REQUIRE(shimmed.exit_code == 0);
    REQUIRE(results(shimmed) == results(plain));
    REQUIRE(lines_with(shimmed.err, "ferry:").empty());  // nothing to complain about
  }
}

TEST_CASE("the shim sees calls made through every path to the driver", "[shim]") {
  auto plain = run({kBin + "/tests/programs/driver_paths"}, emu_env());
  REQUIRE(plain.exit_code == 3);  // the program can tell it is not under ferry
  auto r = run(under_ferry({kBin + "/tests/programs/driver_paths"}),
               emu_env({{"DRIVER_PATHS_REAL_DRIVER", std::string(FERRY_TEST_EMU_LIB_DIR) + "/libcuda.so.1"}}));
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  REQUIRE(lines_with(r.out, "intercepted").size() == 15);
  REQUIRE(lines_with(r.out, "BYPASSED").empty());
  REQUIRE(lines_with(r.out, "dlopen(absolute path of the driver)").size() == 1);
  REQUIRE(lines_with(r.out, "a library with its own static cudart").size() == 1);
}

TEST_CASE("a library calling the driver's private tables hands it real handles", "[shim]") {
  // cuBLAS does this with its context and stream; a virtual handle would crash a real driver.
  const std::vector<std::string> cmd = {kBin + "/tests/programs/private_tables"};
  auto plain = run(cmd, emu_env());
  INFO(plain.out << plain.err);
  REQUIRE(plain.exit_code == 0);
  auto r = run(under_ferry(cmd, {"--log", "debug"}), emu_env({{"FERRY_EMU_LOG", "1"}}));
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  REQUIRE(lines_with(r.out, "private tables: all agree").size() == 1);
  REQUIRE(lines_with(r.out, ": ok").size() == 7);
  for (int slot : {3, 4, 5})
    REQUIRE(lines_with(r.err, "export table 21318c60 slot " + std::to_string(slot) +
                                  ": called with virtual handles; passed the real ones")
                .size() == 1);
  REQUIRE(lines_with(r.err, "is no context of this driver").size() == 1);  // only the value that is none

  // Suspended and resumed in between, the process has new real contexts and streams:
  // the same virtual handles must reach the driver as the new ones.
  std::string go = temp_path("go");
  ferry_test::Child c(under_ferry({kBin + "/tests/programs/private_tables", "--wait-for", go}), emu_env());
  REQUIRE(c.wait_for("waiting"));
  for (const char* op : {"suspend", "resume"}) {
    auto o = run({kFerry, op, std::to_string(c.pid())}, emu_env());
    INFO(op << ": " << o.err);
    REQUIRE(o.exit_code == 0);
  }
  { std::ofstream(go) << "go"; }
  auto done = c.finish();
  std::remove(go.c_str());
  INFO(done.out << done.err);
  REQUIRE(done.exit_code == 0);
  REQUIRE(lines_with(done.out, ": ok").size() == 14);
  auto ids = lines_with(done.out, "stream id:");
  REQUIRE(ids.size() == 2);
  CHECK(ids[0] != ids[1]);  // the driver's new stream answered the second time
}

TEST_CASE("the device-state log of mlp_trainer lists exactly its live objects", "[shim]") {
  const int B = 64, I = 32, H = 64, O = 8, ballast_mb = 6;
  std::string dump = temp_path("dump");
  std::vector<std::string> cmd = {kBin + "/examples/mlp_trainer", "--steps", "60", "--step-delay-ms", "40",
                                  "--ballast-mb", std::to_string(ballast_mb)};
  // Start it, let it train a while, ask for the log (SIGUSR2), let it finish.
  std::thread signaller([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(1200));
    run({"pkill", "-USR2", "-f", "mlp_trainer --steps 60 --step-delay-ms 40"});
  });
  auto r = run(under_ferry(cmd), emu_env({{"FERRY_DUMP_SIGNAL", "USR2"}, {"FERRY_LOG_FILE", dump}}));
  signaller.join();
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  std::string log = read_file(dump);
  std::remove(dump.c_str());
  INFO(log);
  REQUIRE(lines_with(log, "# dump on signal").size() == 1);
  REQUIRE(lines_with(log, "context ").size() == 1);
  REQUIRE(lines_with(log, "context ")[0].find("primary") != std::string::npos);
  REQUIRE(lines_with(log, "stream ").size() == 2);  // compute and copy
  REQUIRE(lines_with(log, "event ").size() == 7);   // 2 uploaded, 2 consumed, loss_ready, t0, t1
  REQUIRE(lines_with(log, "library ").size() == 1);
  REQUIRE(lines_with(log, "kernel ").size() == 9);
  REQUIRE(lines_with(log, "global ").size() == 1);
  REQUIRE(lines_with(log, "name=g_adam_t").size() == 1);
  REQUIRE(lines_with(log, "host ").size() == 5);  // 2 + 2 staging buffers, the loss
  REQUIRE(lines_with(log, "untracked ").empty());
  REQUIRE(lines_with(log, "summary ")[0].find("untracked=0") != std::string::npos);
  // Long-lived device allocations, by size: 4 per parameter (w, g, m, v), the two input
  // and target buffers, the ballast. Stream-ordered activations come and go.
  std::map<size_t, int> sizes;
  for (auto& l : lines_with(log, "kind=device")) {
    size_t size = std::stoull(l.substr(l.find("size=") + 5));
    sizes[size]++;
  }
  std::map<size_t, int> want;
  for (size_t s : {size_t(I) * H * 4, size_t(H) * 4, size_t(H) * O * 4, size_t(O) * 4}) want[s] += 4;
  want[size_t(B) * I * 4] += 2;
  want[size_t(B) * O * 4] += 2;
  want[size_t(ballast_mb) << 20] += 1;
  REQUIRE(sizes == want);
  for (auto& l : lines_with(log, "kind=async")) REQUIRE(l.find("device=0") != std::string::npos);
  REQUIRE(lines_with(log, "kind=async").size() <= 6);
  // Every allocation lies in the arena and is backed by a mapping of physical memory.
  REQUIRE(lines_with(log, "mapping ").size() == lines_with(log, "physical ").size());
  REQUIRE(lines_with(log, "reservation ").size() == lines_with(log, "mapping ").size());
}

TEST_CASE("a missing real driver is reported once, then pass-through or refusal", "[shim]") {
  std::vector<std::string> cmd = {kFerry, "run", "--real-driver", "/nonexistent/libcuda.so.1", "--",
                                  kBin + "/examples/mlp_trainer", "--steps", "1"};
  auto r = run(cmd, emu_env());
  INFO(r.err);
  REQUIRE(r.exit_code != 0);  // the program fails its own way: no driver
  REQUIRE(lines_with(r.err, "ferry: cannot load the real CUDA driver /nonexistent/libcuda.so.1").size() == 1);
  REQUIRE(lines_with(r.err, "ferry: continuing as a plain pass-through").size() == 1);
  REQUIRE(lines_with(r.err, "cudaErrorInsufficientDriver").size() == 1);

  cmd.insert(cmd.begin() + 2, "--strict");
  auto s = run(cmd, emu_env());
  INFO(s.err);
  REQUIRE(s.exit_code == 1);
  REQUIRE(lines_with(s.err, "ferry: refusing to start (FERRY_ON_ERROR=refuse)").size() == 1);
  REQUIRE(s.out.empty());  // the program never ran
}

TEST_CASE("an arena that cannot be placed is reported at start, then pass-through or refusal", "[shim]") {
  // A kernel-space address: no driver can reserve there.
  auto env = emu_env({{"FERRY_ARENA_BASE", "0xffff800000000000"}});
  std::vector<std::string> cmd = {kBin + "/examples/mlp_trainer", "--steps", "5"};
  auto plain = run(cmd, emu_env());
  auto r = run(under_ferry(cmd), env);
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  REQUIRE(r.out == plain.out);  // still correct, just not movable
  REQUIRE(lines_with(r.err, "the arena's addresses are not free in this process").size() == 1);
  REQUIRE(lines_with(r.err, "ferry: continuing without fixed device addresses").size() == 1);

  auto s = run(under_ferry(cmd, {"--strict"}), env);
  INFO(s.err);
  REQUIRE(s.exit_code == 1);
  REQUIRE(lines_with(s.err, "refusing to continue without fixed device addresses").size() == 1);
  REQUIRE(lines_with(s.out, "step ").empty());
}

TEST_CASE("the program's device 0 can be any physical device", "[shim]") {
  auto env = emu_env({{"FERRY_EMU_DEVICE1", "name=the second GPU"}});
  std::vector<std::string> cmd = {kBin + "/examples/mlp_trainer", "--steps", "3"};
  auto direct = run(under_ferry(cmd), env);
  auto mapped = run(under_ferry(cmd, {"--device-map", "1,0"}), env);
  INFO(direct.out << mapped.out << mapped.err);
  REQUIRE(direct.exit_code == 0);
  REQUIRE(mapped.exit_code == 0);
  REQUIRE(lines_with(direct.out, "device 0 (ferry emulated GPU").size() == 1);
  REQUIRE(lines_with(mapped.out, "device 0 (the second GPU").size() == 1);
  // Same computation, same result, on the other device.
  REQUIRE(lines_with(direct.out, "weights checksum") == lines_with(mapped.out, "weights checksum"));
  auto bad = run(under_ferry(cmd, {"--device-map", "0,0"}), env);
  REQUIRE(bad.exit_code == 0);
  REQUIRE(lines_with(bad.err, "FERRY_DEVICE_MAP=0,0 is not a permutation").size() == 1);
}
