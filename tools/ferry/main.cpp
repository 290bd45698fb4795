// ferry: the command-line tool. Starts programs under the shim (`ferry run`) and drives
// the ones running, through their control sockets: status, checkpoint, suspend,
// resume, migrate, restore; inspects and verifies images; checks a machine or a
// process before relying on it. Exit codes (client.hpp): 0 done, 64 usage, 69 no such
// process under ferry, 75 retry later, 78 fix first, 74 image lost, 70 bug.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "client.hpp"
#include "commands.hpp"
#include "job.hpp"
#include "paths.hpp"

namespace {

void prepend_env(const char* var, const std::string& value, char sep) {
  const char* old = getenv(var);
  std::string v = value;
  if (old && *old) v += sep + std::string(old);
  setenv(var, v.c_str(), 1);
}

struct RunArgs {
  std::vector<std::string> cmd;
  bool strict = false, emulator = false, no_arena = false, pid_namespace = false;
  std::string device_map, log, real_driver;
  std::vector<std::string> on_signal;
};

int run(const RunArgs& a) {
  std::string shim = ferry::cli::shim_path();
  if (access(shim.c_str(), R_OK) != 0) {
    fprintf(stderr, "ferry run: cannot find the shim %s (set FERRY_SHIM)\n", shim.c_str());
    return ferry::cli::kFixFirst;
  }
  if (a.emulator) {
    std::string drv = ferry::cli::emulator_driver();
    if (access(drv.c_str(), R_OK) != 0) {
      fprintf(stderr, "ferry run: --emulator: the simulated GPU %s is not built\n", drv.c_str());
      return ferry::cli::kFixFirst;
    }
    setenv("FERRY_REAL_DRIVER", drv.c_str(), 1);
    prepend_env("LD_LIBRARY_PATH", drv.substr(0, drv.rfind('/')), ':');
    setenv("FERRY_EMU_KERNELS", ferry::cli::emulator_kernels().c_str(), 0);
  }
  if (!a.real_driver.empty()) setenv("FERRY_REAL_DRIVER", a.real_driver.c_str(), 1);
  if (a.strict) setenv("FERRY_ON_ERROR", "refuse", 1);
  if (!a.device_map.empty()) setenv("FERRY_DEVICE_MAP", a.device_map.c_str(), 1);
  if (!a.log.empty()) setenv("FERRY_LOG", a.log.c_str(), 1);
  if (a.no_arena) setenv("FERRY_ARENA", "off", 1);
  if (!a.on_signal.empty()) {
    std::string spec;
    for (auto& s : a.on_signal) {
      size_t eq = s.find('=');
      if (eq == std::string::npos || s.compare(eq + 1, 11, "checkpoint:") != 0 || s.size() <= eq + 12) {
        fprintf(stderr, "ferry run: --on-signal %s: expected SIGNAL=checkpoint:DIR (e.g. TERM=checkpoint:/ckpt/job)\n",
                s.c_str());
        return ferry::cli::kUsage;
      }
      spec += (spec.empty() ? "" : ";") + s;
    }
    setenv("FERRY_ON_SIGNAL", spec.c_str(), 1);
  }
  prepend_env("LD_PRELOAD", shim, ' ');
  if (a.pid_namespace) return ferry::cli::run_job(a.cmd);
  ferry::cli::exec_command(a.cmd);
}

void add_output(CLI::App* c, ferry::cli::Output& out, bool progress) {
  c->add_option("--format", out.json, "text (default) or json")
      ->transform(CLI::CheckedTransformer(std::map<std::string, bool>{{"text", false}, {"json", true}}));
  if (progress)
    c->add_option("--progress", out.progress, "auto (on a terminal), always or never")
        ->check(CLI::IsMember({"auto", "always", "never"}));
}

}  // namespace

