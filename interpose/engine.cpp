// The engine's operations and state machine (see engine.hpp).
#include "engine.hpp"

#include <unistd.h>

#include <chrono>
#include <map>
#include <cstdlib>
#include <mutex>

#include "arena.hpp"
#include "engine_util.hpp"
#include "log.hpp"
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
    s = body();
    s.seconds = since(t0);
    result = {{"op", name}, {"ok", true}, {"seconds", s.seconds}, {"stopped_seconds", s.stopped_seconds},
              {"device_bytes", s.device_bytes}, {"written", s.written}, {"reused", s.reused}};
    FERRY_INFO("%s done in %.3f s (%llu bytes of device memory)", name, s.seconds,
               static_cast<unsigned long long>(s.device_bytes));
  } catch (const Error& err) {
    result = {{"op", name}, {"ok", false}, {"class", image::class_name(err.cls)}, {"error", err.message}};
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
      e.last = {{"op", name}, {"ok", false}, {"class", "bug"}, {"error", msg}};
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

// Lets the program go on.
double reopen() {
  Engine& e = eng();
  double stopped = since(e.stopped_at);
  bool epoch = e.new_epoch;
  e.new_epoch = false;
  set_phase(Phase::Running);
  gate::open(epoch);
  return stopped;
}

image::WriterOptions writer_options(const Options& o) {
  image::WriterOptions w;
  w.parent = o.parent;
  w.zstd_level = o.zstd_level;
  if (const char* f = getenv("FERRY_TEST_ENOSPC_AFTER")) w.fail_after = strtoull(f, nullptr, 10);
  return w;
}

std::vector<int> current_map() { return std::vector<int>(vh::g_vdev_to_pdev, vh::g_vdev_to_pdev + vh::g_device_count); }

std::string map_text(const std::vector<int>& m) {
  std::string s;
  for (size_t i = 0; i < m.size(); i++) s += (i ? "," : "") + std::to_string(m[i]);
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
  w.commit(m);
  Stats s;
  s.device_bytes = state["device_bytes"].get<uint64_t>();
  image::Manifest done = image::read_manifest(w.final_dir());
  s.written = done.bytes_written;
  s.reused = done.bytes_reused;
  s.copied = copied;
  return s;
}

Stats do_migrate(const Options& o, bool was_stopped) {
  Engine& e = eng();
  if (!was_stopped) quiesce();
  try {
    check_capturable();
  } catch (...) {
    if (!was_stopped) reopen();
    throw;
  }
  std::vector<BlobRef> refs;
  nlohmann::json state = serialize_state(&refs);
  std::vector<int> old_map = current_map(), map;
  try {
    map = target_map(state, o);
    check_targets(state, map);
  } catch (...) {
    if (!was_stopped) reopen();
    throw;
  }
  Stats s;
  s.device_bytes = state["device_bytes"].get<uint64_t>();
  if (map == old_map) {
    if (!was_stopped) s.stopped_seconds = reopen();
    return s;
  }
  RamSnapshot ram;
  try {
    capture_to_ram(refs, ram, o);
  } catch (...) {
    if (!was_stopped) reopen();
    throw;
  }
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
      std::lock_guard lk(e.mu);
      e.phase = Phase::Suspended;
      e.state = state;
      e.ram = std::make_unique<RamSnapshot>(std::move(ram));
      e.image_dir.clear();
      e.discarded = false;
      throw Error(err.cls, err.message + "; putting the state back on device map " + map_text(old_map) +
                               " failed too (" + err2.message +
                               "); the process is suspended with its GPU state in host memory (ferry resume)");
    }
    e.new_epoch = true;
    if (!was_stopped) reopen();
    throw Error(err.cls, err.message + "; the process continues on device map " + map_text(old_map));
  }
  e.new_epoch = true;
  if (!was_stopped) s.stopped_seconds = reopen();
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
    bool was_stopped = p == Phase::Stopped;
    if (!was_stopped) quiesce();
    Stats s;
    try {
      check_capturable();
      std::vector<BlobRef> refs;
      nlohmann::json state = serialize_state(&refs);
      if (o.leave_running) {
        RamSnapshot ram;
        capture_to_ram(refs, ram, o);
        if (!was_stopped) s.stopped_seconds = reopen();
        was_stopped = true;  // the world is open again: nothing to undo below
        Stats w = write_image(o, state, refs, &ram);
        w.stopped_seconds = s.stopped_seconds;
        w.copied = ram.bytes;
        return w;
      }
      s = write_image(o, state, refs, nullptr);
    } catch (...) {
      if (!was_stopped) reopen();
      throw;
    }
    if (o.stay_stopped) {
      set_phase(Phase::Stopped);
      s.stopped_seconds = since(e.stopped_at);
    } else {
      s.stopped_seconds = was_stopped ? 0 : reopen();
    }
    return s;
  });
}

