// NVIDIA's checkpoint API on the simulated GPU (cuCheckpointProcess*), with the
// driver's documented semantics, callable from another process by pid.
//
// States: RUNNING -> lock -> LOCKED -> checkpoint -> CHECKPOINTED -> restore -> LOCKED
// -> unlock -> RUNNING. Lock closes the driver to new calls (every entry point that
// checks initialization waits; the service's own thread passes) and waits, up to the
// caller's timeout, for all queued work to finish; on timeout the process stays
// RUNNING. Checkpoint lets go of the devices as the driver does: every byte of device
// memory (cuMemAlloc and pool ranges, cuMemCreate allocations) is copied into memory of
// the process's own -- growing its host memory by the GPU bytes, as NVIDIA's route does
// on a GPU -- and the device pages are dropped; the driver's file CRIU refuses (a
// userfaultfd, init.cpp) is closed, so CRIU can now dump the process, and dumps those
// copies. Restore writes them back before the process runs again. (All-zero pages are
// neither copied nor kept: on the simulated GPU they are untouched memory.) Managed
// memory stays where it is: host and device share it. Restore takes the devices of the machine the
// *caller* runs on (its own simulated devices, sent with the request: a process
// restored elsewhere sees that machine's GPUs, not the ones in its own environment),
// maps every checkpointed GPU to one of them -- by the caller's gpuPairs (old UUID ->
// new UUID; then every checkpointed GPU must be listed; a GPU it did not open but the
// pairs name goes where they say) or else to the same UUID --,
// requires the same chip (name and compute capability) and enough memory, takes on the
// new identities and re-opens the driver file. A failed restore leaves the process
// CHECKPOINTED. "Checkpointed GPUs" are the devices the process opened (a context or
// memory); its other devices take the identities of the machine's remaining GPUs, in
// order. The restored process sees as many devices as the machine has; a process that
// still held GPUs when checkpointed (NVIDIA's own route) must find the same count.
//
// Between processes: each process that initialized the simulated GPU runs a service
// thread named "ferry-emu-ckpt" (its thread id is the restore thread id). A caller
// writes a request file into /tmp/ferry-emu-<uid>/ (mode 0700), named by the target's
// host pid, its own pid and tid and a number of its own, and sends the target kSignal;
// the signal handler wakes the service through a pipe inside the process. The service
// answers in the same file (renamed "taken" while it works, "resp" when done). The caller
// holds an flock(2) on that file from its creation until it has read the answer, so
// whether anyone still waits is asked of the kernel: a caller killed between writing
// and signalling leaves its request behind, and with the host's pids a restored process
// takes the pid it was meant for; the service drops every exchange nobody holds (an old
// "unlock" never lands in the middle of a new restore) and writes no answer nobody will
// read. (Not the caller's pid and start time: a process CRIU restored lives in a time
// namespace, and reads other processes' start times shifted.)
// Nothing here holds a file CRIU cannot dump, and after a CRIU restore (new host pid)
// the service finds requests by the pid it has then. The signal is only sent to a
// process that has a thread of that name, so no other process is ever killed by it.
#include <dirent.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <ferry_common/control.hpp>
#include <ferry_common/settings.hpp>

#include "emu.hpp"

