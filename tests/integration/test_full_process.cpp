// Whole-process checkpoints, the parts built so far: what `ferry check` finds on the
// machine (CRIU is the one scripts/setup.sh provides), and jobs in their own PID
// namespace. CI runs as root, so these tests run there every time.
#include <catch2/catch_test_macros.hpp>

#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "fake_criu.hpp"
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

std::string fake_criu(const ferry_test::TempDir& t, const std::string& version, const std::string& check_output,
                      int check_rc) {
  return ferry_test::fake_criu(t.path, version, check_output, check_rc);
}

// The CRIU scripts/setup.sh provides, run as ferry runs it: where hardware
// breakpoints do not fire (ferry check probes it), with CRIU_FAULT=130 -- else CRIU
// waits forever for a task to trap on its way out of the parasite.
const std::string& criu() {
  static const std::string path = [] {
    auto r = ferry_test::run({kFerry, "check", "--emulator", "--format", "json"}, ferry_test::emu_env(), 120);
    auto j = nlohmann::json::parse(r.out);
    if (!j["full_process"]["criu"].value("hardware_breakpoints", true)) setenv("CRIU_FAULT", "130", 0);
    return std::string(FERRY_TEST_SOURCE_DIR) + "/.deps/criu/criu";
  }();
  return path;
}

const std::string kFix = "run scripts/setup.sh as root (it builds CRIU 4.2.1) or set FERRY_CRIU to a CRIU >= 4.2";

// `criu restore` of the images in dir, in the foreground: criu stays the restored
// tree's parent (the job's init dies with its parent). Returns once criu's log says
// the tasks run again -- only then may anyone signal them.
std::unique_ptr<ferry_test::Child> restore_in_foreground(const std::string& dir) {
  auto c = std::make_unique<ferry_test::Child>(
      std::vector<std::string>{criu(), "restore", "-D", dir, "-o", "restore.log", "-v3"});
  auto resumed = [&] {
    return ferry_test::read_file(dir + "/restore.log").find("Restore finished successfully") != std::string::npos;
  };
  for (int i = 0; i < 400 && !resumed(); i++) usleep(25000);
  INFO(ferry_test::read_file(dir + "/restore.log"));
  REQUIRE(resumed());
  return c;
}

}  // namespace

TEST_CASE("ferry check finds a CRIU >= 4 that passes criu check, and the driver's checkpoint API",
          "[full-process][criu]") {
  auto f = check();
  INFO(f.dump());
  CHECK(f["criu"]["version"].get<std::string>().rfind("4.", 0) == 0);
  CHECK(f["criu"]["check"] == "passed");
  CHECK(f["criu"]["hardware_breakpoints"].is_boolean());  // probed: CRIU gets CRIU_FAULT=130 where false
  CHECK(f["driver_checkpoint_api"] == true);  // the simulated GPU implements it
  // The driver started in a job's PID namespace: cuInit, a context and an allocation.
  CHECK(f["driver_in_job"] ==
        nlohmann::json({{"ok", true}, {"cuInit", 0}, {"cuDeviceGetCount", 0}, {"context", 0}, {"cuMemAlloc", 0}}));
  CHECK(f["ready"] == true);
  CHECK(f["problems"].empty());
}

TEST_CASE("ferry check says when the driver cannot start in a job's PID namespace (the shim's /proc translation "
          "off: the simulated driver fails as the real one did), and that jobs with the host's pids are the way then",
          "[full-process][criu]") {
  REQUIRE(geteuid() == 0);
  auto f = check({{"FERRY_TEST_NO_PROC_TRANSLATION", "1"}});
  INFO(f.dump());
  CHECK(f["driver_in_job"]["ok"] == false);
  CHECK(f["driver_in_job"]["cuInit"] == 304);
  // A job with the host's pids has no /proc to translate: the driver starts there, so
  // dumps still work, run that way -- a warning, not a problem.
  CHECK(f["driver_in_host_pids_job"] ==
        nlohmann::json({{"ok", true}, {"cuInit", 0}, {"cuDeviceGetCount", 0}, {"context", 0}, {"cuMemAlloc", 0}}));
  CHECK(f["ready"] == true);
  CHECK(f["problems"].empty());
  std::vector<std::string> driver_warnings;  // beside any about CRIU and this kernel
  for (auto& w : f["warnings"])
    if (w.get<std::string>().rfind("the CUDA driver", 0) == 0) driver_warnings.push_back(w);
  REQUIRE(driver_warnings.size() == 1);
  // The /proc calls that failed, found by running the probe again with FERRY_TRACE_PROC:
  // the helper thread's name, by glibc and by the driver itself (by the namespace's tid).
  REQUIRE(f["driver_in_job"]["proc_failures"].size() == 2);
  std::string tid = f["driver_in_job"]["proc_failures"][1].get<std::string>();
  REQUIRE(tid.rfind("open(/proc/self/task/", 0) == 0);
  tid = tid.substr(21, tid.find('/', 21) - 21);
  CHECK(f["driver_in_job"]["proc_failures"] ==
        nlohmann::json({"pthread_setname_np(tid " + tid + ", ferry-emu-init), untranslated: No such file or directory",
                        "open(/proc/self/task/" + tid + "/comm): No such file or directory"}));
  CHECK(driver_warnings[0] == "the CUDA driver does not start in a job's PID namespace here (cuInit failed with "
                            "CUDA_ERROR_OPERATING_SYSTEM (304: an OS call failed)); its /proc calls that failed: "
                            "pthread_setname_np(tid " + tid + ", ferry-emu-init), untranslated: No such file or "
                            "directory; open(/proc/self/task/" + tid + "/comm): No such file or directory; "
                            "FERRY_TRACE_PROC=on ferry run --pid-namespace -- PROGRAM shows the /proc paths it uses. "
                            "Run jobs with ferry run --host-pids here: the driver starts in those, and their images "
                            "are restored where their pids are free (not beside the original)");
  // Which is so: the thread naming and the path the driver could not use, with why.
  auto traced = ferry_test::run({kFerry, "run", "--emulator", "--pid-namespace", "--", std::string(FERRY_TEST_BIN_DIR) + "/examples/mlp_trainer", "--steps", "2"},
                                ferry_test::emu_env({{"FERRY_TEST_NO_PROC_TRANSLATION", "1"}, {"FERRY_TRACE_PROC", "on"}}),
                                60);
  INFO(traced.err);
  CHECK(traced.exit_code != 0);
  CHECK(traced.err.find(", ferry-emu-init), untranslated: No such file or directory\n") != std::string::npos);
  CHECK(traced.err.find("/comm): No such file or directory\n") != std::string::npos);
}

