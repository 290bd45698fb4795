// The engine driven from outside, as a scheduler would: programs running under ferry
// on the simulated GPU are checkpointed, migrated, suspended and restored through the
// CLI at a random step, and must finish with results bit-identical to a run that was
// never touched. Bad images, full disks, small or unsuitable devices and strangers
// on the control socket get clear errors and leave the program running.
#include <catch2/catch_get_random_seed.hpp>
#include <catch2/catch_test_macros.hpp>

#include <fcntl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <thread>

#include <nlohmann/json.hpp>

#include "process.hpp"
#include "temp_dir.hpp"

using ferry_test::Child;
using ferry_test::emu_env;
using ferry_test::lines_with;
using ferry_test::read_file;
using ferry_test::run;
namespace fs = std::filesystem;

namespace {

struct TempDir : ferry_test::TempDir {
  TempDir() : ferry_test::TempDir("ferry-engine") {}
};

const std::string kBin = FERRY_TEST_BIN_DIR;
const std::string kFerry = kBin + "/tools/ferry";

std::vector<std::string> under_ferry(std::vector<std::string> cmd, std::vector<std::string> opts = {}) {
  std::vector<std::string> v = {kFerry, "run", "--emulator"};
  v.insert(v.end(), opts.begin(), opts.end());
  v.push_back("--");
  v.insert(v.end(), cmd.begin(), cmd.end());
  return v;
}

ferry_test::Result cli(std::vector<std::string> args, std::map<std::string, std::string> env = {}) {
  args.insert(args.begin(), kFerry);
  return run(args, emu_env(env), 120);
}


struct Program {
  std::string name;
  std::vector<std::string> argv;       // paced, under ferry
  std::vector<std::string> reference;  // the same computation, unpaced, without ferry
  std::string marker;                  // printed after each step: marker + step + suffix
  std::string suffix;
  std::string result;                  // the line holding the final result
  int steps;
};

Program mlp() {
  return {"mlp_trainer",
          {kBin + "/examples/mlp_trainer", "--steps", "40", "--step-delay-ms", "15", "--ballast-mb", "16"},
          {kBin + "/examples/mlp_trainer", "--steps", "40", "--ballast-mb", "16", "--quiet"},
          "step ",
          " loss",
          "weights checksum",
          40};
}

Program saxpy() {
  return {"driver_saxpy",
          {kBin + "/examples/driver_saxpy", "--n", "300000", "--iters", "40", "--iter-delay-ms", "15"},
          {kBin + "/examples/driver_saxpy", "--n", "300000", "--iters", "40"},
          "iteration ",
          "\n",
          "checksum",
          40};
}

Program graph() {
  return {"graph_loop",
          {kBin + "/tests/programs/graph_loop", "--steps", "40", "--step-delay-ms", "15"},
          {kBin + "/tests/programs/graph_loop", "--steps", "40", "--eager"},
          "step ",
          " hash",
          "final hash",
          40};
}

std::string result_line(const std::string& out, const std::string& key) {
  auto l = lines_with(out, key);
  return l.empty() ? "" : l.back();
}

const std::string& reference(const Program& p) {
  static std::map<std::string, std::string> cache;
  auto it = cache.find(p.name);
  if (it != cache.end()) return it->second;
  auto r = run(p.reference, emu_env());
  REQUIRE(r.exit_code == 0);
  std::string line = result_line(r.out, p.result);
  REQUIRE(!line.empty());
  return cache[p.name] = line;
}

// A step chosen at random (Catch's seed, so a failure can be replayed with --rng-seed).
int random_step(int lo, int hi) {
  static std::mt19937 rng(Catch::getSeed());
  return std::uniform_int_distribution<int>(lo, hi)(rng);
}

// Runs p under ferry, lets `drive` act on it after a random step, and returns the
// program's final result line.
std::string drive_at_random_step(const Program& p, const std::function<void(const std::string& pid, int step)>& drive,
                                 std::map<std::string, std::string> env = {}) {
  Child c(under_ferry(p.argv), emu_env(env));
  int step = random_step(2, p.steps - 12);
  INFO(p.name << " driven after step " << step << " (seed " << Catch::getSeed() << ")");
  REQUIRE(c.wait_for(p.marker + std::to_string(step) + p.suffix));
  drive(std::to_string(c.pid()), step);
  auto r = c.finish();
  INFO("stdout:\n" << r.out << "\nstderr:\n" << r.err);
  REQUIRE(r.exit_code == 0);
  return result_line(r.out, p.result);
}

void ok(const ferry_test::Result& r) {
  INFO("exit " << r.exit_code << "\nstdout:\n" << r.out << "\nstderr:\n" << r.err);
  REQUIRE(r.exit_code == 0);
}

nlohmann::json json_of(const ferry_test::Result& r) {
  INFO(r.out << r.err);
  REQUIRE(!r.out.empty());
  return nlohmann::json::parse(r.out);
}

int physical_device_of(const std::string& pid) {
  auto s = json_of(cli({"status", pid, "--format", "json"}));
  return s["devices"][0]["physical"].get<int>();
}

}  // namespace

