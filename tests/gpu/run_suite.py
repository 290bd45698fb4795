#!/usr/bin/env python3
"""The real-GPU suite: probes of the driver, the examples and the engine under the
shim, bandwidth, and PyTorch training under ferry. Called by scripts/gpu-check.sh.

Each check runs with its own timeout and ends as pass, fail or skip with figures;
the whole run writes OUT/report.json and OUT/summary.txt as it goes (a run cut short
still leaves the checks done so far).

--emulator runs everything that can run on the simulated GPU against it instead (the
PyTorch checks are skipped): that is how CI keeps this runner honest without a GPU.
"""
import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

A = None
REPORT = {"checks": []}


def now():
    return time.monotonic()


# ---- running things ------------------------------------------------------------------

class Failed(Exception):
    pass


class Skipped(Exception):
    pass


class Cancelled(Failed):
    """Its check ran out of time: the thread running it must start nothing more."""


def env_for(extra=None, emulated_direct=False):
    e = dict(os.environ)
    e.pop("LD_PRELOAD", None)
    # A native stack on stderr if it crashes (no debugger on the GPU machines).
    crash = os.path.join(A.build, "tests/gpu/libferry_crash_report.so")
    if os.path.exists(crash):
        e["LD_PRELOAD"] = crash
    e["PYTHONFAULTHANDLER"] = "1"
    e["FERRY_CONTROL_TIMEOUT"] = e.get("FERRY_CONTROL_TIMEOUT", "120")
    if emulated_direct:  # a program run on the simulated GPU without the shim
        e["LD_LIBRARY_PATH"] = os.path.join(A.build, "emulator/lib") + ":" + e.get("LD_LIBRARY_PATH", "")
        e["FERRY_EMU_KERNELS"] = os.path.join(A.build, "emu-kernels")
    if A.emulator:
        e.setdefault("FERRY_EMU_MEMORY", "8G")
        e["FERRY_EMU_KERNELS"] = os.path.join(A.build, "emu-kernels")
    if extra:
        e.update(extra)
    return e


# Every process a check starts, each the leader of its own session: a check that runs
# out of time has all of them killed, so nothing it started overlaps the next checks
# (GPU memory, CRIU) or outlives the run.
LIVE = set()
LIVE_LOCK = threading.Lock()
# Each check's thread carries the generation it was started in; a check that times out,
# and every check after it, moves the generation on, so the abandoned thread of a
# timed-out check is refused any further process even once the next check runs.
GENERATION = [0]
CHECK_GEN = threading.local()


def spawn(cmd, env, **kw):
    with LIVE_LOCK:
        mine = getattr(CHECK_GEN, "value", None)
        if mine is not None and mine != GENERATION[0]:  # the check this thread runs for was given up
            raise Cancelled("cancelled: the check ran out of time")
        p = subprocess.Popen(cmd, text=True, env=env, start_new_session=True, **kw)
        LIVE.add(p)
    return p


def kill_all():
    with LIVE_LOCK:
        procs = list(LIVE)
        LIVE.clear()
    for p in procs:
        try:  # the leader may be gone and its group still there
            os.killpg(p.pid, 9)
        except OSError:
            pass


