// Whole-process images: `ferry dump` of a job (CRIU for the CPU, ferry for the GPU), the
// job killed, `ferry restore` bringing it back -- on the same GPU, the other one, or a
// "different machine" (simulated GPUs with other UUIDs and memory) -- and the program
// ending exactly as an uninterrupted run. CRIU is the one scripts/setup.sh builds; CI
// runs as root, so none of these skip there.
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <regex>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "fake_criu.hpp"
#include "process.hpp"
#include "temp_dir.hpp"

namespace {

namespace fs = std::filesystem;
const std::string kBin = FERRY_TEST_BIN_DIR;
const std::string kFerry = kBin + "/tools/ferry";
const std::string kMlp = kBin + "/examples/mlp_trainer";
const std::string kSaxpy = kBin + "/examples/driver_saxpy";
const std::string kGraph = kBin + "/tests/programs/graph_loop";
const std::string kLauncher = kBin + "/tests/programs/launcher";

std::vector<std::string> checksums(const std::string& out, const std::string& key = "checksum") {
  return ferry_test::lines_with(out, key);
}

// A program as a `ferry run --pid-namespace` job on the simulated GPU (or, kind
// --host-pids, as a job without a PID namespace).
std::vector<std::string> job(std::vector<std::string> prog, std::vector<std::string> run_opts = {},
                             const std::string& kind = "--pid-namespace") {
  std::vector<std::string> v = {kFerry, "run", "--emulator", kind};
  v.insert(v.end(), run_opts.begin(), run_opts.end());
  v.push_back("--");
  v.insert(v.end(), prog.begin(), prog.end());
  return v;
}

// An executable shell script at path.
std::string script_at(const std::string& path, const std::string& text) {
  std::ofstream(path) << text;
  chmod(path.c_str(), 0755);
  return path;
}

// A CRIU for FERRY_CRIU at path: this build's CRIU ($real) for everything, but a dump
// runs on_dump (shell, with "$@" CRIU's arguments) instead.
std::string criu_wrapper(const std::string& path, const std::string& on_dump) {
  return script_at(path, "#!/bin/sh\nreal=" + std::string(FERRY_TEST_SOURCE_DIR) +
                             "/.deps/criu/criu\n[ \"$1\" = dump ] || exec \"$real\" \"$@\"\n" + on_dump);
}

int random_step(int lo, int hi) {
  static std::mt19937 g{std::random_device{}()};
  return std::uniform_int_distribution<int>(lo, hi)(g);
}

// The end of the CRIU log a failed dump or restore names ("(whole log: PATH)"): a test's
// temporary directory, where it lives, is gone by the time anyone reads the failure.
std::string criu_log_named_in(const std::string& text) {
  const std::string key = "(whole log: ";
  auto at = text.find(key);
  if (at == std::string::npos) return {};
  auto end = text.find(')', at);
  std::string path = text.substr(at + key.size(), end - at - key.size());
  std::string log = ferry_test::read_file(path);
  std::vector<std::string> lines;
  std::istringstream in(log);
  for (std::string l; std::getline(in, l);) lines.push_back(l);
  std::string tail;
  for (size_t i = lines.size() > 80 ? lines.size() - 80 : 0; i < lines.size(); ++i) tail += lines[i] + "\n";
  return "--- the last lines of " + path + " ---\n" + tail;
}

nlohmann::json dump(pid_t pid, const std::string& dir, std::vector<std::string> extra = {},
                    std::map<std::string, std::string> env = {}) {
  std::vector<std::string> argv = {kFerry, "dump", std::to_string(pid), dir, "--format", "json"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  auto r = ferry_test::run(argv, ferry_test::emu_env(env), 180);
  INFO(r.out << r.err << criu_log_named_in(r.out + r.err));
  REQUIRE(r.exit_code == 0);
  return nlohmann::json::parse(r.out);
}

// `ferry restore DIR` runs the job to its end; its report is the first line of stderr.
ferry_test::Result restore(const std::string& dir, std::vector<std::string> extra = {},
                           std::map<std::string, std::string> env = {}) {
  std::vector<std::string> argv = {kFerry, "restore", dir, "--format", "json"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  auto r = ferry_test::run(argv, ferry_test::emu_env(env), 240);
  // A --host-pids image needs its pids free. Where pid_max is small (32768 on the CI
  // machines), pid numbers wrap during the suite and another test's process may hold one
  // of them for a while: waited for (the refusal itself is tested with restore_text).
  // Or a dead one not yet reaped (75): a test that killed a restore of its own.
  for (int i = 0; i < 30 && (r.exit_code == 78 || r.exit_code == 75) &&
                  r.out.find("so it comes back with the pids it had") != std::string::npos;
       i++) {
    sleep(1);
    r = ferry_test::run(argv, ferry_test::emu_env(env), 240);
  }
  // Shown with the test's next assertion, which is the one on this restore.
  if (r.exit_code != 0) UNSCOPED_INFO(criu_log_named_in(r.out + r.err));
  return r;
}

// A refused restore: its error is on stderr as text.
ferry_test::Result restore_text(const std::string& dir, std::vector<std::string> extra = {},
                                std::map<std::string, std::string> env = {}) {
  std::vector<std::string> argv = {kFerry, "restore", dir};
  argv.insert(argv.end(), extra.begin(), extra.end());
  return ferry_test::run(argv, ferry_test::emu_env(env), 240);
}

nlohmann::json report_of(const ferry_test::Result& r) {
  auto lines = ferry_test::lines_with(r.err, "\"ok\"");
  REQUIRE(!lines.empty());
  return nlohmann::json::parse(lines.front());
}

std::vector<pid_t> children_of(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/task/" + std::to_string(pid) + "/children");
  std::vector<pid_t> v;
  pid_t c;
  while (in >> c) v.push_back(c);
  return v;
}

// ferry run -> ferry-init -> program
pid_t program_of(pid_t ferry_run) { return children_of(children_of(ferry_run).at(0)).at(0); }

// Stops pid with SIGSTOP and waits (a second at most) until /proc shows it stopped.
void stop_and_wait(pid_t pid) {
  REQUIRE(kill(pid, SIGSTOP) == 0);
  for (int i = 0; i < 100 && ferry_test::read_file("/proc/" + std::to_string(pid) + "/stat").find(") T ") ==
                                 std::string::npos;
       i++)
    usleep(10000);
}

// The jobs (`job` of `ferry ps --format json`) of the processes whose job's ferry run or
// ferry restore is `ferry`.
std::vector<nlohmann::json> jobs_listed_under(pid_t ferry) {
  auto ps = ferry_test::run({kFerry, "ps", "--format", "json"}, ferry_test::emu_env(), 60);
  std::vector<nlohmann::json> jobs;
  for (auto& p : nlohmann::json::parse(ps.out))
    if (p["job"].is_object() && p["job"]["ferry"] == ferry) jobs.push_back(p["job"]);
  return jobs;
}

// The UUID of a process's GPU `physical` (its own numbering), from its status.
std::string uuid_at(const nlohmann::json& st, int physical) {
  for (auto& g : st["gpus"])
    if (g["physical"] == physical) return g["uuid"];
  return "no GPU " + std::to_string(physical);
}

// The UUID of the one GPU a restored process (its status) holds memory on.
std::string held_uuid(const nlohmann::json& st) {
  if (st["memory_by_gpu"].size() != 1) return "memory on " + st["memory_by_gpu"].dump();
  return uuid_at(st, std::stoi(st["memory_by_gpu"].begin().key()));
}

}  // namespace

TEST_CASE("mlp_trainer dumped at a random step, killed, restored onto the other GPU: it ends bit-identical; inspect "
          "and verify see both halves",
          "[process-image][criu]") {
  REQUIRE(geteuid() == 0);
  ferry_test::TempDir t("ferry-pimg");
  auto plain = ferry_test::run({kMlp, "--steps", "120"}, ferry_test::emu_env(), 120);
  REQUIRE(plain.exit_code == 0);
  ferry_test::Child c(job({kMlp, "--steps", "120", "--step-delay-ms", "20"}), ferry_test::emu_env());
  int step = random_step(2, 40);
  INFO("dumped at step " << step);
  REQUIRE(c.wait_for("step " + std::to_string(step) + " loss"));
  auto chk = ferry_test::run({kFerry, "check", std::to_string(program_of(c.pid())), "--format", "json"},
                             ferry_test::emu_env(), 60);
  CHECK(nlohmann::json::parse(chk.out)["full_process"]["dumpable"] == true);
  auto d = dump(c.pid(), t / "img");
  CHECK(d["processes"] == 2);
  CHECK(d["cuda_processes"] == 1);
  CHECK(d["stats"]["gpu_device_bytes"].get<uint64_t>() > 0);
  CHECK(c.finish().exit_code == 128 + SIGKILL);  // the job is gone
  CHECK(checksums(c.out()).empty());
  CHECK(!fs::exists(t / "img.partial"));

  auto in = ferry_test::run({kFerry, "inspect", t / "img", "--format", "json"}, {}, 60);
  REQUIRE(in.exit_code == 0);
  auto ij = nlohmann::json::parse(in.out);
  CHECK(ij["kind"] == "process");
  CHECK(ij["processes"].size() == 2);
  CHECK(ij["processes"][1]["cmdline"][0] == kMlp);
  CHECK(ij["gpu_images"]["gpu/2"]["device_bytes"] == d["stats"]["gpu_device_bytes"]);
  CHECK(!ij["cpu_files"].empty());
  auto vf = ferry_test::run({kFerry, "verify", t / "img"}, {}, 60);
  CHECK(vf.exit_code == 0);
  CHECK(vf.out.find("intact (CPU half: " + std::to_string(ij["cpu_files"].size()) + " CRIU files hashed") !=
        std::string::npos);

  auto r = restore(t / "img", {"--device", "1"});
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(checksums(r.out) == checksums(plain.out));
  CHECK(!checksums(plain.out).empty());
  auto rep = report_of(r);
  CHECK(rep["processes"][0]["nspid"] == 2);
  CHECK(rep["processes"][0]["status"]["memory_by_gpu"].contains("1"));
  CHECK(!rep["processes"][0]["status"]["memory_by_gpu"].contains("0"));
}

namespace {

// The fds of a process that name `link`.
std::vector<std::string> fds_naming(pid_t pid, const std::string& link) {
  std::vector<std::string> v;
  std::error_code ec;
  for (auto& e : fs::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec))
    if (fs::read_symlink(e.path(), ec).string() == link) v.push_back(e.path().filename().string());
  std::sort(v.begin(), v.end());
  return v;
}

// `ferry dump` of a job whose processes pass descriptors over Unix sockets: one crossing
// right then is "try again" (75), as a scheduler would, up to five times.
ferry_test::Result dump_when_settled(pid_t pid, const std::string& dir, std::vector<std::string> extra = {}) {
  std::vector<std::string> argv = {kFerry, "dump", std::to_string(pid), dir};
  argv.insert(argv.end(), extra.begin(), extra.end());
  ferry_test::Result d;
  for (int tries = 0; tries < 5; tries++) {
    d = ferry_test::run(argv, ferry_test::emu_env(), 180);
    if (d.exit_code != 75) break;
    usleep(50000);
  }
  return d;
}

// A process's pid in its innermost namespace (the last NSpid field).
int ns_pid(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("NSpid:", 0) == 0) return std::stoi(line.substr(line.find_last_of('\t') + 1));
  return -1;
}

}  // namespace

TEST_CASE("a DataLoader's shape: workers forked without exec once CUDA is up inherit the driver's file; ferry replaces "
          "it in them, so the job is dumped at a random step and restored onto the other GPU, bit-identical; with "
          "FERRY_FORK_RELEASE=off the dump is refused before anything stops, naming each worker; the same in a job "
          "of the host's pids",
          "[process-image][criu]") {
  REQUIRE(geteuid() == 0);
  ferry_test::TempDir t("ferry-pimg");
  const std::string uffd = "anon_inode:[userfaultfd]";  // the simulated driver's device file
  auto plain = ferry_test::run({kMlp, "--steps", "150"}, ferry_test::emu_env(), 120);
  REQUIRE(!checksums(plain.out).empty());
  std::vector<std::string> prog = {kMlp, "--steps", "150", "--step-delay-ms", "20", "--loader-workers", "2"};

  {  // Without ferry's fork handler the workers keep the driver's file, as under NVIDIA's route.
    ferry_test::Child c(job(prog), ferry_test::emu_env({{"FERRY_FORK_RELEASE", "off"}}));
    REQUIRE(c.wait_for("step " + std::to_string(random_step(2, 30)) + " loss"));
    pid_t program = program_of(c.pid());
    auto workers = children_of(program);
    REQUIRE(workers.size() == 2);
    std::string held;
    for (pid_t w : workers) {
      auto fds = fds_naming(w, uffd);
      REQUIRE(fds.size() == 1);
      held += (held.empty() ? "" : "; ") + std::string("process ") + std::to_string(ns_pid(w)) + " (mlp_trainer, pid " +
              std::to_string(w) + "): " + uffd + " as fd " + fds[0];
    }
    auto r = ferry_test::run({kFerry, "dump", std::to_string(c.pid()), t / "refused"}, ferry_test::emu_env(), 120);
    CHECK(r.exit_code == 78);
    CHECK(r.err == "ferry: cannot dump job " + std::to_string(children_of(c.pid()).at(0)) +
                       ": processes that do not use CUDA under ferry hold the CUDA driver's files, which CRIU cannot "
                       "dump -- " + held +
                       ". A child forked without exec inherits them (in a ferry job they are replaced in a child "
                       "forked once CUDA started under ferry's shim, unless FERRY_FORK_RELEASE=off), as does a "
                       "program using the driver without ferry (NVML, nvidia-smi); a userfaultfd is the simulated "
                       "GPU's file, or the program's own (CRIU cannot dump either). Nothing was done; the job goes on "
                       "running\n");
    auto chk = ferry_test::run({kFerry, "check", std::to_string(program), "--format", "json"}, ferry_test::emu_env(), 60);
    auto fp = nlohmann::json::parse(chk.out)["full_process"];
    CHECK(fp["dumpable"] == false);
    CHECK(fp["problems"].dump().find(held) != std::string::npos);
    auto done = c.finish();
    CHECK(done.exit_code == 0);
    CHECK(checksums(c.out()) == checksums(plain.out));
    CHECK(!fs::exists(t / "refused"));
    CHECK(!fs::exists(t / "refused.partial"));
  }

  ferry_test::Child c(job(prog), ferry_test::emu_env());
  int step = random_step(2, 30);
  INFO("dumped at step " << step);
  REQUIRE(c.wait_for("step " + std::to_string(step) + " loss"));
  auto workers = children_of(program_of(c.pid()));
  REQUIRE(workers.size() == 2);
  for (pid_t w : workers) CHECK(fds_naming(w, uffd).empty());
  CHECK(fds_naming(program_of(c.pid()), uffd).size() == 1);  // the parent keeps its driver
  auto d = dump(c.pid(), t / "img");
  CHECK(d["processes"] == 4);
  CHECK(d["cuda_processes"] == 1);
  CHECK(c.finish().exit_code == 128 + SIGKILL);
  auto r = restore(t / "img", {"--device", "1"});
  INFO(r.err);
  REQUIRE(r.exit_code == 0);  // the workers too ended cleanly, every batch sent
  CHECK(checksums(r.out) == checksums(plain.out));
  CHECK(report_of(r)["processes"][0]["status"]["memory_by_gpu"].contains("1"));

  // The same as a job of the host's pids, whose /proc is its own: the shim knows it is in
  // a job by FERRY_JOB there, so the workers give the driver's file up too.
  ferry_test::Child h(job(prog, {}, "--host-pids"), ferry_test::emu_env());
  REQUIRE(h.wait_for("step " + std::to_string(random_step(2, 30)) + " loss"));
  auto host_workers = children_of(program_of(h.pid()));
  REQUIRE(host_workers.size() == 2);
  for (pid_t w : host_workers) CHECK(fds_naming(w, uffd).empty());
  dump(h.pid(), t / "img-host");
  CHECK(h.finish().exit_code == 128 + SIGKILL);
  auto hr = restore(t / "img-host", {"--device", "1"});
  INFO(hr.err);
  REQUIRE(hr.exit_code == 0);
  CHECK(checksums(hr.out) == checksums(plain.out));
}

TEST_CASE("a Python job in a DataLoader's shape -- multiprocessing workers forked once CUDA is up, queues, batches in "
          "deleted /dev/shm files whose descriptors cross Unix sockets -- dumped at a random step and restored onto "
          "the other GPU ends bit-identical; so does one that initialized NVML first and never shut it down "
          "(PyTorch's device_count()): ferry shuts NVML down around the dump, and NVML answers after the restore",
          "[process-image][criu]") {
  REQUIRE(geteuid() == 0);
  const bool nvml = GENERATE(false, true);
  INFO((nvml ? "with NVML" : "without NVML"));
  ferry_test::TempDir t("ferry-pimg");
  const std::string script = std::string(FERRY_TEST_SOURCE_DIR) + "/tests/programs/loader_job.py";
  auto plain = ferry_test::run({"python3", script, "150"}, ferry_test::emu_env(), 120);
  INFO(plain.err);
  REQUIRE(!checksums(plain.out, "state checksum").empty());
  std::vector<std::string> prog = {"python3", script, "150", "--step-delay-ms", "20"};
  if (nvml) prog.push_back("--nvml");
  ferry_test::Child c(job(prog), ferry_test::emu_env());
  int step = random_step(2, 40);
  INFO("dumped at step " << step);
  REQUIRE(c.wait_for("step " + std::to_string(step) + " sum"));
  pid_t program = program_of(c.pid());
  auto workers = children_of(program);
  REQUIRE(workers.size() == 2);
  // The simulated driver's file, and NVML's (its simulated library's stand-in for
  // /dev/nvidia*), are the program's; the workers forked afterwards hold neither (ferry's
  // fork handler).
  CHECK(fds_naming(program, "anon_inode:[userfaultfd]").size() == (nvml ? 2u : 1u));
  for (pid_t w : workers) CHECK(fds_naming(w, "anon_inode:[userfaultfd]").empty());
  if (nvml) {
    CHECK(c.out().find("loader_job: NVML counts 2 devices\n") != std::string::npos);
    // A --leave-running dump first: NVML is shut down for it and back for the job.
    auto pre = dump_when_settled(c.pid(), t / "pre", {"--leave-running"});
    INFO(pre.err);
    REQUIRE(pre.exit_code == 0);
    CHECK(fds_naming(program, "anon_inode:[userfaultfd]").size() == 2);  // NVML's is open again
  }
  auto d = dump_when_settled(c.pid(), t / "img");
  INFO(d.err);
  REQUIRE(d.exit_code == 0);
  CHECK(c.finish().exit_code == 128 + SIGKILL);
  auto r = restore(t / "img", {"--device", "1"});
  INFO(r.err);
  REQUIRE(r.exit_code == 0);  // the workers too ended cleanly, every batch sent once
  CHECK(checksums(r.out, "state checksum") == checksums(plain.out, "state checksum"));
  auto sums = ferry_test::lines_with(plain.out, " sum ");
  auto after = ferry_test::lines_with(r.out, " sum ");
  REQUIRE(!after.empty());
  CHECK(std::vector<std::string>(sums.end() - static_cast<long>(after.size()), sums.end()) == after);
  CHECK(report_of(r)["processes"][0]["status"]["memory_by_gpu"].contains("1"));
  if (nvml) CHECK(r.out.find("loader_job: NVML still counts 2 devices\n") != std::string::npos);
}

TEST_CASE("a driver file NVIDIA's checkpoint does not release (NVML's, on a real GPU) is named once the driver let go; "
          "the dump is undone and the job ends bit-identical",
          "[process-image][criu]") {
  REQUIRE(geteuid() == 0);
  ferry_test::TempDir t("ferry-pimg");
  const std::string script = std::string(FERRY_TEST_SOURCE_DIR) + "/tests/programs/loader_job.py";
  auto plain = ferry_test::run({"python3", script, "200"}, ferry_test::emu_env(), 120);
  REQUIRE(!checksums(plain.out, "state checksum").empty());
  ferry_test::Child c(job({"python3", script, "200", "--step-delay-ms", "20", "--stray-driver-file"}),
                      ferry_test::emu_env());
  REQUIRE(c.wait_for("step " + std::to_string(random_step(2, 30)) + " sum"));
  pid_t program = program_of(c.pid());
  auto said = ferry_test::lines_with(c.out(), "stray driver file as fd ");
  REQUIRE(said.size() == 1);
  std::string stray_fd = said[0].substr(said[0].rfind(' ') + 1);
  CHECK(fs::read_symlink("/proc/" + std::to_string(program) + "/fd/" + stray_fd).string() == "anon_inode:[userfaultfd]");
  auto r = ferry_test::run({kFerry, "dump", std::to_string(c.pid()), t / "img"}, ferry_test::emu_env(), 120);
  CHECK(r.exit_code == 78);
  CHECK(r.err == "ferry: dump failed: the CUDA driver's files are still held once NVIDIA's checkpoint released the "
                 "GPUs -- process 2 (python3, pid " + std::to_string(program) + "): anon_inode:[userfaultfd] as fd " +
                     stray_fd +
                     "; CRIU cannot dump them. NVML (libnvidia-ml) keeps its own open where the program linked to it "
                     "directly (ferry shuts down only NVML reached through dlsym, PyTorch's way); so does anything "
                     "that opened them itself; the job goes on running on its GPUs, nothing was written\n");
  CHECK(!fs::exists(t / "img"));
  CHECK(!fs::exists(t / "img.partial"));
  auto done = c.finish();
  CHECK(done.exit_code == 0);
  CHECK(checksums(c.out(), "state checksum") == checksums(plain.out, "state checksum"));
}

namespace {

// A job of two CUDA processes in t: mlp_trainer (400 steps) and a latecomer, a Python
// program (its parent, also Python, never uses CUDA and reaps it only once the trainer
// has ended, so that how it ended stays in /proc until then). The latecomer has libcuda
// loaded but calls cuInit only once the file `go` exists (its userfaultfd, the
// simulated driver's file, comes with it; "late ready" said before, "late cuInit 0"
// and the file `go`.inited after), then waits for `done` (which the job's shell makes
// once the trainer has ended) and, 0.3 s later, exits 0 -- or, with `crash`, is killed
// by SIGSEGV. (At once, it could end while CRIU's restore is still detaching from the
// restored tasks, which fails the restore: "Unable to detach N: No such process".)
// Its script.
std::string latecomer_job(const std::string& t, const std::string& go, const std::string& done, bool crash = false) {
  std::ofstream(t + "/late.py") << "import ctypes, os, resource, signal, sys, time\n"
                                   "go, done, end, crash = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == '1'\n"
                                   "def wait(path):\n"
                                   "    while not os.path.exists(path): time.sleep(0.01)\n"
                                   "child = os.fork()\n"
                                   "if child:\n"
                                   "    wait(end)\n"
                                   "    os.waitpid(child, 0)\n"
                                   "    sys.exit(0)\n"
                                   "cu = ctypes.CDLL('libcuda.so.1')\n"
                                   "print('late ready', flush=True)\n"
                                   "wait(go)\n"
                                   "print(f'late cuInit {cu.cuInit(0)}', flush=True)\n"
                                   "open(go + '.inited', 'w').close()\n"
                                   "wait(done)\n"
                                   "time.sleep(0.3)\n"
                                   "if crash:\n"
                                   "    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))\n"
                                   "    os.kill(os.getpid(), signal.SIGSEGV)\n"
                                   "os._exit(0)\n";
  return script_at(t + "/job.sh", "#!/bin/sh\npython3 " + t + "/late.py " + go + " " + done + " " + t + "/end " +
                                      (crash ? "1" : "0") + " &\n" + kMlp +
                                      " --steps 400 --step-delay-ms 20\ntouch " + done + " " + t + "/end\nwait\n");
}

// Whether `ferry dump --progress always`, running as dumper, has looked at the job (its
// first progress line), within a minute.
bool looked_at_job(const ferry_test::Child& dumper) {
  for (int i = 0; i < 6000; i++) {
    if (dumper.err().find("ferry: dump of job ") != std::string::npos) return true;
    usleep(10000);
  }
  return false;
}

// The latecomer of latecomer_job, once it said "late ready".
pid_t latecomer_of(pid_t ferry_run) {
  for (pid_t p : children_of(program_of(ferry_run)))
    if (ferry_test::read_file("/proc/" + std::to_string(p) + "/comm") == "python3\n" && children_of(p).size() == 1)
      return children_of(p)[0];
  return 0;
}

}  // namespace