TEST_CASE("a driver without the checkpoint API is named", "[full-process]") {
  // The null driver of the shim-overhead benchmark has no cuCheckpointProcess* entry points.
  auto r = ferry_test::run({kFerry, "check", "--real-driver", std::string(FERRY_TEST_BIN_DIR) + "/bench/null/libcuda.so.1",
                            "--format", "json"}, {}, 60);
  INFO(r.out << r.err);
  auto j = nlohmann::json::parse(r.out);
  auto f = j["full_process"];
  CHECK(f["driver_checkpoint_api"] == false);
  CHECK(f["ready"] == false);
  CHECK(f["problems"].back() ==
        "the CUDA driver has no checkpoint API (cuCheckpointProcess*: CUDA 12.8, driver r570 or newer)");
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
  SECTION("4.1, which cannot dump TCP or UDP sockets on Linux 6.16 and later: a warning there, nothing before") {
    std::string c = fake_criu(t, "4.1.1", "Looks good.", 0);
    auto f = check({{"FERRY_CRIU", c}});
    CHECK(f["problems"].empty());
    CHECK(f["ready"] == true);
    if (ferry_test::kernel_at_least(6, 16)) {
      REQUIRE(f["warnings"].size() == 1);
      CHECK(f["warnings"][0] == "CRIU 4.1.1 cannot dump TCP or UDP sockets on Linux " + ferry_test::kernel_release() +
                                    " (4.2 or newer can): jobs that hold any are refused; " + kFix);
    } else {
      CHECK(f["warnings"].empty());
    }
  }
  SECTION("not CRIU at all") {
    auto f = check({{"FERRY_CRIU", "/bin/true"}});
    CHECK(f["problems"][0] == "/bin/true does not answer --version like CRIU does; " + kFix);
  }
}

// ---- jobs in their own PID namespace ---------------------------------------------------

namespace {

const std::string kMlp = std::string(FERRY_TEST_BIN_DIR) + "/examples/mlp_trainer";

std::string status_field(pid_t pid, const std::string& key) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(key + ":", 0) == 0) return line.substr(key.size() + 2);
  return "";
}

// The children of pid (by /proc/*/status PPid).
std::vector<pid_t> children_of(pid_t pid) {
  std::vector<pid_t> out;
  for (auto& e : std::filesystem::directory_iterator("/proc")) {
    std::string n = e.path().filename();
    if (n.find_first_not_of("0123456789") != std::string::npos) continue;
    pid_t p = std::stoi(n);
    if (status_field(p, "PPid") == std::to_string(pid)) out.push_back(p);
  }
  return out;
}

// `ferry run` -> ferry-init -> the program: the program's host pid.
pid_t program_of(pid_t ferry_run) {
  auto init = children_of(ferry_run);
  REQUIRE(init.size() == 1);
  CHECK(status_field(init[0], "Name") == "ferry-init");
  CHECK(status_field(init[0], "NSpid") == std::to_string(init[0]) + "\t1");
  auto prog = children_of(init[0]);
  REQUIRE(prog.size() == 1);
  return prog[0];
}