def run(cmd, timeout, extra_env=None, direct=False, check=True, env=None):
    """Runs a command to completion; returns (rc, stdout, stderr)."""
    p = spawn(cmd, env or env_for(extra_env, emulated_direct=direct and A.emulator), stdout=subprocess.PIPE,
              stderr=subprocess.PIPE)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as e:
        try:
            os.killpg(p.pid, 9)
            p.communicate(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        raise Failed(f"{' '.join(cmd[:3])}... did not finish within {timeout} s") from e
    finally:
        with LIVE_LOCK:
            LIVE.discard(p)
    p = subprocess.CompletedProcess(cmd, p.returncode, out, err)
    if check and p.returncode != 0:
        crash = [ln for ln in p.stderr.splitlines() if ln.startswith("crash-report:")]
        said = "\n".join(crash[:24]) + "\n" if crash else ""
        raise Failed(f"{' '.join(cmd)} exited {p.returncode}: {said}{(p.stderr or p.stdout).strip()[-600:]}")
    return p.returncode, p.stdout, p.stderr


def ferry_cmd():
    return os.path.join(A.build, "tools/ferry")


def under_ferry(cmd, log=None):
    v = [ferry_cmd(), "run"]
    if A.emulator:
        v.append("--emulator")
    if log:
        v += ["--log", log]
    return v + ["--"] + cmd


def cli(*args, timeout=180):
    quiet = ["--progress", "never"] if args[0] not in ("inspect", "status", "ps", "check") else []
    rc, out, err = run([ferry_cmd(), *args, "--format", "json", *quiet], timeout, check=False)
    try:
        j = json.loads(out) if out.strip() else {}
    except json.JSONDecodeError:
        j = {"raw": out}
    if rc != 0:
        raise Failed(f"ferry {' '.join(args)} exited {rc}: {err.strip()[-600:] or out.strip()[-600:]}")
    return j


class Job:
    """A program running under ferry whose output lines are watched."""

    def __init__(self, cmd, extra_env=None):
        self.p = spawn(cmd, env_for(extra_env), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines, self.err = [], []
        self.cv = threading.Condition()
        threading.Thread(target=self._read, args=(self.p.stdout, self.lines), daemon=True).start()
        threading.Thread(target=self._read, args=(self.p.stderr, self.err), daemon=True).start()

    def _read(self, f, into):
        for line in f:
            with self.cv:
                into.append(line.rstrip("\n"))
                self.cv.notify_all()
        with self.cv:
            self.cv.notify_all()

    def wait_for(self, pattern, timeout):
        rx = re.compile(pattern)
        end = now() + timeout
        with self.cv:
            while True:
                if any(rx.search(x) for x in self.lines):
                    return
                if self.p.poll() is not None:
                    self.cv.wait(0.2)
                    if not any(rx.search(x) for x in self.lines):
                        raise Failed(f"the program ended (exit {self.p.returncode}) before printing /{pattern}/: "
                                     + "\n".join(self.err[-8:]))
                    return
                if now() > end:
                    raise Failed(f"no /{pattern}/ within {timeout} s")
                self.cv.wait(0.5)

    def finish(self, timeout):
        try:
            self.p.wait(timeout)
        except subprocess.TimeoutExpired as e:
            self.kill()
            raise Failed(f"the program did not finish within {timeout} s") from e
        time.sleep(0.2)  # the reader threads drain
        return self.p.returncode, list(self.lines), list(self.err)

    def kill(self):
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, 9)
            except OSError:
                pass


def lines_matching(lines, prefix):
    return [x for x in lines if x.startswith(prefix)]


# ---- the report ----------------------------------------------------------------------

def write_report():
    os.makedirs(A.out, exist_ok=True)
    with open(os.path.join(A.out, "report.json.tmp"), "w") as f:
        json.dump(REPORT, f, indent=1)
    os.replace(os.path.join(A.out, "report.json.tmp"), os.path.join(A.out, "report.json"))
    counts = {}
    for c in REPORT["checks"]:
        counts[c["status"]] = counts.get(c["status"], 0) + 1
    with open(os.path.join(A.out, "summary.txt"), "w") as f:
        f.write(f"ferry gpu-check, {REPORT.get('machine', {}).get('gpu', '?')}"
                f"{' (SIMULATED GPU)' if A.emulator else ''}\n")
        f.write(", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + "\n")
        for k, v in REPORT.get("machine", {}).items():
            if k not in ("gpu", "emulator"):
                f.write(f"  {k}: {json.dumps(v) if isinstance(v, (dict, list, bool)) else v}\n")
        f.write("\n")
        for c in REPORT["checks"]:
            f.write(f"{c['status'].upper():5} {c['name']} ({c['seconds']:.1f} s)\n")
            if c.get("detail"):
                f.write(f"      {c['detail']}\n")
            for k, v in c.get("figures", {}).items():
                f.write(f"      {k}: {v}\n")


def check(name, timeout, needs_torch=False, needs_gpu=False):
    def wrap(fn):
        def runner():
            if A.only and not any(name.startswith(o) for o in A.only):
                return
            entry = {"name": name, "status": "running", "figures": {}, "detail": "", "timeout_s": timeout,
                     "seconds": 0.0}
            t0 = now()
            result = {"status": "pass"}
            done = threading.Event()
            # In the report while it runs: a run killed from outside still says which
            # check it was in.
            REPORT["checks"].append(entry)
            write_report()

            def body():
                CHECK_GEN.value = gen
                try:
                    if needs_gpu and A.emulator:
                        raise Skipped("needs a real GPU")
                    if needs_torch and not torch_ok():
                        raise Skipped("PyTorch with CUDA is not available here")
                    figures = fn() or {}
                    result["figures"] = figures
                except Skipped as e:
                    result["status"], result["detail"] = "skip", str(e)
                except Failed as e:
                    result["status"], result["detail"] = "fail", str(e)
                except Exception as e:  # a bug of the suite is a failed check, not a dead run
                    result["status"], result["detail"] = "fail", f"{type(e).__name__}: {e}"
                finally:
                    done.set()

            with LIVE_LOCK:
                GENERATION[0] += 1
                gen = GENERATION[0]
            threading.Thread(target=body, daemon=True).start()
            # The run's deadline cuts a check short too: what was done so far is reported.
            limit = max(1.0, min(timeout, A.deadline - now()))
            final = result
            if not done.wait(limit):
                with LIVE_LOCK:
                    GENERATION[0] += 1  # its thread starts nothing more
                kill_all()
                # A copy: what the abandoned thread writes into `result` later is not reported.
                final = {"status": "fail",
                         "detail": (f"timed out after {timeout} s" if limit >= timeout
                                    else f"stopped after {limit:.0f} s: the run's deadline")}
            entry.update(final)
            entry["seconds"] = now() - t0
            write_report()
            print(f"gpu-check: {entry['status']:4} {name} ({entry['seconds']:.1f} s) {entry['detail'][:200]}",
                  flush=True)
        runner.check_name = name
        return runner
    return wrap


_torch = None


def torch_ok():
    global _torch
    if _torch is None:
        if A.emulator:
            _torch = False
        else:
            rc, out, _ = run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"], 120,
                             check=False)
            _torch = rc == 0 and out.strip() == "True"
    return _torch


def real_driver():
    rc, out, _ = run(["ldconfig", "-p"], 30, check=False)
    for line in out.splitlines():
        if "libcuda.so.1" in line and "x86-64" in line:
            return line.split("=>")[-1].strip()
    for d in ("/usr/local/nvidia/lib64", "/usr/lib/x86_64-linux-gnu", "/usr/lib64"):
        if os.path.exists(os.path.join(d, "libcuda.so.1")):
            return os.path.join(d, "libcuda.so.1")
    return ""


# ---- the checks ----------------------------------------------------------------------

def probe(*args):
    return [os.path.join(A.build, "tests/gpu/gpu_probe"), *args]


@check("probe.gpa_table", 120)
def gpa_table():
    """cuGetProcAddress_v2 answers of the real driver against the simulated GPU's."""
    _, real_out, _ = run(probe("gpa"), 60, direct=True)
    _, emu_out, _ = run(probe("gpa"), 60, extra_env={
        "LD_LIBRARY_PATH": os.path.join(A.build, "emulator/lib")})
    real, emu = json.loads(real_out), json.loads(emu_out)
    emu_by = {(q["name"], q["version"], q["flags"]): q for q in emu["queries"]}
    diffs, not_simulated = [], set()
    for q in real["queries"]:
        e = emu_by.get((q["name"], q["version"], q["flags"]))
        if e and q["variant"] and not e["variant"] and e["status"] == 1:
            not_simulated.add(q["variant"])  # a variant the emulator does not implement (status SYMBOL_NOT_FOUND)
            continue
        if e is None or q["result"] != e["result"] or q["status"] != e["status"] or q["variant"] != e["variant"]:
            diffs.append(f"{q['name']}@{q['version']}/f{q['flags']}: driver {q['result']}:{q['variant'] or '-'}"
                         f" emulator {e['result'] if e else '?'}:{(e or {}).get('variant') or '-'}")
    with open(os.path.join(A.out, "gpa_real.json"), "w") as f:
        f.write(real_out)
    figures = {"driver_version": real["driver_version"], "queries": len(real["queries"]),
               "differences": len(diffs), "variants not simulated": " ".join(sorted(not_simulated)) or "none"}
    REPORT.setdefault("gpa_differences", diffs)
    if diffs:
        raise Failed(f"{len(diffs)} of {len(real['queries'])} answers differ from the simulated GPU's; first: "
                     + "; ".join(diffs[:6]) + " (all in report.json gpa_differences)")
    return figures


@check("probe.reserve_hint", 60)
def reserve_hint():
    _, out, _ = run(probe("reserve-hint"), 60, direct=True)
    cases = json.loads(out)["cases"]
    figures = {f"{c['hint']} {c['size'] >> 20} MiB": ("honoured" if c["honoured"] else
                                                      f"got {c['got']} (result {c['result']})") for c in cases}
    if not cases[0]["honoured"] or not cases[1]["honoured"]:
        raise Failed("the driver did not honour the hint at the shim's default arena base: "
                     + json.dumps(figures))
    return figures


@check("probe.export_tables", 240)
def export_tables():
    known = {"6bd5fb6c5bf4e74a8987d93912fd9df9": "cudart interface", "a094798c2e742e7493f20800200c0a66": "tools hooks",
             "42d85a8123f6cb478298f6e78a3aecdc": "tools tls", "c693336e1121df11a8c368f355d89593": "context local storage",
             "263e88607cd2614392f6bbd5006dfa7e": "context checks", "d4082055bde6704b8d34ba123c66e1f2": "integrity check",
             "21318c60971432488ca641ff7324c8f2": "tools context (cuBLAS)"}
    seen = {}
    progs = {"cudart (mlp_trainer)": [os.path.join(A.build, "examples/mlp_trainer"), "--steps", "2", "--quiet"]}
    if torch_ok():
        progs["cuBLAS (torch matmul)"] = [sys.executable, "-c",
                                          "import torch; a=torch.randn(256,256,device='cuda'); print((a@a).sum().item())"]
    for who, cmd in progs.items():
        _, _, err = run(under_ferry(cmd, log="debug"), 180)
        ids = sorted(set(re.findall(r"cuGetExportTable ([0-9a-f]{32}): (found|not found)", err)))
        seen[who] = [f"{i} {known.get(i, '')} ({st})".replace("  ", " ") for i, st in ids]
        # Private slots that were handed virtual handles (interpose/private_calls.hpp translates them).
        seen[who] += sorted(set(re.findall(r"export table [0-9a-f]{8} slot \d+: called with virtual handles", err)))
    return seen


@check("probe.release", 120)
def release_probe():
    """What a CUDA process holds of the driver with a context, once every context is
    destroyed, and after NVIDIA's checkpoint API checkpointed it (driven by pid from a
    second process); whether it restores, unlocks and computes again. Facts for the
    whole-process path: CRIU refuses /dev/nvidia* files and mappings."""
    _, out, _ = run(probe("release"), 110, direct=True)
    r = json.loads(out)
    with open(os.path.join(A.out, "release_probe.json"), "w") as f:
        f.write(out)

    def held(k):
        h = r[k]
        return f"{h['fds']} fds, {h['maps']} maps" + (f" ({', '.join(h['files'])})" if h["files"] else "")
    figures = {"with a context": held("with_context"), "contexts destroyed": held("contexts_destroyed"),
               "after the driver checkpoint": held("after_checkpoint"), "after restore": held("after_restore")}
    ctl = r["controller"] or {}
    figures["checkpoint API"] = "present" if ctl.get("api") else "absent"
    if ctl.get("api"):
        figures["lock / checkpoint / restore / unlock"] = " / ".join(
            f"{ctl.get(k, '-')}" + (f" in {ctl[k + '_ms']:.0f} ms" if k + "_ms" in ctl else "")
            for k in ("lock", "checkpoint", "restore", "unlock"))
        figures["states"] = " -> ".join(str(ctl.get(k, "-")) for k in
                                        ("state_before", "state_locked", "state_checkpointed", "state_after"))
        if "restore_pairs" in ctl:
            figures["restore's GPU pairs (each GPU to itself)"] = (
                f"{ctl['restore_pairs']}: restore {ctl.get('restore')}" +
                (f"; then without pairs {ctl['restore_without_pairs']}" if "restore_without_pairs" in ctl else ""))
    figures["context again"] = r["context_again"]
    figures["computes again"] = r["computes_again"]
    if not r["computes_again"]:
        raise Failed("the process cannot use the GPU again after the probe: " + json.dumps(figures))
    # The same with NVML initialized first, as PyTorch's device_count() leaves it: does
    # the driver checkpoint release NVML's files too? (If not, a PyTorch job cannot be
    # dumped by CRIU by either route; ferry names the files.)
    _, out, _ = run(probe("release", "nvml"), 110, direct=True)
    n = json.loads(out)
    with open(os.path.join(A.out, "release_probe_nvml.json"), "w") as f:
        f.write(out)
    if n["nvml"] == "initialized":
        r = n
        figures["with NVML: after the driver checkpoint"] = held("after_checkpoint")
        figures["with NVML: computes again"] = n["computes_again"]
    else:
        figures["with NVML"] = n["nvml"]
    return figures


@check("probe.context_memory", 60)
def context_memory():
    """NVML's free memory on GPU 0 as a process gets a context, loads a module and
    launches one kernel, allocates 1 MiB, and once it lets go: what a restored process needs on a GPU beyond
    its device memory, which is all ferry restore's free-memory check counts."""
    _, out, _ = run(probe("context-memory"), 50, direct=True)
    r = json.loads(out)
    with open(os.path.join(A.out, "context_memory.json"), "w") as f:
        f.write(out)
    if r["nvml"] != "answers":
        raise Failed(f"NVML: {r['nvml']} (ferry restore then checks GPUs by total memory only)")
    f = r["free"]
    if any(v < 0 for v in f.values()):
        raise Failed("NVML gave no memory figure at some step: " + out.strip())

    def mib(b):
        return f"{b / 2**20:.1f} MiB"
    return {"primary context": mib(f["after_cuinit"] - f["with_context"]),
            "module load and one launch": mib(f["with_context"] - f["after_module"]),
            "1 MiB allocation": mib(f["after_module"] - f["after_1mib"]),
            "not back after the release": mib(f["after_cuinit"] - f["released"]),
            "free with 1 MiB held, NVML vs cuMemGetInfo": f"{mib(f['after_1mib'])} vs {mib(r['cumemgetinfo_free'])}"}


@check("probe.fork_child", 90)
def fork_child_probe():
    """What a child forked without exec once CUDA is initialized (a DataLoader's worker)
    holds of the driver -- /dev/nvidia* files and mappings CRIU cannot dump -- as it
    inherits them, and once ferry's fork handler replaced them (FERRY_FORK_RELEASE=on);
    whether the parent computes after the child has exited, either way."""
    figures, held = {}, {}
    for mode, how in (("off", []), ("on", []), ("on", ["exit"])):
        label = mode + (", the child ending with exit()" if how else "")
        _, out, _ = run(under_ferry(probe("fork", *how)), 80, extra_env={"FERRY_FORK_RELEASE": mode})
        r = json.loads(out.strip().splitlines()[-1])
        c = r["child"] or {}
        held[label] = (c.get("fds", -1), c.get("maps", -1))
        figures[f"child, FERRY_FORK_RELEASE={label}"] = (
            f"{c.get('fds')} fds, {c.get('maps')} maps" + (f" ({', '.join(c['files'])})" if c.get("files") else "") +
            f"; {r['child_end']}")
        figures[f"parent computes after, {label}"] = r["computes_after"]
        if not r["computes_after"]:
            raise Failed(f"the parent cannot compute after its forked child ({label}): " + json.dumps(figures))
        if r["child_end"] != "exited 0":
            raise Failed(f"the forked child ended badly ({label}): " + json.dumps(figures))
    if held["on"] != (0, 0):
        raise Failed("ferry's fork handler left driver files in the child: " + json.dumps(figures))
    return figures


PID_NAMESPACE_LIMIT_S = 240
# How the whole-process checks run their jobs: in a PID namespace of their own, unless
# probe.pid_namespace found that the driver does not start in one -- then without
# (`ferry run --host-pids`), so the round trips still say what they can.
JOB_KIND = "--pid-namespace"


@check("probe.pid_namespace", PID_NAMESPACE_LIMIT_S)
def pid_namespace_probe():
    """Where the driver starts in a PID namespace: without the shim and with the host's
    /proc (as a `ferry run --pid-namespace` job has it), without the shim and with a /proc
    of its own, and as a ferry job (the shim translating /proc paths and thread names).
    The driver failing in the first and starting in the second says its trouble is
    /proc's numbering; the third is what ferry's whole-process path needs. Where the job
    starts, it starts again with each family of the shim's translations turned off, which
    says which the driver needs. Each variant that fails runs again under strace (the kit
    carries one), into logs/, so the system call the driver could not make is known
    without a debugger."""
    if os.geteuid() != 0:
        raise Skipped("PID namespaces need root")
    started = time.monotonic()
    unshare = shutil.which("unshare")
    strace = os.environ.get("FERRY_STRACE") or shutil.which("strace")
    logs = os.path.join(A.out, "logs")

    def outcome(cmd, extra=None, direct=True, timeout=30):
        try:
            rc, out, err = run(cmd, timeout, extra_env=extra, direct=direct, check=False)
        except Cancelled:
            raise
        except Failed as e:  # a hang: the other variants still tell something
            return -1, str(e), ""
        try:
            r = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return rc, f"exit {rc}, no report: {err.strip()[-200:]}", err
        steps = ", ".join(f"{k} {r.get(k, '-')}" for k in ("cuInit", "cuDeviceGetCount", "context", "cuMemAlloc"))
        ok = all(r.get(k) == 0 for k in ("cuInit", "cuDeviceGetCount", "context", "cuMemAlloc"))
        return (rc if rc != 0 or ok else 1), steps + f" (pid {r['pid']}, /proc says {r['proc_self']})", err

    def traced(name, cmd, extra=None, direct=True):
        """The variant again under strace: the whole trace to logs/<name>.strace, and
        the calls on /proc paths that failed (the likely culprits) for the summary."""
        if not strace:
            return "no strace here (scripts/gpu-kit-deps.sh carries one)"
        os.makedirs(logs, exist_ok=True)
        path = os.path.join(logs, name + ".strace")
        # One file per thread (-ff): with one file for all, a call another thread
        # interrupts is split into "<unfinished ...>" and "<... resumed>" lines.
        parts = tempfile.mkdtemp(prefix="strace-", dir=logs)
        outcome([strace, "-ff", "-tt", "-qq", "-s", "200", "-o", os.path.join(parts, "t"), "--"] + cmd, extra,
                direct)
        timed = []  # (time, "tid time call"), merged in time order
        for part in os.listdir(parts):
            tid = part.rsplit(".", 1)[-1]
            with open(os.path.join(parts, part), errors="replace") as f:
                timed += [(ln.split(" ", 1)[0], f"{tid} {ln}") for ln in f.read().splitlines()]
        lines = [ln for _, ln in sorted(timed, key=lambda x: x[0])]
        shutil.rmtree(parts, ignore_errors=True)
        if not lines:
            return "strace wrote nothing"
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        failed = [ln for ln in lines if "/proc" in ln and " = -1 " in ln]
        traps = [ln for ln in lines  # delivered, not installed; a child's end is no news
                 if (" --- SIG" in ln and "SIGCHLD" not in ln) or " +++ killed by " in ln]
        return f"{len(lines)} lines in logs/{name}.strace; failed on /proc: " + \
            (" | ".join(ln[-160:] for ln in failed[-6:]) or "none") + \
            ("; signals: " + " | ".join(ln[-160:] for ln in traps[:3]) if traps else "")

    start = [ferry_cmd(), "__driver-start"]  # what ferry check runs in a job
    figures = {"no namespace": outcome(start)[1]}
    if unshare:
        host_proc = [unshare, "--pid", "--fork"] + start
        rc, figures["namespace, host /proc"], _ = outcome(host_proc)
        if rc != 0:
            figures["namespace, host /proc, strace"] = traced("pidns_host_proc", host_proc)
        figures["namespace, own /proc"] = outcome([unshare, "--pid", "--fork", "--mount-proc"] + start)[1]
    else:
        figures["namespace without the shim"] = "not run: no unshare here"
    job = [ferry_cmd(), "run", "--pid-namespace"] + (["--emulator"] if A.emulator else []) + ["--"] + start
    rc, text, _ = outcome(job, direct=False)
    figures["ferry run --pid-namespace"] = text
    if rc == 0:
        # Which of the shim's translations the driver needs: the job again with each
        # family of calls left as it is (a test hook of the shim's), one at a time -- so
        # two that stand in for each other would both look unneeded. Within what is
        # left of the check's time; a hang is said as such and ends the series.
        families = ("open", "stat", "list", "link", "names")  # FERRY_TEST_NO_PROC_TRANSLATION's
        needed, tried = [], []
        for family in families:
            if time.monotonic() - started > PID_NAMESPACE_LIMIT_S - 40:
                break
            frc, ftext, _ = outcome(job, {"FERRY_TEST_NO_PROC_TRANSLATION": family}, direct=False, timeout=15)
            figures[f"ferry job, {family} untranslated"] = ftext
            tried.append(family)
            if frc == -1:
                needed.append(f"{family} (hung)")
                break
            if frc != 0:
                needed.append(family)
        untried = [f for f in families if f not in tried]
        figures["the driver needs the translation of"] = (", ".join(needed) or "none of them alone") + \
            (f" (not tried: {', '.join(untried)})" if untried else "")
    if rc != 0:
        global JOB_KIND
        JOB_KIND = "--host-pids"  # before the slow reruns: the check may run out of time in them
        figures["the whole-process checks below"] = "run their jobs with --host-pids"
        _, _, err = outcome(job, {"FERRY_TRACE_PROC": "on"}, direct=False)
        trace = [x for x in err.splitlines() if x.startswith("ferry: ")]
        os.makedirs(logs, exist_ok=True)
        with open(os.path.join(logs, "pid_namespace.trace.txt"), "w") as f:
            f.write(err)
        figures["FERRY_TRACE_PROC (last lines; all in logs/pid_namespace.trace.txt)"] = " | ".join(trace[-8:])
        figures["ferry run --pid-namespace, strace"] = traced("pidns_ferry_job", job, direct=False)
        raise Failed("the driver does not start in a ferry job's PID namespace: " + json.dumps(figures))
    return figures


@check("probe.shim_overhead", 180)
def shim_overhead():
    n = "2000" if A.emulator else "50000"
    direct, shim = [], []
    for _ in range(2):  # alternated, the best of each kept
        direct.append(json.loads(run(probe("overhead", n), 80, direct=True)[1])["ns"])
        shim.append(json.loads(run(under_ferry(probe("overhead", n)), 80,
                                   extra_env={"FERRY_CONTROL": "off"})[1])["ns"])
    figures = {}
    for call in direct[0]:
        d = min(x[call] for x in direct)
        s = min(x[call] for x in shim)
        figures[call] = f"direct {d:.1f} ns, under ferry {s:.1f} ns, added {s - d:.1f} ns, ratio {s / d:.3f}"
    return figures


def strip_timing(text):
    return [x for x in text.splitlines() if not re.search(r"\bms\b|device clock", x)]


@check("examples.under_shim", 240)
def examples_under_shim():
    figures = {}
    for name, cmd in {"mlp_trainer": [os.path.join(A.build, "examples/mlp_trainer"), "--steps", "40"],
                      "driver_saxpy": [os.path.join(A.build, "examples/driver_saxpy")]}.items():
        _, plain, _ = run(cmd, 120, direct=True)
        _, ferried, err = run(under_ferry(cmd), 120)
        a, b = strip_timing(plain), strip_timing(ferried)
        if a != b:
            first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            raise Failed(f"{name} printed differently under ferry at line {first}: "
                         f"{a[first] if first < len(a) else '<end>'!r} vs {b[first] if first < len(b) else '<end>'!r}")
        figures[name] = f"identical ({len(a)} lines)"
    return figures


def drive(cmd, actions, result_prefix, reference_lines, timeout, extra_env=None, marker="step {}"):
    """Runs cmd under ferry; at each (step, [cli commands]) acts through the CLI; returns
    figures. The lines starting with result_prefix must equal the reference run's."""
    job = Job(under_ferry(cmd), extra_env)
    figures = {}
    try:
        for step, commands in actions:
            job.wait_for("^" + re.escape(marker.format(step)) + r"\b", timeout)
            for c in commands:
                c = [str(x).replace("{pid}", str(job.p.pid)) for x in c]
                t0 = now()
                j = cli(*c)
                stats = j.get("stats", {})
                figures[f"step {step}: ferry {' '.join(c[:1] + c[2:])}"] = (
                    f"{now() - t0:.2f} s wall" + (f", {stats['device_bytes'] / 2**20:.0f} MiB, stopped "
                                                  f"{stats.get('stopped_seconds', 0):.2f} s" if "device_bytes" in stats else ""))
        rc, lines, err = job.finish(timeout)
    finally:
        job.kill()
    if rc != 0:
        raise Failed(f"the program exited {rc} under ferry: " + "\n".join(err[-8:]))
    got = [x for x in lines if x.startswith(result_prefix)]
    want = [x for x in reference_lines if x.startswith(result_prefix)]
    if not want or got != want:
        first = next((i for i, (x, y) in enumerate(zip(want, got)) if x != y), min(len(want), len(got)))
        raise Failed(f"results differ from the uninterrupted run at line {first} of {len(want)}: "
                     f"{want[first] if first < len(want) else '<end>'!r} vs {got[first] if first < len(got) else '<end>'!r}")
    figures["result"] = f"bit-identical ({len(want)} lines)"
    return figures


def engine_actions(tmp):
    img1, img2 = os.path.join(tmp, "c1"), os.path.join(tmp, "c2")
    return [
        (8, [["checkpoint", "{pid}", img1], ["resume", "{pid}"]]),                    # (a) resumed in place
        (16, [["suspend", "{pid}"], ["resume", "{pid}"]]),                            # (c) suspend + resume
        (24, [["checkpoint", "{pid}", img2, "--parent", img1],                         # incremental, stays stopped
              ["suspend", "{pid}", "--discard"], ["restore", "{pid}", img2]]),         # (d) fresh contexts
        (32, [["migrate", "{pid}", "--device", "0"]]),                                 # (b) with one GPU: same device
    ]


@check("engine.mlp_trainer", 300)
def engine_mlp():
    steps = "48"
    base = [os.path.join(A.build, "examples/mlp_trainer"), "--steps", steps,
            "--ballast-mb", "64" if A.emulator else "2048", "--hidden", "256"]
    _, ref, _ = run(base + ["--quiet"], 240, direct=True)
    tmp = tempfile.mkdtemp(prefix="ferry-gpu-check-")
    try:
        figures = drive(base + ["--step-delay-ms", "40"], engine_actions(tmp), "weights checksum",
                        ref.splitlines(), 240)
        j = cli("inspect", os.path.join(tmp, "c2"))
        figures["incremental image"] = (f"{j.get('bytes_written', 0) / 2**20:.1f} MiB written, "
                                        f"{j.get('bytes_reused', 0) / 2**20:.1f} MiB from the parent")
        cli("verify", os.path.join(tmp, "c2"))
        return figures
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@check("engine.driver_saxpy", 240)
def engine_saxpy():
    base = [os.path.join(A.build, "examples/driver_saxpy"), "--iters", "40"]
    _, ref, _ = run(base, 120, direct=True)
    tmp = tempfile.mkdtemp(prefix="ferry-gpu-check-")
    try:
        img = os.path.join(tmp, "c1")
        actions = [(10, [["checkpoint", "{pid}", img], ["suspend", "{pid}", "--discard"], ["restore", "{pid}", img]]),
                   (20, [["suspend", "{pid}"], ["resume", "{pid}"]])]
        return drive(base + ["--iter-delay-ms", "40"], actions, "checksum", ref.splitlines(), 200, marker="iteration {}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@check("engine.cuda_graph", 180)
def engine_graph():
    base = [os.path.join(A.build, "tests/programs/graph_loop"), "--steps", "40"]
    _, eager, _ = run(base + ["--eager"], 120, direct=True)
    _, graphed, _ = run(base, 120, direct=True)
    if eager.splitlines() != graphed.splitlines():
        raise Failed("the graph's results differ from the same work run eagerly (without ferry)")
    tmp = tempfile.mkdtemp(prefix="ferry-gpu-check-")
    try:
        img = os.path.join(tmp, "c1")
        actions = [(10, [["suspend", "{pid}"], ["resume", "{pid}"]]),
                   (20, [["checkpoint", "{pid}", img], ["suspend", "{pid}", "--discard"], ["restore", "{pid}", img]])]
        return drive(base + ["--step-delay-ms", "40"], actions, "step ", eager.splitlines(), 150)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@check("engine.bandwidth", 300)
def bandwidth():
    args = [os.path.join(A.build, "bench/engine_bench"), "--gib", "0.25" if A.emulator else "4",
            "--dir", tempfile.mkdtemp(prefix="ferry-bench-")]
    if not A.emulator:
        drv = real_driver()
        if not drv:
            raise Failed("cannot find the real libcuda.so.1 (ldconfig -p)")
        args += ["--real-driver", drv]
    _, out, _ = run(args, 280)
    with open(os.path.join(A.out, "engine_bench.txt"), "w") as f:
        f.write(out)
    figures = {}
    for line in out.splitlines():
        m = re.match(r"^(\S.*?)\s{2,}([\d.]+) s\s+([\d.]+) s\s+([\d.]+)", line)
        if m:
            figures[m.group(1).strip()] = f"baseline {m.group(2)} s, ferry {m.group(3)} s, ratio {m.group(4)}"
    return figures


def keep_logs(tag, tmp, job):
    """A failed whole-process check leaves what explains it in OUT/logs: the job's
    stderr, CRIU's dump log (ferry keeps it beside the image when criu dump fails) and
    the newest restore work log."""
    d = os.path.join(A.out, "logs")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"{tag}.job-stderr.txt"), "w") as f:
        f.write("\n".join(job.err[-400:]) + "\n")
    for root, _, files in os.walk(tmp):
        for n in files:
            if n.endswith(".log"):
                shutil.copy(os.path.join(root, n), os.path.join(d, f"{tag}.{n}"))
    since = os.path.getmtime(tmp)
    works = sorted((w for w in glob.glob("/tmp/ferry-restore-*/restore.log") if os.path.getmtime(w) >= since),
                   key=os.path.getmtime)
    if works:
        shutil.copy(works[-1], os.path.join(d, f"{tag}.restore.log"))


