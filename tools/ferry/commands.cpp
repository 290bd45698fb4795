#include "commands.hpp"

#include <dlfcn.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include <cuda.h>

#include <ferry_common/control.hpp>
#include <ferry_common/errors.hpp>
#include <ferry_common/json_text.hpp>
#include <ferry_common/ops.hpp>
#include <ferry_common/settings.hpp>
#include <ferry_image/image.hpp>

#include "client.hpp"
#include "cuda_driver.hpp"
#include "output.hpp"
#include "full_process.hpp"
#include "paths.hpp"
#include "process_image.hpp"
#include "sockets.hpp"

namespace ferry::cli {

namespace {

std::string state_hint(const nlohmann::json& status, pid_t pid) {
  std::string st = status.value("state", "");
  if (st == "stopped") return "the program is stopped (ferry resume " + std::to_string(pid) + ")";
  if (st == "suspended" && status.value("suspended_to", "").rfind("nothing", 0) == 0)
    return "the program is suspended and its GPU state discarded (ferry restore " + std::to_string(pid) + " IMAGE)";
  if (st == "suspended")
    return "the program is suspended, its GPU released, state in " + status.value("suspended_to", "?") +
           " (ferry resume " + std::to_string(pid) + ")";
  return "the program is running";
}

std::string devices_text(const nlohmann::json& status) {
  std::string s;
  std::set<int> used;
  if (status.contains("devices_in_use"))
    for (auto& d : status["devices_in_use"]) used.insert(d.get<int>());
  for (auto& d : status.value("devices", nlohmann::json::array())) {
    int v = d["device"].get<int>();
    if (!used.empty() && !used.count(v)) continue;
    if (!s.empty()) s += ", ";
    s += std::to_string(v) + "->GPU" + std::to_string(d["physical"].get<int>());
  }
  return s.empty() ? "-" : s;
}

std::string cmdline(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/cmdline", std::ios::binary);
  std::string arg, s;
  while (std::getline(in, arg, '\0')) s += (s.empty() ? "" : " ") + arg;
  return s.size() > 60 ? s.substr(0, 57) + "..." : s;
}

}  // namespace

std::vector<int> parse_device_map(const std::string& s) {
  std::vector<int> m;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    size_t used = 0;
    int v = std::stoi(item, &used);
    if (used != item.size() || v < 0) throw std::invalid_argument("bad device map " + s);
    m.push_back(v);
  }
  if (m.empty()) throw std::invalid_argument("empty device map");
  return m;
}

namespace {

// Waits while process pid runs an operation other than a resume, up to timeout_s (0: no
// limit). A resume comes after it: the engine runs one at a time, and a suspend that a
// killed `ferry dump` asked for goes on without it. Errors are left to the request after.
void wait_while_busy(pid_t pid, int timeout_s, const ProgressView& view) {
  const auto t0 = std::chrono::steady_clock::now();
  bool said = false;
  for (;;) {
    std::string busy;
    try {
      auto st = request(pid, "status", nlohmann::json::object(), nullptr, 10);
      auto op = st.value("status", nlohmann::json::object()).value("operation", nlohmann::json());
      if (op.is_string() && op != "resume") busy = op.get<std::string>();
    } catch (const ClientError&) {
      return;
    }
    if (busy.empty()) return;
    if (timeout_s > 0 && std::chrono::steady_clock::now() - t0 > std::chrono::seconds(timeout_s)) return;
    if (!said && view.enabled)
      fprintf(stderr, "ferry: waiting for the %s in progress in process %d to end\n", busy.c_str(), pid);
    said = true;
    usleep(50000);
  }
}

// One operation on one process: kOk and the engine's reply, or the exit code and the failure
// as `fail` reports it in JSON.
std::pair<int, nlohmann::json> op_reply(const std::string& op, pid_t pid, const nlohmann::json& opts, int timeout,
                                        ProgressView& view) {
  if (op == "resume") wait_while_busy(pid, timeout, view);
  nlohmann::json reply;
  try {
    reply = request(pid, op, opts, [&](const nlohmann::json& p) { view(p); }, timeout);
  } catch (const ClientError& e) {
    return {e.code, failure_json(e.code, class_of(e), e.message)};
  }
  if (!reply.value("ok", false)) {
    std::string cls = reply.value("class", "bug");
    int code = exit_for_class(cls);
    return {code, failure_json(code, cls, op + " failed: " + reply.value("error", "?"))};
  }
  return {kOk, reply};
}

// A process a killed dump left detached is brought back first (recover_detached); its
// resume then reads the GPU image that dump published, if it got that far.
bool recover_for_resume(pid_t pid, ops::Options& opts) {
  std::string moved;
  if (!recover_detached(pid, &moved)) return false;
  if (!moved.empty()) opts.dir = moved;
  return true;
}

}  // namespace

