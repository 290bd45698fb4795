// The real-GPU kit (scripts/gpu-check.sh) where there is no GPU: it must say so and
// exit cleanly; and its suite, run on the simulated GPU against this build, must pass
// every check that does not need a real GPU and write a complete report.
#include <catch2/catch_test_macros.hpp>
#include <sys/utsname.h>

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <regex>

#include <nlohmann/json.hpp>

#include "process.hpp"
#include "temp_dir.hpp"

namespace fs = std::filesystem;
using ferry_test::read_file;
using ferry_test::run;

namespace {

struct TempDir : ferry_test::TempDir {
  TempDir() : ferry_test::TempDir("ferry-gpukit") {}
};

const std::string kScript = std::string(FERRY_TEST_SOURCE_DIR) + "/scripts/gpu-check.sh";

}  // namespace

TEST_CASE("without a GPU the kit says so and exits cleanly", "[gpu-kit]") {
  TempDir t;
  // An nvidia-smi that finds no GPU, first on the PATH.
  fs::create_directory(t.path + "/bin");
  std::string smi = t.path + "/bin/nvidia-smi";
  std::ofstream(smi) << "#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate with the driver' >&2\n"
                        "exit 9\n";
  chmod(smi.c_str(), 0755);
  auto r = run({"bash", kScript, t.path + "/out"}, {{"PATH", t.path + "/bin:/usr/bin:/bin"}}, 60);
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(r.out.find("gpu-check: no NVIDIA GPU on this machine (nvidia-smi lists none); nothing to check") !=
        std::string::npos);
  auto report = nlohmann::json::parse(read_file(t.path + "/out/report.json"));
  CHECK(report["gpu"] == false);
  CHECK(report["checks"].empty());
  CHECK(read_file(t.path + "/out/summary.txt").find("no NVIDIA GPU") != std::string::npos);
  CHECK_FALSE(fs::exists(t.path + "/out/build.log"));  // nothing was built
}

TEST_CASE("without arguments the kit prints its usage", "[gpu-kit]") {
  auto r = run({"bash", kScript}, {}, 30);
  CHECK(r.exit_code == 64);
  CHECK(r.err == "usage: scripts/gpu-check.sh OUTDIR\n");
}