def whole_process(cmd, marker, result_prefix, reference, extra=None, tag="process", kind=None, run_opts=()):
    """A whole-process round trip: cmd as a `ferry run --pid-namespace` job (kind, or
    JOB_KIND: see above; with run_opts), `ferry dump` at the marker (the job ends),
    `ferry restore` onto the last GPU; the lines starting with result_prefix must equal
    the reference run's. Needs root and CRIU (the carried one: scripts/gpu-kit-deps.sh
    copies it into .gpu-kit/criu)."""
    if os.geteuid() != 0:
        raise Skipped("CRIU needs root")
    kind = kind or JOB_KIND
    v = [ferry_cmd(), "run", kind] + list(run_opts) + (["--emulator"] if A.emulator else []) + ["--"] + cmd
    job = Job(v, extra)
    tmp = tempfile.mkdtemp(prefix="ferry-gpu-check-")
    img = os.path.join(tmp, "job")
    figures = {"job": " ".join(["ferry run", kind] + list(run_opts))}
    try:
        job.wait_for(marker, 180)
        t0 = now()
        d = cli("dump", str(job.p.pid), img)
        st = d.get("stats", {})
        figures["dump"] = (f"{now() - t0:.2f} s wall, job stopped {d.get('stopped_seconds', 0):.2f} s, GPU "
                           f"{st.get('gpu_device_bytes', 0) / 2**20:.0f} MiB, CPU {st.get('cpu_bytes', 0) / 2**20:.0f} MiB")
        rc, _, _ = job.finish(60)
        if rc != 128 + 9:
            raise Failed(f"the dumped job ended with {rc}, not killed (137)")
        cli("verify", img)
        machine = run([ferry_cmd(), "check", "--format", "json"] + (["--emulator"] if A.emulator else []), 120,
                      check=False)[1]
        n = len(json.loads(machine).get("devices", []))
        target = str(max(n - 1, 0))
        # The same checks and placement first, starting nothing (ferry restore --dry-run).
        rc, out, err = run([ferry_cmd(), "restore", img, "--device", target, "--dry-run", "--format", "json"], 120,
                           extra_env=extra, check=False)
        if rc != 0:
            raise Failed(f"ferry restore --dry-run exited {rc}: {err.strip()[-600:]}")
        plan = json.loads(out)
        figures["dry run"] = "; ".join(
            f"process {p['nspid']} device {d['device']} -> GPU {d['gpu']} ({d['bytes'] / 2**20:.0f} MiB)"
            for p in plan.get("processes", []) for d in p.get("devices", [])) or "no GPU memory"
        # NVML's free memory, which the restore checks beside the total (null: NVML did not answer).
        figures["target free memory"] = "; ".join(
            f"GPU {g['gpu']}: " + (f"{g['free'] / 2**30:.2f} GiB free" if g.get("free") is not None else "NVML silent")
            + f" of {g['memory'] / 2**30:.2f} GiB" for g in plan.get("gpus", [])) or "no GPU"
        t0 = now()
        rc, out, err = run([ferry_cmd(), "restore", img, "--device", target], 300, extra_env=extra, check=False)
        figures["restore and run to the end"] = f"{now() - t0:.2f} s onto GPU {target}"
        if rc != 0:
            raise Failed(f"ferry restore exited {rc}: {err.strip()[-600:]}")
        got = [x for x in out.splitlines() if x.startswith(result_prefix)]
        want = [x for x in reference if x.startswith(result_prefix)]
        if not want or got != want[len(want) - len(got):] or not got:
            raise Failed(f"the restored job's results differ from the uninterrupted run's: {got[-2:]} vs {want[-2:]}")
        figures["result"] = f"bit-identical ({len(got)} lines after the restore)"
        return figures
    except BaseException:
        try:
            keep_logs(tag, tmp, job)
        except OSError as e:
            print(f"gpu-check: could not keep the logs of {tag}: {e}", flush=True)
        raise
    finally:
        job.kill()
        shutil.rmtree(tmp, ignore_errors=True)