int cmd_op(const std::string& op, pid_t pid, const OpArgs& a, const Output& out) {
  ops::Options opts;
  opts.dir = a.dir;
  opts.parent = a.parent;
  if (op == "checkpoint") {
    opts.leave_running = a.leave_running;
    opts.stay_stopped = !a.leave_running && !a.cont;  // by default the program waits for `ferry resume`
  }
  if (op == "restore") opts.stay_stopped = a.stay_stopped;
  opts.discard = a.discard;
  opts.zstd_level = a.zstd;
  opts.device = a.device;
  if (a.staging_mb) opts.staging_bytes = static_cast<uint64_t>(a.staging_mb) << 20;
  opts.fingerprints = !a.read_all;
  if (!a.device_map.empty()) {
    try {
      opts.device_map = parse_device_map(a.device_map);
    } catch (const std::exception& e) {
      return fail(out, kUsage, "usage", e.what());
    }
  }
  if (op == "resume") {
    try {
      if (recover_for_resume(pid, opts)) {
        // resumed below, like any process
      } else if (auto job = resume_job(pid)) {
        if (!job->forward.empty()) {
          int worst = kOk;
          if (!out.json) {
            for (pid_t c : job->forward)
              if (int r = cmd_op(op, c, a, out); r != kOk) worst = r;
            return worst;
          }
          // One document for the job, whatever the number of its CUDA processes; each is
          // resumed as `ferry resume` of it would (a dump's detached state recovered first).
          nlohmann::json procs = nlohmann::json::array();
          ProgressView quiet(out);
          size_t recovered = 0;
          for (pid_t c : job->forward) {
            ops::Options each = opts;
            std::pair<int, nlohmann::json> res;
            try {
              recovered += recover_for_resume(c, each);
              res = op_reply(op, c, ops::to_json(each), a.timeout, quiet);
            } catch (const ClientError& e) {
              res = {e.code, failure_json(e.code, class_of(e), e.message)};
            }
            if (res.first != kOk) worst = res.first;
            res.second["pid"] = c;
            procs.push_back(res.second);
          }
          print_json(nlohmann::json({{"ok", worst == kOk},
                                          {"job_init", job->init},
                                          {"continued", 0},
                                          {"recovered_from_dump", recovered},
                                          {"processes", procs}}));
          return worst;
        }
        if (out.json)
          print_json(nlohmann::json({{"ok", job->problems.empty()},
                                          {"job_init", job->init},
                                          {"continued", job->continued},
                                          {"error", job->problems.empty() ? "" : job->problems.substr(2)}}));
        else if (job->continued == 0)
          printf("job %d is running: nothing to resume\n", job->init);
        else
          printf("job %d: %zu stopped process(es) continued\n", job->init, job->continued);
        if (!job->problems.empty()) {
          if (!out.json) fprintf(stderr, "ferry: %s\n", job->problems.substr(2).c_str());
          return kFailed;
        }
        return kOk;
      }
    } catch (const ClientError& e) {
      return fail(out, e);
    }
  }
  ProgressView view(out);
  if (view.enabled) fprintf(stderr, "ferry: %s of process %d\n", op.c_str(), pid);
  auto [code, reply] = op_reply(op, pid, ops::to_json(opts), a.timeout, view);
  if (code != kOk) return fail(out, code, reply["class"], reply["error"]);
  if (out.json) {
    print_json(reply);
    return kOk;
  }
  auto& s = reply["stats"];
  uint64_t dev = s.value("device_bytes", 0ull), written = s.value("written", 0ull), reused = s.value("reused", 0ull);
  double secs = s.value("seconds", 0.0), stopped = s.value("stopped_seconds", 0.0);
  std::string what = op + " of process " + std::to_string(pid) + ": " + human(dev) + " of device memory";
  if (op == "checkpoint" || (op == "suspend" && !a.dir.empty()))
    what += " to " + a.dir + " (" + human(written) + " written, " + human(reused) + " from the parent" +
            carried_text(s.value("carried", 0ull)) + ", " + human(s.value("copied", dev)) + " read from the GPU)";
  if (op == "restore") what += " from " + a.dir;
  if (op == "migrate" || op == "resume") what += ", devices now " + devices_text(reply["status"]);
  char t[96];
  snprintf(t, sizeof t, " in %.2f s (program stopped %.2f s)", secs, stopped);
  printf("%s%s; %s\n", what.c_str(), t, state_hint(reply["status"], pid).c_str());
  return kOk;
}