TEST_CASE("checkpointed at a random step, programs finish bit-identically", "[engine]") {
  // graph_loop replays one CUDA graph; its reference runs the same work eagerly.
  for (const Program& p : {mlp(), saxpy(), graph()}) {
    const std::string want = reference(p);
    DYNAMIC_SECTION(p.name << ": checkpoint, then resume in place") {
      TempDir t;
      auto got = drive_at_random_step(p, [&](const std::string& pid, int) {
        ok(cli({"checkpoint", pid, t / "img"}));
        CHECK(json_of(cli({"status", pid, "--format", "json"}))["state"] == "stopped");
        ok(cli({"verify", t / "img"}));
        ok(cli({"resume", pid}));
      });
      CHECK(got == want);
    }
    DYNAMIC_SECTION(p.name << ": checkpoint, then migrate to the other device") {
      TempDir t;
      auto got = drive_at_random_step(p, [&](const std::string& pid, int) {
        ok(cli({"checkpoint", pid, t / "img", "--continue"}));
        ok(cli({"migrate", pid, "--device", "1"}));
        CHECK(physical_device_of(pid) == 1);
      });
      CHECK(got == want);
    }
    DYNAMIC_SECTION(p.name << ": suspend, then resume") {
      auto got = drive_at_random_step(p, [&](const std::string& pid, int) {
        ok(cli({"suspend", pid}));
        auto s = json_of(cli({"status", pid, "--format", "json"}));
        CHECK(s["state"] == "suspended");
        CHECK(s["suspended_to"] == "host memory");
        ok(cli({"resume", pid}));
      });
      CHECK(got == want);
    }
    DYNAMIC_SECTION(p.name << ": restored from disk after its GPU state was destroyed") {
      TempDir t;
      auto got = drive_at_random_step(p, [&](const std::string& pid, int) {
        ok(cli({"checkpoint", pid, t / "img"}));
        ok(cli({"suspend", pid, "--discard"}));
        auto bad = cli({"resume", pid});
        CHECK(bad.exit_code == 78);
        CHECK(bad.err.find("discarded") != std::string::npos);
        ok(cli({"restore", pid, t / "img"}));
      });
      CHECK(got == want);
    }
    DYNAMIC_SECTION(p.name << ": suspended to an image, resumed on the other device") {
      TempDir t;
      auto got = drive_at_random_step(p, [&](const std::string& pid, int) {
        ok(cli({"suspend", pid, "--to", t / "img"}));
        ok(cli({"resume", pid, "--device", "1"}));
        CHECK(physical_device_of(pid) == 1);
      });
      CHECK(got == want);
    }
  }
}