@check("process.mlp_trainer", 180)
def process_mlp():
    base = [os.path.join(A.build, "examples/mlp_trainer"), "--steps", "60",
            "--ballast-mb", "64" if A.emulator else "2048", "--hidden", "256"]
    _, ref, _ = run(base, 240, direct=True)
    return whole_process(base + ["--step-delay-ms", "40"], r"^step 20 loss", "weights checksum", ref.splitlines(),
                         tag="mlp_trainer")


@check("process.host_pids", 180)
def process_host_pids():
    """process.mlp_trainer's round trip as a job without a PID namespace (`ferry run
    --host-pids`): the way where the driver does not start in one."""
    if JOB_KIND == "--host-pids":
        raise Skipped("process.mlp_trainer ran its job that way")
    base = [os.path.join(A.build, "examples/mlp_trainer"), "--steps", "60", "--hidden", "256"]
    _, ref, _ = run(base, 240, direct=True)
    return whole_process(base + ["--step-delay-ms", "40"], r"^step 20 loss", "weights checksum", ref.splitlines(),
                         tag="host_pids", kind="--host-pids")


@check("process.preempted", 200)
def process_preempted():
    """The scheduler recipe (docs/control.md): `ferry run --on-signal TERM=dump:IMG` and a
    TERM; `ferry restore IMG --on-signal TERM=dump:IMG --incremental` and a TERM again,
    whose dump replaces IMG writing only what changed since the restore (the ballast, as
    restored, is not written again: its GPU fingerprints match); `ferry restore IMG` to
    the end, bit-identical."""
    if os.geteuid() != 0:
        raise Skipped("CRIU needs root")
    base = [os.path.join(A.build, "examples/mlp_trainer"), "--steps", "60",
            "--ballast-mb", "64" if A.emulator else "1024", "--hidden", "256"]
    _, ref, _ = run(base, 240, direct=True)
    want = lines_matching(ref.splitlines(), "weights checksum")
    tmp = tempfile.mkdtemp(prefix="ferry-gpu-check-")
    img = os.path.join(tmp, "job")
    on_term = ["--on-signal", f"TERM=dump:{img}"]
    figures = {"job": f"ferry run {JOB_KIND}"}
    jobs = []

    def preempt(job, marker, what, parent):
        job.wait_for(marker, 120)
        t0 = now()
        job.p.send_signal(15)
        rc, _, err = job.finish(60)
        if rc != 0 or not any("dumping the job to" in x for x in err):
            raise Failed(f"{what}: exit {rc} after the TERM, not 0 (dumped): {' '.join(err[-4:])}")
        with open(os.path.join(img, "process.json")) as f:
            m = json.load(f)
        st = m.get("stats", {})
        if m.get("parent") != parent:
            raise Failed(f"{what}: the image's parent is {m.get('parent')!r}, not {parent!r}: {' '.join(err[-4:])}")
        figures[what] = (f"{now() - t0:.2f} s from the TERM; GPU {st.get('gpu_device_bytes', 0) / 2**20:.0f} MiB, "
                         f"{st.get('gpu_bytes_written', 0) / 2**20:.1f} MiB written, "
                         f"{st.get('gpu_bytes_reused', 0) / 2**20:.1f} MiB from the parent, "
                         f"{st.get('gpu_bytes_carried', 0) / 2**20:.1f} MiB copied in")
        return st

    try:
        emu = ["--emulator"] if A.emulator else []
        jobs.append(Job([ferry_cmd(), "run", JOB_KIND] + emu + on_term + ["--"] + base + ["--step-delay-ms", "40"]))
        preempt(jobs[-1], r"^step 15 loss", "first dump", "")
        jobs.append(Job([ferry_cmd(), "restore", img] + on_term + ["--incremental"]))
        st = preempt(jobs[-1], r"^step 30 loss", "incremental dump", img)
        total, written = st.get("gpu_device_bytes", 0), st.get("gpu_bytes_written", 0)
        if not total or written >= total / 2:
            raise Failed(f"the incremental dump wrote {written} of {total} GPU bytes: the unchanged ballast was "
                         "written again")
        cli("verify", img)
        rc, out, err = run([ferry_cmd(), "restore", img], 120, check=False)
        if rc != 0:
            raise Failed(f"the last ferry restore exited {rc}: {err.strip()[-600:]}")
        got = lines_matching(out.splitlines(), "weights checksum")
        if not got or got != want[len(want) - len(got):]:
            raise Failed(f"the job's results differ from the uninterrupted run's: {got[-2:]} vs {want[-2:]}")
        figures["result"] = f"bit-identical ({len(got)} lines after the last restore)"
        return figures
    except BaseException:
        if jobs:
            try:
                keep_logs("preempted", tmp, jobs[-1])
            except OSError as e:
                print(f"gpu-check: could not keep the logs of preempted: {e}", flush=True)
        raise
    finally:
        for j in jobs:
            j.kill()
        shutil.rmtree(tmp, ignore_errors=True)