Stats suspend(const Options& o) {
  return run_op("suspend", [&] {
    Engine& e = eng();
    Phase p = phase();
    if (p == Phase::Suspended) throw Error(ErrorClass::FixFirst, "the process is already suspended");
    bool was_stopped = p == Phase::Stopped;
    if (!was_stopped) quiesce();
    Stats s;
    std::unique_ptr<RamSnapshot> ram;
    nlohmann::json state;
    try {
      check_capturable();
      std::vector<BlobRef> refs;
      state = serialize_state(&refs);
      s.device_bytes = state["device_bytes"].get<uint64_t>();
      if (!o.discard) {
        if (!o.dir.empty()) {
          Stats w = write_image(o, state, refs, nullptr);
          s.written = w.written;
          s.reused = w.reused;
          s.copied = w.copied;
        } else {
          ram = std::make_unique<RamSnapshot>();
          capture_to_ram(refs, *ram, o);
          s.copied = ram->bytes;
        }
      }
    } catch (...) {
      if (!was_stopped) reopen();
      throw;
    }
    o.progress("releasing", 0, 0);
    release_gpu_state();
    state["released"] = true;
    {
      std::lock_guard lk(e.mu);
      e.phase = Phase::Suspended;
      e.state = state;
      e.ram = std::move(ram);
      e.image_dir = o.discard ? "" : o.dir;
      e.discarded = o.discard;
    }
    s.stopped_seconds = since(e.stopped_at);
    return s;
  });
}

namespace {

Stats resume_suspended(const Options& o) {
  Engine& e = eng();
  if (e.discarded)
    throw Error(ErrorClass::FixFirst, "the process's GPU state was discarded; bring it back with restore from an image");
  std::vector<int> map = target_map(e.state, o);
  check_targets(e.state, map);
  std::unique_ptr<image::Reader> reader;
  std::unique_ptr<BlobSource> src;
  if (e.ram) {
    src = ram_source(*e.ram);
  } else {
    reader = std::make_unique<image::Reader>(e.image_dir);
    if (structure_of(reader->manifest().state) != structure_of(e.state))
      throw Error(ErrorClass::DataLost, e.image_dir + ": the image no longer holds this process's suspended state");
    src = image_source(*reader);
  }
  try {
    rebuild(e.state, *src, map, o);
  } catch (const Error& err) {
    throw Error(err.cls, err.message + "; the process stays suspended (resume again, possibly elsewhere)");
  }
  Stats s;
  s.device_bytes = e.state["device_bytes"].get<uint64_t>();
  {
    std::lock_guard lk(e.mu);
    e.ram.reset();
    e.state = nullptr;
    e.image_dir.clear();
  }
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
    if (p == Phase::Stopped) {
      if (moving) {
        Stats s = do_migrate(o, true);
        s.stopped_seconds = reopen();
        return s;
      }
      Stats s;
      s.stopped_seconds = reopen();
      return s;
    }
    if (moving) return do_migrate(o, false);
    return Stats{};  // already running
  });
}

Stats migrate(const Options& o) {
  return run_op("migrate", [&]() -> Stats {
    if (o.device < 0 && o.device_map.empty()) throw Error(ErrorClass::FixFirst, "migrate: no target device given");
    Phase p = phase();
    if (p == Phase::Suspended) return resume_suspended(o);
    return do_migrate(o, p == Phase::Stopped);
  });
}

Stats restore(const Options& o) {
  return run_op("restore", [&] {
    if (o.dir.empty()) throw Error(ErrorClass::FixFirst, "restore: no image directory given");
    Engine& e = eng();
    image::Reader reader(o.dir);
    const nlohmann::json& image_state = reader.manifest().state;
    Phase p = phase();
    bool was_stopped = p != Phase::Running;
    if (!was_stopped) quiesce();
    Stats s;
    nlohmann::json current;
    std::vector<int> map;
    try {
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
      map = target_map(image_state, o);
      check_targets(current, map);
      if (p != Phase::Suspended) {
        // The running state is destroyed below: make sure the image can replace it.
        reader.verify([&](uint64_t d, uint64_t t) { o.progress("verifying", d, t); });
        release_gpu_state();
        current["released"] = true;
      }
    } catch (...) {
      if (!was_stopped) reopen();
      throw;
    }
    auto src = image_source(reader);
    try {
      rebuild(current, *src, map, o);
    } catch (const Error& err) {
      std::lock_guard lk(e.mu);
      e.phase = Phase::Suspended;
      e.state = current;
      e.ram.reset();
      e.image_dir.clear();
      e.discarded = true;
      throw Error(err.cls, err.message + "; the process is suspended without GPU state (restore again)");
    }
    {
      std::lock_guard lk(e.mu);
      e.ram.reset();
      e.state = nullptr;
      e.image_dir.clear();
      e.discarded = false;
    }
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
  j["pid"] = getpid();
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
  auto& st = tr::state();
  std::unique_lock lk(st.mu, std::try_to_lock);
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