namespace ferry::emu {

namespace {

const int kSignal = SIGRTMAX - 3;
constexpr const char* kThreadName = "ferry-emu-ckpt";

// The state, readable without a lock on the hot path (the gate).
std::atomic<int> g_state{CU_PROCESS_STATE_RUNNING};
std::mutex g_mu;  // the fields below; state changes
std::condition_variable g_cv;
std::atomic<pid_t> g_service_tid{0};  // the service thread's tid as this process sees it
int g_wake[2] = {-1, -1};
struct Opened {
  int ordinal;
  CUuuid uuid;
  std::string name;
  int cc_major, cc_minor;
  size_t used;
};
std::vector<Opened> g_checkpointed;

// Device memory held in the process's own memory between checkpoint and restore: a
// region (a physical allocation's memfd, or a heap range at its address) and the
// stretches of it that held anything, copied into one private mapping of its size.
struct Held {
  PhysAlloc* phys = nullptr;  // or else the heap range at `base`
  uintptr_t base = 0;
  size_t size = 0;
  char* copy = nullptr;
  std::vector<std::pair<size_t, size_t>> parts;  // (offset, bytes) copied
};
std::vector<Held> g_held;

thread_local bool t_is_service = false;

using control::host_pid;
// The calling thread's id on the host ("/proc/thread-self" -> "<pid>/task/<tid>").
pid_t host_tid() {
  char b[64];
  ssize_t n = readlink("/proc/thread-self", b, sizeof b - 1);
  if (n <= 0) return 0;
  b[n] = 0;
  const char* last = strrchr(b, '/');
  return static_cast<pid_t>(atoi(last ? last + 1 : b));
}

std::string dir() { return "/tmp/ferry-emu-" + std::to_string(getuid()); }

// An exchange's file: <target pid>.<caller pid>.<caller tid>.<call number>.<stage>,
// stage "req.tmp" (being written), "req", "taken" or "resp".
bool parse_exchange(const std::string& name, pid_t* target, std::string* stage) {
  int caller = 0, tid = 0, end = 0;
  unsigned long n = 0;
  char st[16] = {};
  if (sscanf(name.c_str(), "%d.%d.%d.%lu.%15s%n", target, &caller, &tid, &n, st, &end) != 5 ||
      static_cast<size_t>(end) != name.size())
    return false;
  *stage = st;
  return true;
}

// Whether nobody holds the lock on open file fd: its caller is gone.
bool abandoned(int fd) {
  if (flock(fd, LOCK_SH | LOCK_NB) == 0) {
    flock(fd, LOCK_UN);
    return true;
  }
  return false;
}

bool unhex(const std::string& s, CUuuid* u) {
  if (s.size() != 32) return false;
  for (int i = 0; i < 16; i++) u->bytes[i] = static_cast<char>(std::stoi(s.substr(2 * i, 2), nullptr, 16));
  return true;
}

// ---- the target's side ------------------------------------------------------------------

bool all_idle() {
  Driver& d = drv();
  std::lock_guard lk(d.mu);
  for (Stream* s : d.live_streams) {
    std::lock_guard sl(s->mu);
    if (s->completed.load() < s->enqueued) return false;
  }
  return true;
}

void set_state(int s) {
  {
    std::lock_guard lk(g_mu);
    g_state = s;
  }
  g_cv.notify_all();
}

CUresult do_lock(unsigned timeout_ms) {
  if (g_state != CU_PROCESS_STATE_RUNNING) return CUDA_ERROR_ILLEGAL_STATE;
  set_state(CU_PROCESS_STATE_LOCKED);  // new calls wait from here on
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  Driver& d = drv();
  // all_idle() takes the driver's locks: never while holding progress_mu, which stream
  // workers take to announce progress. The short wait covers a missed announcement.
  while (!all_idle()) {
    if (timeout_ms && std::chrono::steady_clock::now() >= deadline) {
      set_state(CU_PROCESS_STATE_RUNNING);
      return CUDA_ERROR_NOT_READY;  // cuda.h lists NOT_READY for Lock, not TIMEOUT
    }
    std::unique_lock lk(d.progress_mu);
    d.progress_cv.wait_for(lk, std::chrono::milliseconds(5));
  }
  return CUDA_SUCCESS;
}

bool all_zero(const char* p, size_t n) {
  static const char zeros[kPage] = {};
  return memcmp(p, zeros, n) == 0;
}

// Copies what the region holds into h.copy, page by page, skipping pages of zeros
// (untouched memory). A memfd is read where it has data (SEEK_DATA), a heap range
// where it is mapped.
bool copy_out(Held& h) {
  void* m = mmap(nullptr, h.size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) return false;
  h.copy = static_cast<char*>(m);
  auto keep = [&](size_t off, const char* src, size_t n) {
    for (size_t at = 0; at < n; at += kPage) {
      size_t k = std::min(kPage, n - at);
      if (all_zero(src + at, k)) continue;
      memcpy(h.copy + off + at, src + at, k);
      if (!h.parts.empty() && h.parts.back().first + h.parts.back().second == off + at)
        h.parts.back().second += k;
      else
        h.parts.emplace_back(off + at, k);
    }
  };
  if (!h.phys) {
    keep(0, reinterpret_cast<const char*>(h.base), h.size);
    return true;
  }
  std::vector<char> buf(kGranularity);
  off_t at = 0;
  const off_t end = static_cast<off_t>(h.size);
  while (at < end) {
    off_t data = lseek(h.phys->fd, at, SEEK_DATA);
    if (data < 0 || data >= end) break;  // ENXIO: nothing but holes from here
    off_t hole = lseek(h.phys->fd, data, SEEK_HOLE);
    if (hole < 0 || hole > end) hole = end;
    for (off_t p = data; p < hole;) {
      size_t n = static_cast<size_t>(std::min<off_t>(hole - p, static_cast<off_t>(buf.size())));
      ssize_t got = pread(h.phys->fd, buf.data(), n, p);
      if (got <= 0) return false;
      keep(static_cast<size_t>(p), buf.data(), static_cast<size_t>(got));
      p += got;
    }
    at = hole;
  }
  return true;
}

// Writes the copy back where it came from; the copy is kept until all of it is back.
bool copy_in(const Held& h) {
  for (auto& [off, n] : h.parts) {
    if (!h.phys) {
      memcpy(reinterpret_cast<char*>(h.base) + off, h.copy + off, n);
      continue;
    }
    for (size_t done = 0; done < n;) {
      ssize_t put = pwrite(h.phys->fd, h.copy + off + done, n - done, static_cast<off_t>(off + done));
      if (put <= 0) return false;
      done += static_cast<size_t>(put);
    }
  }
  return true;
}

// Drops the device pages of a region (its contents are in the copy).
void drop_device_pages(const Held& h) {
  if (h.phys)
    fallocate(h.phys->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, static_cast<off_t>(h.size));
  else
    madvise(reinterpret_cast<void*>(h.base), h.size, MADV_DONTNEED);
}

void free_copies() {
  for (Held& h : g_held)
    if (h.copy) munmap(h.copy, h.size);
  g_held.clear();
}

// Every region's contents into the process's memory, then its device pages dropped.
// On failure (no host memory for a copy) what was dropped is written back and the
// process keeps its device memory.
bool hold_device_memory(Driver& d) {
  std::vector<Held> regions;
  for (PhysAlloc* p : d.phys) regions.push_back({p, 0, p->size, nullptr, {}});
  for (auto& [base, r] : d.ranges)
    if (r.kind == RangeKind::DeviceAlloc || r.kind == RangeKind::PoolAlloc) regions.push_back({nullptr, base, r.span, nullptr, {}});
  for (Held& h : regions) {
    bool ok = copy_out(h);
    g_held.push_back(h);
    if (!ok) {
      for (const Held& back : g_held) copy_in(back);
      free_copies();
      return false;
    }
    drop_device_pages(h);
  }
  return true;
}

CUresult do_checkpoint() {
  if (g_state != CU_PROCESS_STATE_LOCKED) return CUDA_ERROR_ILLEGAL_STATE;
  Driver& d = drv();
  std::lock_guard lk(d.mu);
  if (!hold_device_memory(d)) {
    log("checkpoint: no host memory for a copy of the device memory");
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  g_checkpointed.clear();
  for (auto& dev : d.devices) {
    bool opened = dev->used > 0;
    for (Context* c : d.contexts) opened = opened || (c->alive && c->dev == dev.get());
    if (opened)
      g_checkpointed.push_back({dev->ordinal, dev->cfg.uuid, dev->cfg.name, dev->cfg.cc_major, dev->cfg.cc_minor,
                                dev->used});
  }
  if (d.device_file >= 0) close(d.device_file);
  d.device_file = -1;
  set_state(CU_PROCESS_STATE_CHECKPOINTED);
  return CUDA_SUCCESS;
}

// machine: the caller's devices; pairs: old UUID -> new UUID (may be empty); same_chips:
// every GPU the pairs name must be of the chip it replaces, opened or not.
CUresult do_restore(const std::vector<DeviceConfig>& machine, const std::map<std::string, std::string>& pairs,
                    bool same_chips) {
  if (g_state != CU_PROCESS_STATE_CHECKPOINTED) return CUDA_ERROR_ILLEGAL_STATE;
  Driver& d = drv();
  std::lock_guard lk(d.mu);
  // With GPU memory or contexts checkpointed, the restored process must find as many GPUs
  // as it had (the driver's "same GPU count"): its device ordinals are baked into it.
  // (A process CUDA_VISIBLE_DEVICES restricted keeps its own GPUs: the machine needs as many.)
  if (!g_checkpointed.empty() && (d.restricted ? machine.size() < d.present : machine.size() != d.present)) {
    log("restore: the process was checkpointed holding GPUs of a machine with %zu; this one has %zu", d.present,
        machine.size());
    return CUDA_ERROR_INVALID_DEVICE;
  }
  std::vector<std::pair<int, const DeviceConfig*>> plan;
  std::vector<bool> taken(machine.size(), false);
  auto planned = [&](int ordinal) {
    for (auto& [o, m] : plan)
      if (o == ordinal) return true;
    return false;
  };
  // The machine's GPU of that UUID, if no device has taken it yet; -1 otherwise.
  auto free_slot = [&](const std::string& uuid) -> int {
    size_t j = 0;
    while (j < machine.size() && uuid_hex(machine[j].uuid) != uuid) j++;
    return j < machine.size() && !taken[j] ? static_cast<int>(j) : -1;
  };
  // Whether GPU `want` (the machine's m) is not of the chip (name, cc) it is to replace: said.
  auto other_chip = [](const std::string& want, const DeviceConfig& m, const std::string& name, int major, int minor) {
    if (m.name == name && m.cc_major == major && m.cc_minor == minor) return false;
    log("restore: GPU %s is a %s (%d.%d), not a %s (%d.%d)", want.c_str(), m.name.c_str(), m.cc_major, m.cc_minor,
        name.c_str(), major, minor);
    return true;
  };
  // The same for device `ordinal`, which must have it.
  auto slot_of = [&](const std::string& uuid, int ordinal) -> int {
    int j = free_slot(uuid);
    if (j < 0) log("restore: no GPU %s on this machine for device %d", uuid.c_str(), ordinal);
    return j;
  };
  for (const Opened& o : g_checkpointed) {
    std::string want = uuid_hex(o.uuid);
    if (!pairs.empty()) {
      auto it = pairs.find(want);
      if (it == pairs.end()) {
        log("restore: checkpointed GPU %s is not in the GPU pairs", want.c_str());
        return CUDA_ERROR_INVALID_VALUE;
      }
      want = it->second;
    }
    int j = slot_of(want, o.ordinal);
    if (j < 0) return CUDA_ERROR_INVALID_DEVICE;
    const DeviceConfig& m = machine[static_cast<size_t>(j)];
    if (other_chip(want, m, o.name, o.cc_major, o.cc_minor)) return CUDA_ERROR_INVALID_DEVICE;
    if (m.total_mem - m.held < o.used) {
      log("restore: GPU %s has %zu bytes free (of %zu), the process needs %zu", want.c_str(), m.total_mem - m.held,
          m.total_mem, o.used);
      return CUDA_ERROR_OUT_OF_MEMORY;
    }
    taken[static_cast<size_t>(j)] = true;
    plan.emplace_back(o.ordinal, &m);
  }
  // A device the process did not open but the pairs name goes where they say, too.
  for (auto& dev : d.devices) {
    if (static_cast<size_t>(dev->ordinal) >= d.present) break;
    auto it = pairs.find(uuid_hex(dev->cfg.uuid));
    if (planned(dev->ordinal) || it == pairs.end()) continue;
    int j = slot_of(it->second, dev->ordinal);
    if (j < 0) return CUDA_ERROR_INVALID_DEVICE;
    const DeviceConfig& m = machine[static_cast<size_t>(j)];
    if (same_chips && other_chip(it->second, m, dev->cfg.name, dev->cfg.cc_major, dev->cfg.cc_minor))
      return CUDA_ERROR_INVALID_DEVICE;
    taken[static_cast<size_t>(j)] = true;
    plan.emplace_back(dev->ordinal, &machine[static_cast<size_t>(j)]);
  }
  // The device memory back from the process's memory: a region that cannot be written
  // (no memory for the memfd) leaves the process CHECKPOINTED, its copies kept.
  for (const Held& h : g_held)
    if (!copy_in(h)) {
      log("restore: device memory could not be written back: %s", strerror(errno));
      return CUDA_ERROR_OUT_OF_MEMORY;
    }
  free_copies();
  for (auto& [ordinal, m] : plan) d.devices[static_cast<size_t>(ordinal)]->cfg = *m;
  // The process now sees this machine's GPUs: as many as it has (devices beyond the old
  // count are made, those beyond the new one are no longer present) -- or, restricted by
  // CUDA_VISIBLE_DEVICES, as many as it had. The ones it did not open keep their GPU where
  // this machine has it, and otherwise take this machine's other GPUs in order.
  if (!d.restricted) {
    while (d.devices.size() < machine.size()) add_device(d, machine_device(static_cast<int>(d.devices.size())));
    d.present = machine.size();
  } else {
    d.present = std::min(d.devices.size(), machine.size());  // the count it had, where the machine has it
  }
  for (auto& dev : d.devices) {
    if (static_cast<size_t>(dev->ordinal) >= d.present) break;
    if (planned(dev->ordinal)) continue;
    int j = free_slot(uuid_hex(dev->cfg.uuid));
    if (j < 0) continue;
    taken[static_cast<size_t>(j)] = true;
    plan.emplace_back(dev->ordinal, &machine[static_cast<size_t>(j)]);
    dev->cfg = machine[static_cast<size_t>(j)];
  }
  size_t next = 0;
  for (auto& dev : d.devices) {
    if (static_cast<size_t>(dev->ordinal) >= d.present) break;
    if (planned(dev->ordinal)) continue;
    while (next < machine.size() && taken[next]) next++;
    if (next == machine.size()) break;
    dev->cfg = machine[next];
    taken[next] = true;
  }
  d.device_file = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY));
  set_state(CU_PROCESS_STATE_LOCKED);
  return CUDA_SUCCESS;
}

CUresult do_unlock() {
  if (g_state != CU_PROCESS_STATE_LOCKED) return CUDA_ERROR_ILLEGAL_STATE;
  set_state(CU_PROCESS_STATE_RUNNING);
  return CUDA_SUCCESS;
}

// A request: "op NAME", "timeout MS", "pair OLD NEW", "device UUID MAJOR MINOR MEM SMS BUS NAME...",
// "held BYTES" (of the device line before it; a line of its own, so a peer that does not
// know it skips it), "same_chips 1".
std::string handle(const std::string& req) {
  std::istringstream in(req);
  std::string line, op;
  unsigned timeout = 0;
  bool same_chips = false;
  std::map<std::string, std::string> pairs;
  std::vector<DeviceConfig> machine;
  while (std::getline(in, line)) {
    std::istringstream w(line);
    std::string key;
    w >> key;
    if (key == "op") w >> op;
    if (key == "timeout") w >> timeout;
    if (key == "same_chips") w >> same_chips;
    if (key == "pair") {
      std::string a, b;
      w >> a >> b;
      pairs[a] = b;
    }
    if (key == "device") {
      DeviceConfig c;
      std::string u;
      w >> u >> c.cc_major >> c.cc_minor >> c.total_mem >> c.sm_count >> c.pci_bus;
      std::getline(w, c.name);
      if (!c.name.empty() && c.name[0] == ' ') c.name.erase(0, 1);
      unhex(u, &c.uuid);
      machine.push_back(c);
    }
    if (key == "held" && !machine.empty()) {
      w >> machine.back().held;
      machine.back().held = std::min(machine.back().held, machine.back().total_mem);
    }
  }
  CUresult r = CUDA_ERROR_INVALID_VALUE;
  long value = 0;
  if (op == "state") r = CUDA_SUCCESS, value = g_state;
  if (op == "tid") r = CUDA_SUCCESS, value = g_service_tid;
  if (op == "lock") r = do_lock(timeout);
  if (op == "checkpoint") r = do_checkpoint();
  if (op == "restore") r = do_restore(machine, pairs, same_chips);
  if (op == "unlock") r = do_unlock();
  log("checkpoint API: %s -> %d", op.c_str(), static_cast<int>(r));
  return "result " + std::to_string(static_cast<int>(r)) + "\nvalue " + std::to_string(value) + "\n";
}

void on_signal(int) {
  char c = 1;
  ssize_t ignored = write(g_wake[1], &c, 1);
  (void)ignored;
}

void serve() {
  t_is_service = true;
  pthread_setname_np(pthread_self(), kThreadName);
  g_service_tid = host_tid();
  for (;;) {
    char c;
    ssize_t n = read(g_wake[0], &c, 1);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    g_service_tid = host_tid();  // after a CRIU restore: the tid on the new host
    const pid_t me = host_pid();
    std::vector<std::string> reqs;
    if (DIR* dp = opendir(dir().c_str())) {
      while (dirent* e = readdir(dp)) {
        pid_t target = 0;
        std::string stage;
        if (!parse_exchange(e->d_name, &target, &stage)) continue;
        std::string path = dir() + "/" + e->d_name;
        struct stat sb;
        // A request being written is named before its caller can lock it: judged only
        // once it is old (a caller killed then leaves it; it is never acted on).
        if (stage == "req.tmp" && (stat(path.c_str(), &sb) != 0 || time(nullptr) - sb.st_mtime < 60)) continue;
        int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) continue;  // finished meanwhile
        if (abandoned(fd)) {
          if (target == me && stage == "req") log("checkpoint API: dropped %s: its caller is gone", e->d_name);
          unlink(path.c_str());
        } else if (target == me && stage == "req") {
          reqs.push_back(e->d_name);
        }
        close(fd);
      }
      closedir(dp);
    }
    for (auto& f : reqs) {
      std::string path = dir() + "/" + f, base = path.substr(0, path.size() - 4);
      if (rename(path.c_str(), (base + ".taken").c_str()) != 0) continue;
      int fd = open((base + ".taken").c_str(), O_RDWR | O_CLOEXEC);
      if (fd < 0) continue;
      if (abandoned(fd)) {  // its caller died since the sweep (behind a slow request)
        log("checkpoint API: dropped %s: its caller is gone", f.c_str());
        unlink((base + ".taken").c_str());
        close(fd);
        continue;
      }
      std::string req;
      char buf[4096];
      for (ssize_t n; (n = read(fd, buf, sizeof buf)) > 0;) req.append(buf, static_cast<size_t>(n));
      std::string answer = handle(req);
      // Written over the request in the file the caller holds, closed (a CRIU dump may
      // follow the answer at once: no file of ours open then), then named the answer.
      bool written = !abandoned(fd) && ftruncate(fd, 0) == 0 &&
                     pwrite(fd, answer.data(), answer.size(), 0) == static_cast<ssize_t>(answer.size());
      close(fd);
      if (!written || rename((base + ".taken").c_str(), (base + ".resp").c_str()) != 0)
        unlink((base + ".taken").c_str());
    }
  }
}