TEST_CASE("a process that begins to use CUDA while its job is being dumped (cuInit after ferry looked at the job, "
          "before the driver's checkpoint or before CRIU froze the job) makes the dump 'try again' (75), naming it; the "
          "job goes on; a second dump takes it along and the job, restored, ends bit-identical",
          "[process-image][criu]") {
  REQUIRE(geteuid() == 0);
  ferry_test::TempDir t("ferry-pimg");
  // The window: widened either by each engine operation of the job starting 1.5 s late
  // (between ferry's look at the job and the driver's checkpoint), or by a CRIU that
  // lets the latecomer start CUDA before it dumps (after ferry's last look, which CRIU
  // then refuses).
  const bool at_criu = GENERATE(false, true);
  INFO((at_criu ? "before CRIU" : "before the driver's checkpoint"));
  auto plain = ferry_test::run({kMlp, "--steps", "400"}, ferry_test::emu_env(), 120);
  REQUIRE(plain.exit_code == 0);
  const std::string go = t / "go";
  ferry_test::Child c(job({latecomer_job(t.path, go, t / "done")}),
                      ferry_test::emu_env({{"FERRY_TEST_OP_DELAY_MS", at_criu ? "0" : "1500"}}));
  REQUIRE(c.wait_for("late ready"));
  REQUIRE(c.wait_for("step " + std::to_string(random_step(2, 30)) + " loss"));
  pid_t late = latecomer_of(c.pid());
  REQUIRE(late > 0);
  CHECK(fds_naming(late, "anon_inode:[userfaultfd]").empty());

  ferry_test::Result d1;
  if (at_criu) {
    // Its log kept (ferry removes the dump's stage): CRIU's own refusal is checked.
    std::string criu = criu_wrapper(
        t / "criu", "touch " + go + "\nn=0\nwhile [ ! -e " + go + ".inited ] && [ $n -lt 3000 ]; do sleep 0.01; " +
                        "n=$((n+1)); done\n\"$real\" \"$@\"\nrc=$?\nprev=\nfor a in \"$@\"; do [ \"$prev\" = -D ] && " +
                        "cp \"$a/dump.log\" " + (t / "criu.log") + "; prev=$a; done\nexit $rc\n");
    d1 = ferry_test::run({kFerry, "dump", std::to_string(c.pid()), t / "img"}, ferry_test::emu_env({{"FERRY_CRIU", criu}}),
                         180);
    REQUIRE(c.wait_for("late cuInit 0", 30));
    CHECK(ferry_test::read_file(t / "criu.log").find("anon_inode:[userfaultfd]") != std::string::npos);
  } else {
    ferry_test::Child dumper({kFerry, "dump", std::to_string(c.pid()), t / "img", "--progress", "always"},
                             ferry_test::emu_env());
    REQUIRE(looked_at_job(dumper));
    std::ofstream(go).flush();
    REQUIRE(c.wait_for("late cuInit 0", 30));
    d1 = dumper.finish();
  }
  auto fds = fds_naming(late, "anon_inode:[userfaultfd]");
  REQUIRE(fds.size() == 1);
  INFO(d1.err);
  CHECK(d1.exit_code == 75);
  auto said = ferry_test::lines_with(d1.err, "ferry: dump failed");
  REQUIRE(said.size() == 1);
  CHECK(said[0] == "ferry: dump failed: the CUDA driver's files were opened while the job was being dumped, after "
                   "ferry had looked at its processes -- process " + std::to_string(ns_pid(late)) + " (python3, pid " +
                       std::to_string(late) + "): anon_inode:[userfaultfd] as fd " + fds[0] +
                       "; dump it again (a process that began to use CUDA is then dumped with the rest); the job "
                       "goes on running on its GPUs, nothing was written");
  CHECK(!fs::exists(t / "img"));
  CHECK(!fs::exists(t / "img.partial"));

  // Again: both CUDA processes are dumped; the restored job ends as an uninterrupted run.
  auto d2 = dump(c.pid(), t / "img");
  CHECK(d2["cuda_processes"] == 2);
  CHECK(c.finish().exit_code == 128 + SIGKILL);
  auto r = restore(t / "img", {"--device", "1"});
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(checksums(r.out) == checksums(plain.out));
  CHECK(!checksums(plain.out).empty());
  CHECK(report_of(r)["processes"].size() == 2);
  CHECK(!report_of(r).contains("warnings"));
}

TEST_CASE("a CUDA process that ends once restored, before its GPU state is back, is reported and left to its job: the "
          "restore goes on and the job ends bit-identical; one killed by SIGSEGV then fails the restore",
          "[process-image][criu]") {
  REQUIRE(geteuid() == 0);
  ferry_test::TempDir t("ferry-pimg");
  const bool crash = GENERATE(false, true);
  const std::string go = t / "go", done = t / "done";
  std::ofstream(go).flush();
  // Each engine operation starts 1.5 s late: the latecomer, told to end before the
  // restore, ends while ferry waits for its resume (or before the driver's restore).
  ferry_test::Child c(job({latecomer_job(t.path, go, done, crash)}),
                      ferry_test::emu_env({{"FERRY_TEST_OP_DELAY_MS", "1500"}}));
  REQUIRE(c.wait_for("late cuInit 0"));
  REQUIRE(c.wait_for("step " + std::to_string(random_step(2, 30)) + " loss"));
  pid_t late = latecomer_of(c.pid());
  REQUIRE(late > 0);
  const int late_ns = ns_pid(late);
  auto d = dump(c.pid(), t / "img");
  CHECK(d["cuda_processes"] == 2);
  CHECK(c.finish().exit_code == 128 + SIGKILL);
  std::ofstream(done).flush();
  if (crash) {
    auto r = restore_text(t / "img", {"--device", "1"});
    INFO(r.err);
    // Its parent reaps it only once the trainer has ended: ferry sees how it ended.
    CHECK(r.exit_code == 70);
    auto said = ferry_test::lines_with(r.err, "ferry: restore failed");
    REQUIRE(said.size() == 1);
    CHECK(std::regex_match(said[0],
                           std::regex("ferry: restore failed: process " + std::to_string(late_ns) +
                                      " of the job \\(pid [0-9]+\\) was killed by SIGSEGV before its GPU state was "
                                      "restored; the restored job was killed: nothing is left running, the image is "
                                      "untouched")));
    CHECK(checksums(r.out).empty());
    return;
  }
  auto plain = ferry_test::run({kMlp, "--steps", "400"}, ferry_test::emu_env(), 120);
  REQUIRE(plain.exit_code == 0);
  auto r = restore(t / "img", {"--device", "1"});
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(checksums(r.out) == checksums(plain.out));
  CHECK(!checksums(plain.out).empty());
  auto rep = report_of(r);
  REQUIRE(rep["processes"].size() == 2);
  nlohmann::json ended;
  for (auto& p : rep["processes"])
    if (p["nspid"] == late_ns) ended = p;
  REQUIRE(ended.is_object());
  CHECK(!ended.contains("status"));
  CHECK(ended["ended"] == "exit status 0");
  CHECK(rep["warnings"] == nlohmann::json::array({"process " + std::to_string(late_ns) + " of the job (pid " +
                                                  std::to_string(ended["pid"].get<int>()) + ") ended (exit status 0) "
                                                  "before its GPU state was restored; the rest of the job runs on"}));
}

TEST_CASE("a CUDA process of the job that ends while the job is being dumped makes the dump 'try again' (75), naming "
          "it; the rest of the job goes on; dumped again, the ended process not reaped yet, it comes back "
          "bit-identical",
          "[process-image][criu]") {
  REQUIRE(geteuid() == 0);
  ferry_test::TempDir t("ferry-pimg");
  auto plain = ferry_test::run({kMlp, "--steps", "400"}, ferry_test::emu_env(), 120);
  REQUIRE(plain.exit_code == 0);
  const std::string go = t / "go", done = t / "done";
  std::ofstream(go).flush();
  // Each engine operation starts 1.5 s late: the latecomer, told to end once ferry has
  // looked at the job, ends while the trainer's suspend is under way, before its own.
  ferry_test::Child c(job({latecomer_job(t.path, go, done)}),
                      ferry_test::emu_env({{"FERRY_TEST_OP_DELAY_MS", "1500"}}));
  REQUIRE(c.wait_for("late cuInit 0"));
  REQUIRE(c.wait_for("step " + std::to_string(random_step(2, 30)) + " loss"));
  pid_t late = latecomer_of(c.pid());
  REQUIRE(late > 0);
  ferry_test::Child dumper({kFerry, "dump", std::to_string(c.pid()), t / "img", "--progress", "always"},
                           ferry_test::emu_env());
  REQUIRE(looked_at_job(dumper));
  std::ofstream(done).flush();
  auto d = dumper.finish();
  INFO(d.err);
  CHECK(d.exit_code == 75);
  auto said = ferry_test::lines_with(d.err, "ferry: dump failed");
  REQUIRE(said.size() == 1);
  CHECK(std::regex_match(said[0], std::regex("ferry: dump failed: process " + std::to_string(late) +
                                             " ended while the job was being dumped \\(.+\\); dump it again; the job "
                                             "goes on running on its GPUs, nothing was written")));
  CHECK(!fs::exists(t / "img"));
  CHECK(!fs::exists(t / "img.partial"));
  // Again, as the message says: the latecomer is a zombie now (its parent reaps it once
  // the trainer has ended), no CUDA process any more, its socket left as it died.
  CHECK(ferry_test::read_file("/proc/" + std::to_string(late) + "/stat").find(") Z ") != std::string::npos);
  auto d2 = dump(c.pid(), t / "img");
  CHECK(d2["cuda_processes"] == 1);
  CHECK(c.finish().exit_code == 128 + SIGKILL);
  auto r = restore(t / "img", {"--device", "1"});
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(checksums(r.out) == checksums(plain.out));
  CHECK(!checksums(plain.out).empty());
}

TEST_CASE("driver_saxpy dumped and restored on the same GPU ends bit-identical; the job's output goes to the restorer; "
          "CRIU loads no plugin (NVIDIA's cuda_plugin would do the driver's part itself)",
          "[process-image][criu]") {
  REQUIRE(geteuid() == 0);
  ferry_test::TempDir t("ferry-pimg");
  // A plugin directory CRIU would load from: with this library in it, CRIU itself fails.
  fs::create_directories(t / "plugins");
  std::ofstream(t / "plugins/cuda_plugin.so") << "not a library\n";
  const std::map<std::string, std::string> plugins = {{"CRIU_LIBS_DIR", t / "plugins"}};
  {
    ferry_test::Child sleeper({"/bin/sleep", "60"});
    fs::create_directories(t / "plain");
    auto r = ferry_test::run({std::string(FERRY_TEST_SOURCE_DIR) + "/.deps/criu/criu", "dump", "-t",
                              std::to_string(sleeper.pid()), "-D", t / "plain", "-o", "dump.log", "--leave-running"},
                             plugins, 60);
    CHECK(r.exit_code != 0);
    CHECK(ferry_test::read_file(t / "plain/dump.log").find("Unable to load " + (t / "plugins/cuda_plugin.so")) !=
          std::string::npos);
  }
  auto plain = ferry_test::run({kSaxpy, "--n", "300000", "--iters", "80"}, ferry_test::emu_env(), 120);
  REQUIRE(plain.exit_code == 0);
  ferry_test::Child c(job({kSaxpy, "--n", "300000", "--iters", "80", "--iter-delay-ms", "15"}), ferry_test::emu_env());
  REQUIRE(c.wait_for("iteration " + std::to_string(random_step(2, 30))));
  dump(c.pid(), t / "img", {}, plugins);
  CHECK(c.finish().exit_code == 128 + SIGKILL);
  auto r = restore(t / "img", {}, plugins);
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(checksums(r.out) == checksums(plain.out));
  CHECK(!checksums(plain.out).empty());
  CHECK(report_of(r)["processes"][0]["status"]["memory_by_gpu"].contains("0"));
}

TEST_CASE("names that are not UTF-8 (a Latin-1 file system's): a job whose command line has one and whose output "
          "goes to a file so named is dumped and restored, its output then the restorer's; such an image is "
          "inspected and verified; an image directory so named is refused before the job is touched",
          "[process-image][criu]") {
  REQUIRE(geteuid() == 0);
  ferry_test::TempDir t("ferry-pimg");
  const std::string log = t / "caf\xe9.log", latin = "caf\xe9", args = "--n 200000 --iters 60";
  auto plain = ferry_test::run({kSaxpy, "--n", "200000", "--iters", "60"}, ferry_test::emu_env(), 120);
  REQUIRE(plain.exit_code == 0);
  // ferry run's own stdout is the file: the job holds it from outside, as a scheduler's log.
  std::vector<std::string> argv = {"/bin/sh", "-c", "log=$1; shift; exec \"$@\" >\"$log\" 2>&1", "sh", log};
  for (auto& a : job({"/bin/sh", "-c", "\"$0\" $1 --iter-delay-ms 15; echo ended", kSaxpy, args, latin}))
    argv.push_back(a);
  ferry_test::Child c(argv, ferry_test::emu_env());
  const std::string step = "iteration " + std::to_string(random_step(2, 25)) + "\n";
  for (int i = 0; i < 600 && ferry_test::read_file(log).find(step) == std::string::npos; i++) usleep(100000);
  REQUIRE(ferry_test::read_file(log).find(step) != std::string::npos);

  // Refused before anything stops, exactly; the job goes on.
  for (auto [cmd, dir] : {std::pair<std::string, std::string>{"dump", t / "img\xff"}, {"checkpoint", t / "ck\xff"}}) {
    auto r = ferry_test::run({kFerry, cmd, std::to_string(c.pid()), dir}, ferry_test::emu_env(), 60);
    CHECK(r.exit_code == 64);
    CHECK(r.err == "ferry " + cmd + ": image directory " + dir +
                       " is not valid UTF-8, which ferry's messages to the job (JSON) cannot carry; use a UTF-8 path "
                       "(a symbolic link to the directory will do)\n");
    CHECK_FALSE(fs::exists(dir));
  }
  // A relative path is sent as an absolute one: the working directory's name counts.
  fs::create_directory(t / "w\xe9");
  auto rel = ferry_test::run({"/bin/sh", "-c", "cd \"$0\" && exec \"$@\"", t / "w\xe9", kFerry, "dump",
                              std::to_string(c.pid()), "img"},
                             ferry_test::emu_env(), 60);
  CHECK(rel.exit_code == 64);
  CHECK(rel.err == "ferry dump: image directory img (" + (t / "w\xe9/img") +
                       ") is not valid UTF-8, which ferry's messages to the job (JSON) cannot carry; use a UTF-8 path "
                       "(a symbolic link to the directory will do)\n");
  CHECK(kill(c.pid(), 0) == 0);

  dump(c.pid(), t / "img");
  CHECK(c.finish().exit_code == 128 + SIGKILL);
  const auto logged = ferry_test::read_file(log);
  auto m = nlohmann::json::parse(ferry_test::read_file(t / "img/process.json"));
  // The key CRIU matches is exact (as hex); the readable one has U+FFFD for the byte.
  std::string hex;
  for (unsigned char ch : log.substr(1)) {
    char b[3];
    snprintf(b, sizeof b, "%02x", ch);
    hex += b;
  }
  CHECK(m["version"] == 5);  // an older ferry would give the output to the old file
  int kept = 0;
  for (auto& s : m["stdio"])
    if (s["fd"] == 1 || s["fd"] == 2) {
      kept++;
      CHECK(s["key_hex"] == hex);
      CHECK(s["key"] == (t / "caf\xef\xbf\xbd.log").substr(1));
    }
  CHECK(kept == 2);
  bool named = false;
  for (auto& p : m["processes"])
    for (auto& a : p["cmdline"]) named = named || a == "caf\xef\xbf\xbd";
  CHECK(named);

  // Moved under a name that is not UTF-8, it is still read: JSON reports replace the byte.
  fs::rename(t / "img", t / "im\xffg");
  auto v = ferry_test::run({kFerry, "verify", t / "im\xffg", "--format", "json"}, ferry_test::emu_env(), 60);
  CHECK(v.exit_code == 0);
  CHECK(nlohmann::json::parse(v.out)["dir"] == t / "im\xef\xbf\xbdg");
  auto in = ferry_test::run({kFerry, "inspect", t / "im\xffg", "--format", "json"}, ferry_test::emu_env(), 60);
  CHECK(in.exit_code == 0);
  CHECK(nlohmann::json::parse(in.out)["processes"].size() == m["processes"].size());
  fs::rename(t / "im\xffg", t / "img");

  // The restorer's stdout takes the file's place: the rest of the run is there, not in the file.
  auto r = restore(t / "img");
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(checksums(r.out) == checksums(plain.out));
  CHECK(!checksums(plain.out).empty());
  CHECK(r.out.find("ended\n") != std::string::npos);
  CHECK(ferry_test::read_file(log) == logged);
}

TEST_CASE("graph_loop restored on a different machine (other GPU UUIDs and memory) ends bit-identical",
          "[process-image][criu]") {
  REQUIRE(geteuid() == 0);
  ferry_test::TempDir t("ferry-pimg");
  auto plain = ferry_test::run({kGraph, "--steps", "60"}, ferry_test::emu_env(), 120);
  REQUIRE(plain.exit_code == 0);
  ferry_test::Child c(job({kGraph, "--steps", "60", "--step-delay-ms", "25"}), ferry_test::emu_env());
  REQUIRE(c.wait_for("step " + std::to_string(random_step(2, 20)) + " hash"));
  dump(c.pid(), t / "img");
  CHECK(c.finish().exit_code == 128 + SIGKILL);
  const std::string other0 = "aaaabbbbccccddddeeeeffff00001111", other1 = "aaaabbbbccccddddeeeeffff00002222";
  auto r = restore(t / "img", {}, {{"FERRY_EMU_DEVICE0", "uuid=" + other0 + ",memory=8g"},
                                   {"FERRY_EMU_DEVICE1", "uuid=" + other1 + ",memory=8g"}});
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(checksums(r.out, "final hash") == checksums(plain.out, "final hash"));
  CHECK(!checksums(plain.out, "final hash").empty());
}

std::string cwd_of(pid_t pid) {
  std::error_code ec;
  return fs::read_symlink("/proc/" + std::to_string(pid) + "/cwd", ec).string();
}

// argv run in directory dir.
std::vector<std::string> in_dir(const std::string& dir, std::vector<std::string> argv) {
  std::vector<std::string> v = {"/bin/sh", "-c", "cd \"$0\" && exec \"$@\"", dir};
  v.insert(v.end(), argv.begin(), argv.end());
  return v;
}

TEST_CASE("a job started where CRIU cannot make its proc.crtools (one an interrupted dump left) is dumped and "
          "restored: its init works in a directory of its own, which the dump clears, the restore makes again and "
          "the job's end removes",
          "[process-image][criu]") {
  REQUIRE(geteuid() == 0);
  ferry_test::TempDir t("ferry-pimg");
  fs::create_directories(t / "work/proc.crtools");  // made the dump fail before init dirs
  auto plain = ferry_test::run({kGraph, "--steps", "60"}, ferry_test::emu_env(), 120);
  REQUIRE(plain.exit_code == 0);
  ferry_test::Child c(in_dir(t / "work", job({kGraph, "--steps", "60", "--step-delay-ms", "25"})),
                      ferry_test::emu_env());
  REQUIRE(c.wait_for("step " + std::to_string(random_step(2, 20)) + " hash"));
  pid_t init = children_of(c.pid()).at(0);
  const std::string init_dir = cwd_of(init);
  INFO(init_dir);
  CHECK(cwd_of(program_of(c.pid())) == t / "work");  // the program's own is kept
  REQUIRE(fs::path(init_dir).filename().string().rfind("init-", 0) == 0);
  // What a dump killed inside CRIU leaves: the directory, with /proc mounted on it.
  struct Mounted {  // cleared should the test fail before the dump does it
    std::string at;
    ~Mounted() {
      umount2(at.c_str(), MNT_DETACH);
      rmdir(at.c_str());
      rmdir(fs::path(at).parent_path().c_str());
    }
  } left{init_dir + "/proc.crtools"};
  fs::create_directories(left.at);
  REQUIRE(mount("proc", left.at.c_str(), "proc", 0, nullptr) == 0);
  auto d = dump(c.pid(), t / "img");
  CHECK(c.finish().exit_code == 128 + SIGKILL);
  CHECK(!fs::exists(init_dir));  // the job ended; nothing else works there
  auto m = nlohmann::json::parse(ferry_test::read_file(t / "img/process.json"));
  CHECK(m["init_dir"] == init_dir);
  for (auto& f : m["files"]) CHECK(f["path"] != init_dir);
  CHECK(std::find_if(m["files"].begin(), m["files"].end(), [&](auto& f) { return f["path"] == t / "work"; }) !=
        m["files"].end());
  // The restore makes it again (as on another machine), and the restored init works
  // there. First it waits for a dump of a copy holding the directory, which removes it
  // as it ends (its job gone): the restore makes it once more.
  REQUIRE(mkdir(init_dir.c_str(), 0700) == 0);
  struct Held {
    int fd;
    ~Held() { close(fd); }
  } dumping{open(init_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)};
  REQUIRE(flock(dumping.fd, LOCK_EX) == 0);
  const std::string waiting = "ferry: waiting for a dump of a job whose init works in " + init_dir +
                              " too (a copy of this one)\n";
  {
    // A preemption while it waits: nothing of the job has started, so there is nothing to
    // dump, and the restore gives up.
    ferry_test::Child p({kFerry, "restore", t / "img", "--on-signal", "TERM=dump:" + (t / "img")},
                        ferry_test::emu_env());
    for (int i = 0; i < 600 && p.err().find(waiting) == std::string::npos; i++) usleep(50000);
    REQUIRE(p.err().find(waiting) != std::string::npos);
    kill(p.pid(), SIGTERM);
    auto done = p.finish();
    CHECK(done.exit_code == 75);
    CHECK(done.err.find("ferry: TERM came while the restore waited for the lock on " + init_dir +
                        ": nothing was started; the image is untouched\n") != std::string::npos);
    CHECK(ferry_test::lines_with(done.out, " hash ").empty());
  }
  ferry_test::Child r({kFerry, "restore", t / "img"}, ferry_test::emu_env());
  for (int i = 0; i < 600 && r.err().find(waiting) == std::string::npos; i++) usleep(50000);
  CHECK(r.err().find(waiting) != std::string::npos);
  CHECK(ferry_test::lines_with(r.out(), " hash ").empty());
  REQUIRE(rmdir(init_dir.c_str()) == 0);
  flock(dumping.fd, LOCK_UN);
  REQUIRE(r.wait_for("step 40 hash", 120));
  pid_t rinit = children_of(r.pid()).at(0);
  CHECK(cwd_of(rinit) == init_dir);
  CHECK(cwd_of(children_of(rinit).at(0)) == t / "work");
  auto done = r.finish();
  INFO(done.err);
  CHECK(done.exit_code == 0);
  CHECK(checksums(r.out(), "final hash") == checksums(plain.out, "final hash"));
  CHECK(!fs::exists(init_dir));
}