TEST_CASE("several checkpoints in a row are incremental and restorable", "[engine]") {
  const Program p = mlp();
  const std::string want = reference(p);
  TempDir t;
  nlohmann::json first, second, unchanged, read2, read4, read5, read6;
  auto stats = [](const ferry_test::Result& r) {
    ok(r);
    return json_of(r)["stats"];
  };
  auto got = drive_at_random_step(p, [&](const std::string& pid, int) {
    ok(cli({"checkpoint", pid, t / "c1", "--continue"}));
    std::this_thread::sleep_for(std::chrono::milliseconds(60));
    read2 = stats(cli({"checkpoint", pid, t / "c2", "--parent", t / "c1", "--continue", "--format", "json"}));
    std::this_thread::sleep_for(std::chrono::milliseconds(60));
    ok(cli({"checkpoint", pid, t / "c3", "--parent", t / "c2"}));  // stays stopped
    // Nothing ran since c3: a fourth image writes no chunk at all, and the GPU
    // fingerprints spare it reading any.
    read4 = stats(cli({"checkpoint", pid, t / "c4", "--parent", t / "c3", "--format", "json"}));
    // The same without fingerprints: every chunk read and hashed, the same image.
    read5 = stats(cli({"checkpoint", pid, t / "c4-all", "--parent", t / "c3", "--read-all", "--format", "json"}));
    first = json_of(cli({"inspect", t / "c1", "--format", "json"}));
    second = json_of(cli({"inspect", t / "c2", "--format", "json"}));
    unchanged = json_of(cli({"inspect", t / "c4", "--format", "json"}));
    ok(cli({"suspend", pid, "--discard"}));
    // c4 holds the chunks c1..c3 wrote (linked or copied from its parent, c3): it is
    // restored with them gone.
    for (const char* gone : {"c1", "c2", "c3", "c4-all"}) fs::remove_all(t / gone);
    ok(cli({"restore", pid, t / "c4", "--stay-stopped"}));
    // --leave-running goes through a snapshot in host memory: restoring its image must
    // give the same state again.
    ok(cli({"checkpoint", pid, t / "c5", "--leave-running"}));
    ok(cli({"suspend", pid, "--discard"}));
    ok(cli({"restore", pid, t / "c5", "--stay-stopped"}));
    // c5's fingerprints were computed on the host from its snapshot; the GPU's of the
    // same restored bytes must match them, so nothing is read.
    read6 = stats(cli({"checkpoint", pid, t / "c6", "--parent", t / "c5", "--format", "json"}));
    ok(cli({"resume", pid}));
  });
  CHECK(got == want);
  uint64_t total = first["device_bytes"].get<uint64_t>();
  INFO("first " << first.dump() << "\nsecond " << second.dump() << "\nunchanged " << unchanged.dump());
  CHECK(first["bytes_written"].get<uint64_t>() >= total / 2);
  CHECK(second["bytes_written"].get<uint64_t>() < total / 2);  // the 16 MiB ballast did not change
  CHECK(second["bytes_reused"].get<uint64_t>() >= (16u << 20));
  CHECK(unchanged["bytes_written"].get<uint64_t>() == 0);
  CHECK(unchanged["bytes_reused"].get<uint64_t>() == total);
  INFO("c2 " << read2.dump() << "\nc4 " << read4.dump() << "\nc4 without fingerprints " << read5.dump());
  CHECK(read2["copied"].get<uint64_t>() < total / 2);  // the ballast was not read again
  CHECK(read4["copied"].get<uint64_t>() == 0);
  CHECK(read5["copied"].get<uint64_t>() == total);
  CHECK(read5["written"].get<uint64_t>() == 0);
  INFO("c6 " << read6.dump());
  CHECK(read6["copied"].get<uint64_t>() == 0);
  CHECK(read6["written"].get<uint64_t>() == 0);
}