std::vector<std::string> job(const std::vector<std::string>& extra_opts, int steps) {
  std::vector<std::string> v = {kFerry, "run", "--emulator", "--pid-namespace"};
  v.insert(v.end(), extra_opts.begin(), extra_opts.end());
  std::vector<std::string> prog = {"--", kMlp, "--steps", std::to_string(steps), "--step-delay-ms", "15"};
  v.insert(v.end(), prog.begin(), prog.end());
  return v;
}

// mlp_trainer as a --pid-namespace job, paced so the test can act mid-run.
std::vector<std::string> job_argv_for_route(int steps) {
  return {kFerry, "run", "--emulator", "--pid-namespace", "--", kMlp, "--steps", std::to_string(steps),
          "--step-delay-ms", "30"};
}

std::string checksum_line(const std::string& out) {
  auto lines = ferry_test::lines_with(out, "weights checksum");
  return lines.empty() ? "" : lines.back();
}

}  // namespace

TEST_CASE("a job in its own PID namespace: the program is pid 2 under ferry's init, reached by its host pid",
          "[full-process][namespace]") {
  ferry_test::TempDir t("ferry-job");
  auto plain = ferry_test::run({kMlp, "--steps", "30"}, ferry_test::emu_env(), 120);
  REQUIRE(plain.exit_code == 0);
  ferry_test::Child c(job({}, 30), ferry_test::emu_env());
  REQUIRE(c.wait_for("step 2 loss"));
  pid_t prog = program_of(c.pid());
  CHECK(status_field(prog, "NSpid") == std::to_string(prog) + "\t2");
  auto r = ferry_test::run({kFerry, "checkpoint", std::to_string(prog), t / "img", "--continue"}, ferry_test::emu_env(),
                           120);
  INFO(r.err);
  CHECK(r.exit_code == 0);
  auto done = c.finish();
  CHECK(done.exit_code == 0);
  CHECK(checksum_line(done.out) == checksum_line(plain.out));
  CHECK(!checksum_line(plain.out).empty());
}

TEST_CASE("in a job's PID namespace, /proc paths in the job's own numbers name the job's process and threads",
          "[full-process][namespace]") {
  // The job keeps the host's /proc, which numbers pids otherwise: the shim rewrites what
  // names the caller (the real driver writes its threads' names under /proc/self/task).
  // `exec` keeps the shell's pid, so cat opens /proc/<its own pid>.
  auto r = ferry_test::run({kFerry, "run", "--emulator", "--pid-namespace", "--", "/bin/sh", "-c",
                            "exec cat /proc/$$/status /proc/$$/task/$$/comm /proc/self/task/$$/comm"},
                           ferry_test::emu_env(), 60);
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  REQUIRE(ferry_test::lines_with(r.out, "Name:\tcat").size() == 1);
  auto nspid = ferry_test::lines_with(r.out, "NSpid:");
  REQUIRE(nspid.size() == 1);
  CHECK(nspid[0].substr(nspid[0].rfind('\t') + 1) == "2");  // pid 2, under ferry's init
  CHECK(ferry_test::lines_with(r.out, "cat").size() == 3);   // the name in both comm files too
  CHECK(r.err.find("/proc/") == std::string::npos);  // nothing reported unless asked
  // FERRY_TRACE_PROC reports each such path with what it became and how it ended (the
  // diagnosis of a driver that cannot start in a job), and only in a PID namespace.
  auto traced = ferry_test::run({kFerry, "run", "--emulator", "--pid-namespace", "--", "/bin/sh", "-c",
                                 "exec cat /proc/$$/status /proc/self/task/77777/comm"},
                                ferry_test::emu_env({{"FERRY_TRACE_PROC", "on"}}), 60);
  INFO(traced.err);
  CHECK(traced.exit_code == 1);  // cat: the second file is not there
  // The process's own directory by the number /proc knows it by, not the /proc/self link.
  auto status = ferry_test::lines_with(traced.err, "(/proc/2/status) as /proc/");
  REQUIRE(status.size() == 1);
  CHECK(status[0].ends_with("/status: ok"));
  CHECK(status[0].find(" as /proc/2/") == std::string::npos);
  CHECK(status[0].find(" as /proc/self/") == std::string::npos);
  CHECK(traced.err.find("(/proc/self/task/77777/comm): No such file or directory\n") != std::string::npos);
  auto outside = ferry_test::run({"/bin/cat", "/proc/self/status"}, ferry_test::emu_env({{"FERRY_TRACE_PROC", "on"},
                                  {"LD_PRELOAD", std::string(FERRY_TEST_BIN_DIR) + "/lib/libferry.so"}}), 60);
  CHECK(outside.exit_code == 0);
  CHECK(outside.err == "");
}