TEST_CASE("a dump waits while a restore of a copy of the job holds the init's directory, the job running meanwhile, "
          "then dumps it",
          "[process-image][criu]") {
  REQUIRE(geteuid() == 0);
  ferry_test::TempDir t("ferry-pimg");
  auto plain = ferry_test::run({kGraph, "--steps", "80"}, ferry_test::emu_env(), 120);
  REQUIRE(plain.exit_code == 0);
  ferry_test::Child c(job({kGraph, "--steps", "80", "--step-delay-ms", "25"}), ferry_test::emu_env());
  REQUIRE(c.wait_for("step 2 hash"));
  const std::string init_dir = cwd_of(children_of(c.pid()).at(0));
  struct Held {
    int fd;
    ~Held() { close(fd); }
  } held{open(init_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)};
  REQUIRE(held.fd >= 0);
  REQUIRE(flock(held.fd, LOCK_SH) == 0);  // as a restore does while CRIU restores
  ferry_test::Child dumper({kFerry, "dump", std::to_string(c.pid()), t / "img"}, ferry_test::emu_env());
  const std::string waiting = "ferry: waiting for another dump or restore of a job whose init works in " + init_dir +
                              " too (a copy of this one)\n";
  for (int i = 0; i < 600 && dumper.err().find(waiting) == std::string::npos; i++) usleep(50000);
  CHECK(dumper.err().find(waiting) != std::string::npos);
  size_t steps = ferry_test::lines_with(c.out(), " hash ").size();
  REQUIRE(c.wait_for("step " + std::to_string(steps + 3) + " hash"));  // not stopped
  flock(held.fd, LOCK_UN);
  auto d = dumper.finish();
  INFO(d.err);
  REQUIRE(d.exit_code == 0);
  CHECK(c.finish().exit_code == 128 + SIGKILL);
  auto r = restore(t / "img");
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(checksums(r.out, "final hash") == checksums(plain.out, "final hash"));
}

// The work directory (-W) of the CRIU that restorer runs ("" while it runs none).
std::string criu_work_of(pid_t restorer) {
  for (pid_t k : children_of(restorer)) {
    std::string cmd = ferry_test::read_file("/proc/" + std::to_string(k) + "/cmdline");
    std::vector<std::string> args;
    for (size_t at = 0, end; at < cmd.size(); at = end + 1) {
      end = cmd.find('\0', at);
      if (end == std::string::npos) end = cmd.size();
      args.push_back(cmd.substr(at, end - at));
    }
    for (size_t i = 0; i + 1 < args.size(); i++)
      if (args[i] == "-W" && args[0].find("criu") != std::string::npos) return args[i + 1];
  }
  return "";
}

// Live (not zombie) processes whose command line holds `needle` or whose working
// directory is `cwd`.
std::vector<pid_t> live_processes(const std::string& needle, const std::string& cwd) {
  std::vector<pid_t> v;
  for (auto& e : fs::directory_iterator("/proc")) {
    std::string name = e.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    pid_t p = std::stoi(name);
    std::string stat = ferry_test::read_file(e.path() / "stat");
    auto paren = stat.rfind(')');
    if (paren == std::string::npos || paren + 2 >= stat.size() || stat[paren + 2] == 'Z') continue;
    std::string cmd = ferry_test::read_file(e.path() / "cmdline");
    std::replace(cmd.begin(), cmd.end(), '\0', ' ');
    if (cmd.find(needle) != std::string::npos || (!cwd.empty() && cwd_of(p) == cwd)) v.push_back(p);
  }
  return v;
}

TEST_CASE("ferry restore killed outright at any moment leaves nothing running -- not CRIU, not a half-restored "
          "process, not its guard -- and the image restores bit-identical afterwards",
          "[process-image][criu]") {
  REQUIRE(geteuid() == 0);
  // A job without a PID namespace, too: the init's death does not end its program there,
  // so the guard kills the restored tree.
  const std::string kind = GENERATE(as<std::string>{}, "--pid-namespace", "--host-pids");
  INFO("the job run with " << kind);
  ferry_test::TempDir t("ferry-pimg");
  auto plain = ferry_test::run({kGraph, "--steps", "61"}, ferry_test::emu_env(), 120);
  REQUIRE(plain.exit_code == 0);
  ferry_test::Child c(job({kGraph, "--steps", "61", "--step-delay-ms", "25"}, {}, kind), ferry_test::emu_env());
  REQUIRE(c.wait_for("step " + std::to_string(random_step(2, 20)) + " hash"));
  dump(c.pid(), t / "img");
  CHECK(c.finish().exit_code == 128 + SIGKILL);
  auto m = nlohmann::json::parse(ferry_test::read_file(t / "img/process.json"));
  const std::string init_dir = m.value("init_dir", "");
  REQUIRE(!init_dir.empty());
  CHECK(m["pid_namespace"] == (kind == "--pid-namespace"));
  // With the host's pids, the next restore needs the killed ones reaped (by the host's
  // init, at its pace): the job's own, and the tasks CRIU had forked with those pids
  // (named criu until they become the job's), and any that are dead. A live process of
  // another test's is not waited for: pid numbers wrap during the suite (that restore
  // is then refused, 78, leaving nothing either).
  auto pids_free = [&] {
    if (m["pid_namespace"] == true) return true;
    for (auto& p : m["processes"]) {
      const std::string proc = "/proc/" + std::to_string(p["nspid"].get<pid_t>());
      const std::string stat = ferry_test::read_file(proc + "/stat"), comm = ferry_test::read_file(proc + "/comm");
      if (stat.empty()) continue;  // free
      const bool dead = stat.rfind(')') != std::string::npos && stat.substr(stat.rfind(')') + 2, 1) == "Z";
      if (dead || comm == "ferry-init\n" || comm == "graph_loop\n" || comm == "criu\n") return false;
    }
    return true;
  };
  // Killed at each stage of the restore, watched from outside: before CRIU; CRIU forking
  // and restoring (its log written); the namespaces set up (the action script has named
  // the init); CRIU done (its pidfile), the driver and ferry's resume under way; and at
  // random moments.
  std::vector<std::string> stages = {"at once", "criu running", "root.pid", "init.pid", "random", "random"};
  if (kind == "--host-pids") stages = {"at once", "criu running", "root.pid", "init.pid", "random"};
  for (const std::string& stage : stages) {
    int delay_ms = random_step(0, 150);
    INFO("ferry restore killed: " << (stage == "random" ? "after " + std::to_string(delay_ms) + " ms" : stage));
    {
      ferry_test::Child r({kFerry, "restore", t / "img"}, ferry_test::emu_env());
      if (stage == "random") usleep(static_cast<useconds_t>(delay_ms) * 1000);
      std::string work;
      bool reached = false;
      for (int i = 0; stage != "at once" && stage != "random" && !reached && i < 5000; i++) {
        if (work.empty()) work = criu_work_of(r.pid());
        reached = !work.empty() && (stage == "criu running" || fs::exists(work + "/" + stage));
        if (!reached) usleep(1000);
      }
      if (stage != "at once" && stage != "random") UNSCOPED_INFO("stage reached: " << reached);
      kill(r.pid(), SIGKILL);
      r.finish();
    }
    std::vector<pid_t> left;
    // The guard kills what CRIU restored and waits for it: slower on a loaded machine.
    for (int i = 0; i < 400; i++) {
      left = live_processes(t / "img", init_dir);
      std::vector<pid_t> program = live_processes(kGraph + " --steps 61 ", "");
      left.insert(left.end(), program.begin(), program.end());
      if (left.empty()) break;
      usleep(50000);
    }
    std::string which;
    for (pid_t p : left) which += std::to_string(p) + " " + ferry_test::read_file("/proc/" + std::to_string(p) + "/comm");
    INFO(which);
    CHECK(left.empty());
    for (pid_t p : left) kill(p, SIGKILL);
    for (int i = 0; i < 200 && !pids_free(); i++) usleep(50000);
    REQUIRE(pids_free());
  }
  auto r = restore(t / "img");
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(checksums(r.out, "final hash") == checksums(plain.out, "final hash"));
}

TEST_CASE("restored on a different machine, the program asks after the GPU it runs on now: its PCI bus id "
          "(what NCCL looks NVML up by) is that GPU's; only cudart's cached device properties still describe the old one",
          "[process-image][criu]") {
  REQUIRE(geteuid() == 0);
  ferry_test::TempDir t("ferry-pimg");
  ferry_test::Child c(job({kGraph, "--steps", "60", "--step-delay-ms", "25", "--print-device"}), ferry_test::emu_env());
  int at = random_step(2, 20);
  REQUIRE(c.wait_for("step " + std::to_string(at) + " device"));
  const std::string before = ferry_test::lines_with(c.out(), "step " + std::to_string(at) + " device").at(0);
  CHECK(before.find(" device 0 bus 00000000:17:00.0 attr-bus 17 props-bus 17 uuid 66657272792d656d752d677075004000 "
                    "memory 17179869184") != std::string::npos);
  dump(c.pid(), t / "img");
  CHECK(c.finish().exit_code == 128 + SIGKILL);
  auto r = restore(t / "img", {"--device", "1"},
                   {{"FERRY_EMU_DEVICE0", "uuid=aaaabbbbccccddddeeeeffff00001111,memory=8g,pci=0000:81:00.0"},
                    {"FERRY_EMU_DEVICE1", "uuid=aaaabbbbccccddddeeeeffff00002222,memory=8g,pci=0000:c1:00.0"}});
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  auto after = ferry_test::lines_with(r.out, " device ");
  REQUIRE(!after.empty());
  for (auto& l : after)  // still its device 0; cudart's cache, not the driver, answers the rest (docs/engine.md)
    CHECK(l.substr(l.find(" device ")) ==
          " device 0 bus 00000000:C1:00.0 attr-bus c1 props-bus 17 uuid 66657272792d656d752d677075004000 "
          "memory 17179869184");
}

namespace {

// mlp_trainer for 60 steps as a job (env: the job's environment), dumped to img at a
// random step and killed; the uninterrupted run, for comparison.
ferry_test::Result trainer_dumped(const std::string& img, const std::map<std::string, std::string>& env = {}) {
  auto plain = ferry_test::run({kMlp, "--steps", "60"}, ferry_test::emu_env(), 120);
  REQUIRE(plain.exit_code == 0);
  ferry_test::Child c(job({kMlp, "--steps", "60", "--step-delay-ms", "20"}), ferry_test::emu_env(env));
  REQUIRE(c.wait_for("step " + std::to_string(random_step(2, 20)) + " loss"));
  dump(c.pid(), img);
  CHECK(c.finish().exit_code == 128 + SIGKILL);
  return plain;
}

}  // namespace

TEST_CASE("restored on a different machine with --device 1, the trainer's memory is on that machine's GPU 1 "
          "(the driver's GPU pairs and ferry's placement agree)",
          "[process-image][criu]") {
  REQUIRE(geteuid() == 0);
  ferry_test::TempDir t("ferry-pimg");
  const auto plain = trainer_dumped(t / "img");
  const std::string x = "0123456789abcdef0123456789abcd00", y = "0123456789abcdef0123456789abcd11";
  auto r = restore(t / "img", {"--device", "1"}, {{"FERRY_EMU_DEVICE0", "uuid=" + x}, {"FERRY_EMU_DEVICE1", "uuid=" + y}});
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(checksums(r.out) == checksums(plain.out));
  auto st = report_of(r)["processes"][0]["status"];
  CHECK(held_uuid(st) == y);
  // The program's unused device 1 took device 0's old place: the map stays a permutation.
  CHECK(st["devices"][0]["physical"] == 1);
  CHECK(st["devices"][1]["physical"] == 0);
}

TEST_CASE("restored on a machine of mixed GPUs: the driver is given a free GPU of the trainer's own chip for the one "
          "it had, where there is one -- the trainer's memory goes there by default, and onto the other chip when told "
          "(ferry moves it) -- and where there is none, its refusal says why",
          "[process-image][criu]") {
  REQUIRE(geteuid() == 0);
  ferry_test::TempDir t("ferry-pimg");
  const auto plain = trainer_dumped(t / "img");
  // Neither of the GPUs it had; GPU 0 another chip (as an A100 beside an H100).
  const std::string other = "aaaabbbbccccddddeeeeffff00001111", same = "aaaabbbbccccddddeeeeffff00002222";
  const std::string other_chip = "uuid=" + other + ",name=another GPU,cc=8.0";
  const std::map<std::string, std::string> machine = {{"FERRY_EMU_DEVICE0", other_chip},
                                                      {"FERRY_EMU_DEVICE1", "uuid=" + same}};
  auto restored = [&](const std::vector<std::string>& args) {
    auto r = restore(t / "img", args, machine);
    INFO(r.out << r.err);
    REQUIRE(r.exit_code == 0);
    CHECK(checksums(r.out) == checksums(plain.out));
    return held_uuid(report_of(r)["processes"][0]["status"]);
  };
  // Either way the driver gets the GPU of the trainer's chip for the GPU it held memory on
  // (0) and the other chip for the one it only saw (1): every GPU it had must be paired.
  // Said before anything starts.
  auto notice_said = [&](const std::vector<std::string>& args) {
    auto r = restore_text(t / "img", args, machine);
    INFO(r.err);
    CHECK(r.exit_code == 0);
    CHECK(r.err.find("ferry: the driver is to swap in this machine's GPU 0 (another GPU, compute capability 8.0) for "
                     "its GPU 1 (ferry emulated GPU, compute capability 9.0) for the job's process 2; NVIDIA documents "
                     "its restore onto the same chip only, and whether its driver takes another chip for a process "
                     "ferry released is not known\nferry: restoring the job of ") == 0);
  };
  SECTION("by default, on the GPU of its chip (not the first free one)") {
    CHECK(restored({}) == same);
    notice_said({});
  }
  SECTION("told GPU 0, the other chip") {
    CHECK(restored({"--device", "0"}) == other);
    notice_said({"--device", "0"});
  }
  SECTION("no GPU of its chip here, and a driver that wants the same chip for every GPU it pairs") {
    // (Whether NVIDIA's does for the GPUs of a process ferry suspended first, holding no
    // GPU memory or context then, is not known: the simulated one does only when asked.)
    auto r = restore_text(t / "img", {}, {{"FERRY_EMU_DEVICE0", other_chip},
                                          {"FERRY_EMU_DEVICE1", "uuid=" + same + ",name=a third GPU"},
                                          {"FERRY_EMU_PAIRS_SAME_CHIP", "1"}});
    INFO(r.err);
    CHECK(r.exit_code == 78);
    CHECK(r.err.ends_with(": CUDA_ERROR_INVALID_DEVICE (101: a GPU missing, or not one the driver takes in place of the "
                          "old); the driver was to swap in this machine's GPU 0 (another GPU, compute capability 8.0) "
                          "for its GPU 0 (ferry emulated GPU, compute capability 9.0); this machine's GPU 1 (a third "
                          "GPU, compute capability 9.0) for its GPU 1 (ferry emulated GPU, compute capability 9.0), and "
                          "NVIDIA documents its restore onto the same chip only; the restored job was killed: nothing "
                          "is left running, the image is untouched\n"));
    CHECK(ferry_test::run({kFerry, "verify", t / "img"}, {}, 60).exit_code == 0);
  }
}

TEST_CASE("a job CUDA_VISIBLE_DEVICES gave one GPU, restored with --device onto a GPU it did not see: the driver's "
          "GPU pairs swap that GPU in and the trainer ends bit-identical on it",
          "[process-image][criu]") {
  REQUIRE(geteuid() == 0);
  ferry_test::TempDir t("ferry-pimg");
  const std::string x = "0123456789abcdef0123456789abcd00", y = "0123456789abcdef0123456789abcd11";
  const std::map<std::string, std::string> machine = {{"FERRY_EMU_DEVICE0", "uuid=" + x},
                                                      {"FERRY_EMU_DEVICE1", "uuid=" + y}};
  auto job_env = machine;
  job_env["CUDA_VISIBLE_DEVICES"] = "1";
  const auto plain = trainer_dumped(t / "img", job_env);
  // The image restored with these arguments, here or as `env` makes the machine: the run
  // ends as the uninterrupted one did, and still sees only one GPU. The GPU its memory is on.
  auto restored_on = [&](const std::vector<std::string>& args, const std::map<std::string, std::string>& env) {
    auto r = restore(t / "img", args, env);
    INFO(r.err);
    REQUIRE(r.exit_code == 0);
    CHECK(checksums(r.out) == checksums(plain.out));
    auto st = report_of(r)["processes"][0]["status"];
    CHECK(st["gpus"].size() == 1);
    return held_uuid(st);
  };
  SECTION("by default, back on the GPU it had") { CHECK(restored_on({}, machine) == y); }
  SECTION("restored by a ferry restore that CUDA_VISIBLE_DEVICES gives GPU 0 only (a new Slurm allocation): there") {
    auto mine = machine;
    mine["CUDA_VISIBLE_DEVICES"] = "0";
    CHECK(restored_on({}, mine) == x);
  }
  SECTION("on this machine's GPU 0, which it did not see") { CHECK(restored_on({"--device", "0"}, machine) == x); }
  SECTION("two of three GPUs seen, memory on both, each moved: the GPU a target would not be seen on takes the place "
          "of one no target needs") {
    const std::string z = "0123456789abcdef0123456789abcd22";
    auto three = machine;
    three["FERRY_EMU_DEVICES"] = "3";
    three["FERRY_EMU_DEVICE2"] = "uuid=" + z;
    auto two_of_three = three;
    two_of_three["CUDA_VISIBLE_DEVICES"] = "0,1";
    std::vector<std::string> prog = {kMlp, "--steps", "60", "--ballast-mb", "4", "--ballast-device", "1"};
    auto plain2 = ferry_test::run(prog, ferry_test::emu_env(), 120);
    REQUIRE(plain2.exit_code == 0);
    prog.insert(prog.end(), {"--step-delay-ms", "20"});
    ferry_test::Child j(job(prog), ferry_test::emu_env(two_of_three));
    REQUIRE(j.wait_for("step " + std::to_string(random_step(2, 20)) + " loss"));
    dump(j.pid(), t / "img2");
    CHECK(j.finish().exit_code == 128 + SIGKILL);
    // Device 0 (on x) goes to y, device 1 (the ballast, on y) to z, which it did not see.
    auto r = restore(t / "img2", {"--device-map", "1,2"}, three);
    INFO(r.err);
    REQUIRE(r.exit_code == 0);
    CHECK(checksums(r.out) == checksums(plain2.out));
    CHECK(r.out.find("ballast 4 MiB intact\n") != std::string::npos);
    auto st = report_of(r)["processes"][0]["status"];
    CHECK(st["gpus"].size() == 2);
    auto uuid_of = [&](int device) {
      for (auto& d : st["devices"])
        if (d["device"] == device) return uuid_at(st, d["physical"].get<int>());
      return std::string("none");
    };
    CHECK(uuid_of(0) == y);
    CHECK(uuid_of(1) == z);
    CHECK(st["memory_by_gpu"].size() == 2);
  }
  SECTION("on another machine's GPU 1") {
    const std::string p = "aaaabbbbccccddddeeeeffff00001111", q = "aaaabbbbccccddddeeeeffff00002222";
    CHECK(restored_on({"--device-map", "1"}, {{"FERRY_EMU_DEVICE0", "uuid=" + p}, {"FERRY_EMU_DEVICE1", "uuid=" + q}}) ==
          q);
  }
}

namespace {

// The launcher's two-worker job restored from img with the workers' GPUs swapped: each
// worker's final weights are the uninterrupted run's (their lines interleave in any order).
void workers_restored_swapped(const std::string& img, const std::string& plain_out) {
  auto r = restore(img, {"--device-map", "1,0"});
  INFO(r.out << r.err);  // a refusal in --format json is on stdout
  REQUIRE(r.exit_code == 0);
  auto want = checksums(plain_out, "weights checksum");
  REQUIRE(want.size() == 2);
  auto got = checksums(r.out, "weights checksum");
  std::sort(want.begin(), want.end());
  std::sort(got.begin(), got.end());
  CHECK(got == want);
}

}  // namespace

TEST_CASE("a launcher with a worker on each GPU, talking over pipes, is dumped and restored as one job",
          "[process-image][criu]") {
  REQUIRE(geteuid() == 0);
  ferry_test::TempDir t("ferry-pimg");
  auto plain = ferry_test::run({kLauncher, "2", kMlp, "--steps", "100"}, ferry_test::emu_env(), 120);
  REQUIRE(plain.exit_code == 0);
  ferry_test::Child c(job({kLauncher, "2", kMlp, "--steps", "100", "--step-delay-ms", "20"}), ferry_test::emu_env());
  REQUIRE(c.wait_for("[worker 1] step " + std::to_string(random_step(3, 30)) + " loss"));
  // Both workers suspended, then resumed through the job's ferry run: one JSON document for the job.
  pid_t launcher = program_of(c.pid());
  auto workers = children_of(launcher);
  REQUIRE(workers.size() == 2);
  for (pid_t w : workers) {
    auto s = ferry_test::run({kFerry, "suspend", std::to_string(w)}, ferry_test::emu_env(), 60);
    INFO(s.err);
    REQUIRE(s.exit_code == 0);
  }
  auto res = ferry_test::run({kFerry, "resume", std::to_string(c.pid()), "--format", "json"}, ferry_test::emu_env(),
                             60);
  INFO(res.out << res.err);
  REQUIRE(res.exit_code == 0);
  auto rj = nlohmann::json::parse(res.out);  // throws if there were two documents
  CHECK(rj["ok"] == true);
  CHECK(rj["job_init"] == children_of(c.pid()).at(0));
  REQUIRE(rj["processes"].size() == 2);
  std::set<pid_t> resumed;
  for (auto& p : rj["processes"]) {
    CHECK(p["ok"] == true);
    CHECK(p["status"]["state"] == "running");
    resumed.insert(p["pid"].get<pid_t>());
  }
  CHECK(resumed == std::set<pid_t>(workers.begin(), workers.end()));
  auto d = dump(c.pid(), t / "img");
  CHECK(d["processes"] == 4);  // init, launcher, two workers
  CHECK(d["cuda_processes"] == 2);
  CHECK(c.finish().exit_code == 128 + SIGKILL);
  workers_restored_swapped(t / "img", plain.out);
}

namespace {

// Whether pid is a process that has not died (a zombie has).
bool alive(pid_t pid) {
  std::string stat = ferry_test::read_file("/proc/" + std::to_string(pid) + "/stat");
  auto paren = stat.rfind(')');
  return paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] != 'Z';
}

bool pid_free(pid_t pid) { return kill(pid, 0) != 0 && errno == ESRCH; }

}  // namespace