TEST_CASE("ferry resume while the process runs another operation (as a suspend a killed dump asked for) waits for "
          "it to end, saying so, then resumes",
          "[engine]") {
  Program p = mlp();
  const std::string want = reference(p);
  // Every operation of the job's engine starts its work 1 s late, so the suspend is still
  // under way when the resume comes; the trainer's steps are slow enough to outlast it.
  p.argv = {kBin + "/examples/mlp_trainer", "--steps", "40", "--step-delay-ms", "200", "--ballast-mb", "16"};
  auto got = drive_at_random_step(
      p,
      [&](const std::string& pid, int) {
        Child suspend({kFerry, "suspend", pid}, emu_env());
        bool busy = false;
        for (int i = 0; i < 200 && !busy; i++) {
          auto st = json_of(cli({"status", pid, "--format", "json"}));
          busy = st["operation"] == "suspend";
          if (!busy) std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
        REQUIRE(busy);
        auto r = cli({"resume", pid, "--progress", "always"});
        ok(r);
        CHECK(r.err.find("ferry: waiting for the suspend in progress in process " + pid + " to end\n") !=
              std::string::npos);
        CHECK(suspend.finish().exit_code == 0);
        CHECK(json_of(cli({"status", pid, "--format", "json"}))["state"] == "running");
      },
      {{"FERRY_TEST_OP_DELAY_MS", "1000"}});
  CHECK(got == want);
}

TEST_CASE("threads keep issuing CUDA calls while the engine works", "[engine]") {
  auto plain = run({kBin + "/tests/programs/shim_stress", "8", "60"}, emu_env());
  REQUIRE(plain.exit_code == 0);
  SECTION("operations from a thread of the program (C++ API)") {
    TempDir t;
    auto r = run(under_ferry({kBin + "/tests/programs/shim_stress", "8", "60", t.path}), emu_env());
    INFO(r.err);
    REQUIRE(r.exit_code == 0);
    CHECK(r.out == plain.out);
    auto ops = lines_with(r.err, "engine operations");
    REQUIRE(ops.size() == 1);
    CHECK(ops[0].find(" 0 engine operations") == std::string::npos);
  }
  SECTION("operations from another process (CLI)") {
    TempDir t;
    Child c(under_ferry({kBin + "/tests/programs/shim_stress", "4", "400"}), emu_env());
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    std::string pid = std::to_string(c.pid());
    ok(cli({"checkpoint", pid, t / "a", "--leave-running"}));
    ok(cli({"migrate", pid, "--device", "1"}));
    ok(cli({"suspend", pid}));
    ok(cli({"resume", pid, "--device", "0"}));
    ok(cli({"checkpoint", pid, t / "b", "--parent", t / "a", "--leave-running"}));
    auto r = c.finish();
    INFO(r.err);
    REQUIRE(r.exit_code == 0);
    auto alone = run({kBin + "/tests/programs/shim_stress", "4", "400"}, emu_env());
    CHECK(r.out == alone.out);
  }
}

TEST_CASE("a program checkpoints and migrates itself through the C++ API", "[engine][api]") {
  TempDir t;
  std::vector<std::string> args = {kBin + "/examples/mlp_trainer", "--steps", "20", "--quiet", "--ballast-mb", "4",
                                   "--ferry-at", "5:checkpoint:" + (t / "img"), "--ferry-at", "10:migrate:1",
                                   "--ferry-at", "15:suspend-resume"};
  auto plain = run({kBin + "/examples/mlp_trainer", "--steps", "20", "--quiet", "--ballast-mb", "4"}, emu_env());
  auto r = run(under_ferry(args), emu_env());
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(lines_with(r.out, "ferry checkpoint:" + (t / "img") + " after step 5: ok").size() == 1);
  CHECK(lines_with(r.out, "ferry migrate:1 after step 10: ok").size() == 1);
  CHECK(lines_with(r.out, "ferry suspend-resume after step 15: ok").size() == 1);
  CHECK(result_line(r.out, "weights checksum") == result_line(plain.out, "weights checksum"));
  ok(cli({"verify", t / "img"}));
  // Without ferry the same calls say so, and the program is unaffected.
  auto alone = run(args, emu_env());
  REQUIRE(alone.exit_code == 0);
  CHECK(lines_with(alone.out, "failed: this process is not running under ferry").size() == 3);
  CHECK(result_line(alone.out, "weights checksum") == result_line(plain.out, "weights checksum"));
}

TEST_CASE("damaged images are refused with the file and chunk named", "[engine][faults]") {
  TempDir t;
  const Program p = mlp();
  const std::string want = reference(p);
  std::string img = t / "img";
  auto got = drive_at_random_step(p, [&](const std::string& pid, int) {
    ok(cli({"checkpoint", pid, img}));  // the program stays stopped
    auto m = nlohmann::json::parse(read_file(img + "/manifest.json"));
    std::string pack = img + "/packs/0000.pack";
    uint64_t size = fs::file_size(pack);

    SECTION("a corrupted chunk") {
      // The flipped byte must lie inside the chosen chunk's stored bytes (past its 32-byte
      // header); a small compressed chunk or one in another pack would blame a different chunk.
      std::string hash;
      uint64_t off = 0;
      for (auto& [k, l] : m["chunks"].items()) {
        if (l["pack"] != "0000.pack" || l["stored"].get<uint64_t>() < 2) continue;
        hash = k;
        off = l["offset"].get<uint64_t>() + 32 + l["stored"].get<uint64_t>() / 2;
        break;
      }
      REQUIRE(!hash.empty());
      std::fstream f(pack, std::ios::in | std::ios::out | std::ios::binary);
      f.seekg(static_cast<std::streamoff>(off));
      char b = static_cast<char>(f.get());
      f.seekp(static_cast<std::streamoff>(off));
      f.put(static_cast<char>(b ^ 0x5a));
      f.close();
      auto v = cli({"verify", img});
      CHECK(v.exit_code == 74);
      CHECK(v.err.find(pack + ": chunk " + hash) != std::string::npos);
      CHECK(v.err.find("corrupted") != std::string::npos);
      auto r = cli({"restore", pid, img});
      CHECK(r.exit_code == 74);
      CHECK(r.err.find("corrupted") != std::string::npos);
    }
    SECTION("a truncated pack") {
      REQUIRE(truncate(pack.c_str(), static_cast<off_t>(size / 2)) == 0);
      auto v = cli({"verify", img});
      CHECK(v.exit_code == 74);
      CHECK(v.err.find(pack) != std::string::npos);
      CHECK(v.err.find("truncated") != std::string::npos);
      CHECK(cli({"restore", pid, img}).exit_code == 74);
    }
    SECTION("a format version this ferry does not read") {
      m["version"] = 99;
      std::ofstream(img + "/manifest.json") << m.dump();
      auto v = cli({"inspect", img});
      CHECK(v.exit_code == 78);
      CHECK(v.err.find("image format version 99 is not supported by this ferry (it reads version 1)") !=
            std::string::npos);
      CHECK(cli({"restore", pid, img}).exit_code == 78);
    }
    SECTION("a missing manifest") {
      fs::remove(img + "/manifest.json");
      auto v = cli({"verify", img});
      CHECK(v.exit_code == 74);
      CHECK(v.err.find("manifest.json: missing or unreadable; the image is incomplete") != std::string::npos);
    }
    // The refused restore changed nothing: the program goes on from where it stopped.
    CHECK(json_of(cli({"status", pid, "--format", "json"}))["state"] == "stopped");
    ok(cli({"resume", pid}));
  });
  CHECK(got == want);
}

TEST_CASE("an image of another process is refused", "[engine][faults]") {
  TempDir t;
  {
    Child other(under_ferry({kBin + "/examples/driver_saxpy", "--n", "1000", "--iters", "100", "--iter-delay-ms", "10"}),
                emu_env());
    REQUIRE(other.wait_for("iteration 2\n"));
    ok(cli({"checkpoint", std::to_string(other.pid()), t / "other", "--continue"}));
  }
  const Program p = mlp();
  auto got = drive_at_random_step(p, [&](const std::string& pid, int) {
    auto r = cli({"restore", pid, t / "other"});
    CHECK(r.exit_code == 78);
    CHECK(r.err.find("holds a different GPU state than this process has") != std::string::npos);
  });
  CHECK(got == reference(p));
}

TEST_CASE("a full disk leaves the previous image intact and the program running", "[engine][faults]") {
  TempDir t;
  const Program p = mlp();
  std::string img = t / "img";
  {
    Child first(under_ferry(p.argv), emu_env());
    REQUIRE(first.wait_for("step 3 loss"));
    ok(cli({"checkpoint", std::to_string(first.pid()), img, "--continue"}));
  }
  std::string before = read_file(img + "/manifest.json");
  auto check_intact = [&] {
    CHECK(read_file(img + "/manifest.json") == before);
    ok(cli({"verify", img}));
    for (auto& e : fs::directory_iterator(t.path))
      CHECK(e.path().filename().string().find(".tmp-") == std::string::npos);  // nothing half-written left
  };
  SECTION("ENOSPC part-way through the packs") {
    auto got = drive_at_random_step(
        p,
        [&](const std::string& pid, int) {
          auto r = cli({"checkpoint", pid, img, "--continue"});
          CHECK(r.exit_code == 78);
          CHECK(r.err.find("no space left on the device") != std::string::npos);
          CHECK(r.err.find("the previous image, if any, is untouched") != std::string::npos);
          check_intact();
        },
        {{"FERRY_TEST_ENOSPC_AFTER", std::to_string(6 << 20)}});
    CHECK(got == reference(p));
  }
  SECTION("a real file system that fills up") {
    std::string small = t / "small";
    fs::create_directory(small);
    if (mount("tmpfs", small.c_str(), "tmpfs", 0, "size=8m") != 0) SKIP("cannot mount a small tmpfs here (not root?)");
    std::string img2 = small + "/img";
    auto got = drive_at_random_step(p, [&](const std::string& pid, int) {
      auto r = cli({"checkpoint", pid, img2, "--continue"});
      CHECK(r.exit_code == 78);
      CHECK(r.err.find("no space left on the device") != std::string::npos);
      CHECK(!fs::exists(img2));
      CHECK(fs::is_empty(small));
    });
    umount(small.c_str());
    CHECK(got == reference(p));
  }
}

TEST_CASE("targets that cannot take the program are refused before anything changes", "[engine][faults]") {
  const Program p = mlp();
  SECTION("not enough memory") {
    auto got = drive_at_random_step(
        p,
        [&](const std::string& pid, int) {
          auto r = cli({"migrate", pid, "--device", "1"});
          CHECK(r.exit_code == 78);
          CHECK(r.err.find("device 1 (ferry emulated GPU) has 8 MiB available; the program's GPU state needs") !=
                std::string::npos);
          CHECK(physical_device_of(pid) == 0);
        },
        {{"FERRY_EMU_DEVICE1", "memory=8M"}});
    CHECK(got == reference(p));
  }
  SECTION("no code for the device's architecture") {
    auto got = drive_at_random_step(
        p,
        [&](const std::string& pid, int) {
          auto r = cli({"migrate", pid, "--device", "1"});
          CHECK(r.exit_code == 78);
          CHECK(r.err.find("compute capability 7.5) cannot run the program's code") != std::string::npos);
          CHECK(r.err.find("sm_80") != std::string::npos);
        },
        {{"FERRY_EMU_DEVICE1", "cc=7.5"}});
    CHECK(got == reference(p));
  }
  SECTION("no such device") {
    auto got = drive_at_random_step(p, [&](const std::string& pid, int) {
      auto r = cli({"migrate", pid, "--device", "7"});
      CHECK(r.exit_code == 78);
      CHECK(r.err.find("device 7 does not exist (2 devices)") != std::string::npos);
    });
    CHECK(got == reference(p));
  }
}

TEST_CASE("a scheduler's signal leaves a checkpoint and a clean exit", "[engine]") {
  TempDir t;
  Child c(under_ferry(mlp().argv, {"--on-signal", "TERM=checkpoint:" + (t / "preempted")}), emu_env());
  REQUIRE(c.wait_for("step 6 loss"));
  kill(c.pid(), SIGTERM);
  auto r = c.finish();
  INFO(r.err);
  CHECK(r.exit_code == 0);
  CHECK(r.err.find("checkpoint written to " + (t / "preempted")) != std::string::npos);
  CHECK(r.out.find("weights checksum") == std::string::npos);  // it stopped there
  ok(cli({"verify", t / "preempted"}));
}

TEST_CASE("the control socket answers only its user and root", "[engine][control]") {
  if (geteuid() != 0) SKIP("needs root to act as another user");
  // A socket directory of the test's own: opening it up below must not turn away the
  // CLI of tests running beside this one.
  TempDir t;
  chmod(t.path.c_str(), 0755);  // the way to it open to all, as /tmp is
  std::string dir = t / "sockets";
  std::map<std::string, std::string> env = {{"FERRY_SOCKET_DIR", dir}};
  Child c(under_ferry(mlp().argv), emu_env(env));
  REQUIRE(c.wait_for("step 2 loss"));
  std::string sock = dir + "/" + std::to_string(c.pid()) + ".sock";
  struct stat sb;
  REQUIRE(stat(dir.c_str(), &sb) == 0);
  CHECK((sb.st_mode & 0777) == 0700);
  // As uid 65534: first the directory keeps it out, then (opened up by mistake) the
  // peer-credential check does.
  auto as_stranger = [&](std::string* reply) -> int {
    int pipefd[2];
    REQUIRE(pipe(pipefd) == 0);
    pid_t child = fork();
    if (child == 0) {
      close(pipefd[0]);
      if (setgid(65534) != 0 || setuid(65534) != 0) _exit(3);
      int fd = socket(AF_UNIX, SOCK_STREAM, 0);
      sockaddr_un a{};
      a.sun_family = AF_UNIX;
      snprintf(a.sun_path, sizeof a.sun_path, "%s", sock.c_str());
      if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) _exit(errno == EACCES ? 2 : 4);
      std::string req = "{\"v\":1,\"op\":\"suspend\",\"options\":{}}\n";
      // The process may answer and close before reading this (EPIPE): its answer counts.
      if (send(fd, req.data(), req.size(), MSG_NOSIGNAL) < 0 && errno != EPIPE) _exit(5);
      char buf[1024];
      ssize_t n;
      while ((n = read(fd, buf, sizeof buf)) > 0)
        if (write(pipefd[1], buf, static_cast<size_t>(n)) < 0) _exit(6);
      _exit(0);
    }
    close(pipefd[1]);
    char buf[1024];
    ssize_t n;
    while ((n = read(pipefd[0], buf, sizeof buf)) > 0) reply->append(buf, static_cast<size_t>(n));
    close(pipefd[0]);
    int status = 0;
    waitpid(child, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  };
  std::string reply;
  CHECK(as_stranger(&reply) == 2);  // EACCES
  chmod(dir.c_str(), 0777);
  chmod(sock.c_str(), 0777);
  reply.clear();
  int rc = as_stranger(&reply);
  chmod(sock.c_str(), 0600);
  chmod(dir.c_str(), 0700);
  CHECK(rc == 0);
  CHECK(reply.find("permission denied: uid 65534 may not control process " + std::to_string(c.pid())) !=
        std::string::npos);
  CHECK(json_of(cli({"status", std::to_string(c.pid()), "--format", "json"}, env))["state"] == "running");
  auto r = c.finish();
  CHECK(r.exit_code == 0);
  CHECK(result_line(r.out, "weights checksum") == reference(mlp()));
}

TEST_CASE("the CLI lists, describes and pre-flights", "[engine][cli]") {
  Child c(under_ferry(mlp().argv), emu_env());
  REQUIRE(c.wait_for("step 2 loss"));
  std::string pid = std::to_string(c.pid());
  auto ps = cli({"ps", "--format", "json"});
  ok(ps);
  bool listed = false;
  for (auto& p : json_of(ps))
    if (p["pid"].get<int>() == c.pid())
      listed = p["state"] == "running" && p["command"].get<std::string>().find("mlp_trainer") != std::string::npos &&
               p["job"].is_null();  // not run as a job
  CHECK(listed);
  auto chk = cli({"check", pid});
  ok(chk);
  CHECK(chk.out.find("ready: ferry can checkpoint, restore and migrate here") != std::string::npos);
  auto machine = cli({"check", "--emulator", "--format", "json"});
  ok(machine);
  auto m = json_of(machine);
  CHECK(m["ok"] == true);
  CHECK(m["devices"].size() == 2);
  CHECK(m["devices"][0]["arena_address_free"] == true);
  // Free memory as a restore checks it (the simulated NVML): all of it, then less what
  // the machine's other tenants hold.
  CHECK(m["devices"][0]["free"] == m["devices"][0]["memory"]);
  CHECK(!m.contains("free_memory_unknown"));
  auto shared = json_of(cli({"check", "--emulator", "--format", "json"}, {{"FERRY_EMU_DEVICE1", "held=3g"}}));
  CHECK(shared["devices"][1]["free"].get<uint64_t>() == shared["devices"][1]["memory"].get<uint64_t>() - (3ull << 30));
  CHECK(shared["devices"][0]["free"] == shared["devices"][0]["memory"]);
  auto words = cli({"check", "--emulator"}, {{"FERRY_EMU_DEVICE1", "held=3g"}});
  CHECK(words.out.find("device 1: ferry emulated GPU, compute capability 9.0, 16.0 GiB (13.0 GiB free), VMM yes, "
                       "arena address free\n") != std::string::npos);
  // A driver with no NVML beside it: the free memory not known, and why.
  TempDir bare;
  auto unknown =
      json_of(cli({"check", "--real-driver", ferry_test::lone_simulated_driver(bare.path), "--format", "json"}));
  REQUIRE(unknown["devices"].size() == 2);
  CHECK(unknown["devices"][1]["free"].is_null());
  CHECK(unknown["free_memory_unknown"].get<std::string>().starts_with("cannot load NVML: " +
                                                                      (bare / "libnvidia-ml.so.1")));
  auto none = cli({"status", "999999999"});
  CHECK(none.exit_code == 69);
  CHECK(none.err.find("no process 999999999") != std::string::npos);
  auto usage = cli({"migrate", pid});
  CHECK(usage.exit_code == 64);
  // Options of a whole-job restore, refused before anything is read.
  auto lone = cli({"restore", "/nonexistent/img", "--incremental"});
  CHECK(lone.exit_code == 64);
  CHECK(lone.err == "ferry restore: --incremental is for the dump of --on-signal SIGNAL=dump:DIR, which is missing\n");
  for (const char* whole_job : {"--on-signal", "--detach", "--dry-run", "--emulator", "--real-driver"}) {
    std::vector<std::string> args = {"restore", pid, "/nonexistent/img", whole_job};
    if (std::string(whole_job) == "--on-signal") args.push_back("TERM=dump:/nonexistent/next");
    if (std::string(whole_job) == "--real-driver") args.push_back("/nonexistent/libcuda.so.1");
    auto in_process = cli(args);
    CHECK(in_process.exit_code == 64);
    CHECK(in_process.err == "ferry restore: " + std::string(whole_job) + " is for a whole job (ferry restore DIR); "
                            "ferry restore PID DIR only replaces a running process's GPU state, through the driver it "
                            "has\n");
  }
  auto several = cli({"restore", pid, "/nonexistent/img", "--detach", "--emulator", "--dry-run"});
  CHECK(several.exit_code == 64);
  CHECK(several.err == "ferry restore: --detach, --dry-run and --emulator are for a whole job (ferry restore DIR); "
                       "ferry restore PID DIR only replaces a running process's GPU state, through the driver it has\n");
  auto stay = cli({"restore", "/nonexistent/img", "--stay-stopped"});
  CHECK(stay.exit_code == 64);
  CHECK(stay.err == "ferry restore: --stay-stopped is for ferry restore PID DIR (a running process's GPU state); a "
                    "whole job restored from DIR runs on at once\n");
  for (const char* acting : {"--detach", "--on-signal"}) {
    std::vector<std::string> args = {"restore", "/nonexistent/img", "--dry-run", acting};
    if (std::string(acting) == "--on-signal") args.push_back("TERM=dump:/nonexistent/next");
    auto dry = cli(args);
    CHECK(dry.exit_code == 64);
    CHECK(dry.err == "ferry restore: --dry-run starts nothing: --detach and --on-signal have nothing to act on\n");
  }
  c.finish();
}

TEST_CASE("a CUDA graph with work ferry did not record is refused by name", "[engine][graphs]") {
  Child c(under_ferry({kBin + "/tests/programs/graph_loop", "--steps", "60", "--step-delay-ms", "20", "--memset2d"}),
          emu_env());
  REQUIRE(c.wait_for("step 3 hash"));
  std::string pid = std::to_string(c.pid());
  TempDir t;
  auto r = cli({"checkpoint", pid, t / "img"});
  CHECK(r.exit_code == 78);
  CHECK(r.err.find("a CUDA graph ferry cannot re-create: the graph has 5 nodes and ferry recorded 4") !=
        std::string::npos);
  CHECK_FALSE(fs::exists(t / "img"));
  auto s = cli({"suspend", pid});
  CHECK(s.exit_code == 78);
  auto done = c.finish();
  CHECK(done.exit_code == 0);  // the program never noticed
  auto alone = run({kBin + "/tests/programs/graph_loop", "--steps", "60", "--memset2d"}, emu_env());
  CHECK(result_line(done.out, "final hash") == result_line(alone.out, "final hash"));
}

TEST_CASE("FERRY_ARENA_SIZE=64g means 64 GiB to the shim and to ferry check", "[engine][settings]") {
  const std::map<std::string, std::string> env = {{"FERRY_ARENA_SIZE", "64g"}};
  auto machine = cli({"check", "--emulator", "--format", "json"}, env);
  ok(machine);
  auto m = json_of(machine);
  REQUIRE(m["devices"].size() == 2);
  CHECK(m["devices"][0]["arena_address"] == "0x500000000000");
  CHECK(m["devices"][1]["arena_address"] == "0x501000000000");  // 0x500000000000 + 64 GiB

  TempDir t;
  Child c(under_ferry(mlp().argv), emu_env(env));
  REQUIRE(c.wait_for("step 2 loss"));
  ok(cli({"checkpoint", std::to_string(c.pid()), t / "img", "--continue"}));
  auto manifest = nlohmann::json::parse(read_file(t / "img/manifest.json"));
  CHECK(manifest["state"]["arena"]["size"] == "0x1000000000");
  CHECK(manifest["state"]["arena"]["base"] == "0x500000000000");
  c.finish();
}

TEST_CASE("an image whose device-state log has another schema is refused with both versions named",
          "[engine][faults]") {
  TempDir t;
  Child c(under_ferry(mlp().argv), emu_env());
  REQUIRE(c.wait_for("step 2 loss"));
  std::string pid = std::to_string(c.pid());
  std::string img = t / "img";
  ok(cli({"checkpoint", pid, img}));  // the program stays stopped
  auto m = nlohmann::json::parse(read_file(img + "/manifest.json"));
  REQUIRE(m["state"]["schema"] == 1);
  m["state"]["schema"] = 99;
  std::ofstream(img + "/manifest.json") << m.dump();
  auto r = cli({"restore", pid, img});
  CHECK(r.exit_code == 78);
  CHECK(r.err.find(img + ": the device-state log has schema version 99; this ferry reads version 1 (the image was "
                         "written by a newer ferry)") != std::string::npos);
  // Refused before anything changed: the program resumes and ends as if untouched.
  ok(cli({"resume", pid}));
  auto done = c.finish();
  CHECK(result_line(done.out, "weights checksum") == reference(mlp()));
}