TEST_CASE("in a job's PID namespace, every call that names a path answers for the job's own process",
          "[full-process][namespace]") {
  // stat (the real driver stats /proc/<getpid()>/ns/pid at start-up), the old glibc's
  // __xstat family the driver binds to, statx, access, readlink, realpath, opendir, open,
  // with their 64-bit and fortified names, pthread_getname_np: each compared with what
  // /proc/self says, for the process and for one of its threads; the threads as listing
  // the process's task directory names them (by the host's numbers) stay usable by those
  // names; a child by the pid fork gave; errno is kept by a call that succeeds; a null
  // path gets glibc's EFAULT.
  const std::vector<std::string> calls = {"stat", "stat64", "fstatat", "fstatat64", "lstat64", "lstat",
                                          "statx", "__xstat", "__lxstat", "__fxstatat", "__xstat64",
                                          "__lxstat64", "__fxstatat64", "access", "faccessat", "readlink",
                                          "readlinkat", "__readlink_chk", "__readlinkat_chk", "realpath",
                                          "__realpath_chk", "opendir", "listed-threads", "opendir-slash",
                                          "open", "__open_2", "__openat_2", "__open64_2", "__openat64_2",
                                          "open64", "openat", "openat64", "fopen", "fopen64",
                                          "pthread_getname_np", "errno-kept", "null-path", "proc-tid", "child"};
  const std::string prog = std::string(FERRY_TEST_BIN_DIR) + "/tests/programs/proc_paths";
  // Each call's verdict, in the order of `calls`: "ok", "wrong" or "missing".
  auto outcome = [&](const ferry_test::Result& r) {
    std::map<std::string, std::string> said;
    std::istringstream in(r.out);
    for (std::string line; std::getline(in, line);) {
      auto sp = line.find(' ');
      if (sp != std::string::npos) said[line.substr(0, sp)] = line.substr(sp + 1) == "ok" ? "ok" : line.substr(sp + 1, 6);
    }
    std::vector<std::string> got;
    for (auto& c : calls) got.push_back(said.count(c) ? said[c] : "missing");
    return got;
  };
  auto plain = ferry_test::run({prog}, {}, 60);  // no namespace: /proc/<pid> is the process itself
  INFO(plain.out << plain.err);
  CHECK(plain.exit_code == 0);
  CHECK(outcome(plain) == std::vector<std::string>(calls.size(), "ok"));
  auto job = ferry_test::run({kFerry, "run", "--emulator", "--pid-namespace", "--", prog}, ferry_test::emu_env(), 60);
  INFO(job.out << job.err);
  CHECK(job.exit_code == 0);
  CHECK(outcome(job) == std::vector<std::string>(calls.size(), "ok"));
  // Untranslated, the host's /proc answers for another process (or none) every time.
  auto bare = ferry_test::run({kFerry, "run", "--emulator", "--pid-namespace", "--", prog},
                              ferry_test::emu_env({{"FERRY_TEST_NO_PROC_TRANSLATION", "1"}}), 60);
  INFO(bare.out);
  CHECK(bare.exit_code == 1);
  std::vector<std::string> wrong;
  for (auto& c : calls) wrong.push_back(c == "errno-kept" || c == "null-path" ? "ok" : "wrong:");
  CHECK(outcome(bare) == wrong);
}

TEST_CASE("two jobs at once each have their own control socket", "[full-process][namespace]") {
  ferry_test::Child a(job({}, 400), ferry_test::emu_env());
  ferry_test::Child b(job({}, 400), ferry_test::emu_env());
  REQUIRE(a.wait_for("step 2 loss"));
  REQUIRE(b.wait_for("step 2 loss"));
  pid_t pa = program_of(a.pid()), pb = program_of(b.pid());
  CHECK(status_field(pa, "NSpid") == std::to_string(pa) + "\t2");
  CHECK(status_field(pb, "NSpid") == std::to_string(pb) + "\t2");
  auto ps = ferry_test::run({kFerry, "ps", "--format", "json"}, ferry_test::emu_env(), 60);
  REQUIRE(ps.exit_code == 0);
  std::map<pid_t, nlohmann::json> listed;  // pid -> its job
  for (auto& p : nlohmann::json::parse(ps.out)) listed[p["pid"].get<pid_t>()] = p["job"];
  REQUIRE(listed.count(pa) == 1);
  REQUIRE(listed.count(pb) == 1);
  // Each names its job by the ferry run a scheduler signals, and its init.
  for (auto [p, run] : {std::pair{pa, a.pid()}, std::pair{pb, b.pid()}}) {
    INFO(listed[p].dump());
    CHECK(listed[p]["ferry"] == run);
    CHECK(listed[p]["init"] == std::stoi(status_field(p, "PPid")));
    CHECK(listed[p]["pids"] == "namespace");
  }
  auto text = ferry_test::run({kFerry, "ps"}, ferry_test::emu_env(), 60);
  CHECK(text.out.rfind("PID      JOB      STATE      DEVICES          MEMORY     COMMAND\n", 0) == 0);
  CHECK(text.out.find("\n" + std::to_string(pa) + std::string(8 - std::to_string(pa).size(), ' ') + " " +
                      std::to_string(a.pid())) != std::string::npos);
  for (pid_t p : {pa, pb}) {
    auto s = ferry_test::run({kFerry, "status", std::to_string(p), "--format", "json"}, ferry_test::emu_env(), 60);
    REQUIRE(s.exit_code == 0);
    CHECK(nlohmann::json::parse(s.out)["pid"] == p);
  }
  kill(a.pid(), SIGTERM);  // forwarded through the init to the program
  kill(b.pid(), SIGTERM);
  CHECK(a.finish().exit_code == 128 + SIGTERM);
  CHECK(b.finish().exit_code == 128 + SIGTERM);
}