int cmd_status(pid_t pid, const Output& out) {
  nlohmann::json reply;
  try {
    reply = request(pid, "status", nlohmann::json::object(), nullptr, 10);
  } catch (const ClientError& e) {
    return fail(out, e);
  }
  if (!reply.value("ok", false)) return fail(out, exit_for_class(reply.value("class", "bug")), reply.value("class", "bug"),
                                             reply.value("error", "?"));
  auto& s = reply["status"];
  if (out.json) {
    print_json(s);
    return kOk;
  }
  printf("process %d: %s%s\n", pid, s.value("state", "?").c_str(),
         s["operation"].is_string() ? (" (" + s["operation"].get<std::string>() + " in progress)").c_str() : "");
  printf("  devices: %s\n", devices_text(s).c_str());
  if (s.contains("device_bytes")) printf("  device memory: %s\n", human(s["device_bytes"].get<uint64_t>()).c_str());
  if (s.contains("suspended_to")) printf("  suspended to: %s\n", s["suspended_to"].get<std::string>().c_str());
  if (s.contains("untracked") && !s["untracked"].empty())
    printf("  not capturable: %s\n", json_string(s["untracked"], -1).c_str());
  auto& last = s["last"];
  if (last.is_object() && last.contains("op"))
    printf("  last operation: %s, %s\n", last["op"].get<std::string>().c_str(),
           last.value("ok", false) ? ("ok in " + std::to_string(last.value("seconds", 0.0)) + " s").c_str()
                                   : ("failed: " + last.value("error", "?")).c_str());
  return kOk;
}

int cmd_ps(const Output& out) {
  nlohmann::json list = nlohmann::json::array();
  for (auto& [pid, path] : list_processes()) {
    nlohmann::json s;
    try {
      nlohmann::json r = request(pid, "status", nlohmann::json::object(), nullptr, 5);
      s = r.value("status", nlohmann::json::object());
    } catch (const ClientError& e) {
      s = {{"state", "unreachable"}, {"error", e.message}};
    }
    s["pid"] = pid;
    s["command"] = cmdline(pid);
    s["job"] = nullptr;
    if (auto j = job_of(pid))
      s["job"] = {{"init", j->init}, {"ferry", j->ferry ? nlohmann::json(j->ferry) : nlohmann::json()},
                  {"pids", j->host_pids ? "host" : "namespace"}, {"network", j->own_net ? "own" : "shared"}};
    list.push_back(s);
  }
  if (out.json) {
    print_json(list);
    return kOk;
  }
  // JOB: where a scheduler's signal goes (the job's ferry run or ferry restore), else its init.
  printf("%-8s %-8s %-10s %-16s %-10s %s\n", "PID", "JOB", "STATE", "DEVICES", "MEMORY", "COMMAND");
  for (auto& s : list) {
    std::string job = "-";
    if (auto& j = s["job"]; !j.is_null())
      job = j["ferry"].is_null() ? "init " + std::to_string(j["init"].get<int>()) : std::to_string(j["ferry"].get<int>());
    printf("%-8d %-8s %-10s %-16s %-10s %s\n", s["pid"].get<int>(), job.c_str(), s.value("state", "?").c_str(),
           devices_text(s).c_str(), s.contains("device_bytes") ? human(s["device_bytes"].get<uint64_t>()).c_str() : "-",
           s.value("command", "").c_str());
  }
  if (list.empty()) fprintf(stderr, "ferry: no processes under ferry (sockets in %s)\n", control::socket_dir().c_str());
  return kOk;
}