@check("process.loader_workers", 180)
def process_loader_workers():
    """A PyTorch DataLoader's shape: mlp_trainer's batches come from two workers forked
    without exec once CUDA is initialized (they inherit the driver's files, which CRIU
    cannot dump; ferry replaces them in the child)."""
    base = [os.path.join(A.build, "examples/mlp_trainer"), "--steps", "60", "--hidden", "256", "--loader-workers", "2"]
    _, ref, _ = run(base, 240, direct=True)
    return whole_process(base + ["--step-delay-ms", "40"], r"^step 20 loss", "weights checksum", ref.splitlines(),
                         tag="loader_workers")


@check("process.python_loader", 180)
def process_python_loader():
    """tests/programs/loader_job.py: a DataLoader's mechanics without PyTorch -- Python's
    multiprocessing workers forked once CUDA is initialized (the driver through ctypes),
    queues, batches in deleted /dev/shm files whose descriptors cross Unix sockets."""
    script = os.path.join(A.src, "tests/programs/loader_job.py")
    base = [sys.executable, script, "150"]
    _, ref, _ = run(base, 120, direct=True)
    return whole_process(base + ["--step-delay-ms", "20"], r"^step 20 sum", "state checksum", ref.splitlines(),
                         tag="python_loader")


@check("process.python_nvml", 180)
def process_python_nvml():
    """The same with NVML initialized first and never shut down, as PyTorch's
    device_count() leaves it: ferry shuts NVML down around the dump and initializes it
    again after (interpose/nvml.hpp); the job counts its GPUs through NVML at the end."""
    script = os.path.join(A.src, "tests/programs/loader_job.py")
    base = [sys.executable, script, "150", "--nvml"]
    _, ref, _ = run(base, 120, direct=True)
    return whole_process(base + ["--step-delay-ms", "20"], r"^step 20 sum", "state checksum", ref.splitlines(),
                         tag="python_nvml")