TEST_CASE("a scheduler's signal reaches the job's program; ferry run ends with its status",
          "[full-process][namespace]") {
  ferry_test::TempDir t("ferry-job");
  ferry_test::Child c(job({"--on-signal", "TERM=checkpoint:" + (t / "preempted")}, 400), ferry_test::emu_env());
  REQUIRE(c.wait_for("step 2 loss"));
  kill(c.pid(), SIGTERM);
  auto r = c.finish();
  CHECK(r.exit_code == 0);
  CHECK(r.err.find("checkpoint written to " + (t / "preempted")) != std::string::npos);
  CHECK(std::filesystem::exists(t / "preempted/manifest.json"));
}

TEST_CASE("a ferry job survives its death: CRIU dumps its namespace and restores it, state intact",
          "[full-process][namespace][criu]") {
  REQUIRE(geteuid() == 0);  // CRIU dumps and restores as root; CI and developers are root
  ferry_test::TempDir t("ferry-criu-job");
  // A job whose state is in its memory: a shell counting in a variable.
  std::string out = t / "ticks";
  ferry_test::Child job({kFerry, "run", "--pid-namespace", "--", "/bin/sh", "-c",
                         "i=0; while :; do echo tick $i >> " + out + "; i=$((i+1)); sleep 0.05; done"},
                        ferry_test::emu_env());
  auto ticks = [&] { return ferry_test::lines_with(ferry_test::read_file(out), "tick "); };
  for (int i = 0; i < 200 && ticks().size() < 3; i++) usleep(50000);
  REQUIRE(ticks().size() >= 3);
  auto init = children_of(job.pid());
  REQUIRE(init.size() == 1);
  auto dump = ferry_test::run({criu(), "dump", "-t", std::to_string(init[0]), "-D", t.path, "-o", "dump.log"}, {}, 120);
  INFO(ferry_test::read_file(t / "dump.log"));
  REQUIRE(dump.exit_code == 0);
  CHECK(job.finish().exit_code == 128 + SIGKILL);  // CRIU killed the dumped job; ferry run says so
  size_t before = ticks().size();
  usleep(300000);
  REQUIRE(ticks().size() == before);  // nothing runs

  // In the foreground, criu is the restored job's parent (the init dies with its parent,
  // as it would with its ferry run).
  auto restored = restore_in_foreground(t.path);
  for (int i = 0; i < 200 && ticks().size() < before + 3; i++) usleep(50000);
  INFO(ferry_test::read_file(t / "restore.log"));
  auto all = ticks();
  REQUIRE(all.size() >= before + 3);
  // The counter went on from where it was: the shell's memory came back.
  for (size_t i = 0; i < all.size(); i++) CHECK(all[i] == "tick " + std::to_string(i));
  auto again = children_of(restored->pid());
  REQUIRE(again.size() == 1);
  CHECK(status_field(again[0], "Name") == "ferry-init");
  CHECK(status_field(again[0], "NSpid") == std::to_string(again[0]) + "\t1");  // the same namespace layout
  kill(again[0], SIGTERM);  // forwarded to the program
  restored->finish();
}

TEST_CASE("CRIU refuses a process the simulated GPU holds, naming its driver file; the job goes on",
          "[full-process][namespace][criu]") {
  REQUIRE(geteuid() == 0);
  ferry_test::TempDir t("ferry-criu-gpu");
  const std::string saxpy = std::string(FERRY_TEST_BIN_DIR) + "/examples/driver_saxpy";
  auto plain = ferry_test::run({saxpy, "--n", "100000", "--iters", "30"}, ferry_test::emu_env(), 120);
  REQUIRE(plain.exit_code == 0);
  ferry_test::Child job({kFerry, "run", "--emulator", "--pid-namespace", "--", saxpy, "--n", "100000", "--iters", "30",
                         "--iter-delay-ms", "20"},
                        ferry_test::emu_env());
  REQUIRE(job.wait_for("iteration 2"));
  auto init = children_of(job.pid());
  REQUIRE(init.size() == 1);
  // Like the real driver's /dev/nvidia* files: held from cuInit until the driver lets go.
  auto dump = ferry_test::run({criu(), "dump", "-t", std::to_string(init[0]), "-D", t.path, "-o", "dump.log",
                               "--leave-running"}, {}, 120);
  std::string log = ferry_test::read_file(t / "dump.log");
  INFO(log);
  CHECK(dump.exit_code != 0);
  CHECK(log.find("anon_inode:[userfaultfd]") != std::string::npos);
  auto done = job.finish();
  CHECK(done.exit_code == 0);
  CHECK(ferry_test::lines_with(done.out, "checksum") == ferry_test::lines_with(plain.out, "checksum"));
  CHECK(!ferry_test::lines_with(plain.out, "checksum").empty());
}