TEST_CASE("the GPU suite passes on the simulated GPU", "[gpu-kit]") {
  TempDir t;
  auto r = run({"bash", kScript, t.path + "/out"},
               {{"FERRY_GPU_CHECK_EMULATOR", "1"}, {"FERRY_GPU_CHECK_NO_BUILD", "1"}, {"FERRY_BUILD_DIR", FERRY_TEST_BIN_DIR}},
               500);
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  auto report = nlohmann::json::parse(read_file(t.path + "/out/report.json"));
  CHECK(report["machine"]["emulator"] == true);
  // What a device session's note records, gathered by the kit itself.
  struct utsname u;
  REQUIRE(uname(&u) == 0);
  CHECK(report["machine"]["kernel"] == u.release);
  CHECK(report["machine"]["criu_plugin_dir"].is_boolean());
  CHECK(report["machine"]["ferry_check"]["ready"] == (geteuid() == 0));
  CHECK(report["machine"]["ferry_check"]["criu"]["version"].get<std::string>().rfind("4.", 0) == 0);
  if (geteuid() == 0) CHECK(report["machine"]["ferry_check"]["driver_in_job"]["ok"] == true);
  // Each GPU's memory as ferry check tells it: on the simulated GPU, all of it free.
  auto gpus = report["machine"]["ferry_check"]["gpus"];
  REQUIRE(gpus.size() == 2);
  for (auto& g : gpus) {
    CHECK(g["memory"].get<uint64_t>() > 0);
    CHECK(g["free"] == g["memory"]);
  }
  std::map<std::string, std::string> status;
  for (auto& c : report["checks"]) status[c["name"]] = c["status"];
  for (const char* name : {"probe.gpa_table", "probe.reserve_hint", "probe.export_tables", "probe.release",
                           "probe.fork_child", "probe.context_memory", "probe.shim_overhead", "examples.under_shim", "engine.mlp_trainer", "engine.driver_saxpy",
                           "engine.cuda_graph", "engine.bandwidth"}) {
    INFO(name);
    CHECK(status[name] == "pass");
  }
  for (const char* name : {"torch.default_allocator", "torch.expandable_segments", "torch.cuda_graph", "process.torch",
                           "process.torch_loader"}) {
    INFO(name);
    CHECK(status[name] == "skip");
  }
  // The whole-process round trip needs root for CRIU (CI is root).
  bool root = geteuid() == 0;
  CHECK(status["process.mlp_trainer"] == (root ? "pass" : "skip"));
  CHECK(status["process.host_pids"] == (root ? "pass" : "skip"));
  CHECK(status["process.tcp_store"] == (root ? "pass" : "skip"));
  CHECK(status["process.net_namespace"] == (root ? "pass" : "skip"));
  CHECK(status["process.loader_workers"] == (root ? "pass" : "skip"));
  CHECK(status["process.python_loader"] == (root ? "pass" : "skip"));
  CHECK(status["process.python_nvml"] == (root ? "pass" : "skip"));
  CHECK(status["process.vs_nvidia"] == (root ? "pass" : "skip"));
  CHECK(status["process.preempted"] == (root ? "pass" : "skip"));
  CHECK(status["probe.pid_namespace"] == (root ? "pass" : "skip"));
  for (auto& c : report["checks"]) {
    if (c["name"] == "engine.mlp_trainer") CHECK(c["figures"]["result"] == "bit-identical (1 lines)");
    // The simulated NVML counts only other tenants' memory: a context costs nothing there,
    // and cuMemGetInfo sees the process's own 1 MiB where NVML does not.
    if (c["name"] == "probe.context_memory") {
      CHECK(c["figures"]["primary context"] == "0.0 MiB");
      const std::string both = c["figures"]["free with 1 MiB held, NVML vs cuMemGetInfo"];
      INFO(both);
      const auto vs = both.find(" MiB vs ");
      REQUIRE(vs != std::string::npos);
      CHECK(std::stod(both.substr(0, vs)) - std::stod(both.substr(vs + 8)) == 1.0);
    }
    // The driver's restore given GPU pairs (each of the two GPUs to itself) brings it back.
    if (c["name"] == "probe.release") CHECK(c["figures"]["restore's GPU pairs (each GPU to itself)"] == "2: restore 0");
    if (c["name"] == "process.mlp_trainer" && root) {
      CHECK(c["figures"]["job"] == "ferry run --pid-namespace");
      // The dry run's NVML figure for the target: the whole GPU free (no other tenants).
      const std::string f = c["figures"]["target free memory"];
      INFO(f);
      CHECK(std::regex_match(f, std::regex("GPU 1: ([0-9.]+) GiB free of \\1 GiB")));
    }
    if (c["name"] == "process.host_pids" && root) CHECK(c["figures"]["job"] == "ferry run --host-pids");
    if (c["name"] == "process.net_namespace" && root)
      CHECK(c["figures"]["job"] == "ferry run --pid-namespace --net-namespace");
    if (c["name"] == "process.preempted" && root) {
      CHECK(c["figures"]["result"].get<std::string>().rfind("bit-identical (", 0) == 0);
      // The 64 MiB ballast, at least, came from the parent (linked: nothing copied in).
      std::string inc = c["figures"]["incremental dump"].get<std::string>();
      INFO(inc);
      auto at = inc.find(" MiB from the parent");
      REQUIRE(at != std::string::npos);
      CHECK(std::stod(inc.substr(inc.rfind(", ", at) + 2)) >= 64.0);
      CHECK(inc.find(" MiB from the parent, 0.0 MiB copied in") != std::string::npos);
    }
    // The simulated driver fails in a PID namespace with the host's /proc as the real one
    // did (304), starts with a /proc of its own, and starts in a ferry job.
    if (c["name"] == "probe.pid_namespace" && root) {
      auto f = c["figures"];
      CHECK(f["namespace, host /proc"].get<std::string>().rfind("cuInit 304, ", 0) == 0);
      // Run again under strace (set-up installs it), which names the /proc path that failed:
      // the helper thread's comm file, by the namespace's tid.
      auto traced = f.value("namespace, host /proc, strace", std::string("(none)"));
      CHECK(traced.find(" lines in logs/pidns_host_proc.strace; failed on /proc: ") != std::string::npos);
      CHECK(traced.find("/comm\", O_WRONLY|O_CLOEXEC) = -1 ENOENT") != std::string::npos);
      CHECK(f["namespace, own /proc"].get<std::string>().rfind("cuInit 0, cuDeviceGetCount 0, context 0, cuMemAlloc 0 "
                                                               "(pid 1, /proc says 1)",
                                                               0) == 0);
      CHECK(f["ferry run --pid-namespace"].get<std::string>().rfind(
                "cuInit 0, cuDeviceGetCount 0, context 0, cuMemAlloc 0 (pid 2, /proc says ", 0) == 0);
      // The simulated driver names its threads (glibc's way and by opening the comm file)
      // and stats its namespace: without any of those three translations it fails.
      CHECK(f.value("the driver needs the translation of", std::string()) == "open, stat, names");
      CHECK(f.value("ferry job, stat untranslated", std::string()).rfind("cuInit 304, ", 0) == 0);
      CHECK(f.value("ferry job, list untranslated", std::string()).rfind("cuInit 0, ", 0) == 0);
    }
    // A forked child inherits the simulated driver's file; ferry's fork handler replaces it.
    if (c["name"] == "probe.fork_child") {
      CHECK(c["figures"]["child, FERRY_FORK_RELEASE=off"] == "1 fds, 0 maps (anon_inode:[userfaultfd]); exited 0");
      CHECK(c["figures"]["child, FERRY_FORK_RELEASE=on"] == "0 fds, 0 maps; exited 0");
      CHECK(c["figures"]["child, FERRY_FORK_RELEASE=on, the child ending with exit()"] == "0 fds, 0 maps; exited 0");
    }
    // Both routes ran: every row of bench/process_dump.sh has a figure for each.
    if (c["name"] == "process.vs_nvidia" && root)
      for (const char* row : {"dump seconds, image complete", "dump seconds, image synced", "job stopped, seconds",
                              "bytes on disk", "extra peak host RAM, KiB", "restore to first step, seconds"}) {
        INFO(row);
        CHECK(c["figures"][row].get<std::string>().rfind("ferry ", 0) == 0);
      }
  }
  std::string summary = read_file(t.path + "/out/summary.txt");
  CHECK(summary.find("(SIMULATED GPU)") != std::string::npos);
  CHECK(summary.find(root ? "22 pass, 5 skip" : "12 pass, 15 skip") != std::string::npos);
}