@check("process.tcp_store", 180)
def process_tcp_store():
    """torchrun's shape: a launcher, its TCP store and a worker, talking over TCP inside
    the job (dumped and restored with CRIU's --tcp-established)."""
    mlp = os.path.join(A.build, "examples/mlp_trainer")
    base = [os.path.join(A.build, "tests/programs/launcher"), "--tcp-store", "1", mlp, "--steps", "60",
            "--hidden", "256"]
    _, ref, _ = run(base, 240, direct=True)
    return whole_process(base + ["--step-delay-ms", "40"], r"^\[worker 0\] step 20 loss", "[worker 0] weights checksum",
                         ref.splitlines(), tag="tcp_store")


@check("process.net_namespace", 180)
def process_net_namespace():
    """process.tcp_store's job with a network of its own (`ferry run --net-namespace`):
    the driver in a network namespace, the TCP store restored into a new one."""
    mlp = os.path.join(A.build, "examples/mlp_trainer")
    base = [os.path.join(A.build, "tests/programs/launcher"), "--tcp-store", "1", mlp, "--steps", "60",
            "--hidden", "256"]
    _, ref, _ = run(base, 240, direct=True)
    return whole_process(base + ["--step-delay-ms", "40"], r"^\[worker 0\] step 20 loss", "[worker 0] weights checksum",
                         ref.splitlines(), tag="net_namespace", run_opts=["--net-namespace"])