// ---- NVIDIA's checkpoint API on the simulated GPU ------------------------------------------

namespace {

const std::string kSaxpy = std::string(FERRY_TEST_BIN_DIR) + "/examples/driver_saxpy";
const std::string kCtl = std::string(FERRY_TEST_BIN_DIR) + "/tests/programs/ckpt_ctl";

// ckpt_ctl's answers, "STEP RESULT VALUE" per line, as run on the machine described by env.
std::vector<std::string> ctl(pid_t pid, std::vector<std::string> steps, std::map<std::string, std::string> env = {}) {
  steps.insert(steps.begin(), {kCtl, std::to_string(pid)});
  auto r = ferry_test::run(steps, ferry_test::emu_env(env), 180);
  INFO(r.err);
  std::vector<std::string> lines;
  std::istringstream in(r.out);
  std::string l;
  while (std::getline(in, l)) lines.push_back(l);
  return lines;
}

// The simulated GPU's UUID of device i ("ferry-emu-gpu", 0, 0x40, i).
std::string emu_uuid(int i) {
  char b[8];
  snprintf(b, sizeof b, "0040%02x", i);
  return std::string("666572727" "92d656d752d677075") + b;
}

const std::string kOtherUuid = "11112222333344445555666677778888";


}  // namespace

TEST_CASE("the simulated GPU's checkpoint API: states, a locked process waits, refusals keep it checkpointed",
          "[full-process][driver-checkpoint]") {
  auto plain = ferry_test::run({kSaxpy, "--n", "1000000", "--iters", "30"}, ferry_test::emu_env(), 120);
  REQUIRE(plain.exit_code == 0);
  ferry_test::Child job({kSaxpy, "--n", "1000000", "--iters", "30", "--iter-delay-ms", "20"}, ferry_test::emu_env());
  REQUIRE(job.wait_for("iteration 2"));
  pid_t p = job.pid();
  CHECK(ctl(p, {"state", "checkpoint", "unlock"}) ==
        std::vector<std::string>{"state 0 0", "checkpoint 401 0", "unlock 401 0"});  // CUDA_ERROR_ILLEGAL_STATE
  CHECK(ctl(p, {"lock:20000", "state"}) == std::vector<std::string>{"lock:20000 0 0", "state 0 1"});
  size_t frozen = job.out().size();
  usleep(300000);
  CHECK(job.out().size() == frozen);  // its next CUDA call waits
  CHECK(ctl(p, {"checkpoint", "state"}) == std::vector<std::string>{"checkpoint 0 0", "state 0 2"});
  // Another chip, too little memory, another GPU count, a checkpointed GPU missing from
  // the pairs: refused, and the process stays checkpointed.
  CHECK(ctl(p, {"restore", "state"}, {{"FERRY_EMU_DEVICE0", "name=another GPU"}}) ==
        std::vector<std::string>{"restore 101 0", "state 0 2"});  // CUDA_ERROR_INVALID_DEVICE
  CHECK(ctl(p, {"restore", "state"}, {{"FERRY_EMU_MEMORY", "4M"}}) ==
        std::vector<std::string>{"restore 2 0", "state 0 2"});  // CUDA_ERROR_OUT_OF_MEMORY
  // Room enough, but other processes hold all of it but 4 MiB.
  CHECK(ctl(p, {"restore", "state"}, {{"FERRY_EMU_DEVICE0", "held=16380M"}}) ==
        std::vector<std::string>{"restore 2 0", "state 0 2"});
  // A process that still holds GPU memory needs as many GPUs as it had.
  CHECK(ctl(p, {"restore", "state"}, {{"FERRY_EMU_DEVICES", "3"}}) ==
        std::vector<std::string>{"restore 101 0", "state 0 2"});
  std::string only_other = "restore:" + emu_uuid(1) + "=" + emu_uuid(0);
  CHECK(ctl(p, {only_other, "state"}) == std::vector<std::string>{only_other + " 1 0", "state 0 2"});
  CHECK(ctl(p, {"restore", "state", "unlock", "state"}) ==
        std::vector<std::string>{"restore 0 0", "state 0 1", "unlock 0 0", "state 0 0"});
  auto done = job.finish();
  CHECK(done.exit_code == 0);
  CHECK(ferry_test::lines_with(done.out, "checksum") == ferry_test::lines_with(plain.out, "checksum"));
}