TEST_CASE("a job run with --host-pids, for a driver that cannot start in a PID namespace: the trainer dumped with "
          "--leave-running goes on, and its image is refused while the original holds its pids; dumped again and "
          "killed, it comes back with the same pids on the other GPU, bit-identical",
          "[process-image][criu]") {
  REQUIRE(geteuid() == 0);
  ferry_test::TempDir t("ferry-pimg");
  auto plain = ferry_test::run({kMlp, "--steps", "120"}, ferry_test::emu_env(), 120);
  REQUIRE(plain.exit_code == 0);
  ferry_test::Child c(job({kMlp, "--steps", "120", "--step-delay-ms", "20"}, {}, "--host-pids"), ferry_test::emu_env());
  int step = random_step(2, 30);
  INFO("first dump at step " << step);
  REQUIRE(c.wait_for("step " + std::to_string(step) + " loss"));
  pid_t init = children_of(c.pid()).at(0), prog = program_of(c.pid());
  CHECK(ns_pid(prog) == prog);  // no namespace of its own
  auto d1 = dump(c.pid(), t / "img1", {"--leave-running"});
  CHECK(d1["left_running"] == true);
  CHECK(d1["init"] == init);
  auto m = nlohmann::json::parse(ferry_test::read_file(t / "img1/process.json"));
  CHECK(m["pid_namespace"] == false);
  CHECK(m["version"] == 3);  // an older ferry would restore it without checking its pids are free
  REQUIRE(m["processes"].size() == 2);
  CHECK(m["processes"][1]["nspid"] == prog);
  CHECK(!m["processes"][1]["tids"].empty());  // the trainer's threads and the simulated GPU's

  auto refused = restore_text(t / "img1");
  CHECK(refused.exit_code == 75);
  const std::string i = std::to_string(init), p = std::to_string(prog);
  CHECK(refused.err.rfind("ferry: cannot restore the job of " + (t / "img1") + " here: it was run with "
                          "--host-pids, so it comes back with the pids it had, and pid " + i + " (process " + i +
                          " of the job, ferry-init): taken by ferry-init; pid " + p + " (process " + p +
                          " of the job, mlp_trainer): taken by mlp_trainer; thread id ", 0) == 0);
  CHECK(refused.err.ends_with(". Restore it once they are free (the original job has ended), or run jobs with "
                              "--pid-namespace where the CUDA driver allows. Nothing was started; the image is "
                              "untouched\n"));
  CHECK(ferry_test::run({kFerry, "verify", t / "img1"}, {}, 60).exit_code == 0);
  CHECK(alive(prog));  // the refusal touched nothing

  REQUIRE(c.wait_for("step " + std::to_string(step + 10) + " loss"));
  dump(c.pid(), t / "img2");
  CHECK(c.finish().exit_code == 128 + SIGKILL);
  // ferry dump returns once the job's processes are reaped: their pids are free now.
  CHECK(pid_free(prog));
  CHECK(pid_free(init));
  auto in = ferry_test::run({kFerry, "inspect", t / "img2"}, {}, 60);
  CHECK(in.out.find("\n  pids: the host's (run with --host-pids): restored only where they are free\n") !=
        std::string::npos);

  // A socket with the trainer's name that nothing listens on, as a copy of it killed
  // half-way through its restore leaves: not taken for the restored trainer's.
  {
    std::string stale = "/tmp/ferry-" + std::to_string(getuid()) + "/" + p + ".sock";
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    memcpy(addr.sun_path, stale.c_str(), stale.size() + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    close(fd);
  }
  auto r = restore(t / "img2", {"--device", "1"});
  INFO(r.out << r.err);  // a refusal in --format json is on stdout
  REQUIRE(r.exit_code == 0);
  CHECK(checksums(r.out) == checksums(plain.out));
  CHECK(!checksums(plain.out).empty());
  auto rep = report_of(r);
  CHECK(rep["init"] == init);
  CHECK(rep["processes"][0]["nspid"] == prog);
  CHECK(rep["processes"][0]["pid"] == prog);
  CHECK(rep["processes"][0]["status"]["memory_by_gpu"].contains("1"));
  CHECK(!rep["processes"][0]["status"]["memory_by_gpu"].contains("0"));
}

TEST_CASE("jobs run with --host-pids: a launcher's tree is dumped and restored as one job, the dump leaving nothing of it behind; "
          "--host-pids and --pid-namespace exclude each other",
          "[process-image][criu]") {
  REQUIRE(geteuid() == 0);
  ferry_test::TempDir t("ferry-pimg");
  SECTION("a launcher with a worker on each GPU") {
    auto plain = ferry_test::run({kLauncher, "2", kMlp, "--steps", "100"}, ferry_test::emu_env(), 120);
    REQUIRE(plain.exit_code == 0);
    ferry_test::Child c(job({kLauncher, "2", kMlp, "--steps", "100", "--step-delay-ms", "20"}, {}, "--host-pids"),
                        ferry_test::emu_env());
    REQUIRE(c.wait_for("[worker 1] step " + std::to_string(random_step(3, 30)) + " loss"));
    auto workers = jobs_listed_under(c.pid());
    CHECK(workers.size() == 2);  // the launcher uses no CUDA: it has no socket
    for (auto& j : workers) {
      INFO(j.dump());
      CHECK(j["init"] == children_of(c.pid()).at(0));
      CHECK(j["pids"] == "host");
    }
    auto d = dump(c.pid(), t / "img");
    CHECK(d["processes"] == 4);
    CHECK(d["cuda_processes"] == 2);
    CHECK(c.finish().exit_code == 128 + SIGKILL);
    // Killing the init ends nothing else without a namespace: the dump killed the tree.
    auto m = nlohmann::json::parse(ferry_test::read_file(t / "img/process.json"));
    for (auto& p : m["processes"]) {
      INFO(p.dump());
      CHECK(pid_free(p["nspid"].get<pid_t>()));
    }
    workers_restored_swapped(t / "img", plain.out);
  }
  SECTION("a program that ended, leaving a process it forked: the init reaps it once the dump has killed it, and "
          "ferry run ends as a dumped job's does") {
    ferry_test::Child c(job({"/bin/sh", "-c", "sleep 600 & echo forked $!"}, {}, "--host-pids"), ferry_test::emu_env());
    REQUIRE(c.wait_for("forked "));
    pid_t init = children_of(c.pid()).at(0);
    std::vector<pid_t> below;
    for (int i = 0; i < 200; i++) {  // the shell gone, its sleep given to the init
      below = children_of(init);
      if (below.size() == 1 && ferry_test::read_file("/proc/" + std::to_string(below[0]) + "/comm") == "sleep\n") break;
      usleep(10000);
    }
    REQUIRE(below.size() == 1);
    auto d = dump(c.pid(), t / "img");
    CHECK(d["processes"] == 2);
    CHECK(c.finish().exit_code == 128 + SIGKILL);  // not the shell's 0: the job was ended by the dump
    CHECK(pid_free(below[0]));
  }
  SECTION("dumped by a scheduler's TERM in a container of its own (pids from 1 up, ferry run pid 1) and restored in "
          "a new one, where ferry restore is pid 1 and what it starts would otherwise take the job's pids") {
    auto plain = ferry_test::run({kMlp, "--steps", "100"}, ferry_test::emu_env(), 120);
    REQUIRE(plain.exit_code == 0);
    const std::string img = t / "pod", log = t / "pod.log";
    // stdio opened inside the container, as its runtime would: CRIU cannot place a file
    // opened on a mount of another mount namespace.
    auto pod = [&](std::vector<std::string> cmd) {
      std::vector<std::string> v = {"unshare", "--pid", "--fork", "--mount-proc", "/bin/sh", "-c",
                                    "o=$1; shift; exec \"$@\" </dev/null >\"$o\" 2>&1", "sh", log};
      v.insert(v.end(), cmd.begin(), cmd.end());
      return v;
    };
    ferry_test::Child c(pod({kFerry, "run", "--emulator", "--host-pids", "--on-signal", "TERM=dump:" + img, "--", kMlp,
                             "--steps", "100", "--step-delay-ms", "20"}),
                        ferry_test::emu_env());
    const std::string at = "step " + std::to_string(random_step(2, 30)) + " loss";
    for (int i = 0; i < 600 && ferry_test::read_file(log).find(at) == std::string::npos; i++) usleep(50000);
    REQUIRE(ferry_test::read_file(log).find(at) != std::string::npos);
    pid_t ferry_run = children_of(c.pid()).at(0);
    CHECK(ns_pid(ferry_run) == 1);
    kill(ferry_run, SIGTERM);
    auto done = c.finish();
    INFO(ferry_test::read_file(log));
    REQUIRE(done.exit_code == 0);
    auto m = nlohmann::json::parse(ferry_test::read_file(img + "/process.json"));
    // The init: among the first pids of the container (after the few ferry run's check of
    // CRIU took), which ferry restore, pid 1 of the new one, would hand its own helpers.
    CHECK(m["processes"][0]["nspid"].get<int>() < 64);
    auto r = ferry_test::run(pod({kFerry, "restore", img, "--device", "1"}), ferry_test::emu_env(), 240);
    std::string out = ferry_test::read_file(log);
    INFO(out);
    REQUIRE(r.exit_code == 0);
    CHECK(checksums(out) == checksums(plain.out));
  }
  SECTION("both asked for") {
    auto r = ferry_test::run({kFerry, "run", "--pid-namespace", "--host-pids", "--", "true"}, {}, 30);
    CHECK(r.exit_code == 64);
    CHECK(r.err.find("--pid-namespace excludes --host-pids") != std::string::npos);
  }
}

TEST_CASE("a job run with --host-pids ends whole -- what its program forked too -- when its ferry run, its ferry "
          "restore or its init is killed outright, or its ferry run dies while CRIU dumps it",
          "[process-image][criu]") {
  REQUIRE(geteuid() == 0);
  ferry_test::TempDir t("ferry-pimg");
  // The program (a shell that execs the trainer) forks a sleep that asks for no
  // parent-death signal; without a namespace, only the init's sweep ends it.
  auto forking_job = [&] {
    return job({"/bin/sh", "-c", "sleep 600 & echo forked $!; exec \"$0\" \"$@\"", kMlp, "--steps", "100000",
                 "--step-delay-ms", "20"},
                {}, "--host-pids");
  };
  auto forked_of = [](const std::string& out) {
    auto forked = ferry_test::lines_with(out, "forked ");
    REQUIRE(forked.size() == 1);
    return static_cast<pid_t>(std::stoi(forked[0].substr(forked[0].find(' ') + 1)));
  };
  // The init, the program and the sleep all end (soon).
  auto all_end = [](pid_t init, pid_t prog, pid_t sleeper) {
    for (int i = 0; i < 100 && (alive(init) || alive(prog) || alive(sleeper)); i++) usleep(50000);
    CHECK(!alive(init));
    CHECK(!alive(prog));
    CHECK(!alive(sleeper));
    if (alive(sleeper)) kill(sleeper, SIGKILL);
  };
  // Kills the job's parent (ferry run or ferry restore) outright, or (by_hand) its init:
  // everything of the job must end. The parent, a subreaper too, takes what a killed
  // init leaves and ends it (exit 137, as for an init killed in a namespace).
  auto killed_outright = [&](ferry_test::Child& parent, pid_t sleeper, bool by_hand = false) {
    pid_t init = 0;
    for (pid_t p : children_of(parent.pid()))
      if (ferry_test::read_file("/proc/" + std::to_string(p) + "/comm") == "ferry-init\n") init = p;
    REQUIRE(init > 0);
    pid_t prog = children_of(init).at(0);
    REQUIRE(alive(sleeper));
    kill(by_hand ? init : parent.pid(), SIGKILL);
    auto r = parent.finish();
    if (by_hand) CHECK(r.exit_code == 128 + SIGKILL);
    all_end(init, prog, sleeper);
  };
  SECTION("ferry run killed while CRIU dumps the job: no image, and the job ends, as it would have without the dump") {
    ferry_test::Child c(forking_job(), ferry_test::emu_env());
    REQUIRE(c.wait_for("step 2 loss"));
    pid_t init = children_of(c.pid()).at(0), prog = program_of(c.pid()), sleeper = forked_of(c.out());
    // CRIU as ferry runs it, but ferry run is killed (and gone) before it returns: the
    // job, stopped by CRIU, is told to end only once ferry lets it go.
    const std::string run = std::to_string(c.pid());
    const std::string wrapper = criu_wrapper(t / "criu", "\"$real\" \"$@\"; rc=$?\nkill -KILL " + run +
                                                             "\nuntil [ \"$(cut -d' ' -f3 /proc/" + run +
                                                             "/stat)\" = Z ]; do sleep 0.01; done\nexit $rc\n");
    auto r = ferry_test::run({kFerry, "dump", std::to_string(init), t / "img"},
                             ferry_test::emu_env({{"FERRY_CRIU", wrapper}}), 180);
    CHECK(r.exit_code == 69);
    CHECK(r.err == "ferry: dump failed: the job's ferry run (or ferry restore) died while CRIU dumped it, which ends "
                   "the job; its image might end as soon as it was restored, so none was written; the job has ended\n");
    CHECK(!fs::exists(t / "img"));
    CHECK(!fs::exists(t / "img.partial"));
    CHECK(c.finish().exit_code == -1);  // killed
    all_end(init, prog, sleeper);
  }
  SECTION("ferry run killed outright, with a process the program forked") {
    ferry_test::Child c(forking_job(), ferry_test::emu_env());
    REQUIRE(c.wait_for("step 2 loss"));
    killed_outright(c, forked_of(c.out()));
  }
  SECTION("the init killed outright by hand, with a process the program forked") {
    ferry_test::Child c(forking_job(), ferry_test::emu_env());
    REQUIRE(c.wait_for("step 2 loss"));
    killed_outright(c, forked_of(c.out()), true);
  }
  SECTION("ferry restore (or, by hand, the restored init) killed outright once the job runs again, with a process "
          "the program forked (restored under its pid)") {
    ferry_test::Child c(forking_job(), ferry_test::emu_env());
    REQUIRE(c.wait_for("step " + std::to_string(random_step(2, 20)) + " loss"));
    pid_t sleeper = forked_of(c.out());
    dump(c.pid(), t / "img");
    CHECK(c.finish().exit_code == 128 + SIGKILL);
    CHECK(pid_free(sleeper));
    ferry_test::Child r({kFerry, "restore", t / "img"}, ferry_test::emu_env());
    REQUIRE(r.wait_for(" loss"));
    // Until the restore's guard is gone, it would kill the job itself.
    for (int i = 0; i < 600 && r.err().find("waiting for it to end") == std::string::npos; i++) usleep(50000);
    for (int i = 0; i < 1000 && children_of(r.pid()).size() != 1; i++) usleep(10000);
    REQUIRE(children_of(r.pid()).size() == 1);
    // ferry ps names ferry restore as the restored job's: where the next signal goes.
    CHECK(jobs_listed_under(r.pid()).size() == 1);
    killed_outright(r, sleeper, GENERATE(false, true));
  }
}

// Every line of a text, sorted: the output of workers that interleave differently.
std::vector<std::string> sorted_lines(const std::string& text) {
  std::vector<std::string> v;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) v.push_back(line);
  std::sort(v.begin(), v.end());
  return v;
}

TEST_CASE("torchrun's shape over TCP: a launcher, its TCP store and a worker on each GPU, all in the job, dumped at a "
          "random step, killed and restored onto the other GPUs -- every line once, bit-identical",
          "[process-image][criu][tcp]") {
  REQUIRE(geteuid() == 0);
  ferry_test::TempDir t("ferry-pimg");
  auto plain = ferry_test::run({kLauncher, "--tcp-store", "2", kMlp, "--steps", "100"}, ferry_test::emu_env(), 120);
  REQUIRE(plain.exit_code == 0);
  ferry_test::Child c(job({kLauncher, "--tcp-store", "2", kMlp, "--steps", "100", "--step-delay-ms", "20"}),
                      ferry_test::emu_env());
  int step = random_step(3, 30);
  INFO("dumped at step " << step);
  REQUIRE(c.wait_for("[worker 1] step " + std::to_string(step) + " loss"));
  // ferry check sees the store's listener and both ends of its connection, all inside.
  pid_t launcher = program_of(c.pid());
  auto chk = ferry_test::run({kFerry, "check", std::to_string(children_of(launcher).back()), "--format", "json"},
                             ferry_test::emu_env(), 60);
  auto fp = nlohmann::json::parse(chk.out)["full_process"];
  INFO(fp.dump());
  CHECK(fp["dumpable"] == true);
  // Dual-stack on [::] (as PyTorch's TCPStore), its client by IPv4: the accepted end,
  // [::ffff:127.0.0.1] in /proc/net/tcp6, is matched with the client's in /proc/net/tcp.
  REQUIRE(fp["sockets"]["listening"].size() == 1);
  std::string listen = fp["sockets"]["listening"][0];
  REQUIRE(listen.rfind("[::]:", 0) == 0);
  std::string port = listen.substr(5);
  REQUIRE(fp["sockets"]["connections"].size() == 2);
  auto& ends = fp["sockets"]["connections"];
  CHECK(ends[0]["local"] == ends[1]["remote"]);
  CHECK(ends[1]["local"] == ends[0]["remote"]);
  CHECK((ends[0]["local"] == "127.0.0.1:" + port || ends[1]["local"] == "127.0.0.1:" + port));
  // The launcher has no CUDA: ferry check PID still says what a dump of its job would do.
  auto lchk = ferry_test::run({kFerry, "check", std::to_string(launcher)}, ferry_test::emu_env(), 60);
  CHECK(lchk.exit_code == 0);
  CHECK(lchk.out == "process " + std::to_string(launcher) + ": no CUDA under ferry; in job " +
                        std::to_string(children_of(c.pid()).at(0)) + "\nthe job's TCP sockets: listening on " + listen +
                        "; 2 connection end(s) inside the job (a dump takes them along)\nwhole-process dump (ferry "
                        "dump): possible\n");

  if (ferry_test::kernel_at_least(6, 16)) {
    // A CRIU before 4.2 cannot dump the job's sockets on this kernel: refused up front.
    std::string old = ferry_test::fake_criu(t.path, "4.1.1", "Looks good.", 0);
    auto r = ferry_test::run({kFerry, "dump", std::to_string(c.pid()), t / "img"},
                             ferry_test::emu_env({{"FERRY_CRIU", old}}), 60);
    CHECK(r.exit_code == 78);
    CHECK(r.err == "ferry: cannot dump job " + std::to_string(children_of(c.pid()).at(0)) +
                       ": it holds TCP or UDP sockets, which CRIU 4.1.1 cannot dump on Linux " +
                       ferry_test::kernel_release() +
                       " (it needs CRIU 4.2 or newer there); run scripts/setup.sh as root (it builds CRIU 4.2.1) or "
                       "set FERRY_CRIU to a CRIU >= 4.2. Nothing was done; the job goes on running\n");
    CHECK(!fs::exists(t / "img.partial"));
  }
  auto d = dump(c.pid(), t / "img");
  CHECK(d["processes"] == 5);  // init, launcher, store, two workers
  CHECK(d["cuda_processes"] == 2);
  auto gone = c.finish();
  CHECK(gone.exit_code == 128 + SIGKILL);
  auto m = nlohmann::json::parse(ferry_test::read_file(t / "img/process.json"));
  CHECK(m["version"] == 2);  // an older ferry would not bring the connections back: it refuses the image
  CHECK(m["sockets"]["listening"] == fp["sockets"]["listening"]);
  CHECK(m["sockets"]["connections"].size() == 2);
  auto in = ferry_test::run({kFerry, "inspect", t / "img"}, {}, 60);
  CHECK(in.out.find("  TCP: listening on " + listen + "; 2 connection end(s) inside the job, restored with it") !=
        std::string::npos);

  auto r = restore(t / "img", {"--device-map", "1,0"});
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  // What the store printed before the dump and after the restore: each line once, as
  // in the run without ferry (a line lost or doubled over TCP would show; so would a
  // missing answer, which makes the launcher exit 3).
  CHECK(sorted_lines(gone.out + r.out) == sorted_lines(plain.out));
  CHECK(checksums(plain.out, "weights checksum").size() == 2);
  for (auto& p : report_of(r)["processes"]) CHECK(p["status"]["memory_by_gpu"].size() == 1);
}

TEST_CASE("a TCP job dumped with --leave-running goes on; its image is refused here while the original holds its "
          "ports, naming them",
          "[process-image][criu][tcp]") {
  REQUIRE(geteuid() == 0);
  ferry_test::TempDir t("ferry-pimg");
  // Long enough (about 5 s) that the original surely still runs while the restore is tried.
  auto plain = ferry_test::run({kLauncher, "--tcp-store", "2", kMlp, "--steps", "250"}, ferry_test::emu_env(), 120);
  REQUIRE(plain.exit_code == 0);
  ferry_test::Child c(job({kLauncher, "--tcp-store", "2", kMlp, "--steps", "250", "--step-delay-ms", "20"}),
                      ferry_test::emu_env());
  REQUIRE(c.wait_for("[worker 0] step " + std::to_string(random_step(3, 20)) + " loss"));
  auto d = dump(c.pid(), t / "img", {"--leave-running"});
  CHECK(d["left_running"] == true);
  auto m = nlohmann::json::parse(ferry_test::read_file(t / "img/process.json"));
  std::string listen = m["sockets"]["listening"][0];
  auto refused = restore_text(t / "img");
  INFO(refused.err);
  CHECK(refused.exit_code == 75);  // try again later
  CHECK(refused.err.find("ferry: cannot restore the job of " + (t / "img") + " here: " + listen +
                         ", where the job listened: something on this machine holds it already") == 0);
  CHECK(refused.err.find("exists on this machine already (held by another copy of the job?)") != std::string::npos);
  CHECK(refused.err.find("; a job run with ferry run --net-namespace has ports and socket names of its own. Nothing "
                         "was started; the image is untouched\n") != std::string::npos);
  // The original was stopped by CRIU with its sockets in repair mode, and got them back:
  // it ends as if nothing happened.
  auto done = c.finish();
  CHECK(done.exit_code == 0);
  CHECK(sorted_lines(done.out) == sorted_lines(plain.out));
  // Its connections closed normally, and what is left of them keeps the port a while.
  auto later = restore_text(t / "img");
  CHECK(later.exit_code == 75);
  CHECK(later.err.find(listen + ", where the job listened: connections on it closed moments ago block it (TIME_WAIT, "
                                "at most a minute)") != std::string::npos);
  CHECK(later.err.find("closed moments ago on this machine and lingers (at most a minute)") != std::string::npos);
}

// Whether every line of part is a line of whole (as many times at most).
bool lines_within(const std::string& part, const std::string& whole) {
  auto p = sorted_lines(part), w = sorted_lines(whole);
  return std::includes(w.begin(), w.end(), p.begin(), p.end());
}

TEST_CASE("a job with a network of its own (ferry run --net-namespace): torchrun's shape over TCP dumped with "
          "--leave-running, its image restored twice at once beside the original -- three copies on one port, each "
          "ending bit-identical",
          "[process-image][criu][tcp]") {
  REQUIRE(geteuid() == 0);
  ferry_test::TempDir t("ferry-pimg");
  // Long enough (about 10 s) that the original still runs once both copies do.
  auto plain = ferry_test::run({kLauncher, "--tcp-store", "2", kMlp, "--steps", "500"}, ferry_test::emu_env(), 120);
  REQUIRE(plain.exit_code == 0);
  ferry_test::Child c(
      job({kLauncher, "--tcp-store", "2", kMlp, "--steps", "500", "--step-delay-ms", "20"}, {"--net-namespace"}),
      ferry_test::emu_env());
  REQUIRE(c.wait_for("[worker 0] step " + std::to_string(random_step(3, 20)) + " loss"));
  auto ps = nlohmann::json::parse(ferry_test::run({kFerry, "ps", "--format", "json"}, ferry_test::emu_env(), 60).out);
  int workers = 0;
  for (auto& p : ps)
    if (!p["job"].is_null() && p["job"]["ferry"] == c.pid()) {
      workers++;
      CHECK(p["job"]["network"] == "own");
    }
  CHECK(workers == 2);
  auto d = dump(c.pid(), t / "img", {"--leave-running"});
  CHECK(d["left_running"] == true);
  auto m = nlohmann::json::parse(ferry_test::read_file(t / "img/process.json"));
  CHECK(m["version"] == 6);  // an older ferry would restore it in the machine's network
  CHECK(m["net_namespace"] == true);
  REQUIRE(m["sockets"]["listening"].size() == 1);
  CHECK(m["sockets"]["connections"].size() == 2);
  auto in = ferry_test::run({kFerry, "inspect", t / "img"}, {}, 60);
  CHECK(in.out.find("\n  network: its own (run with --net-namespace): restored into a new one, loopback only\n") !=
        std::string::npos);
  // The original still runs and holds the store's port, which in the machine's network
  // would refuse both restores (the test before this one).
  ferry_test::Child a({kFerry, "restore", t / "img"}, ferry_test::emu_env());
  ferry_test::Child b({kFerry, "restore", t / "img", "--device-map", "1,0"}, ferry_test::emu_env());
  // Both copies train (each worker's step lines come after its store answered it), and
  // the original has not ended: its ferry run is no zombie.
  CHECK(a.wait_for("[worker 0] step ", 120));
  CHECK(b.wait_for("[worker 0] step ", 120));
  CHECK(a.wait_for("[worker 1] step ", 120));
  CHECK(b.wait_for("[worker 1] step ", 120));
  CHECK(ferry_test::read_file("/proc/" + std::to_string(c.pid()) + "/stat").find(") Z ") == std::string::npos);
  CHECK(c.out().find("weights checksum") == std::string::npos);
  auto ra = a.finish(240), rb = b.finish(240);
  auto done = c.finish();
  INFO(ra.err << rb.err);
  CHECK(ra.exit_code == 0);
  CHECK(rb.exit_code == 0);
  CHECK(done.exit_code == 0);
  CHECK(sorted_lines(done.out) == sorted_lines(plain.out));
  // Each copy prints what the original printed after the dump: the same lines, none that
  // the uninterrupted run did not print (a line lost or doubled over TCP would show).
  CHECK(sorted_lines(ra.out) == sorted_lines(rb.out));
  CHECK(lines_within(ra.out, plain.out));
  auto sums = [](const std::string& out) {
    auto v = checksums(out, "weights checksum");
    std::sort(v.begin(), v.end());  // the two workers end in either order
    return v;
  };
  CHECK(sums(ra.out) == sums(plain.out));
  CHECK(sums(rb.out) == sums(plain.out));
  CHECK(sums(ra.out).size() == 2);
}

