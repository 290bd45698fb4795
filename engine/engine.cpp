// The engine's operations and state machine (see engine.hpp).
#include "engine.hpp"

#include <unistd.h>

#include <chrono>
#include <thread>
#include <map>
#include <mutex>
#include <set>

#include <ferry_common/control.hpp>
#include <ferry_common/ops.hpp>
#include <ferry_common/settings.hpp>

#include "arena.hpp"
#include "checkpoint.hpp"
#include "config.hpp"
#include "driver.hpp"
#include "log.hpp"
#include "restore.hpp"
#include "shim.hpp"
#include "tracker.hpp"

namespace ferry::engine {

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

enum class Phase { Running, Stopped, Suspended };
const char* phase_name(Phase p) {
  switch (p) {
    case Phase::Running: return "running";
    case Phase::Stopped: return "stopped";
    case Phase::Suspended: return "suspended";
  }
  return "?";
}

struct Engine {
  std::mutex op_mu;  // one operation at a time
  std::mutex mu;     // the fields below, for status()
  Phase phase = Phase::Running;
  std::string op;                 // the operation in progress
  nlohmann::json state;           // suspended: the log at suspension
  std::unique_ptr<RamSnapshot> ram;
  std::string image_dir;          // suspended to an image
  bool discarded = false;
  bool new_epoch = false;         // real contexts changed while stopped: threads re-sync at open
  Clock::time_point stopped_at{};
  nlohmann::json last;
  std::vector<std::pair<Hook, void*>> hooks;
};

Engine& eng() {
  static auto* e = new Engine;  // never destroyed: the socket thread may use it during exit
  return *e;
}

void set_phase(Phase p) {
  std::lock_guard lk(eng().mu);
  eng().phase = p;
}
Phase phase() {
  std::lock_guard lk(eng().mu);
  return eng().phase;
}

// Runs an operation: one at a time, hooks around it, the result remembered for status.
template <class F>
Stats run_op(const char* name, F&& body) {
  Engine& e = eng();
  std::unique_lock op_lock(e.op_mu, std::try_to_lock);
  if (!op_lock.owns_lock()) {
    std::string cur;
    {
      std::lock_guard lk(e.mu);
      cur = e.op;
    }
    throw Error(ErrorClass::RetryLater, std::string("another operation (") + cur + ") is in progress in this process");
  }
  ensure_loaded();
  {
    std::lock_guard lk(e.mu);
    e.op = name;
  }
  std::vector<std::pair<Hook, void*>> hooks;
  {
    std::lock_guard lk(e.mu);
    hooks = e.hooks;
  }
  for (auto& [h, u] : hooks) h(name, 0, u);
  auto t0 = Clock::now();
  Stats s;
  nlohmann::json result;
  try {
    // Test hook: an operation still in progress when the next request comes.
    static const long delay_ms = settings::count("FERRY_TEST_OP_DELAY_MS", 0);
    if (delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
    s = body();
    s.seconds = since(t0);
    result = ops::to_json(s);
    result["op"] = name;
    result["ok"] = true;
    FERRY_INFO("%s done in %.3f s (%llu bytes of device memory)", name, s.seconds,
               static_cast<unsigned long long>(s.device_bytes));
  } catch (const Error& err) {
    result = {{"op", name}, {"ok", false}, {"class", class_name(err.cls)}, {"error", err.message}};
    FERRY_WARN("%s failed: %s", name, err.message.c_str());
    {
      std::lock_guard lk(e.mu);
      e.op.clear();
      e.last = result;
    }
    for (auto& [h, u] : hooks) h(name, 1, u);
    throw;
  } catch (const std::exception& ex) {
    std::string msg = std::string("internal error: ") + ex.what();
    {
      std::lock_guard lk(e.mu);
      e.op.clear();
      e.last = {{"op", name}, {"ok", false}, {"class", class_name(ErrorClass::Bug)}, {"error", msg}};
    }
    for (auto& [h, u] : hooks) h(name, 1, u);
    throw Error(ErrorClass::Bug, msg);
  }
  {
    std::lock_guard lk(e.mu);
    e.op.clear();
    e.last = result;
  }
  for (auto& [h, u] : hooks) h(name, 1, u);
  return s;
}

// Stops the world: the gate closes, every context drains, stream-ordered frees finish.
// Throws (with the gate open again) when a context has a sticky error.
void quiesce() {
  gate::close();
  eng().stopped_at = Clock::now();
  auto& st = tr::state();
  std::lock_guard lk(st.mu);
  for (tr::Ctx* c : st.contexts) {
    if (!c->alive || !c->real) continue;
    CUresult r = real::cuCtxSynchronize_v2(c->real);
    if (r != CUDA_SUCCESS) {
      gate::open();
      const char* n = nullptr;
      real::cuGetErrorName(r, &n);
      throw Error(ErrorClass::FixFirst, std::string("the program's work on device ") + std::to_string(c->vdev) +
                                            " failed (" + (n ? n : "?") +
                                            "): its GPU state is not consistent and cannot be captured");
    }
  }
  arena::reap();
}

// Lets the program go on; returns how long it was stopped.
double reopen() {
  Engine& e = eng();
  double stopped = since(e.stopped_at);
  bool epoch = e.new_epoch;
  e.new_epoch = false;
  set_phase(Phase::Running);
  gate::open(epoch);
  return stopped;
}

// The world stopped for one operation. Constructed, it stops the program unless it
// already was (stopped by an earlier checkpoint, or suspended). However the operation
// leaves, the world is reopened if this guard stopped it -- unless the operation
// said otherwise: hold() keeps the program stopped or suspended, open() lets it go on
// even when it was stopped before.
class World {
 public:
  explicit World(bool already_stopped) : owned_(!already_stopped) {
    if (owned_) quiesce();
  }
  ~World() {
    if (owned_ && !done_) reopen();
  }
  World(const World&) = delete;
  World& operator=(const World&) = delete;
  // Reopens if this guard stopped the world; the seconds it was stopped (0 if not ours).
  double release() {
    done_ = true;
    return owned_ ? reopen() : 0;
  }
  // Reopens in any case (resume of a stopped or suspended program).
  double open() {
    done_ = true;
    return reopen();
  }
  // Leaves the world stopped: the program stays stopped or suspended.
  void hold() { done_ = true; }

 private:
  bool owned_;
  bool done_ = false;
};

// The process is suspended: its GPU state released, kept in `ram`, in the image at
// `image_dir`, or nowhere (discarded).
void enter_suspended(nlohmann::json state, std::unique_ptr<RamSnapshot> ram, const std::string& image_dir,
                     bool discarded) {
  Engine& e = eng();
  std::lock_guard lk(e.mu);
  e.phase = Phase::Suspended;
  e.state = std::move(state);
  e.ram = std::move(ram);
  e.image_dir = image_dir;
  e.discarded = discarded;
}

// The GPU state is live again: nothing is kept for a later resume.
void leave_suspended() {
  Engine& e = eng();
  std::lock_guard lk(e.mu);
  e.ram.reset();
  e.state = nullptr;
  e.image_dir.clear();
  e.discarded = false;
}

image::WriterOptions writer_options(const Options& o) {
  image::WriterOptions w;
  w.parent = o.parent;
  w.zstd_level = o.zstd_level;
  w.fail_after = config().test_enospc_after;
  return w;
}

std::string map_text(const std::vector<int>& m) {
  std::string s;
  for (size_t i = 0; i < m.size(); i++) {
    if (i) s += ',';
    s += std::to_string(m[i]);
  }
  return s;
}

// Writes the snapshot of the stopped world into an image.
Stats write_image(const Options& o, const nlohmann::json& state, const std::vector<BlobRef>& refs,
                  const RamSnapshot* ram) {
  image::Writer w(o.dir, writer_options(o));
  image::Manifest m;
  m.state = state;
  uint64_t copied = 0;
  if (ram)
    persist(*ram, w, m, o);
  else
    copied = capture_to_image(refs, w, m, o);
  o.progress("publishing", 0, 0);
  image::Manifest done = w.commit(std::move(m));
  Stats s;
  s.device_bytes = state["device_bytes"].get<uint64_t>();
  s.written = done.bytes_written;
  s.reused = done.bytes_reused;
  s.carried = done.bytes_carried;
  s.copied = copied;
  return s;
}

// Moves the GPU state onto the devices the options name, through a RAM snapshot; on
// failure it goes back where it was. `world` stopped the program (or found it stopped).
Stats do_migrate(const Options& o, World& world) {
  Engine& e = eng();
  check_capturable();
  std::vector<BlobRef> refs;
  nlohmann::json state = serialize_state(&refs);
  std::vector<int> old_map = current_map();
  std::vector<int> map = target_map(state, o, current_map());
  check_targets(state, map);
  Stats s;
  s.device_bytes = state["device_bytes"].get<uint64_t>();
  if (map == old_map) return s;
  RamSnapshot ram;
  capture_to_ram(refs, ram, o);
  s.copied = ram.bytes;
  release_gpu_state();
  state["released"] = true;
  auto src = ram_source(ram);
  try {
    rebuild(state, *src, map, o);
  } catch (const Error& err) {
    FERRY_WARN("migration to device map %s failed (%s); going back to %s", map_text(map).c_str(), err.message.c_str(),
               map_text(old_map).c_str());
    try {
      rebuild(state, *src, old_map, o);
    } catch (const Error& err2) {
      world.hold();
      enter_suspended(state, std::make_unique<RamSnapshot>(std::move(ram)), "", false);
      throw Error(err.cls, err.message + "; putting the state back on device map " + map_text(old_map) +
                               " failed too (" + err2.message +
                               "); the process is suspended with its GPU state in host memory (ferry resume)");
    }
    e.new_epoch = true;
    throw Error(err.cls, err.message + "; the process continues on device map " + map_text(old_map));
  }
  e.new_epoch = true;
  return s;
}

}  // namespace

Stats checkpoint(const Options& o) {
  return run_op("checkpoint", [&] {
    if (o.dir.empty()) throw Error(ErrorClass::FixFirst, "checkpoint: no image directory given");
    Engine& e = eng();
    Phase p = phase();
    if (p == Phase::Suspended) {
      if (!e.ram)
        throw Error(ErrorClass::FixFirst, e.discarded ? "the process's GPU state was discarded; there is nothing to checkpoint"
                                                      : "the process is suspended to the image " + e.image_dir +
                                                            "; that image is its checkpoint");
      return write_image(o, e.state, {}, e.ram.get());
    }
    World world(p == Phase::Stopped);
    check_capturable();
    std::vector<BlobRef> refs;
    nlohmann::json state = serialize_state(&refs);
    if (o.leave_running) {
      RamSnapshot ram;
      capture_to_ram(refs, ram, o);
      double stopped = world.release();  // the program runs while the image is written
      Stats w = write_image(o, state, refs, &ram);
      w.stopped_seconds = stopped;
      w.copied = ram.bytes;
      return w;
    }
    Stats s = write_image(o, state, refs, nullptr);
    if (o.stay_stopped) {
      world.hold();
      set_phase(Phase::Stopped);
      s.stopped_seconds = since(e.stopped_at);
    } else {
      s.stopped_seconds = world.release();
    }
    return s;
  });
}

Stats suspend(const Options& o) {
  return run_op("suspend", [&] {
    Engine& e = eng();
    Phase p = phase();
    if (p == Phase::Suspended) throw Error(ErrorClass::FixFirst, "the process is already suspended");
    World world(p == Phase::Stopped);
    Stats s;
    std::unique_ptr<RamSnapshot> ram;
    check_capturable();
    std::vector<BlobRef> refs;
    nlohmann::json state = serialize_state(&refs);
    s.device_bytes = state["device_bytes"].get<uint64_t>();
    if (!o.discard) {
      if (!o.dir.empty()) {
        Stats w = write_image(o, state, refs, nullptr);
        s.written = w.written;
        s.reused = w.reused;
        s.carried = w.carried;
        s.copied = w.copied;
      } else {
        ram = std::make_unique<RamSnapshot>();
        capture_to_ram(refs, *ram, o);
        s.copied = ram->bytes;
      }
    }
    world.hold();
    o.progress("releasing", 0, 0);
    release_gpu_state();
    state["released"] = true;
    enter_suspended(std::move(state), std::move(ram), o.discard ? "" : o.dir, o.discard);
    s.stopped_seconds = since(e.stopped_at);
    return s;
  });
}

namespace {

Stats resume_suspended(const Options& o) {
  Engine& e = eng();
  if (e.discarded)
    throw Error(ErrorClass::FixFirst, "the process's GPU state was discarded; bring it back with restore from an image");
  std::vector<int> map = target_map(e.state, o, current_map());
  check_targets(e.state, map);
  std::unique_ptr<image::Reader> reader;
  std::unique_ptr<BlobSource> src;
  if (e.ram) {
    src = ram_source(*e.ram);
  } else {
    // o.dir: the image has moved since the suspend (a whole-process dump publishes the
    // directory it was written in under its final name).
    const std::string& dir = o.dir.empty() ? e.image_dir : o.dir;
    reader = std::make_unique<image::Reader>(dir);
    check_schema(reader->manifest().state, dir);
    if (structure_of(reader->manifest().state) != structure_of(e.state))
      throw Error(ErrorClass::DataLost, dir + ": the image does not hold this process's suspended state");
    src = image_source(*reader);
  }
  try {
    rebuild(e.state, *src, map, o);
  } catch (const Error& err) {
    throw Error(err.cls, err.message + "; the process stays suspended (resume again, possibly elsewhere)");
  }
  Stats s;
  s.device_bytes = e.state["device_bytes"].get<uint64_t>();
  leave_suspended();
  e.new_epoch = true;
  s.stopped_seconds = reopen();
  return s;
}

}  // namespace

Stats resume(const Options& o) {
  return run_op("resume", [&]() -> Stats {
    Phase p = phase();
    bool moving = o.device >= 0 || !o.device_map.empty();
    if (p == Phase::Suspended) return resume_suspended(o);
    if (p == Phase::Running && !moving) return Stats{};  // already running
    World world(p == Phase::Stopped);
    Stats s;
    if (moving) s = do_migrate(o, world);
    // A stopped program goes on in any case; a running one only if it was stopped here.
    s.stopped_seconds = p == Phase::Stopped ? world.open() : world.release();
    return s;
  });
}

Stats migrate(const Options& o) {
  return run_op("migrate", [&]() -> Stats {
    if (o.device < 0 && o.device_map.empty()) throw Error(ErrorClass::FixFirst, "migrate: no target device given");
    Phase p = phase();
    if (p == Phase::Suspended) return resume_suspended(o);
    World world(p == Phase::Stopped);
    Stats s = do_migrate(o, world);
    s.stopped_seconds = world.release();
    return s;
  });
}

Stats restore(const Options& o) {
  return run_op("restore", [&] {
    if (o.dir.empty()) throw Error(ErrorClass::FixFirst, "restore: no image directory given");
    Engine& e = eng();
    image::Reader reader(o.dir);
    const nlohmann::json& image_state = reader.manifest().state;
    check_schema(image_state, reader.dir());
    Phase p = phase();
    World world(p != Phase::Running);
    Stats s;
    nlohmann::json current;
    if (p == Phase::Suspended) {
      current = e.state;
    } else {
      check_capturable();
      current = serialize_state();
    }
    if (structure_of(current) != structure_of(image_state)) {
      nlohmann::json d = nlohmann::json::diff(structure_of(current), structure_of(image_state));
      std::string where = d.empty() ? "" : d[0].value("path", "");
      throw Error(ErrorClass::FixFirst, reader.dir() + " holds a different GPU state than this process has (first "
                                            "difference at " + where + "): it was taken from another process or "
                                            "before the program created or freed GPU objects");
    }
    std::vector<int> map = target_map(image_state, o, current_map());
    check_targets(current, map);
    if (p != Phase::Suspended) {
      // The running state is destroyed below: make sure the image can replace it.
      reader.verify([&](uint64_t d, uint64_t t) { o.progress("verifying", d, t); });
      release_gpu_state();
      current["released"] = true;
    }
    world.hold();  // from here on, a failure leaves the process suspended, not running
    auto src = image_source(reader);
    try {
      rebuild(current, *src, map, o);
    } catch (const Error& err) {
      enter_suspended(current, nullptr, "", true);
      throw Error(err.cls, err.message + "; the process is suspended without GPU state (restore again)");
    }
    leave_suspended();
    s.device_bytes = image_state["device_bytes"].get<uint64_t>();
    e.new_epoch = true;
    if (o.stay_stopped) {
      set_phase(Phase::Stopped);
    } else {
      s.stopped_seconds = reopen();
    }
    return s;
  });
}

nlohmann::json status() {
  Engine& e = eng();
  nlohmann::json j;
  j["pid"] = control::host_pid();
  {
    std::lock_guard lk(e.mu);
    j["state"] = phase_name(e.phase);
    j["operation"] = e.op.empty() ? nlohmann::json(nullptr) : nlohmann::json(e.op);
    if (e.phase == Phase::Suspended)
      j["suspended_to"] = e.discarded ? "nothing (discarded)" : e.ram ? "host memory" : "image " + e.image_dir;
    j["last"] = e.last;
  }
  j["active"] = active();
  j["arena"] = arena::usable();
  nlohmann::json devs = nlohmann::json::array();
  for (int v = 0; v < vh::g_device_count; v++) {
    int p = vh::g_vdev_to_pdev[v];
    char name[256] = {};
    real::cuDeviceGetName(name, sizeof name, p);
    devs.push_back({{"device", v}, {"physical", p}, {"name", name}});
  }
  j["devices"] = devs;
  // Every GPU this process's driver shows, in its numbering, by UUID: what a caller that
  // numbers GPUs otherwise (another CUDA_VISIBLE_DEVICES, a restore elsewhere) goes by.
  nlohmann::json gpus = nlohmann::json::array();
  int real_count = 0;
  if (real::cuDeviceGetCount(&real_count) == CUDA_SUCCESS)
    for (int p = 0; p < real_count; p++)
      if (std::string u = gpu_uuid(p); !u.empty()) gpus.push_back({{"physical", p}, {"uuid", u}});
  j["gpus"] = gpus;
  // The program's threads hold the log's lock for each CUDA call they make: a status
  // that gave up at the first miss left out the memory figures of a busy process (a
  // freshly resumed trainer, say). It tries for a while, and never blocks on an
  // operation that holds the lock for long.
  auto& st = tr::state();
  std::unique_lock lk(st.mu, std::defer_lock);
  for (int i = 0; i < 200 && !lk.try_lock(); i++) std::this_thread::sleep_for(std::chrono::microseconds(500));
  if (lk.owns_lock()) {
    uint64_t bytes = 0, allocs = 0;
    std::map<std::string, uint64_t> by_gpu;  // device memory this process holds, by physical device
    for (tr::Phys* p : st.phys) {
      bytes += p->size;
      if (p->real) by_gpu[std::to_string(vh::real_device(p->vdev))] += p->size;
    }
    j["memory_by_gpu"] = by_gpu;
    for (auto& [va, a] : st.allocs) allocs += a.size;
    std::set<int> used;
    for (tr::Ctx* c : st.contexts)
      if (c->alive) used.insert(c->vdev);
    j["device_bytes"] = bytes;
    j["allocated_bytes"] = allocs;
    j["devices_in_use"] = used;
    j["untracked"] = st.untracked;
  }
  return j;
}

void add_hook(Hook h, void* user) {
  std::lock_guard lk(eng().mu);
  eng().hooks.emplace_back(h, user);
}

}  // namespace ferry::engine