@check("process.torch", 200, needs_torch=True)
def process_torch():
    script = os.path.join(A.src, "tests/gpu/torch_train.py")
    extra = {"PYTHONUNBUFFERED": "1"}
    base = [sys.executable, script, "--mode", "default", "--steps", "200"]
    _, ref, _ = run(base, 240, extra_env=extra, direct=True)
    return whole_process(base + ["--step-delay-ms", "15"], r"^step 100\b", "step ", ref.splitlines(), extra,
                         tag="torch")


@check("process.torch_loader", 200, needs_torch=True)
def process_torch_loader():
    """The PyTorch job fed by a DataLoader with two workers forked once CUDA is
    initialized, pinned memory on: the workers' inherited driver files are replaced by
    ferry's fork handler, so the whole job is dumped and restored."""
    script = os.path.join(A.src, "tests/gpu/torch_train.py")
    extra = {"PYTHONUNBUFFERED": "1"}
    base = [sys.executable, script, "--mode", "default", "--steps", "200", "--loader-workers", "2"]
    _, ref, _ = run(base, 240, extra_env=extra, direct=True)
    return whole_process(base + ["--step-delay-ms", "15"], r"^step 100\b", "step ", ref.splitlines(), extra,
                         tag="torch_loader")


@check("process.vs_nvidia", 240)
def process_vs_nvidia():
    """bench/process_dump.sh, one round: ferry's whole-process route against NVIDIA's
    (driver checkpoint with the device memory live, criu dump; criu restore, driver
    restore) on the same trainer -- the dump-time, memory and size targets on this GPU."""
    if os.geteuid() != 0:
        raise Skipped("CRIU needs root")
    ours = [c for c in REPORT["checks"] if c["name"] == "process.mlp_trainer"]
    if ours and ours[0]["status"] != "pass":
        raise Skipped("ferry's route failed above (process.mlp_trainer)")
    env = env_for({"FERRY_BUILD_DIR": A.build, "FERRY_BENCH_GPU": "simulated" if A.emulator else "real"})
    env.pop("LD_PRELOAD", None)  # CRIU runs from the script itself
    cmd = ["bash", os.path.join(A.src, "bench/process_dump.sh"), "64" if A.emulator else "1024", "1"]
    rc, out, err = run(cmd, 230, env=env, check=False)
    with open(os.path.join(A.out, "process_dump.txt"), "w") as f:
        f.write(out + "\n" + err)
    if rc != 0:
        raise Failed(f"bench/process_dump.sh exited {rc}: {(err or out).strip()[-900:]}")
    figures = {}
    for line in out.splitlines():
        m = re.match(r"^(\S.*?)\s{2,}([\d.]+)\s+([\d.]+)\s+([\d.]+)", line)
        if m:
            figures[m.group(1).strip()] = f"ferry {m.group(2)}, NVIDIA {m.group(3)}, ratio {m.group(4)}"
        elif line.startswith("GPU bytes:"):
            figures["second dump"] = line
    if "dump seconds, image synced" not in figures:
        raise Failed(f"bench/process_dump.sh printed no figures: {out.strip()[-600:]}")
    return figures