TEST_CASE("a job with the host's pids and a network of its own (--host-pids --net-namespace): torchrun's shape "
          "dumped, killed and restored -- every line once, bit-identical",
          "[process-image][criu][tcp]") {
  REQUIRE(geteuid() == 0);
  ferry_test::TempDir t("ferry-pimg");
  auto plain = ferry_test::run({kLauncher, "--tcp-store", "2", kMlp, "--steps", "100"}, ferry_test::emu_env(), 120);
  REQUIRE(plain.exit_code == 0);
  ferry_test::Child c(job({kLauncher, "--tcp-store", "2", kMlp, "--steps", "100", "--step-delay-ms", "20"},
                          {"--net-namespace"}, "--host-pids"),
                      ferry_test::emu_env());
  REQUIRE(c.wait_for("[worker 1] step " + std::to_string(random_step(3, 30)) + " loss"));
  dump(c.pid(), t / "img");
  auto gone = c.finish();
  CHECK(gone.exit_code == 128 + SIGKILL);
  auto m = nlohmann::json::parse(ferry_test::read_file(t / "img/process.json"));
  CHECK(m["net_namespace"] == true);
  CHECK(m["pid_namespace"] == false);
  auto r = restore(t / "img");
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(sorted_lines(gone.out + r.out) == sorted_lines(plain.out));
  CHECK(checksums(r.out, "weights checksum").size() == 2);
}

TEST_CASE("a job with a network of its own: its output to Unix stream sockets (a service's journald stream) is "
          "relayed by ferry through a pipe, so it is dumped and restored -- by a ferry whose output is such sockets "
          "too, relayed again -- and ends bit-identical; a Unix socket from outside as its stdin, datagrams to a "
          "daemon's socket, are refused by name, the job running on (stdin said as ferry run or ferry restore starts "
          "it, refused there with --on-signal); so are --net-namespace without a job and a dump from another network "
          "namespace",
          "[process-image][criu]") {
  REQUIRE(geteuid() == 0);
  ferry_test::TempDir t("ferry-pimg");
  auto usage = ferry_test::run({kFerry, "run", "--emulator", "--net-namespace", "--", "true"}, ferry_test::emu_env(), 60);
  CHECK(usage.exit_code == 64);
  CHECK(usage.err == "ferry run: --net-namespace is for a job: add --pid-namespace (or --host-pids where the CUDA "
                     "driver cannot start in a PID namespace)\n");

  auto plain = ferry_test::run({kMlp, "--steps", "60"}, ferry_test::emu_env(), 120);
  REQUIRE(plain.exit_code == 0);
  const std::string sock_stdio = kBin + "/tests/programs/sock_stdio";
  auto fd_of = [](pid_t pid, int fd) {
    std::error_code ec;
    return fs::read_symlink("/proc/" + std::to_string(pid) + "/fd/" + std::to_string(fd), ec).string();
  };
  const std::vector<std::string> plain_loss = ferry_test::lines_with(plain.out, " loss ");
  // sock_stdio gives its command a socket at fd 1 and another at fd 2; through `2>&1`,
  // one socket at both.
  for (bool one : {false, true}) {
    INFO((one ? "one socket at fds 1 and 2 (2>&1)" : "a socket at fd 1, another at fd 2"));
    const std::string img = t / (one ? "one" : "two");
    auto wrapped = [&](std::vector<std::string> cmd, bool one_socket) {
      std::vector<std::string> v = {sock_stdio};
      if (one_socket) v.insert(v.end(), {"sh", "-c", "exec \"$@\" 2>&1", "sh"});
      v.insert(v.end(), cmd.begin(), cmd.end());
      return v;
    };
    ferry_test::Child c(wrapped({kFerry, "run", "--emulator", "--pid-namespace", "--net-namespace", "--on-signal",
                                 "TERM=dump:" + img, "--", kMlp, "--steps", "60", "--step-delay-ms", "20"},
                                one),
                        ferry_test::emu_env());
    REQUIRE(c.wait_for("step " + std::to_string(random_step(2, 20)) + " loss"));
    pid_t run = children_of(c.pid()).at(0), init = children_of(run).at(0);
    // ferry run holds the sockets; the job, a pipe in their place.
    CHECK(fd_of(run, 1).rfind("socket:", 0) == 0);
    CHECK(fd_of(run, 2).rfind("socket:", 0) == 0);
    CHECK(fd_of(init, 1).rfind("pipe:", 0) == 0);
    CHECK(fd_of(init, 2).rfind("pipe:", 0) == 0);
    CHECK((fd_of(init, 1) == fd_of(init, 2)) == one);
    kill(run, SIGTERM);
    auto first = c.finish();
    INFO(first.out << first.err);
    REQUIRE(first.exit_code == 0);
    CHECK((first.out + first.err).find("ferry: dumped job ") != std::string::npos);
    CHECK((first.out + first.err).find("warning") == std::string::npos);
    auto m = nlohmann::json::parse(ferry_test::read_file(img + "/process.json"));
    CHECK(m["net_namespace"] == true);
    CHECK(m["stdio"][1]["kind"] == "pipe");
    CHECK(m["stdio"][2]["kind"] == "pipe");
    std::string seen = first.out;
    // Restored by a ferry whose output is sockets too (a service's restart) -- the other
    // way round: two pipes in the image, one socket here (each its own copy of the
    // relay's pipe for CRIU), or one pipe, two sockets (the restorer's fd 1 at both) --
    // preempted again over its own image (the Slurm recipe), then restored to the end.
    ferry_test::Child r(wrapped({kFerry, "restore", img, "--on-signal", "TERM=dump:" + img}, !one),
                        ferry_test::emu_env());
    const size_t before = ferry_test::lines_with(seen, " loss ").size();
    REQUIRE(r.wait_for("step " + std::to_string(before + static_cast<size_t>(random_step(3, 10))) + " loss"));
    pid_t restorer = children_of(r.pid()).at(0);
    std::vector<pid_t> below;
    for (int i = 0; i < 200 && (below = children_of(restorer)).size() != 1; i++) usleep(20000);
    REQUIRE(below.size() == 1);  // the restored init, once ferry's guard has gone
    CHECK(fd_of(restorer, 1).rfind("socket:", 0) == 0);
    CHECK(fd_of(below[0], 1).rfind("pipe:", 0) == 0);
    CHECK(fd_of(below[0], 1) == fd_of(below[0], 2));
    kill(restorer, SIGTERM);
    auto again = r.finish();
    INFO(again.out << again.err);
    REQUIRE(again.exit_code == 0);
    CHECK((again.out + again.err).find("dumping the job to " + img) != std::string::npos);
    CHECK((again.out + again.err).find("warning") == std::string::npos);
    seen += again.out;
    // With 2>&1, by a detached ferry (the relay is the detached one's): sock_stdio ends
    // once that ferry, holding the sockets, has.
    std::vector<std::string> cmd = {kFerry, "restore", img};
    if (one) cmd.push_back("--detach");
    auto last = ferry_test::run(wrapped(cmd, one), ferry_test::emu_env(), 120);
    INFO(last.out << last.err);
    REQUIRE(last.exit_code == 0);
    if (one) CHECK(last.out.find("ferry: the job restored from " + img + " (init pid ") != std::string::npos);
    if (one) CHECK(last.out.find(") has ended: exit status 0 (what ferry restore without --detach exits with)\n") !=
                   std::string::npos);
    seen += last.out;
    // Every step once, in order, as the uninterrupted run; the job's stderr (its timing
    // line at the end) relayed to the restorer's fd 1, where the image had one file at 1
    // and 2; the relays ended with the job.
    CHECK(ferry_test::lines_with(seen, " loss ") == plain_loss);
    CHECK(checksums(seen) == checksums(plain.out));
    CHECK(last.out.find("mlp_trainer: ") != std::string::npos);
    CHECK(last.out.find(" ms on the device clock") != std::string::npos);
    for (auto* said : {&first, &again, &last}) CHECK((said->out + said->err).find(" s later") == std::string::npos);
  }
  // What is not relayed: a Unix socket at the job's stdin (read too).
  const std::string kStdinWhy = "fd 0 is a Unix socket from outside the job's network namespace, where CRIU cannot "
                                "find such a socket (ferry relays the job's output to a stream socket at fds 1 and 2, "
                                "nothing else): ";
  auto stdin_socket = [&](std::vector<std::string> cmd) {  // sock_stdio's fd 1 at fd 0 too
    std::vector<std::string> v = {sock_stdio, "sh", "-c", "exec \"$@\" <&1", "sh"};
    v.insert(v.end(), cmd.begin(), cmd.end());
    return v;
  };
  // The trainer, and a program without CUDA, which has no Unix socket of its own in the
  // job's namespace (the shim's control socket is one).
  for (bool cuda : {true, false}) {
    INFO((cuda ? "mlp_trainer" : "a shell loop"));
    std::vector<std::string> prog = {kMlp, "--steps", "60", "--step-delay-ms", "20"};
    if (!cuda) prog = {"sh", "-c", "for i in $(seq 60); do echo step $i loss; sleep 0.02; done"};
    std::vector<std::string> argv = {kFerry, "run", "--emulator", "--pid-namespace", "--net-namespace", "--"};
    argv.insert(argv.end(), prog.begin(), prog.end());
    ferry_test::Child c(stdin_socket(argv), ferry_test::emu_env());
    REQUIRE(c.wait_for("step 5 loss"));
    pid_t run = children_of(c.pid()).at(0), init = children_of(run).at(0);
    auto r = ferry_test::run({kFerry, "dump", std::to_string(run), t / "img"}, ferry_test::emu_env(), 120);
    INFO(r.err);
    CHECK(r.exit_code == 78);
    CHECK(r.err.find("ferry: cannot dump job " + std::to_string(init) + ": process " + std::to_string(init)) == 0);
    CHECK(r.err.find("process " + std::to_string(init) + " (ferry-init, fd 0) holds the job's stdio, a Unix socket "
                     "from outside the job's own network namespace (ferry run --net-namespace), where CRIU cannot "
                     "find it (ferry relays the job's output to a stream socket at fds 1 and 2, nothing else); give "
                     "the job a pipe, a terminal or a file, or run it without --net-namespace") != std::string::npos);
    // Its output, relayed, is not what is refused.
    CHECK(r.err.find("fd 1)") == std::string::npos);
    CHECK(r.err.find("Nothing was done; the job goes on running\n") != std::string::npos);
    CHECK(!fs::exists(t / "img"));
    CHECK(!fs::exists(t / "img.partial"));
    auto done = c.finish();
    CHECK(done.exit_code == 0);
    // ferry run's warning came through the same socket as the job's output.
    const std::string warning = "ferry run: warning: --net-namespace: " + kStdinWhy + "ferry dump will refuse the job; "
                                "give the job a pipe, a terminal or a file there, or run it without --net-namespace\n";
    CHECK(done.err.find(warning) != std::string::npos);
    std::string out = done.out;
    if (cuda) CHECK(out == plain.out);
    // ... and its stderr through its own relay, to the other socket.
    if (cuda) CHECK(done.err.find(" ms on the device clock") != std::string::npos);
    if (!cuda) CHECK(out.find("step 60 loss\n") != std::string::npos);
  }
  {
    // With a dump planned (--on-signal), refused at once: nothing starts.
    auto r = ferry_test::run(stdin_socket({kFerry, "run", "--emulator", "--pid-namespace", "--net-namespace",
                                           "--on-signal", "TERM=dump:" + (t / "img"), "--", "touch", t / "ran"}),
                             ferry_test::emu_env(), 60);
    CHECK(r.exit_code == 78);
    CHECK(r.err == "ferry run: --net-namespace: " + kStdinWhy + "--on-signal's dump would fail; give the job a pipe, "
                   "a terminal or a file there, or run it without --net-namespace\n");
    CHECK(!fs::exists(t / "ran"));
  }
  {
    // A job dumped with pipes, restored by a ferry whose stdin is a Unix socket: warned
    // (it could not be dumped again), refused with --on-signal.
    ferry_test::Child c(job({"sh", "-c", "for i in $(seq 60); do echo step $i loss; sleep 0.02; done"},
                            {"--net-namespace"}),
                        ferry_test::emu_env());
    REQUIRE(c.wait_for("step 5 loss"));
    dump(c.pid(), t / "loop");
    c.finish();
    const std::string why = "this ferry restore's fd 0 is a Unix socket, which the job, in a network namespace of "
                            "its own, would hold from outside it, where CRIU cannot find such a socket (ferry relays "
                            "the job's output to a stream socket at fds 1 and 2, nothing else): ";
    auto refused = ferry_test::run(stdin_socket({kFerry, "restore", t / "loop", "--on-signal", "TERM=dump:" + (t / "img")}),
                                   ferry_test::emu_env(), 60);
    CHECK(refused.exit_code == 78);
    CHECK(refused.err == "ferry: cannot restore the job of " + (t / "loop") + " here: " + why + "--on-signal's dump "
                         "would fail; give ferry restore a pipe, a terminal or a file there. Nothing was started; the "
                         "image is untouched\n");
    auto warned = ferry_test::run(stdin_socket({kFerry, "restore", t / "loop"}), ferry_test::emu_env(), 120);
    INFO(warned.out << warned.err);
    CHECK(warned.exit_code == 0);
    CHECK(warned.err.find("ferry: warning: " + why + "ferry dump will refuse the job; give ferry restore a pipe, a "
                          "terminal or a file there\n") != std::string::npos);
    CHECK(warned.out.find("step 60 loss\n") != std::string::npos);
  }
  {
    const std::string log = t / "log";
    ferry_test::Child syslogd({"python3", "-c",
                               "import socket, sys\n"
                               "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
                               "s.bind(sys.argv[1])\n"
                               "print('ready', flush=True)\n"
                               "while True:\n"
                               "    s.recv(100)\n",
                               log});
    REQUIRE(syslogd.wait_for("ready"));
    ferry_test::Child c(job({"python3", "-c",
                             "import socket, sys, time\n"
                             "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
                             "s.connect(sys.argv[1])\n"
                             "for i in range(60):\n"
                             "    s.send(b'msg %d' % i)\n"
                             "    print('sent', i, flush=True)\n"
                             "    time.sleep(0.02)\n",
                             log},
                            {"--net-namespace"}),
                        ferry_test::emu_env());
    REQUIRE(c.wait_for("sent 5"));
    auto r = ferry_test::run({kFerry, "dump", std::to_string(c.pid()), t / "img"}, ferry_test::emu_env(), 120);
    CHECK(r.exit_code == 78);
    CHECK(r.err.find(" sends datagrams to " + log + ", outside the job's own network namespace (ferry run "
                     "--net-namespace), where CRIU cannot find it; run such a job without --net-namespace. Nothing "
                     "was done; the job goes on running\n") != std::string::npos);
    CHECK(!fs::exists(t / "img"));
    auto done = c.finish();
    CHECK(done.exit_code == 0);
    CHECK(done.out.find("sent 59\n") != std::string::npos);
  }
  {
    // A job in the machine's network, dumped by a ferry in another one: CRIU would dump
    // that network whole, which a restore would not bring back.
    ferry_test::Child c(job({kMlp, "--steps", "60", "--step-delay-ms", "20"}), ferry_test::emu_env());
    REQUIRE(c.wait_for("step 5 loss"));
    auto r = ferry_test::run({"unshare", "--net", kFerry, "dump", std::to_string(c.pid()), t / "img"},
                             ferry_test::emu_env(), 120);
    CHECK(r.exit_code == 78);
    const std::string why = "the job is in another network namespace than this ferry (that of its parent, " +
                            std::to_string(c.pid()) + "): run ferry dump in the job's network namespace";
    CHECK(r.err == "ferry: " + why + ". Nothing was done; the job goes on running\n");
    CHECK(!fs::exists(t / "img"));
    // ferry check, from there, says the same.
    auto chk = ferry_test::run({"unshare", "--net", kFerry, "check", std::to_string(c.pid()), "--format", "json"},
                               ferry_test::emu_env(), 60);
    auto fp = nlohmann::json::parse(chk.out)["full_process"];
    INFO(fp.dump());
    CHECK(fp["dumpable"] == false);
    CHECK(fp["problems"] == nlohmann::json::array({why}));
    auto done = c.finish();
    CHECK(done.exit_code == 0);
    CHECK(done.out == plain.out);
  }
}

TEST_CASE("a job whose output goes to Unix sockets (a service's journald stream) is dumped; restored, its output "
          "goes to the restorer",
          "[process-image][criu]") {
  REQUIRE(geteuid() == 0);
  ferry_test::TempDir t("ferry-pimg");
  auto plain = ferry_test::run({kMlp, "--steps", "100"}, ferry_test::emu_env(), 120);
  REQUIRE(plain.exit_code == 0);
  ferry_test::Child c({kBin + "/tests/programs/sock_stdio", kFerry, "run", "--emulator", "--pid-namespace", "--", kMlp,
                       "--steps", "100", "--step-delay-ms", "20"},
                      ferry_test::emu_env());
  REQUIRE(c.wait_for("step " + std::to_string(random_step(2, 40)) + " loss"));
  dump(children_of(c.pid()).at(0), t / "img");
  auto gone = c.finish();
  CHECK(gone.exit_code == 128 + SIGKILL);
  auto m = nlohmann::json::parse(ferry_test::read_file(t / "img/process.json"));
  REQUIRE(m["stdio"].size() == 3);
  CHECK(m["stdio"][1]["kind"] == "socket");
  CHECK(m["stdio"][2]["kind"] == "socket");
  auto r = restore(t / "img");
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(gone.out + r.out == plain.out);
}

TEST_CASE("descriptors a job's launcher gave it (ferry run --preserve-fds): dumped with it, the restorer's take their "
          "place; a restore not given them, or a ferry run told of one not open, is refused by name",
          "[process-image][criu]") {
  REQUIRE(geteuid() == 0);
  ferry_test::TempDir t("ferry-pimg");
  const std::string kind = GENERATE("--pid-namespace", "--host-pids");
  INFO(kind);
  // A program that logs each step to fd 3 (a trainer's metrics stream) and to stdout.
  const std::vector<std::string> prog = {
      "/bin/sh", "-c", "i=0; while [ $i -lt 60 ]; do echo tick $i >&3; echo step $i; i=$((i+1)); sleep 0.03; done"};
  // argv run by a shell that first makes the redirection (fd 3 opened, as a launcher would
  // give it, or closed: a test runner may have left one open).
  auto with_fd3 = [](const std::string& redirect, std::vector<std::string> argv) {
    argv.insert(argv.begin(), {"/bin/sh", "-c", "exec \"$0\" \"$@\" " + redirect});
    return argv;
  };
  std::string ticks, steps;
  for (int i = 0; i < 60; i++) {
    ticks += "tick " + std::to_string(i) + "\n";
    steps += "step " + std::to_string(i) + "\n";
  }

  SECTION("fd 3 a log file of the launcher's; the restorer gives another") {
    ferry_test::Child c(with_fd3("3>>" + t / "log1", job(prog, {"--preserve-fds", "1"}, kind)), ferry_test::emu_env());
    REQUIRE(c.wait_for("step " + std::to_string(random_step(2, 30)) + "\n"));
    dump(c.pid(), t / "img");
    auto gone = c.finish();
    CHECK(gone.exit_code == 128 + SIGKILL);
    auto m = nlohmann::json::parse(ferry_test::read_file(t / "img/process.json"));
    CHECK(m["version"] == 4);
    REQUIRE(m["stdio"].size() == 4);
    CHECK(m["stdio"][3]["fd"] == 3);
    CHECK(m["stdio"][3]["kind"] == "file");
    CHECK(m["stdio"][3]["was"] == t / "log1");
    auto in = ferry_test::run({kFerry, "inspect", t / "img"});
    CHECK(in.out.find("  fd 3 was " + t / "log1" + " (file, from the job's launcher): the restorer's own fd 3 takes "
                      "its place, open for writing\n") != std::string::npos);

    // Not given fd 3: refused before anything starts, naming it.
    auto r = ferry_test::run(with_fd3("3>&-", {kFerry, "restore", t / "img", "--emulator"}), ferry_test::emu_env(), 60);
    CHECK(r.exit_code == 78);
    CHECK(r.err == "ferry: cannot restore the job of " + t / "img" + " here: the job had fd 3 (file, " + t / "log1" +
                       " at the dump) from its launcher (ferry run --preserve-fds); start ferry restore with fd 3 "
                       "open to take its place (e.g. 3>>LOG). Nothing was started; the image is untouched\n");
    CHECK(r.out.empty());
    // Given for reading only: the job's writes there would fail, its log lost.
    CHECK(m["stdio"][3]["mode"] == "w");
    r = ferry_test::run(with_fd3("3<" + t / "log1", {kFerry, "restore", t / "img", "--emulator"}), ferry_test::emu_env(),
                        60);
    CHECK(r.exit_code == 78);
    CHECK(r.err == "ferry: cannot restore the job of " + t / "img" + " here: this ferry restore's fd 3 is open for "
                       "reading only, and the job writes to it (file, " + t / "log1" + " at the dump); start ferry "
                       "restore with fd 3 open for writing (e.g. 3>>LOG). Nothing was started; the image is untouched\n");
    // Its stdout too: both named.
    r = ferry_test::run(with_fd3("3<" + t / "log1 1<" + t / "log1", {kFerry, "restore", t / "img", "--emulator"}),
                        ferry_test::emu_env(), 60);
    CHECK(r.exit_code == 78);
    CHECK(r.err.starts_with("ferry: cannot restore the job of " + t / "img" + " here: this ferry restore's fd 1 is "
                            "open for reading only, and the job writes to it ("));
    CHECK(r.err.ends_with(" at the dump); this ferry restore's fd 3 is open for reading only, and the job writes to "
                          "it (file, " + t / "log1" + " at the dump); start ferry restore with them open as the job "
                          "had them. Nothing was started; the image is untouched\n"));

    r = ferry_test::run(with_fd3("3>>" + t / "log2", {kFerry, "restore", t / "img", "--emulator"}),
                        ferry_test::emu_env(), 120);
    INFO(r.err << criu_log_named_in(r.err));
    REQUIRE(r.exit_code == 0);
    // Each step once: those before the dump in the launcher's log, the rest in the
    // restorer's; the job's stdout likewise.
    CHECK(ferry_test::read_file(t / "log1") + ferry_test::read_file(t / "log2") == ticks);
    CHECK(gone.out + r.out == steps);
  }
  SECTION("restored by a ferry whose stdout is closed: the job's goes to /dev/null, its fd 3 to the restorer's") {
    ferry_test::Child c(with_fd3("3>>" + t / "log1", job(prog, {"--preserve-fds", "1"}, kind)), ferry_test::emu_env());
    REQUIRE(c.wait_for("step " + std::to_string(random_step(2, 30)) + "\n"));
    dump(c.pid(), t / "img");
    CHECK(c.finish().exit_code == 128 + SIGKILL);
    auto r = ferry_test::run(with_fd3("3>>" + t / "log2 1>&-", {kFerry, "restore", t / "img", "--emulator"}),
                             ferry_test::emu_env(), 120);
    INFO(r.err << criu_log_named_in(r.err));
    REQUIRE(r.exit_code == 0);
    CHECK(r.out.empty());
    CHECK(ferry_test::read_file(t / "log1") + ferry_test::read_file(t / "log2") == ticks);
  }
  SECTION("fd 3 the same pipe as stdout (3>&1): a restore needs nothing more than its stdout") {
    ferry_test::Child c(with_fd3("3>&1", job(prog, {"--preserve-fds", "1"}, kind)), ferry_test::emu_env());
    REQUIRE(c.wait_for("step " + std::to_string(random_step(2, 30)) + "\n"));
    dump(c.pid(), t / "img");
    auto gone = c.finish();
    CHECK(gone.exit_code == 128 + SIGKILL);
    // The restorer's stdout stands in for both: open for reading only, it is refused.
    std::ofstream(t / "empty").flush();
    auto ro = ferry_test::run(with_fd3("1<" + t / "empty", {kFerry, "restore", t / "img", "--emulator"}),
                              ferry_test::emu_env(), 60);
    INFO(ro.err);
    CHECK(ro.exit_code == 78);
    CHECK(ro.err.starts_with("ferry: cannot restore the job of " + t / "img" + " here: this ferry restore's fd 1 is "
                             "open for reading only, and the job writes to it (file, /"));  // the test's file
    CHECK(ro.err.ends_with(" at the dump, as its fds 1 and 3); start ferry restore with fd 1 open for writing (e.g. "
                           "1>>LOG). Nothing was started; the image is untouched\n"));
    auto r = restore(t / "img", {"--emulator"});
    INFO(r.err);
    REQUIRE(r.exit_code == 0);
    // Ticks and steps interleaved, each once, in order.
    std::string both;
    for (int i = 0; i < 60; i++) both += "tick " + std::to_string(i) + "\nstep " + std::to_string(i) + "\n";
    CHECK(gone.out + r.out == both);
  }
  SECTION("ferry run told to keep a descriptor that is not open") {
    auto r = ferry_test::run(with_fd3("3>>" + t / "log1 4>&-", job(prog, {"--preserve-fds", "2"}, kind)),
                             ferry_test::emu_env(), 60);
    CHECK(r.exit_code == 64);
    CHECK(r.err == "ferry run: --preserve-fds 2: fd 4 is not open (the job gets fds 3 to 4 from whoever starts ferry "
                   "run, e.g. 3>>LOG)\n");
    CHECK(r.out.empty());
    CHECK((!fs::exists(t / "log1") || fs::file_size(t / "log1") == 0));
  }
}