int cmd_inspect(const std::string& dir, const Output& out) {
  image::Manifest m;
  try {
    m = image::read_manifest(dir);
  } catch (const image::Error& e) {
    std::string cls = image::class_name(e.cls);
    return fail(out, exit_for_class(cls), cls, e.message);
  }
  uint64_t total = 0, chunks = 0;
  for (auto& b : m.blobs) total += b.size, chunks += b.chunks.size();
  std::map<std::string, uint64_t> per_image;
  for (auto& [h, l] : m.index) per_image[l.image.empty() ? "." : l.image] += l.stored;
  auto count = [&](const char* k) { return m.state.contains(k) ? m.state[k].size() : 0; };
  if (out.json) {
    nlohmann::json j = {{"dir", dir},
                        {"version", m.version},
                        {"created", m.created},
                        {"parent", m.parent},
                        {"chunk_size", m.chunk_size},
                        {"device_bytes", total},
                        {"chunks", chunks},
                        {"unique_chunks", m.index.size()},
                        {"bytes_written", m.bytes_written},
                        {"bytes_reused", m.bytes_reused},
                        {"bytes_carried", m.bytes_carried},
                        {"stored_by_image", per_image},
                        {"devices", m.state.value("devices", nlohmann::json::array())}};
    for (const char* k : {"contexts", "streams", "events", "libraries", "modules", "globals", "physical", "mappings",
                          "allocs", "host"})
      j["objects"][k] = count(k);
    print_json(j);
    return kOk;
  }
  printf("%s: ferry image version %d, created %s\n", dir.c_str(), m.version, m.created.c_str());
  if (!m.parent.empty())
    printf("%s", parent_text(m.parent, image::chunks_held_elsewhere(dir, m).empty(), "some chunks").c_str());
  printf("  device memory: %s in %zu blobs, %" PRIu64 " chunks of %s (%zu distinct)\n", human(total).c_str(),
         m.blobs.size(), chunks, human(m.chunk_size).c_str(), m.index.size());
  printf("  written: %s; referenced from the parent or repeated: %s%s\n", human(m.bytes_written).c_str(),
         human(m.bytes_reused).c_str(), carried_text(m.bytes_carried).c_str());
  for (auto& d : m.state.value("devices", nlohmann::json::array()))
    printf("  device %d: %s (compute capability %s, %s), was GPU %d\n", d["vdev"].get<int>(),
           d["name"].get<std::string>().c_str(), d["cc"].get<std::string>().c_str(),
           human(d["memory"].get<uint64_t>()).c_str(), d["pdev"].get<int>());
  printf("  objects: %zu contexts, %zu streams, %zu events, %zu libraries, %zu modules, %zu globals, %zu allocations, "
         "%zu physical allocations, %zu pinned host ranges\n",
         count("contexts"), count("streams"), count("events"), count("libraries"), count("modules"), count("globals"),
         count("allocs"), count("physical"), count("host"));
  return kOk;
}