def torch_check(mode):
    script = os.path.join(A.src, "tests/gpu/torch_train.py")
    extra = {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"} if mode == "expandable" else {}
    extra["PYTHONUNBUFFERED"] = "1"
    steps = 240
    base = [sys.executable, script, "--mode", mode, "--steps", str(steps)]
    _, ref, _ = run(base, 240, extra_env=extra, direct=True)
    _, ferried, _ = run(under_ferry(base), 240, extra_env=extra)
    ref_ms = float(re.search(r"mean step ms ([\d.]+)", ref).group(1))
    fer_ms = float(re.search(r"mean step ms ([\d.]+)", ferried).group(1))
    figures = {"steady-state step": f"{ref_ms:.3f} ms plain, {fer_ms:.3f} ms under ferry, ratio {fer_ms / ref_ms:.3f}"}
    if [x for x in ferried.splitlines() if x.startswith("step ")] != [x for x in ref.splitlines() if x.startswith("step ")]:
        raise Failed("losses under ferry (no operation) differ from the plain run's")
    tmp = tempfile.mkdtemp(prefix="ferry-gpu-check-")
    try:
        img = os.path.join(tmp, "c1")
        actions = [(60, [["suspend", "{pid}"], ["resume", "{pid}"]]),
                   (120, [["checkpoint", "{pid}", img], ["suspend", "{pid}", "--discard"], ["restore", "{pid}", img]]),
                   (180, [["checkpoint", "{pid}", os.path.join(tmp, "c2"), "--parent", img, "--leave-running"]])]
        figures.update(drive(base + ["--step-delay-ms", "15"], actions, "step ", ref.splitlines(), 200, extra))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return figures


@check("torch.default_allocator", 200, needs_torch=True)
def torch_default():
    return torch_check("default")


@check("torch.expandable_segments", 200, needs_torch=True)
def torch_expandable():
    return torch_check("expandable")


@check("torch.cuda_graph", 200, needs_torch=True)
def torch_graph():
    return torch_check("graph")


# The whole-process facts and round trips first: where the run's budget runs out, the
# checks that were never run on a GPU before go first. process.host_pids, which only
# repeats a round trip the other way, after those the issue asks for.
CHECKS = [pid_namespace_probe, release_probe, fork_child_probe, context_memory, process_mlp, process_loader_workers, process_python_loader, process_python_nvml, process_tcp_store, process_torch, process_torch_loader, process_host_pids, process_preempted, process_vs_nvidia, process_net_namespace, gpa_table, reserve_hint, export_tables,
          engine_mlp, engine_saxpy, engine_graph, examples_under_shim, torch_default, torch_expandable, torch_graph,
          shim_overhead, bandwidth]


def machine_facts(limit_s=180):
    """What a device session's note must record beside the checks: the kernel, whether
    the machine has CRIU plugins of its own, and what `ferry check` says of whole-process
    dumps here (the CRIU it found, and the driver in a job's PID namespace)."""
    facts = {"kernel": os.uname().release, "criu_plugin_dir": os.path.isdir("/usr/lib/criu")}
    try:
        rc, out, err = run([ferry_cmd(), "check", "--format", "json"] + (["--emulator"] if A.emulator else []),
                           limit_s, check=False)
        try:
            report = json.loads(out)
            full = report.get("full_process", {})
            facts["ferry_check"] = {k: full.get(k) for k in ("ready", "problems", "warnings", "criu", "driver_in_job",
                                                             "driver_in_host_pids_job") if k in full}
            # Each GPU's total and free memory (NVML's, as a restore checks it; null where silent).
            facts["ferry_check"]["gpus"] = [{k: d.get(k) for k in ("device", "name", "memory", "free")}
                                            for d in report.get("devices", [])]
            if "free_memory_unknown" in report:
                facts["ferry_check"]["free_memory_unknown"] = report["free_memory_unknown"]
        except (ValueError, AttributeError):
            facts["ferry_check"] = f"exit {rc}: {(err or out).strip()[-300:]}"
    except Failed as e:  # a hang here must not cost the checks
        facts["ferry_check"] = str(e)
    return facts


def main():
    global A
    p = argparse.ArgumentParser()
    p.add_argument("--build", required=True)
    p.add_argument("--src", default=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    p.add_argument("--out", required=True)
    p.add_argument("--emulator", action="store_true")
    p.add_argument("--only", default="", help="comma-separated check-name prefixes")
    p.add_argument("--budget-s", type=float, default=400, help="start no check after this many seconds")
    p.add_argument("--deadline-s", type=float, default=0,
                   help="stop a check still running after this many seconds (default: the budget + 150)")
    p.add_argument("--end-by", type=float, default=0,
                   help="the whole run ends by this time (seconds since the epoch; 0: no such bound)")
    A = p.parse_args()
    A.build = os.path.abspath(A.build)
    A.only = [x for x in A.only.split(",") if x]
    os.makedirs(A.out, exist_ok=True)
    machine = {"emulator": A.emulator}
    if not A.emulator:
        rc, out, _ = run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"], 30,
                         check=False)
        machine["gpu"] = out.strip() if rc == 0 else "unknown"
    else:
        machine["gpu"] = "simulated GPU"
    # The clock's time left of the whole run (the device call's limit), as this process's own clock.
    end = now() + (A.end_by - time.time() - 10 if A.end_by else 1e9)
    machine.update(machine_facts(max(10, min(180, end - now() - 60))))
    REPORT["machine"] = machine
    write_report()
    start = now()
    A.deadline = min(start + (A.deadline_s or A.budget_s + 150), end)
    for c in CHECKS:
        if A.only and not any(c.check_name.startswith(o) for o in A.only):
            continue
        if now() - start > A.budget_s or now() > end - 20:
            why = (f"the run's budget of {A.budget_s:.0f} s was spent" if now() - start > A.budget_s
                   else "the whole run's time (--end-by) is nearly up")
            REPORT["checks"].append({"name": c.check_name, "status": "skip", "seconds": 0.0,
                                     "detail": f"not started: {why}"})
            write_report()
            continue
        c()
    kill_all()
    REPORT["seconds"] = now() - start
    write_report()
    failed = [c["name"] for c in REPORT["checks"] if c["status"] == "fail"]
    print(f"gpu-check: {len(REPORT['checks'])} checks, {len(failed)} failed{': ' + ', '.join(failed) if failed else ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