TEST_CASE("restored on machines with another number of GPUs: a two-GPU job on one GPU, the trainer on a third GPU",
          "[process-image][criu]") {
  REQUIRE(geteuid() == 0);
  ferry_test::TempDir t("ferry-pimg");
  SECTION("the launcher's two workers, dumped on two GPUs, share the one GPU of the target") {
    auto plain = ferry_test::run({kLauncher, "2", kMlp, "--steps", "80"}, ferry_test::emu_env(), 120);
    REQUIRE(plain.exit_code == 0);
    ferry_test::Child c(job({kLauncher, "2", kMlp, "--steps", "80", "--step-delay-ms", "20"}), ferry_test::emu_env());
    REQUIRE(c.wait_for("[worker 1] step " + std::to_string(random_step(3, 25)) + " loss"));
    dump(c.pid(), t / "img");
    CHECK(c.finish().exit_code == 128 + SIGKILL);
    const std::map<std::string, std::string> one_gpu = {{"FERRY_EMU_DEVICES", "1"}};
    // Where the image's GPUs are not all there, nothing starts unless told where to go.
    auto refused = restore_text(t / "img", {}, one_gpu);
    CHECK(refused.exit_code == 78);
    CHECK(refused.err.find(" held memory on GPU 1 (") != std::string::npos);
    CHECK(refused.err.find("); this machine has 1 GPU(s) and none left to take its place (choose with --device or "
                           "--device-map). Nothing was started; the image is untouched") != std::string::npos);
    auto r = restore(t / "img", {"--device", "0"}, one_gpu);
    INFO(r.err);
    REQUIRE(r.exit_code == 0);
    auto want = checksums(plain.out, "weights checksum"), got = checksums(r.out, "weights checksum");
    REQUIRE(want.size() == 2);
    std::sort(want.begin(), want.end());
    std::sort(got.begin(), got.end());
    CHECK(got == want);
    auto rep = report_of(r);
    REQUIRE(rep["processes"].size() == 2);
    for (auto& p : rep["processes"]) {
      CHECK(p["status"]["devices"].size() == 2);  // each worker still sees its two devices
      CHECK(p["status"]["memory_by_gpu"].contains("0"));
      CHECK(p["status"]["memory_by_gpu"].size() == 1);
    }
  }
  SECTION("the trainer, dumped on a two-GPU machine, comes back on GPU 2 of a three-GPU one") {
    auto plain = ferry_test::run({kMlp, "--steps", "100"}, ferry_test::emu_env(), 120);
    REQUIRE(plain.exit_code == 0);
    ferry_test::Child c(job({kMlp, "--steps", "100", "--step-delay-ms", "20"}), ferry_test::emu_env());
    REQUIRE(c.wait_for("step " + std::to_string(random_step(2, 40)) + " loss"));
    dump(c.pid(), t / "img");
    CHECK(c.finish().exit_code == 128 + SIGKILL);
    const std::string third = "0123456789abcdef0123456789abcd22";
    auto r = restore(t / "img", {"--device", "2"}, {{"FERRY_EMU_DEVICES", "3"}, {"FERRY_EMU_DEVICE2", "uuid=" + third}});
    INFO(r.err);
    REQUIRE(r.exit_code == 0);
    CHECK(checksums(r.out) == checksums(plain.out));
    CHECK(!checksums(plain.out).empty());
    // The driver swapped the third GPU in for the one the trainer held memory on (whether a
    // real driver would show the process a third GPU is not known; it need not).
    auto st = report_of(r)["processes"][0]["status"];
    CHECK(held_uuid(st) == third);
    CHECK(st["devices"].size() == 2);  // the program still sees its two devices
  }
}

TEST_CASE("three dumps in a chain with --parent and --leave-running: unchanged GPU memory is referenced, not written; "
          "the last image stands alone, and restores bit-identical with the first two removed",
          "[process-image][criu]") {
  REQUIRE(geteuid() == 0);
  ferry_test::TempDir t("ferry-pimg");
  std::vector<std::string> prog = {kMlp, "--steps", "150", "--ballast-mb", "24"};
  auto plain = ferry_test::run(prog, ferry_test::emu_env(), 120);
  REQUIRE(plain.exit_code == 0);
  auto paced = prog;
  paced.insert(paced.end(), {"--step-delay-ms", "20"});
  ferry_test::Child c(job(paced), ferry_test::emu_env());
  REQUIRE(c.wait_for("step 5 loss"));
  auto d1 = dump(c.pid(), t / "d1", {"--leave-running"});
  REQUIRE(c.wait_for("step 20 loss"));
  auto d2 = dump(c.pid(), t / "d2", {"--leave-running", "--parent", t / "d1"});
  REQUIRE(c.wait_for("step 35 loss"));
  auto d3 = dump(c.pid(), t / "d3", {"--leave-running", "--parent", t / "d2"});
  uint64_t total = d1["stats"]["gpu_device_bytes"].get<uint64_t>();
  CHECK(total >= 24ull << 20);
  CHECK(d1["stats"]["gpu_bytes_written"].get<uint64_t>() >= 24ull << 20);
  // The ballast never changes: the later dumps write only what training touched.
  for (auto* d : {&d2, &d3}) {
    INFO((*d).dump());
    CHECK((*d)["stats"]["gpu_bytes_written"].get<uint64_t>() < total / 4);
    CHECK((*d)["stats"]["gpu_bytes_reused"].get<uint64_t>() >= 24ull << 20);
    CHECK((*d)["left_running"] == true);
  }
  // The job went on all along and ends as an uninterrupted run.
  auto done = c.finish();
  CHECK(done.exit_code == 0);
  CHECK(checksums(done.out) == checksums(plain.out));
  // The third image, whose chunks were written partly by the first two, restores the job
  // at step 35 on its own: it holds them (linked or copied).
  fs::remove_all(t / "d1");
  fs::remove_all(t / "d2");
  auto r = restore(t / "d3", {"--device", "1"});
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(checksums(r.out) == checksums(plain.out));
  // It goes on from where the third dump caught it (the job ran on while the dump began),
  // each step's loss that of the uninterrupted run.
  auto resumed = ferry_test::lines_with(r.out, " loss ");
  REQUIRE(!resumed.empty());
  int first = std::stoi(resumed.front().substr(5));
  CHECK(first >= 36);
  CHECK(first <= 60);
  auto all = ferry_test::lines_with(plain.out, " loss ");
  REQUIRE(all.size() >= resumed.size());
  CHECK(std::vector<std::string>(all.end() - static_cast<long>(resumed.size()), all.end()) == resumed);
}

TEST_CASE("a scheduler's TERM to ferry run --on-signal TERM=dump:DIR leaves a whole-process image and exit 0; the job "
          "restored from it ends bit-identical",
          "[process-image][criu]") {
  REQUIRE(geteuid() == 0);
  ferry_test::TempDir t("ferry-pimg");
  auto plain = ferry_test::run({kMlp, "--steps", "100"}, ferry_test::emu_env(), 120);
  ferry_test::Child c(job({kMlp, "--steps", "100", "--step-delay-ms", "20"}, {"--on-signal", "TERM=dump:" + (t / "pre")}),
                      ferry_test::emu_env());
  REQUIRE(c.wait_for("step " + std::to_string(random_step(2, 30)) + " loss"));
  kill(c.pid(), SIGTERM);
  auto done = c.finish();
  INFO(done.err);
  CHECK(done.exit_code == 0);
  CHECK(done.err.find("dumping the job to " + (t / "pre")) != std::string::npos);
  // Its summary on ferry's stderr: the job's stdout holds the job's output only.
  CHECK(done.err.find("\nferry: dumped job ") != std::string::npos);
  CHECK(done.out.find("dumped job") == std::string::npos);
  REQUIRE(fs::exists(t / "pre/process.json"));
  auto r = restore(t / "pre");
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(checksums(r.out) == checksums(plain.out));
}

TEST_CASE("preempted again and again: the restored job's TERM dumps it over the image it came from (ferry restore DIR "
          "--on-signal TERM=dump:DIR, the Slurm recipe), four times (once while it is being restored; twice with "
          "--incremental, writing only what changed), in and out of a PID namespace; it ends bit-identical",
          "[process-image][criu]") {
  REQUIRE(geteuid() == 0);
  // With the host's pids too: each restore needs the pids the dump before it freed.
  const std::string kind = GENERATE(as<std::string>{}, "--pid-namespace", "--host-pids");
  INFO("the job run with " << kind);
  ferry_test::TempDir t("ferry-pimg");
  const std::string img = t / "ckpt";
  auto plain = ferry_test::run({kMlp, "--steps", "150", "--ballast-mb", "16"}, ferry_test::emu_env(), 120);
  REQUIRE(!checksums(plain.out).empty());
  auto last_step = [](const std::string& out) {
    auto lines = ferry_test::lines_with(out, " loss ");
    return lines.empty() ? 0 : std::stoi(lines.back().substr(5));
  };
  ferry_test::Child c(job({kMlp, "--steps", "150", "--ballast-mb", "16", "--step-delay-ms", "20"},
                          {"--on-signal", "TERM=dump:" + img}, kind),
                      ferry_test::emu_env());
  REQUIRE(c.wait_for("step " + std::to_string(random_step(2, 20)) + " loss"));
  kill(c.pid(), SIGTERM);
  auto first = c.finish();
  INFO(first.err);
  REQUIRE(first.exit_code == 0);
  int step = last_step(c.out());
  std::string seen = c.out();  // every loss line, in the order the job printed them
  // The third time, the signal comes while CRIU is still restoring the job: it is
  // dumped once it runs again, and ferry restore exits 0 as for any other preemption.
  for (int round = 1; round <= 3; round++) {
    const bool early = round == 3;
    // The second round's dump is a full one; the others take the image they replace as
    // their parent, and the 16 MiB ballast, unchanged, is not written again.
    const bool incremental = round != 2;
    INFO("round " << round << ", the job dumped after step " << step << (early ? "; TERM during the restore" : "")
                  << (incremental ? "; --incremental" : ""));
    std::vector<std::string> cmd = {kFerry, "restore", img, "--on-signal", "TERM=dump:" + img};
    if (incremental) cmd.push_back("--incremental");
    ferry_test::Child r(cmd, ferry_test::emu_env());
    if (early) {
      bool criu = false;
      for (int i = 0; i < 5000 && !criu; i++)
        if (!(criu = !criu_work_of(r.pid()).empty())) usleep(1000);
      REQUIRE(criu);
    } else {
      REQUIRE(r.wait_for("step " + std::to_string(step + random_step(3, 15)) + " loss"));
    }
    kill(r.pid(), SIGTERM);
    auto done = r.finish();
    INFO(done.err);
    REQUIRE(done.exit_code == 0);
    CHECK(done.err.find("dumping the job to " + img) != std::string::npos);
    if (early) CHECK(done.err.find("ferry: TERM came during the restore; the job is dumped now that it runs") !=
                     std::string::npos);
    // It went on from the step after the dump, as the uninterrupted run did.
    auto lines = ferry_test::lines_with(r.out(), " loss ");
    if (!early || !lines.empty())
      CHECK(lines.at(0) == ferry_test::lines_with(plain.out, " loss ").at(static_cast<size_t>(step)));
    if (!lines.empty()) step = last_step(r.out());
    seen += r.out();
    CHECK(!fs::exists(img + ".partial"));
    auto m = nlohmann::json::parse(std::ifstream(img + "/process.json"));
    auto& st = m["stats"];
    INFO(m.dump());
    uint64_t total = st["gpu_device_bytes"].get<uint64_t>();
    CHECK(total >= 16ull << 20);
    if (incremental) {
      CHECK(m["parent"] == img);
      CHECK(st["gpu_bytes_reused"].get<uint64_t>() >= 16ull << 20);
      CHECK(st["gpu_bytes_carried"] == 0);  // the ballast is most of its pack: linked, not copied
      CHECK(st["gpu_bytes_written"].get<uint64_t>() < total / 2);
    } else {
      CHECK(m["parent"] == "");
      CHECK(st["gpu_bytes_written"].get<uint64_t>() >= 16ull << 20);
    }
  }
  auto r = restore(img);
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  seen += r.out;
  CHECK(checksums(r.out) == checksums(plain.out));
  CHECK(ferry_test::lines_with(seen, " loss ") == ferry_test::lines_with(plain.out, " loss "));  // each step once
}

TEST_CASE("an --incremental preemption whose image was damaged, removed or replaced by a newer ferry's since the "
          "restore dumps the whole job instead, saying so; the job ends bit-identical",
          "[process-image][criu]") {
  REQUIRE(geteuid() == 0);
  ferry_test::TempDir t("ferry-pimg");
  const std::string img = t / "ckpt", next = t / "next";
  std::vector<std::string> prog = {kMlp, "--steps", "120", "--ballast-mb", "8"};
  auto plain = ferry_test::run(prog, ferry_test::emu_env(), 120);
  REQUIRE(!checksums(plain.out).empty());
  auto paced = prog;
  paced.insert(paced.end(), {"--step-delay-ms", "20"});
  ferry_test::Child c(job(paced), ferry_test::emu_env());
  REQUIRE(c.wait_for("step 5 loss"));
  dump(c.pid(), img);
  c.finish();
  const int what = GENERATE(0, 1, 2);
  const bool removed = what == 1, newer = what == 2;
  INFO((removed ? "the image removed" : newer ? "a newer ferry's" : "its packs truncated"));
  ferry_test::Child r({kFerry, "restore", img, "--on-signal", "TERM=dump:" + next, "--incremental"},
                      ferry_test::emu_env());
  REQUIRE(r.wait_for("step 20 loss"));
  if (removed) {
    fs::remove_all(img);
  } else if (newer) {
    auto m = nlohmann::json::parse(ferry_test::read_file(img + "/process.json"));
    m["version"] = 99;
    std::ofstream(img + "/process.json") << m.dump();
  } else {
    for (auto& e : fs::recursive_directory_iterator(img))
      if (e.path().extension() == ".pack") fs::resize_file(e.path(), 16);  // the pack header alone
  }
  kill(r.pid(), SIGTERM);
  auto done = r.finish();
  INFO(done.err);
  REQUIRE(done.exit_code == 0);
  CHECK(done.err.find(removed ? "ferry: " + img + ", restored from, is gone: the whole job is dumped, not only what "
                                                  "changed\n"
                      : newer ? "ferry: the dump building on " + img + " failed (above): the whole job is dumped "
                                                                       "instead\n"
                              : "ferry: " + img + ", restored from, is damaged: the whole job is dumped instead\n") !=
        std::string::npos);
  auto m = nlohmann::json::parse(std::ifstream(next + "/process.json"));
  CHECK(m["parent"] == "");
  CHECK(m["stats"]["gpu_bytes_written"].get<uint64_t>() >= 8ull << 20);
  CHECK(!fs::exists(next + ".partial"));
  auto back = restore(next);
  INFO(back.err);
  REQUIRE(back.exit_code == 0);
  CHECK(checksums(back.out) == checksums(plain.out));
}

TEST_CASE("an --incremental preemption refused for a reason not its parent's is not tried again as a whole dump: the "
          "refusal is said once and the job gets the signal",
          "[process-image][criu]") {
  REQUIRE(geteuid() == 0);
  ferry_test::TempDir t("ferry-pimg");
  const std::string img = t / "ckpt";
  ferry_test::Child c(job({kMlp, "--steps", "400", "--step-delay-ms", "20"}), ferry_test::emu_env());
  REQUIRE(c.wait_for("step 3 loss"));
  dump(c.pid(), img);
  c.finish();
  ferry_test::Child r({kFerry, "restore", img, "--on-signal", "TERM=dump:" + (t / "next"), "--incremental"},
                      ferry_test::emu_env());
  REQUIRE(r.wait_for("step 10 loss"));
  // The trainer stopped (a debugger, a stray SIGSTOP): nothing about the image restored from.
  const pid_t prog = program_of(r.pid());
  stop_and_wait(prog);
  kill(r.pid(), SIGTERM);
  const std::string refusal = "ferry: process " + std::to_string(prog) + " is stopped (by a signal or a debugger)";
  for (int i = 0; i < 600 && r.err().find(refusal) == std::string::npos; i++) usleep(50000);
  kill(prog, SIGCONT);  // the TERM passed on can end it now
  auto done = r.finish();
  INFO(done.err);
  CHECK(done.exit_code == 128 + SIGTERM);  // the job got the TERM, as without an action
  auto at = done.err.find(refusal);
  REQUIRE(at != std::string::npos);
  CHECK(done.err.find(refusal, at + 1) == std::string::npos);
  CHECK(done.err.find("dumped instead") == std::string::npos);
  CHECK(!fs::exists(t / "next"));
  CHECK(!fs::exists(t / "next.partial"));
}

TEST_CASE("an --on-signal dump that could not work here -- no directory to write it in, no CRIU, a failing criu "
          "check -- is refused as "
          "ferry run or ferry restore starts, not when the signal comes",
          "[process-image][criu]") {
  REQUIRE(geteuid() == 0);
  ferry_test::TempDir t("ferry-pimg");
  const std::string blocker = t / "a-file";
  std::ofstream(blocker) << "not a directory\n";
  const std::string fix = "run scripts/setup.sh as root (it builds CRIU 4.2.1) or set FERRY_CRIU to a CRIU >= 4.2";
  const std::string failing = ferry_test::fake_criu(t.path, "4.2.1", "Error (criu/cr-check.c:1): no ptrace here", 1);
  for (const char* verb : {"run", "restore"}) {
    INFO("ferry " << verb);
    auto start = [&](const std::string& rule, std::map<std::string, std::string> env = {}) {
      std::vector<std::string> argv = {kFerry, verb};
      if (std::string(verb) == "run")
        argv.insert(argv.end(), {"--emulator", "--pid-namespace", "--on-signal", rule, "--", "touch", t / "ran"});
      else
        argv.insert(argv.end(), {t / "no-image", "--on-signal", rule});
      return ferry_test::run(argv, ferry_test::emu_env(env), 60);
    };
    auto r = start("TERM=dump:" + blocker + "/next");
    CHECK(r.exit_code == 78);
    CHECK(r.err == "ferry " + std::string(verb) + ": --on-signal TERM=dump:" + blocker + "/next: the dump could not "
                   "work: " + blocker + " is not a directory\n");
    r = start("TERM=dump:" + (t / "deep/er/img"), {{"FERRY_CRIU", t / "nowhere/criu"}});
    CHECK(r.exit_code == 78);
    CHECK(r.err == "ferry " + std::string(verb) + ": --on-signal TERM=dump:" + (t / "deep/er/img") + ": the dump "
                   "could not work: CRIU not found: " + (t / "nowhere/criu") + " is not an executable; " + fix + "\n");
    r = start("TERM=dump:" + (t / "img"), {{"FERRY_CRIU", failing}});
    CHECK(r.exit_code == 78);
    CHECK(r.err == "ferry " + std::string(verb) + ": --on-signal TERM=dump:" + (t / "img") + ": the dump could not "
                   "work: '" + failing + " check' failed on this kernel: Error (criu/cr-check.c:1): no ptrace here; " +
                   fix + "\n");
    CHECK(!fs::exists(t / "ran"));
    CHECK(!fs::exists(t / "deep"));
  }
  // A directory to be made below one that can be written in is fine (the dump makes it).
  auto ok = ferry_test::run({kFerry, "run", "--emulator", "--pid-namespace", "--on-signal",
                             "TERM=dump:" + (t / "deep/er/img"), "--", "touch", t / "ran"},
                            ferry_test::emu_env(), 60);
  CHECK(ok.exit_code == 0);
  CHECK(fs::exists(t / "ran"));
}

