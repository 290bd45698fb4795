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
#include <filesystem>
#include <string>
#include <vector>

#include "client.hpp"
#include "full_process.hpp"
#include "commands.hpp"
#include "job.hpp"
#include "output.hpp"
#include "paths.hpp"
#include "process_image.hpp"
#include "relay.hpp"
#include "restore_guard.hpp"
#include "sockets.hpp"

#include <ferry_common/settings.hpp>

namespace {

void prepend_env(const char* var, const std::string& value, char sep) {
  const char* old = getenv(var);
  std::string v = value;
  if (old && *old) v += sep + std::string(old);
  setenv(var, v.c_str(), 1);
}

struct RunArgs {
  std::vector<std::string> cmd;
  bool strict = false, emulator = false, no_arena = false, pid_namespace = false, host_pids = false,
       net_namespace = false;
  int preserve_fds = 0;
  std::string device_map, log, real_driver;
  std::vector<std::string> on_signal;
};

// --on-signal SIG=dump:DIR (ferry run --pid-namespace or --host-pids, ferry restore): on that signal
// ferry dumps the whole job to DIR; the job has then ended and ferry exits 0.
// SIG=checkpoint:DIR rules are the shim's (GPU state only); they are returned in shim.
// A dump's parent, when given, is the image it writes only the changes since. Each dump
// rule and its DIR go to dumps, for check_dumps. Returns 0, or 64 after saying which
// rule is not understood.
using DumpRules = std::vector<std::pair<std::string, std::string>>;
int signal_actions(const std::vector<std::string>& rules, bool job, ferry::cli::SignalActions& actions,
                   std::string& shim, DumpRules& dumps, const char* who, const std::string& parent = "") {
  for (auto& s : rules) {
    size_t eq = s.find('=');
    std::string action = eq == std::string::npos ? "" : s.substr(eq + 1);
    bool dump = action.rfind("dump:", 0) == 0 && action.size() > 5;
    bool ckpt = action.rfind("checkpoint:", 0) == 0 && action.size() > 11;
    int sig = eq == std::string::npos ? 0 : ferry::settings::parse_signal(s.substr(0, eq));
    if (!sig || (!dump && !ckpt)) {
      fprintf(stderr,
              "%s: --on-signal %s: expected SIGNAL=dump:DIR (the whole job, with --pid-namespace or --host-pids) or "
              "SIGNAL=checkpoint:DIR (GPU state only), e.g. TERM=dump:/ckpt/job\n",
              who, s.c_str());
      return ferry::cli::kUsage;
    }
    if (dump && !job) {
      fprintf(stderr, "%s: --on-signal %s: a whole-process dump needs the program run as a job, under ferry's init "
                      "(add --pid-namespace, or --host-pids where the CUDA driver cannot start in a PID namespace)\n",
              who, s.c_str());
      return ferry::cli::kUsage;
    }
    if (ckpt) {
      shim += (shim.empty() ? "" : ";") + s;
      continue;
    }
    std::string dir = action.substr(5);
    dumps.push_back({s, dir});
    actions[sig] = [dir, parent](pid_t init) {
      ferry::cli::DumpArgs da;
      da.dir = dir;
      ferry::cli::Output o;
      o.progress = "never";
      o.summary_on_stderr = true;
      // --incremental builds on the image restored from, if it is still there: a job is
      // never lost for want of it.
      if (!parent.empty() && access((parent + "/process.json").c_str(), F_OK) != 0)
        fprintf(stderr, "ferry: %s, restored from, is gone: the whole job is dumped, not only what changed\n",
                parent.c_str());
      else
        da.parent = parent;
      fprintf(stderr, "ferry: signal received: dumping the job to %s\n", dir.c_str());
      // A failed dump passes the signal on, as without an action: the job ends as the
      // scheduler asked, never left without its ferry by a bug of ferry's.
      try {
        bool parent_failed = false;
        da.parent_failed = &parent_failed;
        int rc = ferry::cli::cmd_dump(init, da, o);
        // A dump reads nothing but its parent: an image lost (74) is that one. Other
        // failures count where the dump says they came from the parent (one from a newer
        // ferry, removed since the check above, too many packs to hold open); a refusal of
        // the job itself would only fail again. The failed dump has brought the job back
        // (where it could not, the second is refused at once and the signal passed on): it
        // is dumped whole instead.
        if (rc != 0 && (rc == ferry::cli::kDataLost || parent_failed) && !da.parent.empty()) {
          if (rc == ferry::cli::kDataLost)
            fprintf(stderr, "ferry: %s, restored from, is damaged: the whole job is dumped instead\n",
                    da.parent.c_str());
          else
            fprintf(stderr, "ferry: the dump building on %s failed (above): the whole job is dumped instead\n",
                    da.parent.c_str());
          da.parent.clear();
          rc = ferry::cli::cmd_dump(init, da, o);
        }
        return rc == 0;
      } catch (const std::exception& e) {
        fprintf(stderr, "ferry: internal error during the dump (a bug; please report it): %s\n", e.what());
        return false;
      }
    };
  }
  return 0;
}

// Whether the dumps signal_actions found (rule, DIR) could work here, checked once
// everything else about the command is: 0, or 78 having said why not -- as the job
// starts, not when the scheduler's signal comes and a failed dump costs the job.
int check_dumps(const DumpRules& dumps, const char* who) {
  for (size_t i = 0; i < dumps.size(); i++) {
    auto& [rule, dir] = dumps[i];
    if (std::string why = ferry::cli::dump_preflight(dir, i == 0); !why.empty()) {  // CRIU judged once
      fprintf(stderr, "%s: --on-signal %s: the dump could not work: %s\n", who, rule.c_str(), why.c_str());
      return ferry::cli::kFixFirst;
    }
  }
  return 0;
}

int run(const RunArgs& a) {
  // Checked here, or the job would find whatever ferry opens at that number instead.
  for (int fd = 3; fd < 3 + a.preserve_fds; fd++)
    if (!ferry::cli::from_launcher(fd)) {
      fprintf(stderr, "ferry run: --preserve-fds %d: fd %d is not open (the job gets fds 3 to %d from whoever "
                      "starts ferry run, e.g. 3>>LOG)\n", a.preserve_fds, fd, 2 + a.preserve_fds);
      return ferry::cli::kUsage;
    }
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
  ferry::cli::SignalActions actions;
  std::string spec;
  bool job = a.pid_namespace || a.host_pids;
  if (a.net_namespace && !job) {
    fprintf(stderr, "ferry run: --net-namespace is for a job: add --pid-namespace (or --host-pids where the CUDA "
                    "driver cannot start in a PID namespace)\n");
    return ferry::cli::kUsage;
  }
  DumpRules dumps;
  if (int rc = signal_actions(a.on_signal, job, actions, spec, dumps, "ferry run")) return rc;
  if (a.net_namespace) {
    // Said now, not when the scheduler's signal comes and the dump is refused. A stream
    // socket at 1 or 2 (journald's) is relayed (relay.hpp).
    std::vector<int> fds;
    for (int fd = 0; fd < 3 + a.preserve_fds; fd++)
      if (!ferry::cli::OutputRelay::takes(fd)) fds.push_back(fd);
    if (std::string u = ferry::cli::unix_sockets_among(fds); !u.empty()) {
      const char* fix = "; give the job a pipe, a terminal or a file there, or run it without --net-namespace";
      const std::string why = std::string("from outside the job's network namespace, where CRIU cannot find such a "
                                          "socket (") +
                              ferry::cli::kRelayScope + ")";
      if (!actions.empty()) {
        fprintf(stderr, "ferry run: --net-namespace: %s %s: --on-signal's dump would fail%s\n", u.c_str(),
                why.c_str(), fix);
        return ferry::cli::kFixFirst;
      }
      fprintf(stderr, "ferry run: warning: --net-namespace: %s %s: ferry dump will refuse the job%s\n", u.c_str(),
              why.c_str(), fix);
    }
  }
  if (int rc = check_dumps(dumps, "ferry run")) return rc;
  if (!spec.empty()) setenv("FERRY_ON_SIGNAL", spec.c_str(), 1);
  prepend_env("LD_PRELOAD", shim, ' ');
  if (job) {
    // The shim knows a job in a PID namespace by its /proc; one with the host's pids by this.
    setenv("FERRY_JOB", a.host_pids ? "host-pids" : "pid-namespace", 1);
    return ferry::cli::run_job(a.cmd, actions, a.host_pids, a.net_namespace, a.preserve_fds);
  }
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
  note_launcher_fds();  // before anything here opens a descriptor of its own
  // Not a verb for people: what ferry check runs inside a job (full_process.hpp).
  if (argc == 2 && std::string(argv[1]) == "__driver-start") return driver_start();
  // CRIU runs ferry as its action script during a restore (restore_guard.hpp).
  if (argc == 1 && getenv("CRTOOLS_SCRIPT_ACTION")) return criu_action_script(getenv("CRTOOLS_SCRIPT_ACTION"));
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
  auto* pidns = r->add_flag("--pid-namespace", ra.pid_namespace,
                            "run the program as a job in its own PID namespace, under ferry's init (needs root)");
  r->add_flag("--host-pids", ra.host_pids,
              "run the program as a job under ferry's init without a PID namespace, for a CUDA driver that cannot "
              "start in one: its processes keep their pids, so its image is restored only where they are free")
      ->excludes(pidns);
  r->add_flag("--net-namespace", ra.net_namespace,
              "give the job a network of its own (loopback only; with --pid-namespace or --host-pids): its ports "
              "and abstract socket names are then its own, so its image is restored beside the original or twice "
              "at once, but nothing outside can reach it");
  r->add_option("--on-signal", ra.on_signal,
                "SIGNAL=dump:DIR: on that signal, dump the whole job to DIR and exit 0 (needs --pid-namespace or "
                "--host-pids); "
                "SIGNAL=checkpoint:DIR: write the GPU state to DIR and exit (e.g. TERM=dump:/ckpt/job)")
      ->expected(1)
      ->take_all();
  r->add_option("--preserve-fds", ra.preserve_fds,
                "pass descriptors 3 to 2+N on to the job (a job starts with 0-2 only); a restore of its image takes "
                "them from whoever runs ferry restore, as it does stdio")
      ->check(CLI::Range(0, 1000));
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
  ck->add_option("--parent", op.parent, "an earlier image (or DIR itself): unchanged chunks are not written again; the new image still stands alone");
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

  ferry::cli::DumpArgs da;
  auto* dp = app.add_subcommand("dump", "save a whole job (CPU state by CRIU, GPU state by ferry) to an image; the job "
                                        "ends unless --leave-running (ferry restore DIR brings it back)");
  dp->add_option("pid", pid, "the job's ferry run, its init, or any process in it")->required();
  dp->add_option("dir", da.dir, "image directory (replaced atomically if it exists)")->required();
  dp->add_flag("--leave-running", da.leave_running, "let the job go on once the image is written");
  dp->add_option("--parent", da.parent, "an earlier whole-process image (or DIR itself): unchanged GPU chunks are not written again; the new image still stands alone");
  dp->add_option("--zstd", da.zstd, "compress GPU chunks with zstd at this level (1-19)")->check(CLI::Range(0, 19));
  dp->add_option("--staging-mb", da.staging_mb, "pinned host staging memory for the GPU copies (default 256)");
  dp->add_flag("--read-all", da.read_all, "read and hash every GPU chunk, even those the fingerprints show unchanged");
  dp->add_option("--lock-timeout", da.lock_timeout_s, "seconds the driver may wait for queued GPU work (default 60)");
  dp->add_option("--ghost-limit", da.ghost_limit,
                 "largest deleted-but-open file the image may hold, e.g. 256m (default 1g; CRIU's own is 1m)")
      ->transform([](const std::string& v) {
        auto n = ferry::settings::parse_size(v);
        if (!n) throw CLI::ValidationError("--ghost-limit", "'" + v + "' is not a size (e.g. 512m, 2g)");
        return std::to_string(*n);
      });
  add_output(dp, out, true);

  std::vector<std::string> rt_args;
  ferry::cli::RestoreArgs ra2;
  std::vector<std::string> rt_on_signal;
  auto* rt = app.add_subcommand("restore", "ferry restore DIR: bring back a whole job from a `ferry dump` image (it runs "
                                           "under this command until it ends, or under a ferry of its own with "
                                           "--detach); ferry restore PID DIR: replace a "
                                           "running process's GPU state with an image's");
  rt->add_option("args", rt_args, "DIR (a whole-process image), or PID DIR")->required()->expected(1, 2);
  rt->add_option("--device", op.device, "restore the program's device onto this GPU");
  rt->add_option("--device-map", op.device_map, "program device i goes to GPU MAP[i]");
  rt->add_flag("--stay-stopped", op.stay_stopped, "keep the program stopped until `ferry resume` (PID DIR only)");
  rt->add_flag("--emulator", ra2.emulator, "restore onto the simulated GPU of this build (DIR only)");
  rt->add_option("--real-driver", ra2.real_driver, "the CUDA driver of this machine (DIR only)");
  rt->add_flag("-d,--detach", ra2.detach,
               "return once the job runs again, leaving it under a ferry of its own in a new session (DIR only; the job "
               "keeps this command's stdio: redirect it)");
  rt->add_flag("--dry-run", ra2.dry_run,
               "check that the job could be restored here and say where its GPU memory would go; start nothing (DIR "
               "only)");
  rt->add_option("--on-signal", rt_on_signal, "SIGNAL=dump:DIR: dump the restored job again on that signal (DIR only)")
      ->expected(1)
      ->take_all();
  bool rt_incremental = false;
  rt->add_flag("--incremental", rt_incremental,
               "that dump writes only the GPU memory changed since this image (its parent; it stands alone all the "
               "same, and may replace this very image)");
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
  // Past this point a failure has its own message and exit code; anything thrown that
  // nobody caught is a bug of ferry's, said as one rather than an abort.
  // Image paths a job is sent travel in control messages, which are JSON text: one that
  // is not UTF-8 is refused here, before anything stops, rather than failing half-way
  // (or being sent altered). inspect and verify read any path.
  std::vector<std::pair<const char*, std::string>> sent;
  for (auto* c : {ck, sp, rs, mg}) {
    if (!c->parsed()) continue;
    sent.push_back({"image directory", op.dir});
    sent.push_back({"--parent", op.parent});
  }
  if (dp->parsed()) sent.insert(sent.end(), {{"image directory", da.dir}, {"--parent", da.parent}});
  if (rt->parsed()) sent.push_back({"image directory", rt_args.back()});  // not PID of PID DIR
  for (auto& s : ra.on_signal) sent.push_back({"--on-signal", s});
  for (auto& s : rt_on_signal) sent.push_back({"--on-signal", s});
  for (auto& [what, path] : sent) {
    // What is sent is the absolute path: a relative one takes the working directory's name.
    std::string p = std::string(what) == "--on-signal" ? path.substr(path.find(':') + 1) : path;
    const bool relative = !p.empty() && p[0] != '/';
    std::error_code cwd_gone;  // then what is sent fails later, with its own message
    const std::string whole = relative ? std::filesystem::absolute(p, cwd_gone).string() : p;
    if (json_text(path) && json_text(whole)) continue;
    fprintf(stderr,
            "ferry %s: %s %s%s is not valid UTF-8, which ferry's messages to the job (JSON) cannot carry; use a "
            "UTF-8 path (a symbolic link to the directory will do)\n",
            app.get_subcommands().front()->get_name().c_str(), what, path.c_str(),
            relative && json_text(path) ? (" (" + whole + ")").c_str() : "");
    return kUsage;
  }
  try {
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
    if (dp->parsed()) return cmd_dump(pid, da, out);
    if (rt->parsed()) {
      if (rt_args.size() == 2) {
        try {
          size_t used = 0;
          pid = std::stoi(rt_args[0], &used);
          if (used != rt_args[0].size()) throw std::invalid_argument("pid");
        } catch (const std::exception&) {
          fprintf(stderr, "ferry restore: %s is not a process id (ferry restore DIR, or ferry restore PID DIR)\n",
                  rt_args[0].c_str());
          return kUsage;
        }
        std::vector<std::string> whole_job;  // given, and not for this restore
        for (auto [given, name] : {std::pair{!rt_on_signal.empty(), "--on-signal"}, {rt_incremental, "--incremental"},
                                   {ra2.detach, "--detach"}, {ra2.dry_run, "--dry-run"}, {ra2.emulator, "--emulator"},
                                   {!ra2.real_driver.empty(), "--real-driver"}})
          if (given) whole_job.push_back(name);
        if (!whole_job.empty()) {
          fprintf(stderr, "ferry restore: %s %s for a whole job (ferry restore DIR); ferry restore PID DIR only "
                          "replaces a running process's GPU state, through the driver it has\n",
                  ferry::cli::list_text(whole_job).c_str(), whole_job.size() == 1 ? "is" : "are");
          return kUsage;
        }
        op.dir = rt_args[1];
        return cmd_op("restore", pid, op, out);
      }
      if (op.stay_stopped) {
        fprintf(stderr, "ferry restore: --stay-stopped is for ferry restore PID DIR (a running process's GPU state); "
                        "a whole job restored from DIR runs on at once\n");
        return kUsage;
      }
      if (ra2.dry_run && (ra2.detach || !rt_on_signal.empty())) {
        fprintf(stderr, "ferry restore: --dry-run starts nothing: --detach and --on-signal have nothing to act on\n");
        return kUsage;
      }
      ra2.dir = rt_args[0];
      ra2.device = op.device;
      ra2.device_map = op.device_map;
      SignalActions actions;
      std::string shim_rules;
      if (rt_incremental && rt_on_signal.empty()) {
        fprintf(stderr, "ferry restore: --incremental is for the dump of --on-signal SIGNAL=dump:DIR, which is "
                        "missing\n");
        return kUsage;
      }
      // Absolute: the dump runs later, and must find this image whatever the directory then.
      std::string parent = rt_incremental ? std::filesystem::absolute(ra2.dir).lexically_normal().string() : "";
      DumpRules dumps;
      if (int rc = signal_actions(rt_on_signal, true, actions, shim_rules, dumps, "ferry restore", parent)) return rc;
      if (!shim_rules.empty()) {
        fprintf(stderr, "ferry restore: --on-signal takes SIGNAL=dump:DIR here (the restored program keeps the "
                        "checkpoint rules it was started with)\n");
        return kUsage;
      }
      if (int rc = check_dumps(dumps, "ferry restore")) return rc;
      return cmd_restore_process(ra2, out, actions);
    }
    if (in->parsed()) return is_process_image(dir) ? inspect_process_image(dir, out) : cmd_inspect(dir, out);
    if (vf->parsed()) return is_process_image(dir) ? verify_process_image(dir, out) : cmd_verify(dir, out);
    if (chk->parsed()) return cmd_check(pid, emulator, real_driver, out);
    return kUsage;
  } catch (const std::exception& e) {
    fprintf(stderr, "ferry: internal error (a bug; please report it): %s\n", e.what());
    return kBug;
  }
}