TEST_CASE("the simulated GPU's checkpoint API drops what a caller that is gone left behind: its request never acts on "
          "the process that has the pid now (a restored copy with the host's pids), nor is its answer kept",
          "[full-process][driver-checkpoint]") {
  ferry_test::Child job({kSaxpy, "--n", "1000000", "--iters", "30", "--iter-delay-ms", "20"}, ferry_test::emu_env());
  REQUIRE(job.wait_for("iteration 2"));
  pid_t p = job.pid();
  pid_t gone = fork();
  if (gone == 0) _exit(0);
  REQUIRE(gone > 0);
  waitpid(gone, nullptr, 0);
  const std::string dir = "/tmp/ferry-emu-" + std::to_string(getuid()) + "/";
  std::filesystem::create_directories(dir);
  auto name = [&](pid_t target, pid_t caller, const std::string& kind) {
    // <target>.<caller pid>.<caller tid>.<call number>.<stage>, with nobody holding its
    // lock; this test's own pid stands for a caller's pid another process has now.
    return dir + std::to_string(target) + "." + std::to_string(caller) + "." + std::to_string(caller) + ".1." + kind;
  };
  const std::string killed = name(p, gone, "req"), reused = name(p, getpid(), "req"), answer = name(1, gone, "resp");
  std::ofstream(killed) << "op lock\ntimeout 0\n";
  std::ofstream(reused) << "op lock\ntimeout 0\n";
  std::ofstream(answer) << "result 0\nvalue 0\n";
  // Both asked after one wake-up: the first may be answered before the others are read.
  CHECK(ctl(p, {"state", "state"}) == std::vector<std::string>{"state 0 0", "state 0 0"});  // running, not locked
  CHECK(!std::filesystem::exists(killed));
  CHECK(!std::filesystem::exists(reused));
  CHECK(!std::filesystem::exists(answer));
  size_t before = job.out().size();
  REQUIRE(job.wait_for("iteration 4"));  // it goes on
  CHECK(job.out().size() > before);
  CHECK(job.finish().exit_code == 0);
}