TEST_CASE("dump refusals leave the job running on its GPUs and nothing written", "[process-image][criu]") {
  REQUIRE(geteuid() == 0);
  ferry_test::TempDir t("ferry-pimg");
  auto plain = ferry_test::run({kMlp, "--steps", "150"}, ferry_test::emu_env(), 120);
  ferry_test::Child c(job({kMlp, "--steps", "150", "--step-delay-ms", "20"}), ferry_test::emu_env());
  REQUIRE(c.wait_for("step 3 loss"));
  auto try_dump = [&](std::map<std::string, std::string> env) {
    return ferry_test::run({kFerry, "dump", std::to_string(c.pid()), t / "img"}, ferry_test::emu_env(env), 180);
  };
  SECTION("no CRIU") {
    auto r = try_dump({{"FERRY_CRIU", t / "nowhere/criu"}});
    CHECK(r.exit_code == 78);
    CHECK(r.err == "ferry: CRIU not found: " + (t / "nowhere/criu") +
                       " is not an executable; run scripts/setup.sh as root (it builds CRIU 4.2.1) or set FERRY_CRIU "
                       "to a CRIU >= 4.2 (ferry check says more)\n");
  }
  SECTION("its program stopped (SIGSTOP): refused at once, naming it, not after a wait for its answer") {
    pid_t prog = program_of(c.pid());
    stop_and_wait(prog);
    auto r = try_dump({});
    kill(prog, SIGCONT);
    CHECK(r.exit_code == 78);
    CHECK(r.err == "ferry: process " + std::to_string(prog) +
                       " is stopped (by a signal or a debugger): its GPU state cannot be taken while it is; continue "
                       "it (kill -CONT " + std::to_string(prog) + ") and dump again. Nothing was done; the job is as "
                       "it was\n");
  }
  SECTION("CRIU killed while it dumps (the OOM killer, say): said so, not left to its log") {
    const std::string wrapper = criu_wrapper(t / "criu", "kill -KILL $$\n");
    auto r = try_dump({{"FERRY_CRIU", wrapper}});
    CHECK(r.exit_code == 78);
    CHECK(r.err == "ferry: dump failed: criu dump failed (exit -1): CRIU was killed by SIGKILL; the job goes on running "
                   "on its GPUs, nothing was written\n");
    CHECK(!fs::exists(t / "img.dump.log"));
  }
  SECTION("a parent written by an older ferry, reading chunks from the directory this dump would replace") {
    dump(c.pid(), t / "old-base", {"--leave-running"});
    // The older form of a child: the same image, its GPU chunks read by relative path
    // from old-base's packs.
    fs::copy(t / "old-base", t / "old-child", fs::copy_options::recursive);
    std::string holder;
    for (auto& e : fs::directory_iterator(t / "old-child/gpu")) {
      fs::remove_all(e.path() / "packs");
      fs::create_directory(e.path() / "packs");
      auto j = nlohmann::json::parse(std::ifstream(e.path() / "manifest.json"));
      for (auto& [k, loc] : j["chunks"].items()) loc["image"] = "../../../old-base/gpu/" + e.path().filename().string();
      std::ofstream(e.path() / "manifest.json") << j.dump();
      holder = t / ("old-base/gpu/" + e.path().filename().string());
    }
    REQUIRE(!holder.empty());
    REQUIRE(ferry_test::run({kFerry, "verify", t / "old-child"}, ferry_test::emu_env(), 60).exit_code == 0);
    auto r = ferry_test::run({kFerry, "dump", std::to_string(c.pid()), t / "old-base", "--parent", t / "old-child"},
                             ferry_test::emu_env(), 180);
    CHECK(r.exit_code == 78);
    CHECK(r.err == "ferry: --parent " + (t / "old-child") + " (written by an older ferry) reads chunks from " + holder +
                       ", which this dump would replace; dump into another directory\n");
    CHECK(ferry_test::run({kFerry, "verify", t / "old-child"}, ferry_test::emu_env(), 60).exit_code == 0);
    // Into another directory it is a parent like any other; the new image stands alone.
    dump(c.pid(), t / "new", {"--leave-running", "--parent", t / "old-child"});
    fs::remove_all(t / "old-base");
    fs::remove_all(t / "old-child");
    CHECK(ferry_test::run({kFerry, "verify", t / "new"}, ferry_test::emu_env(), 60).exit_code == 0);
  }
  SECTION("a CRIU the kernel cannot execute (its interpreter missing): said so") {
    const std::string bad = script_at(t / "criu", "#!/nonexistent/sh\n");
    auto r = try_dump({{"FERRY_CRIU", bad}});
    CHECK(r.exit_code == 78);
    CHECK(r.err == "ferry: dump failed: criu dump failed (exit -1): CRIU was not started: cannot execute " + bad +
                       ": No such file or directory; the job goes on running on its GPUs, nothing was written\n");
  }
  // A disk (tmpfs) that holds less than the image: the GPU half (2 MiB) does not fit
  // in 1 MiB; in 3 MiB it does, and CRIU runs out of space after it.
  for (const char* size : {"size=1m", "size=3m"}) {
    DYNAMIC_SECTION("a full disk, " << size) {
      fs::create_directories(t / "small");
      REQUIRE(mount("tmpfs", (t / "small").c_str(), "tmpfs", 0, size) == 0);
      auto r = ferry_test::run({kFerry, "dump", std::to_string(c.pid()), t / "small/img"}, ferry_test::emu_env(), 180);
      INFO(r.err);
      CHECK(r.exit_code == 78);
      CHECK(r.err.find(std::string(size) == "size=1m" ? "no space left on the device" : "criu dump failed") !=
            std::string::npos);
      CHECK(r.err.find("the job goes on running on its GPUs, nothing was written") != std::string::npos);
      CHECK(!fs::exists(t / "small/img"));
      CHECK(!fs::exists(t / "small/img.partial"));
      umount2((t / "small").c_str(), MNT_DETACH);
    }
  }
  // Connections to outside the job: refused by name before anything stops.
  for (const char* kind : {"TCP", "Unix"}) {
    DYNAMIC_SECTION("a " << kind << " connection to outside the job, which CRIU cannot dump") {
      c.finish();  // this section runs its own job: a launcher holding a connection
      bool tcp = std::string(kind) == "TCP";
      int ls = socket(tcp ? AF_INET : AF_UNIX, SOCK_STREAM, 0);
      std::string to, peer_name;
      if (tcp) {
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        REQUIRE(bind(ls, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
        socklen_t len = sizeof a;
        getsockname(ls, reinterpret_cast<sockaddr*>(&a), &len);
        to = std::to_string(ntohs(a.sin_port));
        peer_name = "127.0.0.1:" + to + " to outside the job: CRIU cannot dump it without its peer";
      } else {
        sockaddr_un a{};
        a.sun_family = AF_UNIX;
        to = t / "daemon.sock";
        snprintf(a.sun_path, sizeof a.sun_path, "%s", to.c_str());
        REQUIRE(bind(ls, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
        peer_name = "is connected to a Unix socket outside the job (" + to + "): CRIU cannot dump it without its peer";
      }
      listen(ls, 4);
      auto plain1 = ferry_test::run({kLauncher, "1", kMlp, "--steps", "100"}, ferry_test::emu_env(), 120);
      ferry_test::Child j(job({kLauncher, "--connect", to, "1", kMlp, "--steps", "100", "--step-delay-ms", "20"}),
                          ferry_test::emu_env());
      int peer = accept(ls, nullptr, nullptr);  // established, not in flight
      REQUIRE(peer >= 0);
      REQUIRE(j.wait_for("step 3 loss"));
      // ferry check PID names it before anyone tries.
      pid_t launcher = children_of(children_of(j.pid()).at(0)).at(0);
      pid_t worker = children_of(launcher).at(0);
      auto chk = ferry_test::run({kFerry, "check", std::to_string(worker), "--format", "json"}, ferry_test::emu_env(), 60);
      auto fp = nlohmann::json::parse(chk.out)["full_process"];
      INFO(fp.dump());
      CHECK(fp["dumpable"] == false);
      REQUIRE(fp["problems"].size() == 2);  // the worker inherited the launcher's socket
      std::string l0 = fp["problems"][0], l1 = fp["problems"][1];
      if (l0.find("(launcher,") == std::string::npos) std::swap(l0, l1);
      CHECK(l0.rfind("process " + std::to_string(launcher) + " (launcher, fd ", 0) == 0);
      CHECK(l1.rfind("process " + std::to_string(worker) + " (mlp_trainer, fd ", 0) == 0);
      for (auto& p : {l0, l1}) {
        CHECK(p.find(peer_name) != std::string::npos);
        CHECK(p.find("; close it before a dump") != std::string::npos);
      }
      auto r = ferry_test::run({kFerry, "dump", std::to_string(j.pid()), t / "img"}, ferry_test::emu_env(), 180);
      INFO(r.err);
      CHECK(r.exit_code == 78);
      CHECK(r.err.rfind("ferry: cannot dump job " + std::to_string(children_of(j.pid()).at(0)) + ": process ", 0) == 0);
      CHECK(r.err.find(peer_name) != std::string::npos);
      CHECK(r.err.find(". Nothing was done; the job goes on running\n") != std::string::npos);
      CHECK(!fs::exists(t / "img"));
      CHECK(!fs::exists(t / "img.partial"));
      auto done = j.finish();
      CHECK(done.exit_code == 0);
      CHECK(checksums(done.out, "weights checksum") == checksums(plain1.out, "weights checksum"));
      close(peer);
      close(ls);
      return;
    }
  }
  // What ferry does not know CRIU refuses by itself, once the GPU state is released:
  // here a deleted file larger than the ghost limit. Everything is rolled back.
  SECTION("something CRIU refuses on its own: its error, its log kept, the job back on its GPUs") {
    c.finish();
    std::string ghost = t / "ghost";
    ferry_test::Child j(job({"/bin/sh", "-c",
                             "exec 3<>" + ghost + "; rm " + ghost + "; head -c 2097152 /dev/zero >&3; exec " + kMlp +
                                 " --steps 150 --step-delay-ms 20"}),
                        ferry_test::emu_env());
    REQUIRE(j.wait_for("step 3 loss"));
    auto r = ferry_test::run({kFerry, "dump", std::to_string(j.pid()), t / "img", "--ghost-limit", "1m"},
                             ferry_test::emu_env(), 180);
    INFO(r.err);
    CHECK(r.exit_code == 78);
    CHECK(r.err.find("ferry: dump failed: criu dump failed (exit 1): ") == 0);
    CHECK(r.err.find("Can't dump ghost file " + ghost + " of 2097152 size") != std::string::npos);
    CHECK(r.err.find("(a file the job holds open was deleted; --ghost-limit lets larger ones into the image)") !=
          std::string::npos);
    CHECK(r.err.find("Dumping FAILED. (whole log: " + (t / "img.dump.log") + ")") != std::string::npos);
    CHECK(fs::exists(t / "img.dump.log"));
    CHECK(r.err.find("the job goes on running on its GPUs, nothing was written") != std::string::npos);
    CHECK(!fs::exists(t / "img"));
    CHECK(!fs::exists(t / "img.partial"));
    // ferry's default limit (1 GiB) takes it in: dumped, restored, the file's bytes there.
    auto d = ferry_test::run({kFerry, "dump", std::to_string(j.pid()), t / "img"}, ferry_test::emu_env(), 180);
    INFO(d.err);
    REQUIRE(d.exit_code == 0);
    CHECK(j.finish().exit_code == 128 + SIGKILL);
    auto rr = restore(t / "img");
    INFO(rr.err);
    CHECK(rr.exit_code == 0);
    CHECK(checksums(j.out() + rr.out) == checksums(plain.out));
    return;
  }
  CHECK(!fs::exists(t / "img"));
  CHECK(!fs::exists(t / "img.partial"));
  auto done = c.finish();
  CHECK(done.exit_code == 0);
  CHECK(checksums(done.out) == checksums(plain.out));
}

TEST_CASE("one image directory, two ferrys: a second dump to it waits for the first, a restore from it waits for a "
          "dump to it -- each gets a whole image, and the lock file goes with the last",
          "[process-image][criu]") {
  REQUIRE(geteuid() == 0);
  ferry_test::TempDir t("ferry-pimg");
  auto plain = ferry_test::run({kMlp, "--steps", "100"}, ferry_test::emu_env(), 120);
  REQUIRE(plain.exit_code == 0);
  const std::vector<std::string> trainer = {kMlp, "--steps", "100", "--step-delay-ms", "20"};
  // CRIU as ferry runs it, but a dump says it has begun and takes a second longer: long
  // enough for the other ferry to come while it holds the directory.
  const std::string began = t / "dump-began";
  const std::string wrapper = criu_wrapper(t / "criu", "touch " + began + "\nsleep 1\nexec \"$real\" \"$@\"\n");
  auto slow = ferry_test::emu_env({{"FERRY_CRIU", wrapper}});
  auto wait_began = [&] {
    for (int i = 0; i < 3000 && !fs::exists(began); i++) usleep(10000);
    REQUIRE(fs::exists(began));
  };
  const std::string waiting = "ferry: waiting for another ferry's dump to";
  // In a directory not made yet, as a scheduler's per-job path is: the dump makes it.
  const std::string img = t / "ckpt/job/img";

  SECTION("two jobs dumped to one directory at once (copies preempted into the image they came from)") {
    ferry_test::Child one(job(trainer), ferry_test::emu_env()), two(job(trainer), ferry_test::emu_env());
    REQUIRE(one.wait_for("step 3 loss"));
    REQUIRE(two.wait_for("step 3 loss"));
    ferry_test::Child first({kFerry, "dump", std::to_string(one.pid()), img}, slow);
    wait_began();
    auto second = ferry_test::run({kFerry, "dump", std::to_string(two.pid()), img}, ferry_test::emu_env(), 180);
    auto f = first.finish();
    INFO(f.err << second.err);
    CHECK(f.exit_code == 0);
    CHECK(second.exit_code == 0);
    CHECK(second.err.find(waiting + " or restore from " + img + "\n") != std::string::npos);
    auto gone = two.finish();
    CHECK(gone.exit_code == 128 + SIGKILL);
    CHECK(one.finish().exit_code == 128 + SIGKILL);
    // The image is the second dump's, whole: its job goes on from where it was dumped.
    CHECK(ferry_test::run({kFerry, "verify", img}, {}, 60).exit_code == 0);
    auto r = restore(img);
    INFO(r.err);
    REQUIRE(r.exit_code == 0);
    CHECK(gone.out + r.out == plain.out);
  }
  SECTION("a restore from a directory a dump is writing (a copy restored while another is preempted into it)") {
    ferry_test::Child c(job(trainer), ferry_test::emu_env());
    REQUIRE(c.wait_for("step 2 loss"));
    dump(c.pid(), img, {"--leave-running"});  // an older image there
    REQUIRE(c.wait_for("step " + std::to_string(random_step(4, 40)) + " loss"));
    ferry_test::Child d({kFerry, "dump", std::to_string(c.pid()), img}, slow);
    wait_began();
    auto r = ferry_test::run({kFerry, "restore", img}, ferry_test::emu_env(), 240);
    auto dd = d.finish();
    INFO(dd.err << r.err << criu_log_named_in(r.err));
    CHECK(dd.exit_code == 0);
    REQUIRE(r.exit_code == 0);
    CHECK(r.err.find(waiting + " " + img + "\n") != std::string::npos);
    // It restored the dump it waited for, not the older image it found: every step once.
    auto gone = c.finish();
    CHECK(gone.exit_code == 128 + SIGKILL);
    CHECK(gone.out + r.out == plain.out);
  }
  CHECK(!fs::exists(img + ".lock"));
  CHECK(!fs::exists(img + ".partial"));
}

TEST_CASE("ferry killed mid-dump: nothing half-published, and ferry resume brings the job back", "[process-image][criu]") {
  REQUIRE(geteuid() == 0);
  ferry_test::TempDir t("ferry-pimg");
  std::vector<std::string> prog = {kMlp, "--steps", "120", "--ballast-mb", "64"};
  auto plain = ferry_test::run(prog, ferry_test::emu_env(), 120);
  prog.insert(prog.end(), {"--step-delay-ms", "20"});
  ferry_test::Child c(job(prog), ferry_test::emu_env());
  REQUIRE(c.wait_for("step 3 loss"));
  pid_t program = program_of(c.pid());
  int delay_ms = random_step(0, 60);
  INFO("killed after " << delay_ms << " ms");
  {
    ferry_test::Child d({kFerry, "dump", std::to_string(c.pid()), t / "img", "--staging-mb", "4"},
                        ferry_test::emu_env());
    usleep(static_cast<useconds_t>(delay_ms) * 1000);
    kill(d.pid(), SIGKILL);
    d.finish();
  }
  usleep(300000);  // a CRIU still running finishes (it leaves the job stopped)
  // Either no image or a whole one; never a half-written one under the final name.
  if (fs::exists(t / "img")) CHECK(fs::exists(t / "img/process.json"));
  // Resumed through the program, or through the job's ferry run with one JSON document.
  const bool through_job = GENERATE(false, true);
  INFO((through_job ? "resumed through the job's ferry run, --format json" : "resumed through the program"));
  std::vector<std::string> resume = {kFerry, "resume", std::to_string(through_job ? c.pid() : program)};
  if (through_job) resume.insert(resume.end(), {"--format", "json"});
  auto r = ferry_test::run(resume, ferry_test::emu_env(), 120);
  INFO(r.out << r.err);
  if (through_job && r.exit_code == 0) {
    auto j = nlohmann::json::parse(r.out);
    CHECK(j["ok"] == true);
    if (j.contains("processes")) {
      REQUIRE(j["processes"].size() == 1);
      CHECK(j["processes"][0]["pid"] == program);
    }
  }
  // The kill may have come before the program was suspended, or after the image was
  // published and the job killed: then there is nothing to resume.
  if (r.exit_code == 0 || (r.out + r.err).find("is running") != std::string::npos) {
    auto done = c.finish();
    CHECK(done.exit_code == 0);
    CHECK(checksums(done.out) == checksums(plain.out));
  } else {
    CHECK(c.finish().exit_code == 128 + SIGKILL);
    REQUIRE(fs::exists(t / "img/process.json"));
  }
}

namespace {
// pid and start time, as ferry names a dump in progress
std::string identity(pid_t pid) {
  std::string stat = ferry_test::read_file("/proc/" + std::to_string(pid) + "/stat");
  std::istringstream rest(stat.substr(stat.rfind(')') + 2));
  std::string f;
  for (int i = 3; i <= 22; i++) rest >> f;
  return std::to_string(pid) + " " + f;
}
std::vector<pid_t> tree_below(pid_t pid) {
  std::vector<pid_t> all = {pid};
  for (size_t i = 0; i < all.size(); i++)
    for (pid_t c : children_of(all[i])) all.push_back(c);
  return all;
}
}  // namespace

TEST_CASE("a job without CUDA left stopped (ferry killed mid-dump, a SIGSTOP) goes on with ferry resume of its ferry "
          "run; a dump in progress is waited for",
          "[process-image][criu]") {
  REQUIRE(geteuid() == 0);
  ferry_test::TempDir t("ferry-pimg");
  const std::string socks = t / "sockets";
  fs::create_directories(socks);
  fs::permissions(socks, fs::perms::owner_all);  // as the shim makes it
  auto env = ferry_test::emu_env({{"FERRY_SOCKET_DIR", socks}});
  ferry_test::Child c(job({"/bin/sh", "-c",
                           "i=0; while [ $i -lt 150 ]; do echo tick $i; i=$((i+1)); sleep 0.02; done; echo done"}),
                      env);
  REQUIRE(c.wait_for("tick 3"));
  const pid_t init = children_of(c.pid()).at(0);
  const std::string job_pid = std::to_string(c.pid()), init_s = std::to_string(init);
  auto resume = [&] { return ferry_test::run({kFerry, "resume", job_pid}, env, 60); };
  auto r = resume();
  CHECK(r.exit_code == 0);
  CHECK(r.out == "job " + init_s + " is running: nothing to resume\n");

  SECTION("stopped by a signal") {
    auto tasks = tree_below(init);
    for (pid_t p : tasks) kill(p, SIGSTOP);
    usleep(200000);
    size_t frozen = c.out().size();
    usleep(300000);
    CHECK(c.out().size() == frozen);
    r = resume();
    INFO(r.err);
    CHECK(r.exit_code == 0);
    CHECK(r.out.find("job " + init_s + ": ") == 0);
    CHECK(r.out.find(" stopped process(es) continued") != std::string::npos);
  }
  SECTION("a socket directory others could write to is not used") {
    fs::permissions(socks, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                               fs::perms::others_read | fs::perms::others_exec);
    auto d = ferry_test::run({kFerry, "dump", job_pid, t / "img"}, env, 60);
    CHECK(d.exit_code == 78);
    CHECK(d.err == "ferry: " + socks + " is not a directory of mode 0700 owned by uid 0; remove it (the shim makes it "
                                       "so) or set FERRY_SOCKET_DIR\n");
    CHECK(!fs::exists(t / "img.partial"));
    fs::permissions(socks, fs::perms::owner_all);
  }
  SECTION("a dump in progress, then one whose ferry died") {
    // The marker a dump leaves, naming a live ferry (the job's own ferry run will do).
    std::ofstream(socks + "/" + init_s + ".dumping") << identity(c.pid()) << "\n";
    r = resume();
    CHECK(r.exit_code == 75);
    CHECK(r.err.find("job " + init_s + " is being dumped by ferry (pid " + job_pid +
                     "); it goes on when that has ended") != std::string::npos);
    auto d = ferry_test::run({kFerry, "dump", job_pid, t / "img"}, env, 60);
    CHECK(d.exit_code == 75);
    CHECK(d.err.find("job " + init_s + " is being dumped by ferry (pid " + job_pid +
                     "); try again when that has ended") != std::string::npos);
    CHECK(!fs::exists(t / "img.partial"));
    // A ferry that died (its pid now another process's, or nobody's) holds nothing up.
    std::ofstream(socks + "/" + init_s + ".dumping") << job_pid << " 1\n";
    r = resume();
    CHECK(r.exit_code == 0);
    int delay_ms = random_step(0, 80);
    INFO("ferry dump killed after " << delay_ms << " ms");
    {
      ferry_test::Child k({kFerry, "dump", job_pid, t / "img"}, env);
      usleep(static_cast<useconds_t>(delay_ms) * 1000);
      kill(k.pid(), SIGKILL);
      k.finish();
    }
    usleep(500000);  // a CRIU still running finishes (it leaves the job stopped)
    if (fs::exists(t / "img")) CHECK(fs::exists(t / "img/process.json"));
    r = resume();
    INFO(r.out << r.err);
    if (r.exit_code != 0) {  // the dump had ended the job before ferry was killed
      CHECK(c.finish().exit_code == 128 + SIGKILL);
      REQUIRE(fs::exists(t / "img/process.json"));
      return;
    }
  }
  auto done = c.finish();
  CHECK(done.exit_code == 0);
  // Every tick once, in order: nothing lost or repeated by the stop.
  std::string want;
  for (int i = 0; i < 150; i++) want += "tick " + std::to_string(i) + "\n";
  CHECK(done.out == want + "done\n");
}

TEST_CASE("a restore needs the job's files as they were: a changed program or data file, a missing working "
          "directory are named before anything starts; a log the job appends to may grow",
          "[process-image][criu]") {
  REQUIRE(geteuid() == 0);
  ferry_test::TempDir t("ferry-pimg");
  const std::string sh = t / "sh", data = t / "data", log = t / "log", work = t / "work";
  fs::copy_file("/bin/sh", sh);
  fs::create_directories(work);
  auto put = [](const std::string& path, const std::string& text) { std::ofstream(path) << text; };
  put(data, "abc\n");
  ferry_test::Child c(job({sh, "-c",
                           "cd " + work + " && exec 3>>" + log + " 4<" + data +
                               " && i=0; while [ $i -lt 100 ]; do echo tick $i; echo log $i >&3; i=$((i+1)); "
                               "sleep 0.02; done; echo done"}),
                      ferry_test::emu_env());
  REQUIRE(c.wait_for("tick 5"));
  dump(c.pid(), t / "img");
  CHECK(c.finish().exit_code == 128 + SIGKILL);
  auto in = ferry_test::run({kFerry, "inspect", t / "img", "--format", "json"}, {}, 60);
  auto ij = nlohmann::json::parse(in.out);
  std::map<std::string, std::string> as;
  for (auto& f : ij["files"]) as[f["path"]] = f["as"];
  CHECK(as[sh] == "mapped");
  CHECK(as[data] == "open");
  CHECK(as[work] == "working directory");
  CHECK(as.count(log) == 0);  // appended to only: CRIU does not check it
  CHECK(ij["files_changed_here"].empty());

  const auto sh_size = fs::file_size(sh);
  std::ofstream(log, std::ios::app) << "written after the dump\n";
  std::ofstream(sh, std::ios::app) << "x";
  put(data, "abcd\n");
  fs::remove(work);
  auto r = restore_text(t / "img");
  CHECK(r.exit_code == 78);
  CHECK(r.err == "ferry: cannot restore the job of " + (t / "img") +
                     " here: CRIU reopens the job's files by path and this machine does not have them as they were "
                     "at the dump: " + data + " (5 bytes; it had 4); " + sh + " (" + std::to_string(sh_size + 1) +
                     " bytes; it had " + std::to_string(sh_size) + "); " + work +
                     " (missing). Nothing was started; the image is untouched\n");
  // As they were: the job goes on where it was dumped.
  fs::copy_file("/bin/sh", sh, fs::copy_options::overwrite_existing);
  put(data, "abc\n");
  fs::create_directories(work);
  r = restore(t / "img");
  INFO(r.err);
  CHECK(r.exit_code == 0);
  CHECK(r.out.find("tick 99\ndone\n") != std::string::npos);
  CHECK(ferry_test::read_file(log).find("written after the dump\nlog ") != std::string::npos);
}

TEST_CASE("a job's abstract Unix socket: its image is refused while the original holds the name, restored once it "
          "ended",
          "[process-image][criu]") {
  REQUIRE(geteuid() == 0);
  ferry_test::TempDir t("ferry-pimg");
  const std::string name = "ferry-test-" + std::to_string(getpid()) + "-" + std::to_string(random_step(0, 1 << 30));
  ferry_test::Child c(job({"python3", "-c",
                           "import socket, time\n"
                           "s = socket.socket(socket.AF_UNIX)\n"
                           "s.bind('\\0" + name + "')\n"
                           "s.listen()\n"
                           "for i in range(150):\n"
                           "    print('tick', i, flush=True)\n"
                           "    time.sleep(0.02)\n"
                           "print('done', flush=True)\n"}),
                      ferry_test::emu_env());
  REQUIRE(c.wait_for("tick 5"));
  auto d = dump(c.pid(), t / "img", {"--leave-running"});
  auto m = nlohmann::json::parse(ferry_test::read_file(t / "img/process.json"));
  CHECK(m["sockets"]["unix"] == nlohmann::json::array({"@" + name}));
  auto r = restore_text(t / "img");
  CHECK(r.exit_code == 75);
  CHECK(r.err == "ferry: cannot restore the job of " + (t / "img") + " here: the Unix socket name @" + name +
                     ", which the job had bound, is bound on this machine already (by the original job, still "
                     "running?); a job run with ferry run --net-namespace has ports and socket names of its own. "
                     "Nothing was started; the image is untouched\n");
  auto done = c.finish();
  CHECK(done.exit_code == 0);
  r = restore(t / "img");
  INFO(r.err);
  CHECK(r.exit_code == 0);
  CHECK(r.out.find("tick 149\ndone\n") != std::string::npos);
}

TEST_CASE("a job logging to a datagram socket outside it (syslog's /dev/log) is dumped and restored: it sends "
          "there again and every message arrives once; a machine without that socket is refused",
          "[process-image][criu]") {
  REQUIRE(geteuid() == 0);
  ferry_test::TempDir t("ferry-pimg");
  const std::string log = t / "log", got = t / "received";
  // The "syslog daemon", outside the job: every datagram it receives becomes a line.
  auto daemon = [&] {
    auto d = std::make_unique<ferry_test::Child>(std::vector<std::string>{
        "python3", "-c",
        "import os, socket, sys\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
        "s.bind(sys.argv[1])\n"
        "print('ready', flush=True)\n"
        "with open(sys.argv[2], 'a') as f:\n"
        "    while True:\n"
        "        f.write(s.recv(100).decode() + '\\n')\n"
        "        f.flush()\n",
        log, got});
    REQUIRE(d->wait_for("ready"));
    return d;
  };
  auto syslogd = daemon();
  ferry_test::Child c(job({"python3", "-c",
                           "import socket, sys, time\n"
                           "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
                           "s.connect(sys.argv[1])\n"
                           "for i in range(120):\n"
                           "    s.send(b'msg %d' % i)\n"
                           "    print('sent', i, flush=True)\n"
                           "    time.sleep(0.02)\n"
                           "print('done', flush=True)\n",
                           log}),
                      ferry_test::emu_env());
  REQUIRE(c.wait_for("sent " + std::to_string(random_step(3, 40))));
  auto chk = ferry_test::run({kFerry, "check", std::to_string(c.pid()), "--format", "json"}, ferry_test::emu_env(), 60);
  CHECK(nlohmann::json::parse(chk.out)["full_process"]["dumpable"] == true);
  dump(c.pid(), t / "img");
  CHECK(c.finish().exit_code == 128 + SIGKILL);
  auto m = nlohmann::json::parse(ferry_test::read_file(t / "img/process.json"));
  CHECK(m["sockets"]["external_dgram"] == nlohmann::json::array({log}));
  auto in = ferry_test::run({kFerry, "inspect", t / "img"}, ferry_test::emu_env(), 60);
  CHECK(in.out.find("\n  datagrams to " + log + " (outside the job): connected there again at restore, which needs a "
                    "datagram socket there\n") != std::string::npos);
  // The daemon gone, its socket file left behind, then that gone too: refused before
  // anything starts.
  syslogd.reset();
  auto refused = restore_text(t / "img");
  CHECK(refused.exit_code == 78);
  CHECK(refused.err == "ferry: cannot restore the job of " + (t / "img") + " here: the job's datagram socket was "
                       "connected to " + log + ", which no datagram socket on this machine answers to (Connection "
                       "refused; start what listens there, e.g. syslog). Nothing was started; the image is "
                       "untouched\n");
  fs::remove(log);
  refused = restore_text(t / "img");
  CHECK(refused.exit_code == 78);
  CHECK(refused.err.find("(No such file or directory; start what listens there") != std::string::npos);
  syslogd = daemon();
  auto r = restore(t / "img");
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(r.out.find("sent 119\ndone\n") != std::string::npos);
  usleep(200000);  // the daemon writes what it has received
  std::vector<std::string> want;
  for (int i = 0; i < 120; i++) want.push_back("msg " + std::to_string(i));
  std::sort(want.begin(), want.end());
  CHECK(sorted_lines(ferry_test::read_file(got)) == want);
}

TEST_CASE("restore refusals: a target without the GPU or the memory, damaged halves, a newer ferry -- nothing "
          "started, the image untouched",
          "[process-image][criu]") {
  REQUIRE(geteuid() == 0);
  ferry_test::TempDir t("ferry-pimg");
  ferry_test::Child c(job({kMlp, "--steps", "100", "--step-delay-ms", "20", "--ballast-mb", "8"}), ferry_test::emu_env());
  REQUIRE(c.wait_for("step 3 loss"));
  dump(c.pid(), t / "img");
  c.finish();
  auto copy = [&](const std::string& name) {
    fs::copy(t / "img", t / name, fs::copy_options::recursive);
    return t / name;
  };
  SECTION("no such GPU") {
    auto r = restore_text(t / "img", {"--device", "5"});
    CHECK(r.exit_code == 78);
    CHECK(r.err.find("this machine has 2 GPU(s); the image needs GPU 5 (choose others with --device or "
                     "--device-map). Nothing was started; the image is untouched") != std::string::npos);
  }
  SECTION("too little memory") {
    auto r = restore_text(t / "img", {}, {{"FERRY_EMU_MEMORY", "4m"}});
    CHECK(r.exit_code == 78);
    CHECK(r.err.find("GPU 0 (ferry emulated GPU) has 4.0 MiB; the job needs ") != std::string::npos);
  }
  SECTION("memory other processes hold") {
    // Room enough in all, but other tenants hold all of the 16 GiB but 4 MiB (NVML says).
    auto r = restore_text(t / "img", {}, {{"FERRY_EMU_DEVICE0", "held=16380m"}});
    CHECK(r.exit_code == 75);  // try later: they may let go of it
    CHECK(r.err.find("GPU 0 (ferry emulated GPU) has 4.0 MiB free of its 16.0 GiB (other processes hold the rest); "
                     "the job needs ") != std::string::npos);
    // With no NVML to tell it, found only at the resume, after CRIU: the job killed.
    r = restore_text(t / "img", {"--real-driver", ferry_test::lone_simulated_driver(t / "lone")},
                     {{"FERRY_EMU_DEVICE0", "held=16380m"}});
    INFO(r.err);
    CHECK(r.exit_code == 78);
    CHECK(r.err.rfind("ferry: warning: free GPU memory not known (cannot load NVML: ", 0) == 0);
    CHECK(r.err.find(": device 0 (ferry emulated GPU) has 4 MiB available; the program's GPU state needs ") !=
          std::string::npos);
    CHECK(r.err.ends_with("; the restored job was killed: nothing is left running, the image is untouched\n"));
    // With room beside them, the job comes back there.
    auto ok = restore(t / "img", {}, {{"FERRY_EMU_DEVICE0", "held=8g"}});
    INFO(ok.err);
    CHECK(ok.exit_code == 0);
  }
  SECTION("a damaged CPU half") {
    std::string d = copy("bad");
    std::string pages;
    for (auto& e : fs::directory_iterator(d + "/cpu"))
      if (e.path().filename().string().rfind("pages-", 0) == 0) pages = e.path();
    REQUIRE(!pages.empty());
    {
      std::fstream f(pages, std::ios::in | std::ios::out | std::ios::binary);
      f.seekp(100);
      f.put('\x5a');
    }
    auto r = restore_text(d);
    CHECK(r.exit_code == 74);
    CHECK(r.err.find(pages + " is damaged: its hash does not match the manifest (CPU half of the image)") !=
          std::string::npos);
    auto v = ferry_test::run({kFerry, "verify", d}, {}, 60);
    CHECK(v.exit_code == 74);
  }
  SECTION("a truncated GPU half") {
    std::string d = copy("bad");
    std::string pack;
    for (auto& e : fs::recursive_directory_iterator(d + "/gpu"))
      if (e.path().extension() == ".pack") pack = e.path();
    REQUIRE(!pack.empty());
    fs::resize_file(pack, fs::file_size(pack) / 2);
    auto v = ferry_test::run({kFerry, "verify", d}, {}, 60);
    CHECK(v.exit_code == 74);
    CHECK(v.err.find("the GPU half of the image is damaged") != std::string::npos);
    auto r = restore_text(d);
    INFO(r.err);
    CHECK(r.exit_code == 74);
    CHECK(r.err.find("the restored job was killed: nothing is left running, the image is untouched") !=
          std::string::npos);
  }
  SECTION("an image from a newer ferry") {
    std::string d = copy("newer");
    auto m = nlohmann::json::parse(ferry_test::read_file(d + "/process.json"));
    m["version"] = 99;
    m["ferry"] = "9.0.0";
    std::ofstream(d + "/process.json") << m.dump();
    auto r = restore_text(d);
    CHECK(r.exit_code == 78);
    CHECK(r.err.find(d + " was written by a newer ferry (9.0.0, whole-process image format 99); this ferry reads "
                         "format 6: use that ferry or a newer one") != std::string::npos);
  }
  SECTION("a manifest that parses but is not shaped as one: named, for restore, inspect and verify alike") {
    std::string d = copy("odd");
    auto m = nlohmann::json::parse(ferry_test::read_file(d + "/process.json"));
    auto [change, says] = GENERATE(table<int, std::string>({
        {0, "an entry of \"processes\" has a \"nspid\" that is not a number"},
        {1, "an entry of \"cpu_files\" has no \"xxh3\""},
        {2, "\"stdio\" is not a list"},
        {3, "an entry of \"gpus\" has a \"memory\" that is not a size"},
        {4, "a process's GPU number 99999 is too large"},
        {5, "\"net_namespace\" is not true or false"},
        {6, "an entry of \"stdio\" has a \"mode\" that is not r, w or rw"},
    }));
    if (change == 0) m["processes"][0]["nspid"] = "one";
    if (change == 1) m["cpu_files"][0].erase("xxh3");
    if (change == 2) m["stdio"] = "tty";
    if (change == 3) m["gpus"][0]["memory"] = -1;
    if (change == 4)
      for (auto& p : m["processes"])
        if (p.value("cuda", false)) p["gpus"] = nlohmann::json::array({{{"physical", 99999}, {"uuid", "GPU-x"}}});
    if (change == 5) m["net_namespace"] = "own";
    if (change == 6) m["stdio"][1]["mode"] = "append";
    std::ofstream(d + "/process.json") << m.dump();
    const std::string want = "ferry: " + d + "/process.json is damaged: " + says + "\n";
    auto r = restore_text(d);
    CHECK(r.exit_code == 74);
    CHECK(r.err == want);
    for (const char* verb : {"inspect", "verify"}) {
      auto v = ferry_test::run({kFerry, verb, d}, {}, 60);
      INFO(verb);
      CHECK(v.exit_code == 74);
      CHECK(v.err == want);
    }
  }
  // Whatever was refused, the image itself still restores.
  auto v = ferry_test::run({kFerry, "verify", t / "img"}, {}, 60);
  CHECK(v.exit_code == 0);
}

TEST_CASE("ferry restore --dry-run makes a restore's checks and says where the job's GPU memory would go, starting "
          "nothing; a refusal is the restore's own",
          "[process-image][criu]") {
  REQUIRE(geteuid() == 0);
  ferry_test::TempDir t("ferry-pimg");
  auto plain = ferry_test::run({kMlp, "--steps", "337"}, ferry_test::emu_env(), 120);
  ferry_test::Child c(job({kMlp, "--steps", "337", "--step-delay-ms", "20"}), ferry_test::emu_env());
  REQUIRE(c.wait_for("step 5 loss"));
  dump(c.pid(), t / "img");
  auto gone = c.finish();

  auto dry = ferry_test::run({kFerry, "restore", t / "img", "--dry-run", "--format", "json"}, ferry_test::emu_env(), 60);
  INFO(dry.err);
  REQUIRE(dry.exit_code == 0);
  auto j = nlohmann::json::parse(dry.out);
  CHECK(j["ok"] == true);
  CHECK(j["dry_run"] == true);
  CHECK(j["pids"] == "own");
  CHECK(j["network"] == "shared");
  REQUIRE(j["processes"].size() == 2);  // ferry's init and the trainer
  auto& trainer = j["processes"][1];
  CHECK(trainer["name"] == "mlp_trainer");
  CHECK(trainer["cuda"] == true);
  REQUIRE(trainer["devices"].size() == 1);
  CHECK(trainer["devices"][0]["device"] == 0);
  CHECK(trainer["devices"][0]["gpu"] == 0);  // the GPU it was on
  CHECK(trainer["devices"][0]["bytes"].get<uint64_t>() > 0);
  REQUIRE(j["gpus"].size() == 1);
  CHECK(j["gpus"][0]["gpu"] == 0);
  CHECK(j["gpus"][0]["needed"] == trainer["devices"][0]["bytes"]);
  CHECK(j["gpus"][0]["memory"] == 16ull << 30);
  CHECK(j["gpus"][0]["free"] == 16ull << 30);  // NVML's figure: nothing else on it
  // Nothing ran: a restore without --detach waits for the job, whose output is its own.
  CHECK(ferry_test::lines_with(dry.out, " loss ").empty());
  CHECK(dry.err.find("restor") == std::string::npos);

  // Onto the other GPU, in words.
  dry = ferry_test::run({kFerry, "restore", t / "img", "--dry-run", "--device", "1"},
                        ferry_test::emu_env({{"FERRY_EMU_DEVICE1", "held=3g"}}), 60);
  CHECK(dry.exit_code == 0);
  CHECK(std::regex_match(dry.out, std::regex(std::regex_replace(t / "img", std::regex("[.]"), "\\.") +
                                             ": the job can be restored here \\(a dry run: nothing was started\\)\n"
                                             "  process 2 \\(mlp_trainer\\): its device 0 \\([0-9.]+ [KMG]?i?B\\) "
                                             "onto GPU 1 \\(ferry emulated GPU\\)\n"
                                             "  GPU 1 \\(ferry emulated GPU\\): [0-9.]+ [KMG]?i?B of its [0-9.]+ "
                                             "[KMG]?i?B, 13\\.0 GiB free\n")));
  // A driver with no NVML beside it: the free memory not known, said, the total checked.
  dry = ferry_test::run({kFerry, "restore", t / "img", "--dry-run", "--format", "json", "--real-driver",
                         ferry_test::lone_simulated_driver(t / "lone")},
                        ferry_test::emu_env(), 60);
  INFO(dry.err);
  REQUIRE(dry.exit_code == 0);
  j = nlohmann::json::parse(dry.out);
  REQUIRE(j["gpus"].size() == 1);
  CHECK(j["gpus"][0]["free"].is_null());
  REQUIRE(j["warnings"].size() == 1);
  CHECK(j["warnings"][0].get<std::string>().rfind("free GPU memory not known (cannot load NVML: " +
                                                      t / "lone/libnvidia-ml.so.1" + ": ",
                                                  0) == 0);
  CHECK(j["warnings"][0].get<std::string>().ends_with("): only the total memory was checked there"));
  // A GPU this machine lacks: the restore's refusal, its exit code.
  dry = ferry_test::run({kFerry, "restore", t / "img", "--dry-run", "--device", "7"}, ferry_test::emu_env(), 60);
  CHECK(dry.exit_code == 78);
  CHECK(dry.err == "ferry: this machine has 2 GPU(s); the image needs GPU 7 (choose others with --device or "
                   "--device-map). Nothing was started; the image is untouched\n");
  // The image restores as ever.
  auto r = restore(t / "img");
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(gone.out + r.out == plain.out);
}

TEST_CASE("the same image restored twice at once: two jobs, each in its own namespace, both end bit-identical",
          "[process-image][criu]") {
  REQUIRE(geteuid() == 0);
  ferry_test::TempDir t("ferry-pimg");
  auto plain = ferry_test::run({kMlp, "--steps", "80"}, ferry_test::emu_env(), 120);
  ferry_test::Child c(job({kMlp, "--steps", "80", "--step-delay-ms", "20"}), ferry_test::emu_env());
  REQUIRE(c.wait_for("step 10 loss"));
  dump(c.pid(), t / "img");
  c.finish();
  ferry_test::Child a({kFerry, "restore", t / "img", "--device", "0"}, ferry_test::emu_env());
  ferry_test::Child b({kFerry, "restore", t / "img", "--device", "1"}, ferry_test::emu_env());
  auto ra = a.finish(240), rb = b.finish(240);
  INFO(ra.err << rb.err);
  CHECK(ra.exit_code == 0);
  CHECK(rb.exit_code == 0);
  CHECK(checksums(ra.out) == checksums(plain.out));
  CHECK(checksums(rb.out) == checksums(plain.out));
}

TEST_CASE("ferry restore --detach returns once the job runs again, leaving it under a ferry of its own that ferry ps "
          "names and a scheduler's TERM reaches (--on-signal: dumped again); the job ends bit-identical; a detached "
          "restore that fails exits with its refusal",
          "[process-image][criu]") {
  REQUIRE(geteuid() == 0);
  ferry_test::TempDir t("ferry-pimg");
  // 301 steps: a number no other test's trainer runs, for ferry ps below.
  auto plain = ferry_test::run({kMlp, "--steps", "301"}, ferry_test::emu_env(), 120);
  REQUIRE(plain.exit_code == 0);
  ferry_test::Child c(job({kMlp, "--steps", "301", "--step-delay-ms", "20"}), ferry_test::emu_env());
  REQUIRE(c.wait_for("step " + std::to_string(random_step(2, 20)) + " loss"));
  dump(c.pid(), t / "img");
  auto gone = c.finish();
  REQUIRE(gone.exit_code == 128 + SIGKILL);

  // Damaged, it is refused as without --detach: by the child, whose status this one ends with.
  fs::copy(t / "img", t / "bad", fs::copy_options::recursive);
  std::string cpu_file;
  for (auto& e : fs::directory_iterator(t / "bad/cpu"))
    if (e.path().extension() == ".img" && fs::file_size(e.path()) > 0) cpu_file = e.path();
  REQUIRE(!cpu_file.empty());
  {
    std::fstream f(cpu_file, std::ios::in | std::ios::out | std::ios::binary);
    char b = 0;
    f.read(&b, 1);
    f.seekp(0);
    b = static_cast<char>(b ^ 0x5a);
    f.write(&b, 1);
  }
  auto bad = ferry_test::run({kFerry, "restore", t / "bad", "--detach"}, ferry_test::emu_env(), 120);
  CHECK(bad.exit_code == 74);
  CHECK(bad.err == "ferry: " + cpu_file + " is damaged: its hash does not match the manifest (CPU half of the image)\n");

  // A TERM to the command while it restores (CRIU slowed down here) reaches the restore:
  // without --on-signal it ends it, and nothing is left running.
  const std::string slow = script_at(t / "slow-criu", "#!/bin/sh\n[ \"$1\" = restore ] && sleep 1\nexec " +
                                                          std::string(FERRY_TEST_SOURCE_DIR) + "/.deps/criu/criu \"$@\"\n");
  {
    ferry_test::Child cut({kFerry, "restore", t / "img", "--detach"}, ferry_test::emu_env({{"FERRY_CRIU", slow}}));
    usleep(400000);
    REQUIRE(kill(cut.pid(), SIGTERM) == 0);
    auto r = cut.finish(120);
    INFO(r.err);
    CHECK(r.exit_code == 128 + SIGTERM);
    // No copy of the trainer runs (the restore's guard ends what CRIU had restored).
    auto copy_runs = [] {
      return ferry_test::run({kFerry, "ps"}, ferry_test::emu_env(), 60).out.find("mlp_trainer --steps 301 ") !=
             std::string::npos;
    };
    for (int i = 0; i < 100 && copy_runs(); i++) usleep(50000);
    CHECK(!copy_runs());
  }

  ferry_test::Child d({kFerry, "restore", t / "img", "--detach", "--on-signal", "TERM=dump:" + (t / "again")},
                      ferry_test::emu_env());
  auto back = d.finish(120);
  INFO(back.err);
  REQUIRE(back.exit_code == 0);
  std::smatch said;
  REQUIRE(std::regex_search(back.err, said, std::regex("init is pid ([0-9]+); it runs on, detached, under ferry pid "
                                                       "([0-9]+)\n$")));
  const pid_t keeper = std::stoi(said[2]);
  CHECK(keeper != d.pid());
  // The job runs on (its output still coming to the restorer's files), under that ferry.
  auto ps = nlohmann::json::parse(ferry_test::run({kFerry, "ps", "--format", "json"}, ferry_test::emu_env(), 60).out);
  int under = 0;
  for (auto& p : ps)
    if (!p["job"].is_null() && p["job"]["ferry"] == keeper && p["job"]["init"] == std::stoi(said[1])) under++;
  CHECK(under == 1);
  CHECK(d.out().find("weights checksum") == std::string::npos);
  REQUIRE(kill(keeper, SIGTERM) == 0);
  // That ferry dumps the job and ends (a zombie until whoever adopted it reaps it).
  auto ended = [](pid_t pid) {
    std::string st = ferry_test::read_file("/proc/" + std::to_string(pid) + "/stat");
    return st.empty() || st.find(") Z ") != std::string::npos;
  };
  for (int i = 0; i < 600 && !ended(keeper); i++) usleep(50000);
  CHECK(ended(keeper));
  REQUIRE(fs::exists(t / "again/process.json"));
  // Detached again, in JSON: the report names the ferry the job runs under, which says
  // in JSON too how the job ended once it runs to its end.
  ferry_test::Child j({kFerry, "restore", t / "again", "--detach", "--format", "json"}, ferry_test::emu_env());
  auto jr = j.finish(120);
  INFO(jr.err);
  REQUIRE(jr.exit_code == 0);
  auto report = nlohmann::json::parse(jr.err);
  CHECK(report["ok"] == true);
  const pid_t second = report["ferry"].get<int>();
  for (int i = 0; i < 1200 && !ended(second); i++) usleep(50000);
  REQUIRE(ended(second));
  // The last line (the trainer's own timing line on stderr comes before it).
  std::string end_line = j.err().substr(jr.err.size());
  INFO(end_line);
  REQUIRE(end_line.ends_with("}\n"));
  end_line.pop_back();
  end_line = end_line.substr(end_line.rfind('\n') + 1);
  CHECK(nlohmann::json::parse(end_line) == nlohmann::json({{"ended", true},
                                                           {"dir", t / "again"},
                                                           {"init", report["init"]},
                                                           {"ferry", second},
                                                           {"exit_code", 0}}));
  // The restorers' stdout has the job's lines and nothing of ferry's; the first's stderr
  // the dump's summary and, last, the job's end with the status nobody reaps.
  CHECK(gone.out + d.out() + j.out() == plain.out);
  std::string said_after = d.err().substr(back.err.size());
  INFO(said_after);
  CHECK(std::regex_search(said_after, std::regex("\nferry: dumped job [0-9]+ \\(2 processes, 1 using CUDA\\) to " +
                                                 (t / "again") + ": GPU [^\n]*; the job has ended \\(ferry restore "
                                                 "brings it back\\)\n")));
  CHECK(said_after.ends_with("\nferry: the job restored from " + (t / "img") + " (init pid " + said[1].str() +
                             ") has ended: exit status 0 (what ferry restore without --detach exits with)\n"));
}