TEST_CASE("where the driver does not start in a job's PID namespace, the kit's whole-process checks run their jobs "
          "with --host-pids", "[gpu-kit]") {
  REQUIRE(geteuid() == 0);  // PID namespaces and CRIU (CI is root)
  TempDir t;
  // The shim's /proc translation off: the simulated driver fails in the namespace as the
  // real one did on the H200 of stop 15.
  auto r = run({"bash", kScript, t.path + "/out"},
               {{"FERRY_GPU_CHECK_EMULATOR", "1"}, {"FERRY_GPU_CHECK_NO_BUILD", "1"}, {"FERRY_BUILD_DIR", FERRY_TEST_BIN_DIR},
                {"FERRY_GPU_CHECK_ONLY", "probe.pid_namespace,process.mlp_trainer,process.host_pids"},
                {"FERRY_TEST_NO_PROC_TRANSLATION", "1"}},
               400);
  INFO(r.out << r.err);
  CHECK(r.exit_code == 1);  // the probe failed
  auto report = nlohmann::json::parse(read_file(t.path + "/out/report.json"));
  auto fc = report["machine"]["ferry_check"];
  CHECK(fc["driver_in_job"]["ok"] == false);
  CHECK(fc["driver_in_host_pids_job"]["ok"] == true);
  std::map<std::string, nlohmann::json> by_name;
  for (auto& c : report["checks"]) by_name[c["name"]] = c;
  REQUIRE(by_name.size() == 3);
  CHECK(by_name["probe.pid_namespace"]["status"] == "fail");
  CHECK(by_name["process.mlp_trainer"]["status"] == "pass");
  CHECK(by_name["process.mlp_trainer"]["figures"]["job"] == "ferry run --host-pids");
  CHECK(by_name["process.mlp_trainer"]["figures"]["result"].get<std::string>().rfind("bit-identical", 0) == 0);
  CHECK(by_name["process.host_pids"]["status"] == "skip");
  CHECK(by_name["process.host_pids"]["detail"] == "process.mlp_trainer ran its job that way");
}

TEST_CASE("the kit ends within its whole-run time, the build and ferry check included: the checks it had no time "
          "for are reported as such", "[gpu-kit]") {
  TempDir t;
  // One second in all: spent before the first check could start.
  auto r = run({"bash", kScript, t.path + "/out"},
               {{"FERRY_GPU_CHECK_EMULATOR", "1"}, {"FERRY_GPU_CHECK_NO_BUILD", "1"}, {"FERRY_BUILD_DIR", FERRY_TEST_BIN_DIR},
                {"FERRY_GPU_CHECK_ONLY", "probe.release,engine.mlp_trainer"}, {"FERRY_GPU_CHECK_TOTAL_S", "1"}},
               120);
  INFO(r.out << r.err);
  CHECK(r.exit_code == 0);
  auto report = nlohmann::json::parse(read_file(t.path + "/out/report.json"));
  REQUIRE(report["checks"].size() == 2);
  for (auto& c : report["checks"]) {
    INFO(c.dump());
    CHECK(c["status"] == "skip");
    CHECK(c["detail"] == "not started: the whole run's time (--end-by) is nearly up");
  }
  CHECK(report["machine"].contains("ferry_check"));  // the machine's facts, in the time it had
}