TEST_CASE("NVIDIA's route on the simulated GPU: driver checkpoint, CRIU dump, the job dies, CRIU restore and driver "
          "restore onto another machine's GPU, the job ends as if untouched",
          "[full-process][driver-checkpoint][criu]") {
  REQUIRE(geteuid() == 0);
  ferry_test::TempDir t("ferry-nvroute");
  auto plain = ferry_test::run({kSaxpy, "--n", "300000", "--iters", "40"}, ferry_test::emu_env(), 120);
  REQUIRE(plain.exit_code == 0);
  ferry_test::Child job({kFerry, "run", "--emulator", "--pid-namespace", "--", kSaxpy, "--n", "300000", "--iters", "40",
                         "--iter-delay-ms", "20"},
                        ferry_test::emu_env({{"FERRY_CONTROL", "off"}}));
  REQUIRE(job.wait_for("iteration 3"));
  pid_t init = children_of(job.pid()).at(0);
  pid_t prog = children_of(init).at(0);
  auto dump = [&](const std::string& dir, std::vector<std::string> extra) {
    std::filesystem::create_directories(dir);
    std::vector<std::string> argv = {criu(), "dump", "-t", std::to_string(init), "-D", dir, "-o", "dump.log"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return ferry_test::run(argv, {}, 180);
  };
  // Before the driver lets go: refused for the driver's file.
  auto refused = dump(t / "before", {"--leave-running"});
  CHECK(refused.exit_code != 0);
  CHECK(ferry_test::read_file(t / "before/dump.log").find("anon_inode:[userfaultfd]") != std::string::npos);
  CHECK(ctl(prog, {"lock:20000", "checkpoint"}) == std::vector<std::string>{"lock:20000 0 0", "checkpoint 0 0"});
  auto dumped = dump(t / "img", {});
  INFO(ferry_test::read_file(t / "img/dump.log"));
  REQUIRE(dumped.exit_code == 0);
  CHECK(job.finish().exit_code == 128 + SIGKILL);  // the job is gone
  std::string before = job.out();
  CHECK(before.find("checksum") == std::string::npos);

  auto restored = restore_in_foreground(t / "img");
  auto restored_init = children_of(restored->pid());
  REQUIRE(restored_init.size() == 1);
  pid_t new_init = restored_init[0];
  pid_t new_prog = children_of(new_init).at(0);
  CHECK(status_field(new_prog, "NSpid") == std::to_string(new_prog) + "\t2");
  // The restorer's machine: its GPU 0 has another UUID; the pair maps the old one to it.
  std::string pair = "restore:" + emu_uuid(0) + "=" + kOtherUuid;
  CHECK(ctl(new_prog, {"state", pair, "unlock"}, {{"FERRY_EMU_DEVICE0", "uuid=" + kOtherUuid}}) ==
        std::vector<std::string>{"state 0 2", pair + " 0 0", "unlock 0 0"});
  // The restored job writes on into the same output file and ends as an untouched run.
  for (int i = 0; i < 600 && job.out().find("checksum") == std::string::npos; i++) usleep(50000);
  CHECK(ferry_test::lines_with(job.out(), "checksum") == ferry_test::lines_with(plain.out, "checksum"));
  CHECK(!ferry_test::lines_with(plain.out, "checksum").empty());
  restored->finish();
}

TEST_CASE("the checkpoint API's lock waits for queued work and gives up at its timeout, the process still running",
          "[full-process][driver-checkpoint]") {
  ferry_test::Child job({std::string(FERRY_TEST_BIN_DIR) + "/tests/programs/busy_stream", "6", "700"},
                        ferry_test::emu_env());
  REQUIRE(job.wait_for("busy"));
  usleep(100000);  // a 700 ms host function is running on its stream
  CHECK(ctl(job.pid(), {"lock:150", "state"}) == std::vector<std::string>{"lock:150 600 0", "state 0 0"});  // NOT_READY
  // Without a timeout the lock waits for the work in flight, then holds the next call.
  CHECK(ctl(job.pid(), {"lock", "state", "unlock"}) ==
        std::vector<std::string>{"lock 0 0", "state 0 1", "unlock 0 0"});
  auto done = job.finish();
  CHECK(done.exit_code == 0);
  CHECK(done.out.find("done") != std::string::npos);
}

namespace {

// One request on a control socket by its path (ferry_common/control.hpp's protocol);
// the last line of the answer.
nlohmann::json request_at(const std::string& path, const std::string& op, const nlohmann::json& options) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  snprintf(a.sun_path, sizeof a.sun_path, "%s", path.c_str());
  REQUIRE(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  std::string req = nlohmann::json({{"v", 1}, {"op", op}, {"options", options}}).dump() + "\n";
  REQUIRE(send(fd, req.data(), req.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(req.size()));
  std::string all;
  char buf[4096];
  ssize_t n;
  while ((n = recv(fd, buf, sizeof buf, 0)) > 0) all.append(buf, static_cast<size_t>(n));
  close(fd);
  auto lines = ferry_test::lines_with(all, "\"ok\"");
  REQUIRE(!lines.empty());
  return nlohmann::json::parse(lines.back());
}

}  // namespace

TEST_CASE("ferry's route by hand: GPU state to ferry's image, driver checkpoint, CRIU dump, the job dies; CRIU "
          "restore, driver restore, ferry rebuilds on the other GPU, the job ends bit-identical",
          "[full-process][driver-checkpoint][criu]") {
  REQUIRE(geteuid() == 0);
  ferry_test::TempDir t("ferry-route");
  auto plain = ferry_test::run({kMlp, "--steps", "40"}, ferry_test::emu_env(), 120);
  REQUIRE(plain.exit_code == 0);
  ferry_test::Child job(job_argv_for_route(40), ferry_test::emu_env());
  REQUIRE(job.wait_for("step 3 loss"));
  pid_t init = children_of(job.pid()).at(0);
  pid_t prog = children_of(init).at(0);
  // 1. ferry writes the GPU state to its image and releases every GPU object.
  auto sus = ferry_test::run({kFerry, "suspend", std::to_string(prog), "--to", t / "gpu"}, ferry_test::emu_env(), 120);
  INFO(sus.err);
  REQUIRE(sus.exit_code == 0);
  // 2. The driver lets go of what is left; 3. CRIU dumps the job, which ends.
  CHECK(ctl(prog, {"lock:20000", "checkpoint"}) == std::vector<std::string>{"lock:20000 0 0", "checkpoint 0 0"});
  std::filesystem::create_directories(t / "cpu");
  auto dump = ferry_test::run({criu(), "dump", "-t", std::to_string(init), "-D", t / "cpu", "-o", "dump.log"}, {}, 180);
  INFO(ferry_test::read_file(t / "cpu/dump.log"));
  REQUIRE(dump.exit_code == 0);
  CHECK(job.finish().exit_code == 128 + SIGKILL);
  // Restore: CRIU in the foreground, the driver, then ferry rebuilds on GPU 1.
  auto restored = restore_in_foreground(t / "cpu");
  pid_t new_prog = children_of(children_of(restored->pid()).at(0)).at(0);
  CHECK(ctl(new_prog, {"restore", "unlock"}) == std::vector<std::string>{"restore 0 0", "unlock 0 0"});
  // The restored shim still listens on the socket named by its old host pid: `ferry`
  // cannot address it by its new pid yet (the whole-process verbs will re-create it).
  std::string sock = "/tmp/ferry-" + std::to_string(getuid()) + "/" + std::to_string(prog) + ".sock";
  auto reply = request_at(sock, "resume", {{"device", 1}});
  INFO(reply.dump());
  CHECK(reply["ok"] == true);
  CHECK(reply["status"]["pid"] == new_prog);
  CHECK(reply["status"]["memory_by_gpu"].contains("1"));
  for (int i = 0; i < 600 && job.out().find("weights checksum") == std::string::npos; i++) usleep(50000);
  CHECK(ferry_test::lines_with(job.out(), "weights checksum") == ferry_test::lines_with(plain.out, "weights checksum"));
  CHECK(!ferry_test::lines_with(plain.out, "weights checksum").empty());
  restored->finish();
}