int cmd_verify(const std::string& dir, const Output& out) {
  ProgressView view(out);
  try {
    image::Reader r(dir);
    uint64_t total = 0;
    r.verify([&](uint64_t d, uint64_t t) {
      total = t;
      view({{"phase", "verifying"}, {"done", d}, {"total", t}});
    });
    if (out.json)
      print_json(nlohmann::json({{"ok", true}, {"dir", dir}, {"bytes", total}}));
    else
      printf("%s: intact (%s of device memory, every chunk's hash verified)\n", dir.c_str(), human(total).c_str());
    return kOk;
  } catch (const image::Error& e) {
    std::string cls = image::class_name(e.cls);
    return fail(out, exit_for_class(cls), cls, e.message);
  }
}

// ---- check --------------------------------------------------------------------------------

namespace {

// The driver, loaded by the CLI itself for a look at this machine.
struct Driver {
  void* h = nullptr;
  template <class F>
  F sym(const char* n) {
    return reinterpret_cast<F>(dlsym(h, n));
  }
};

nlohmann::json machine_check(bool emulator, const std::string& real_driver, std::vector<std::string>& problems) {
  nlohmann::json j;
  std::string shim = shim_path();
  j["shim"] = shim;
  if (access(shim.c_str(), R_OK) != 0) problems.push_back("the shim " + shim + " is missing");
  std::string path = !real_driver.empty() ? real_driver : emulator ? emulator_driver() : "libcuda.so.1";
  if (emulator) setenv("FERRY_EMU_KERNELS", emulator_kernels().c_str(), 0);
  Driver d;
  d.h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  j["driver"] = path;
  std::vector<std::string> driver_args;
  if (emulator) driver_args.push_back("--emulator");
  if (!real_driver.empty()) driver_args.insert(driver_args.end(), {"--real-driver", real_driver});
  j["full_process"] = full_process_report(d.h, driver_args);
  if (!d.h) {
    problems.push_back("cannot load the CUDA driver " + path + ": " + dlerror());
    return j;
  }
  auto init = d.sym<CUresult (*)(unsigned)>("cuInit");
  auto version = d.sym<CUresult (*)(int*)>("cuDriverGetVersion");
  auto count = d.sym<CUresult (*)(int*)>("cuDeviceGetCount");
  auto get = d.sym<CUresult (*)(CUdevice*, int)>("cuDeviceGet");
  auto name = d.sym<CUresult (*)(char*, int, CUdevice)>("cuDeviceGetName");
  auto attr = d.sym<CUresult (*)(int*, CUdevice_attribute, CUdevice)>("cuDeviceGetAttribute");
  auto mem = d.sym<CUresult (*)(size_t*, CUdevice)>("cuDeviceTotalMem_v2");
  auto retain = d.sym<CUresult (*)(CUcontext*, CUdevice)>("cuDevicePrimaryCtxRetain");
  auto release = d.sym<CUresult (*)(CUdevice)>("cuDevicePrimaryCtxRelease_v2");
  auto set = d.sym<CUresult (*)(CUcontext)>("cuCtxSetCurrent");
  auto reserve = d.sym<CUresult (*)(CUdeviceptr*, size_t, size_t, CUdeviceptr, unsigned long long)>("cuMemAddressReserve");
  auto vfree = d.sym<CUresult (*)(CUdeviceptr, size_t)>("cuMemAddressFree");
  auto uuid = d.sym<CUresult (*)(CUuuid*, CUdevice)>("cuDeviceGetUuid_v2");
  if (!init || !count || !get || !name || !attr || !mem || !retain || !release || !set || !reserve || !vfree) {
    problems.push_back(path + " lacks entry points ferry needs");
    return j;
  }
  int v = 0;
  if (version) version(&v);
  j["driver_version"] = v;
  if (v < 13000) problems.push_back("the driver supports CUDA " + std::to_string(v) + "; ferry needs 13.0 or newer");
  if (CUresult r = init(0)) {
    problems.push_back("cuInit failed with error " + std::to_string(r) + " (no usable GPU?)");
    return j;
  }
  int n = 0;
  count(&n);
  nlohmann::json devs = nlohmann::json::array();
  std::vector<Gpu> gpus;  // those whose UUID the driver told, for NVML
  // The shim's own defaults and parser (common's settings table): the same addresses.
  uintptr_t base = settings::size("FERRY_ARENA_BASE", 0x500000000000ull);
  uintptr_t size = settings::size("FERRY_ARENA_SIZE", 2ull << 40);
  for (int i = 0; i < n; i++) {
    CUdevice dev;
    get(&dev, i);
    char nm[256] = {};
    name(nm, sizeof nm, dev);
    int major = 0, minor = 0, vmm = 0;
    attr(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev);
    attr(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev);
    attr(&vmm, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, dev);
    size_t total = 0;
    mem(&total, dev);
    CUuuid u{};
    if (uuid && uuid(&u, dev) == CUDA_SUCCESS)
      gpus.push_back({i, nm, "", json_text::hex(std::string(u.bytes, sizeof u.bytes)), total});
    // Can this device's arena range be had at its fixed address in a fresh process? The
    // whole range, as the shim reserves it: the driver ignores the hint of a small one.
    const uintptr_t at = base + static_cast<uintptr_t>(i) * size;
    bool arena = false;
    CUcontext c = nullptr;
    if (retain(&c, dev) == CUDA_SUCCESS) {
      set(c);
      CUdeviceptr got = 0, want = at;
      if (reserve(&got, size, 0, want, 0) == CUDA_SUCCESS) {
        arena = got == want;
        vfree(got, size);
      }
      set(nullptr);
      release(dev);
    }
    if (!vmm) problems.push_back("device " + std::to_string(i) + " does not support virtual memory management");
    if (!arena)
      problems.push_back("device " + std::to_string(i) + ": the arena address " + hex(at) +
                         " cannot be reserved (set FERRY_ARENA_BASE)");
    devs.push_back({{"device", i},
                    {"name", nm},
                    {"cc", std::to_string(major) + "." + std::to_string(minor)},
                    {"memory", total},
                    {"vmm", vmm != 0},
                    {"arena_address", hex(at)},
                    {"arena_address_free", arena}});
  }
  // Free memory as a restore checks it (NVML beside the driver): what other processes
  // hold is taken off. Not a problem where unknown: a restore then checks the total.
  std::string why;
  auto free = nvml_free_memory(path, gpus, &why);
  if (gpus.size() < devs.size())
    why += (why.empty() ? "" : "; ") + std::string("the driver did not tell the UUID of ") +
           std::to_string(devs.size() - gpus.size()) + " GPU(s), by which NVML is asked";
  for (auto& d : devs) d["free"] = nullptr;
  for (const Gpu& g : gpus)
    if (auto f = free.find(g.uuid); f != free.end()) devs[static_cast<size_t>(g.index)]["free"] = f->second;
  if (!why.empty()) j["free_memory_unknown"] = why;
  j["devices"] = devs;
  if (n == 0) problems.push_back("no CUDA devices");
  return j;
}

// dump_blockers(pid) as text.
void print_dump_blockers(const nlohmann::json& fp) {
  for (auto& p : fp["problems"]) printf("whole-process problem: %s\n", p.get<std::string>().c_str());
  if (std::string tcp = describe_sockets(fp.value("sockets", nlohmann::json())); !tcp.empty())
    printf("the job's TCP sockets: %s (a dump takes them along)\n", tcp.c_str());
  printf("whole-process dump (ferry dump): %s\n", fp.value("dumpable", false) ? "possible" : "not possible");
}

}  // namespace

