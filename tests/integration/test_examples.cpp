// The example programs (nvcc-compiled, unmodified libcudart) on the simulated GPU,
// checked against results computed on the host.
#include <catch2/catch_test_macros.hpp>

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>

#include "mlp_reference.hpp"
#include "process.hpp"

using ferry_test::emu_env;
using ferry_test::lines_with;
using ferry_test::run;

namespace {

const std::string kBin = FERRY_TEST_BIN_DIR;

std::vector<double> parse_losses(const std::string& out) {
  std::vector<double> v;
  for (auto& l : lines_with(out, "step ")) {
    int step = 0;
    double loss = 0;
    if (sscanf(l.c_str(), "step %d loss %lf", &step, &loss) == 2) v.push_back(loss);
  }
  return v;
}

std::string tmpfile_path(const char* tag) {
  char buf[] = "/tmp/ferry-test-XXXXXX";
  int fd = mkstemp(buf);
  if (fd >= 0) close(fd);
  return std::string(buf) + "-" + tag;
}

}  // namespace

TEST_CASE("driver_saxpy matches the host bit for bit", "[examples]") {
  auto r = run({kBin + "/examples/driver_saxpy", "--n", "300000", "--iters", "20"}, emu_env());
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  REQUIRE(lines_with(r.out, "host comparison: bit-identical").size() == 1);
  REQUIRE(lines_with(r.out, "launches counted 20").size() == 1);
}

TEST_CASE("driver_saxpy runs on the second device too", "[examples]") {
  auto r = run({kBin + "/examples/driver_saxpy", "--n", "5000", "--iters", "3", "--device", "1"}, emu_env());
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  REQUIRE(lines_with(r.out, "bit-identical").size() == 1);
}

TEST_CASE("mlp_trainer is bit-identical from run to run", "[examples]") {
  std::vector<std::string> cmd = {kBin + "/examples/mlp_trainer", "--steps", "40"};
  auto a = run(cmd, emu_env());
  auto b = run(cmd, emu_env({{"FERRY_EMU_BLOCK_THREADS", "1"}}));  // other block scheduling
  INFO(a.err << b.err);
  REQUIRE(a.exit_code == 0);
  REQUIRE(b.exit_code == 0);
  REQUIRE(parse_losses(a.out).size() == 40);
  REQUIRE(a.out == b.out);
}

TEST_CASE("mlp_trainer agrees with a host computation of the same model", "[examples]") {
  // Tolerance: each loss within 1e-4 relative of the host's. The device sums in tiles
  // with fused multiply-adds and the host sequentially, so the last bits differ.
  struct Cfg {
    std::string opt, lr;
    int steps, batch, in, hidden, out;
  };
  for (const Cfg& c : {Cfg{"adam", "0.01", 60, 64, 32, 64, 8}, Cfg{"sgd", "0.5", 60, 32, 20, 48, 5}}) {
    auto r = run({kBin + "/examples/mlp_trainer", "--steps", std::to_string(c.steps), "--opt", c.opt, "--lr", c.lr,
                  "--batch", std::to_string(c.batch), "--in", std::to_string(c.in), "--hidden",
                  std::to_string(c.hidden), "--out", std::to_string(c.out)},
                 emu_env());
    INFO(c.opt << "\n" << r.out << r.err);
    REQUIRE(r.exit_code == 0);
    auto got = parse_losses(r.out);
    auto want = mlp_ref::losses(c.steps, c.batch, c.in, c.hidden, c.out, c.opt, std::stof(c.lr), 42);
    REQUIRE(got.size() == want.size());
    for (size_t i = 0; i < got.size(); i++) {
      INFO("step " << i + 1 << ": device " << got[i] << " host " << want[i]);
      REQUIRE(std::fabs(got[i] - want[i]) <= 1e-4 * std::fabs(want[i]));
    }
    REQUIRE(got.back() < got.front() * 0.5);  // it learns
  }
}

TEST_CASE("mlp_trainer holds and checks ballast memory", "[examples]") {
  auto r = run({kBin + "/examples/mlp_trainer", "--steps", "3", "--ballast-mb", "64", "--quiet"}, emu_env());
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  REQUIRE(lines_with(r.out, "ballast 64 MiB intact").size() == 1);
}

TEST_CASE("the runtime API tour passes with shared and static cudart", "[examples]") {
  for (const char* prog : {"runtime_smoke", "runtime_smoke_static"}) {
    auto r = run({kBin + "/tests/programs/" + prog}, emu_env());
    INFO(prog << "\n" << r.out << r.err);
    REQUIRE(r.exit_code == 0);
    REQUIRE(lines_with(r.out, " 0 failed").size() == 1);
  }
}

TEST_CASE("cudart checks the integrity answer (negative control)", "[examples]") {
  auto r = run({kBin + "/tests/programs/runtime_smoke"}, emu_env({{"FERRY_EMU_TEST_BREAK_INTEGRITY", "1"}}));
  REQUIRE(r.exit_code != 0);
  REQUIRE(r.err.find("cudaErrorSoftwareValidityNotEstablished") != std::string::npos);
}

TEST_CASE("every entry point cudart asks for is implemented or known to be unneeded", "[examples]") {
  // emulator/cudart_unneeded.txt lists what cudart 13 requests at start-up that the
  // emulator deliberately leaves out. A request outside both sets means cudart (or
  // a newer toolkit) needs something new: implement it or justify it in that file.
  std::set<std::string> unneeded;
  {
    std::ifstream in(std::string(FERRY_TEST_SOURCE_DIR) + "/emulator/cudart_unneeded.txt");
    REQUIRE(in.good());
    std::string line;
    while (std::getline(in, line))
      if (!line.empty() && line[0] != '#') unneeded.insert(line.substr(0, line.find(' ')));
  }
  std::string trace = tmpfile_path("gpa");
  for (const char* prog : {"/tests/programs/runtime_smoke", "/tests/programs/runtime_smoke_static",
                           "/examples/mlp_trainer"}) {
    auto r = run({kBin + prog, "--steps", "2"}, emu_env({{"FERRY_EMU_TRACE_GPA", trace}}));
    REQUIRE(r.exit_code == 0);
  }
  std::ifstream in(trace);
  std::string name, status;
  int version = 0, flags = 0, requests = 0;
  std::set<std::string> missing;
  while (in >> name >> version >> flags >> status) {
    requests++;
    if (status != "found" && name != "\"\"" && !unneeded.count(name)) missing.insert(name);
  }
  std::remove(trace.c_str());
  REQUIRE(requests >= 400);
  std::string list;
  for (auto& m : missing) list += m + " ";
  INFO("requested by cudart, neither implemented nor listed as unneeded: " << list);
  REQUIRE(missing.empty());
}