int main(int argc, char** argv) {
  using namespace ferry::cli;
  CLI::App app{"ferry: movable GPU jobs -- checkpoint, restore, suspend, resume and migrate CUDA programs"};
  app.require_subcommand(1);
  Output out;
  OpArgs op;
  int pid = 0;

  RunArgs ra;
  auto* r = app.add_subcommand("run", "run a program under ferry: ferry run [options] -- CMD [ARGS...]");
  r->add_flag("--strict", ra.strict, "refuse to start when ferry cannot work (instead of plain pass-through)");
  r->add_flag("--emulator", ra.emulator, "run on the simulated GPU of this build");
  r->add_option("--device-map", ra.device_map, "program device i is physical device MAP[i], e.g. 1,0");
  r->add_option("--log", ra.log, "shim log level: error|warn|info|debug, add ,state to dump the device state at exit");
  r->add_option("--real-driver", ra.real_driver, "absolute path of the real libcuda.so.1");
  r->add_flag("--no-arena", ra.no_arena, "let the driver place allocations (no fixed addresses: no restore)");
  r->add_flag("--pid-namespace", ra.pid_namespace,
              "run the program as a job in its own PID namespace, under ferry's init (needs root)");
  r->add_option("--on-signal", ra.on_signal,
                "SIGNAL=checkpoint:DIR: on that signal, checkpoint to DIR and exit (e.g. TERM=checkpoint:/ckpt/job)")
      ->expected(1)
      ->take_all();
  r->add_option("command", ra.cmd, "the program and its arguments (after --)")->expected(-1);

  auto* ps = app.add_subcommand("ps", "list this user's processes running under ferry");
  add_output(ps, out, false);

  auto* st = app.add_subcommand("status", "state, devices and last operation of a process");
  st->add_option("pid", pid, "process id")->required();
  add_output(st, out, false);

  auto* ck = app.add_subcommand("checkpoint", "write the GPU state of a process to an image; the program stays stopped "
                                              "until `ferry resume` unless --continue or --leave-running");
  ck->add_option("pid", pid, "process id")->required();
  ck->add_option("dir", op.dir, "image directory (replaced atomically if it exists)")->required();
  ck->add_flag("--leave-running", op.leave_running, "let the program go on as soon as its memory is in host RAM");
  ck->add_flag("--continue", op.cont, "let the program go on once the image is written");
  ck->add_option("--parent", op.parent, "an earlier image: unchanged chunks are referenced, not written");
  ck->add_option("--zstd", op.zstd, "compress chunks with zstd at this level (1-19)")->check(CLI::Range(0, 19));
  ck->add_option("--staging-mb", op.staging_mb, "pinned host staging memory for the copies (default 256)");
  ck->add_flag("--read-all", op.read_all,
               "read and hash every chunk, even those the GPU fingerprints show unchanged since the parent");
  ck->add_option("--timeout", op.timeout, "give up after this many seconds without an answer");
  add_output(ck, out, true);

  auto* sp = app.add_subcommand("suspend", "release all GPU memory of a process; its threads wait at their next CUDA call");
  sp->add_option("pid", pid, "process id")->required();
  sp->add_option("--to", op.dir, "keep the state in this image instead of host RAM");
  sp->add_flag("--discard", op.discard, "drop the GPU state (bring it back with `ferry restore`)");
  sp->add_option("--staging-mb", op.staging_mb, "pinned host staging memory for the copies");
  add_output(sp, out, true);

  auto* rs = app.add_subcommand("resume", "let a stopped or suspended process go on, on the same or other GPUs");
  rs->add_option("pid", pid, "process id")->required();
  rs->add_option("--device", op.device, "move the program's device to this GPU");
  rs->add_option("--device-map", op.device_map, "program device i goes to GPU MAP[i], e.g. 1,0");
  add_output(rs, out, true);

  auto* mg = app.add_subcommand("migrate", "move a process's GPU state to another GPU (suspend + resume in one step)");
  mg->add_option("pid", pid, "process id")->required();
  auto* mg_dev = mg->add_option("--device", op.device, "the GPU to move the program's device to");
  auto* mg_map = mg->add_option("--device-map", op.device_map, "program device i goes to GPU MAP[i], e.g. 1,0");
  mg_dev->excludes(mg_map);
  add_output(mg, out, true);

  auto* rt = app.add_subcommand("restore", "replace a process's GPU state with an image's (taken from that process)");
  rt->add_option("pid", pid, "process id")->required();
  rt->add_option("dir", op.dir, "image directory")->required();
  rt->add_option("--device", op.device, "restore the program's device onto this GPU");
  rt->add_option("--device-map", op.device_map, "program device i goes to GPU MAP[i]");
  rt->add_flag("--stay-stopped", op.stay_stopped, "keep the program stopped until `ferry resume`");
  add_output(rt, out, true);

  std::string dir;
  auto* in = app.add_subcommand("inspect", "describe an image");
  in->add_option("dir", dir, "image directory")->required();
  add_output(in, out, false);

  auto* vf = app.add_subcommand("verify", "read every chunk of an image and check its hash");
  vf->add_option("dir", dir, "image directory")->required();
  add_output(vf, out, true);

  bool emulator = false;
  std::string real_driver;
  auto* chk = app.add_subcommand("check", "pre-flight: can ferry work on this machine, or for this process?");
  chk->add_option("pid", pid, "a process under ferry (default: this machine)");
  chk->add_flag("--emulator", emulator, "check the simulated GPU of this build");
  chk->add_option("--real-driver", real_driver, "check this libcuda.so.1");
  add_output(chk, out, false);

  // `ferry run [options] -- CMD...`: everything after the first -- is the command,
  // whatever options it has (CLI11 would look at them).
  std::vector<std::string> args(argv + 1, argv + argc);
  if (!args.empty() && args[0] == "run") {
    auto dd = std::find(args.begin(), args.end(), "--");
    if (dd != args.end()) {
      ra.cmd.assign(dd + 1, args.end());
      args.erase(dd, args.end());
    }
  }
  std::reverse(args.begin(), args.end());  // CLI11 takes a reversed vector
  try {
    app.parse(args);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return kUsage;
  }
  if (r->parsed()) {
    if (ra.cmd.empty()) {
      fprintf(stderr, "ferry run: no command (ferry run [options] -- CMD [ARGS...])\n");
      return kUsage;
    }
    return run(ra);
  }
  if (ps->parsed()) return cmd_ps(out);
  if (st->parsed()) return cmd_status(pid, out);
  if (ck->parsed()) return cmd_op("checkpoint", pid, op, out);
  if (sp->parsed()) return cmd_op("suspend", pid, op, out);
  if (rs->parsed()) return cmd_op("resume", pid, op, out);
  if (mg->parsed()) {
    if (op.device < 0 && op.device_map.empty()) {
      fprintf(stderr, "ferry migrate: say where to: --device N or --device-map MAP\n");
      return kUsage;
    }
    return cmd_op("migrate", pid, op, out);
  }
  if (rt->parsed()) return cmd_op("restore", pid, op, out);
  if (in->parsed()) return cmd_inspect(dir, out);
  if (vf->parsed()) return cmd_verify(dir, out);
  if (chk->parsed()) return cmd_check(pid, emulator, real_driver, out);
  return kUsage;
}