int cmd_check(pid_t pid, bool emulator, const std::string& real_driver, const Output& out) {
  std::vector<std::string> problems;
  nlohmann::json report;
  if (pid > 0) {
    nlohmann::json reply;
    try {
      reply = request(pid, "check", nlohmann::json::object(), nullptr, 10);
    } catch (const ClientError& e) {
      // A process of a job that does not use CUDA (the job's ferry run, its init, a
      // launcher): there is no GPU state to check, only whether the job can be dumped.
      nlohmann::json fp = e.code == kNoProcess && kill(pid, 0) == 0 ? dump_blockers(pid) : nlohmann::json();
      if (!fp.contains("job_init")) return fail(out, e);
      bool ok = fp.value("dumpable", false);
      if (out.json) {
        print_json(nlohmann::json({{"pid", pid}, {"cuda", false}, {"ok", ok}, {"full_process", fp}}));
      } else {
        printf("process %d: no CUDA under ferry; in job %d\n", pid, fp["job_init"].get<int>());
        print_dump_blockers(fp);
      }
      return ok ? kOk : kFixFirst;
    }
    report = reply.value("check", nlohmann::json::object());
    for (auto& p : report.value("problems", nlohmann::json::array())) problems.push_back(p.get<std::string>());
    if (!report.value("active", false)) problems.push_back("the shim runs as a plain pass-through in that process");
    if (!report.value("arena", false)) problems.push_back("the process has no fixed-address arena");
    // Whole-process dumps: reported beside, like the machine check's full_process.
    report["full_process"] = dump_blockers(pid);
  } else {
    report = machine_check(emulator, real_driver, problems);
  }
  report["problems"] = problems;
  report["ok"] = problems.empty();
  if (out.json) {
    print_json(report);
  } else {
    if (pid > 0) {
      printf("process %d: %s, devices %s\n", pid, report.value("state", "?").c_str(), devices_text(report).c_str());
      print_dump_blockers(report["full_process"]);
    } else {
      printf("driver: %s (CUDA %d)\n", report.value("driver", "?").c_str(), report.value("driver_version", 0));
      printf("shim: %s\n", report.value("shim", "?").c_str());
      for (auto& d : report.value("devices", nlohmann::json::array())) {
        std::string free = d.value("free", nlohmann::json()).is_number_unsigned()
                               ? " (" + human(d["free"].get<uint64_t>()) + " free)"
                               : "";
        printf("device %d: %s, compute capability %s, %s%s, VMM %s, arena address %s\n", d["device"].get<int>(),
               d["name"].get<std::string>().c_str(), d["cc"].get<std::string>().c_str(),
               human(d["memory"].get<uint64_t>()).c_str(), free.c_str(), d["vmm"].get<bool>() ? "yes" : "no",
               d["arena_address_free"].get<bool>() ? "free" : "TAKEN");
      }
      if (report.contains("free_memory_unknown"))
        printf("free GPU memory not known (%s): a restore checks only the total memory there\n",
               report["free_memory_unknown"].get<std::string>().c_str());
    }
    for (auto& p : problems) printf("problem: %s\n", p.c_str());
    printf("%s\n", problems.empty() ? "ready: ferry can checkpoint, restore and migrate here"
                                    : "not ready: fix the problems above");
    if (pid <= 0 && report.contains("full_process")) {
      auto& f = report["full_process"];
      auto& c = f["criu"];
      std::string in_job = !f.contains("driver_in_job")                 ? ""
                           : f["driver_in_job"].contains("skipped")    ? ", not tried in a job's PID namespace (needs root)"
                           : f["driver_in_job"].value("ok", false)     ? ", starts in a job's PID namespace"
                           : f.value("driver_in_host_pids_job", nlohmann::json::object()).value("ok", false)
                               ? ", does not start in a job's PID namespace (but does in a --host-pids job)"
                               : ", does not start in a job's PID namespace";
      printf("whole-process dumps: CRIU %s %s (check: %s), driver checkpoint API %s%s\n",
             c.value("path", "?").c_str(), c.value("version", "?").c_str(), c.value("check", "not run").c_str(),
             f.value("driver_checkpoint_api", false) ? "present" : "missing", in_job.c_str());
      for (auto& p : f["problems"]) printf("whole-process problem: %s\n", p.get<std::string>().c_str());
      for (auto& w : f.value("warnings", nlohmann::json::array()))
        printf("whole-process warning: %s\n", w.get<std::string>().c_str());
      printf("%s\n", f.value("ready", false) ? "whole-process dumps: ready" : "whole-process dumps: not ready");
    }
  }
  return problems.empty() ? kOk : (pid > 0 ? kFixFirst : kFailed);
}

}  // namespace ferry::cli