// ---- the caller's side ------------------------------------------------------------------

bool has_service(pid_t pid) {
  std::string task = "/proc/" + std::to_string(pid) + "/task";
  DIR* dp = opendir(task.c_str());
  if (!dp) return false;
  bool found = false;
  while (dirent* e = readdir(dp)) {
    if (e->d_name[0] == '.') continue;
    std::ifstream comm(task + "/" + e->d_name + "/comm");
    std::string name;
    std::getline(comm, name);
    found = found || name == kThreadName;
  }
  closedir(dp);
  return found;
}

CUresult call(int pid, const std::string& req, unsigned wait_ms, long* value) {
  if (CUresult e = ensure_init()) return e;
  std::string answer;
  if (pid == host_pid()) {
    answer = handle(req);
  } else {
    // Not a process of this driver -- looked at twice: a listing of /proc/PID/task may
    // skip an entry while another thread exits.
    if (pid <= 0) return CUDA_ERROR_INVALID_VALUE;
    if (!has_service(pid)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      if (!has_service(pid)) return CUDA_ERROR_INVALID_VALUE;
    }
    mkdir(dir().c_str(), 0700);
    // Numbered from the clock, so that a later process of this pid and tid does not meet
    // the names of one before it; never an existing name (O_EXCL): another's lock is not taken over.
    static std::atomic<unsigned long> calls{static_cast<unsigned long>(
        std::chrono::steady_clock::now().time_since_epoch().count())};
    std::string base;
    int fd = -1;
    for (int tries = 0; fd < 0 && tries < 100; tries++) {
      base = dir() + "/" + std::to_string(pid) + "." + std::to_string(host_pid()) + "." + std::to_string(host_tid()) +
             "." + std::to_string(calls++);
      fd = open((base + ".req.tmp").c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
      if (fd < 0 && errno != EEXIST) break;
    }
    if (fd < 0) return CUDA_ERROR_OPERATING_SYSTEM;
    // Held until the answer is read: the service's sign that this call is still waited for.
    // The call ends with its file removed under the name of the stage it reached.
    auto end_call = [&](const char* stage, CUresult r) {
      unlink((base + stage).c_str());
      close(fd);
      return r;
    };
    if (flock(fd, LOCK_EX) != 0 || write(fd, req.data(), req.size()) != static_cast<ssize_t>(req.size()) ||
        rename((base + ".req.tmp").c_str(), (base + ".req").c_str()) != 0)
      return end_call(".req.tmp", CUDA_ERROR_OPERATING_SYSTEM);
    if (kill(pid, kSignal) != 0) return end_call(".req", CUDA_ERROR_INVALID_VALUE);
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(wait_ms);
    int misses = 0;  // looks in a row that found no service thread
    for (unsigned spins = 1; access((base + ".resp").c_str(), F_OK) != 0; spins++) {
      if (std::chrono::steady_clock::now() > deadline && access((base + ".resp").c_str(), F_OK) != 0) {
        unlink((base + ".taken").c_str());  // or still a request, never taken
        return end_call(".req", CUDA_ERROR_TIMEOUT);
      }
      // A target that ended (or exec'd) meanwhile never answers: as if it had been gone
      // before the call, not a wait until the deadline. Twice in a row: a listing of
      // /proc/PID/task may skip an entry while another thread exits.
      if (spins % 20 == 0) misses = has_service(pid) ? 0 : misses + 1;
      if (misses >= 2 && access((base + ".resp").c_str(), F_OK) != 0) {
        unlink((base + ".taken").c_str());
        return end_call(".req", CUDA_ERROR_INVALID_VALUE);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    // The same file: it was renamed, not replaced.
    char buf[256];
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    answer.assign(buf, n > 0 ? static_cast<size_t>(n) : 0);
    end_call(".resp", CUDA_SUCCESS);
  }
  int r = 0;
  long v = 0;
  sscanf(answer.c_str(), "result %d\nvalue %ld", &r, &v);
  if (value) *value = v;
  return static_cast<CUresult>(r);
}

template <class T>
bool zeroed(const T& x, size_t from = 0) {
  const auto* b = reinterpret_cast<const unsigned char*>(&x);
  for (size_t i = from; i < sizeof x; i++)
    if (b[i]) return false;
  return true;
}

constexpr unsigned kWaitMs = 120000;  // how long a caller waits for an answer (beyond a lock timeout)

// A thread calling the API acts as a controller: it passes the gate, so a process can
// also lock, checkpoint, restore and unlock itself.
struct Controller {
  bool saved = t_is_service;
  Controller() { t_is_service = true; }
  ~Controller() { t_is_service = saved; }
};

// A question with a number for answer (the state, the restore thread id).
template <class T>
CUresult query(int pid, const char* op, T* out) {
  if (!out) return CUDA_ERROR_INVALID_VALUE;
  long v = 0;
  CUresult r = call(pid, std::string("op ") + op + "\n", kWaitMs, &v);
  if (r == CUDA_SUCCESS) *out = static_cast<T>(v);
  return r;
}

}  // namespace

void checkpoint_service_start() {
  if (pipe2(g_wake, O_CLOEXEC) != 0) return;
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(kSignal, &sa, nullptr);
  std::thread t(serve);
  t.detach();
  // The thread's name is how callers know this process serves requests: once cuInit
  // returns, it is there.
  while (g_service_tid == 0) std::this_thread::sleep_for(std::chrono::microseconds(100));
}

void checkpoint_gate() {
  if (__builtin_expect(g_state.load(std::memory_order_acquire) == CU_PROCESS_STATE_RUNNING, 1) || t_is_service) return;
  std::unique_lock lk(g_mu);
  g_cv.wait(lk, [] { return g_state == CU_PROCESS_STATE_RUNNING; });
}

}  // namespace ferry::emu

using namespace ferry::emu;

FERRY_EXPORT CUresult cuCheckpointProcessGetState(int pid, CUprocessState* state) {
  Controller as_controller;
  return query(pid, "state", state);
}

FERRY_EXPORT CUresult cuCheckpointProcessGetRestoreThreadId(int pid, int* tid) {
  Controller as_controller;
  return query(pid, "tid", tid);
}

FERRY_EXPORT CUresult cuCheckpointProcessLock(int pid, CUcheckpointLockArgs* args) {
  Controller as_controller;
  unsigned timeout = 0;
  if (args) {
    if (args->reserved0 || !zeroed(args->reserved1)) return CUDA_ERROR_INVALID_VALUE;
    timeout = args->timeoutMs;
  }
  return call(pid, "op lock\ntimeout " + std::to_string(timeout) + "\n", kWaitMs + timeout, nullptr);
}

FERRY_EXPORT CUresult cuCheckpointProcessCheckpoint(int pid, CUcheckpointCheckpointArgs* args) {
  Controller as_controller;
  if (args && !zeroed(*args)) return CUDA_ERROR_INVALID_VALUE;
  return call(pid, "op checkpoint\n", kWaitMs, nullptr);
}

FERRY_EXPORT CUresult cuCheckpointProcessRestore(int pid, CUcheckpointRestoreArgs* args) {
  Controller as_controller;
  std::string req = "op restore\n";
  if (args) {
    if (!zeroed(args->reserved) || args->reserved1) return CUDA_ERROR_INVALID_VALUE;
    if (args->gpuPairsCount && !args->gpuPairs) return CUDA_ERROR_INVALID_VALUE;
    for (unsigned i = 0; i < args->gpuPairsCount; i++)
      req += "pair " + uuid_hex(args->gpuPairs[i].oldUuid) + " " + uuid_hex(args->gpuPairs[i].newUuid) + "\n";
  }
  if (CUresult e = ensure_init()) return e;
  // The stricter reading of NVIDIA's "same chip type", a property of the restoring machine.
  if (ferry::settings::flag("FERRY_EMU_PAIRS_SAME_CHIP", false)) req += "same_chips 1\n";
  {
    Driver& d = drv();
    std::lock_guard lk(d.mu);
    // As reported of the real driver (cuda-python PR 1983): a caller CUDA_VISIBLE_DEVICES
    // hides GPUs from gets INVALID_VALUE for any GPU pairs, even a GPU to itself.
    if (args && args->gpuPairsCount && d.hides) return CUDA_ERROR_INVALID_VALUE;
    for (auto& dev : d.devices) {
      if (static_cast<size_t>(dev->ordinal) >= d.present) break;
      const DeviceConfig& c = dev->cfg;
      req += "device " + uuid_hex(c.uuid) + " " + std::to_string(c.cc_major) + " " + std::to_string(c.cc_minor) + " " +
             std::to_string(c.total_mem) + " " + std::to_string(c.sm_count) + " " + std::to_string(c.pci_bus) + " " +
             c.name + "\n";
      if (c.held) req += "held " + std::to_string(c.held) + "\n";
    }
  }
  return call(pid, req, kWaitMs, nullptr);
}

FERRY_EXPORT CUresult cuCheckpointProcessUnlock(int pid, CUcheckpointUnlockArgs* args) {
  Controller as_controller;
  if (args && !zeroed(*args)) return CUDA_ERROR_INVALID_VALUE;
  return call(pid, "op unlock\n", kWaitMs, nullptr);
}
