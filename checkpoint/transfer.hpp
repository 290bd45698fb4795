// Moving device memory between the GPU and the host, in both directions: the pieces
// capture (checkpoint/) and rebuild (restore/) share -- pinned staging slots, copy
// streams, worker threads, progress reporting, the engine's own device contexts.
#pragma once

#include <cuda.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "checkpoint.hpp"
#include "driver.hpp"
#include "shim_decls.hpp"

namespace ferry::engine {

// A bounded pool of worker threads fed from a queue; the first exception a task
// throws is rethrown by finish() (callers stop submitting once failed() says so).
class Workers {
 public:
  explicit Workers(unsigned n, std::function<void()> per_thread_init = {});
  ~Workers();
  void submit(std::function<void()> task);  // blocks while the queue is full
  void finish();                            // waits for all tasks; rethrows the first error
  bool failed();

 private:
  void loop();
  std::mutex mu_;
  std::condition_variable cv_, space_cv_, idle_cv_;
  std::deque<std::function<void()>> q_;
  std::vector<std::thread> threads_;
  std::function<void()> init_;
  size_t limit_ = 64, running_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
};

unsigned worker_count();

// Host memory registered (pinned) with the driver while a copy uses it: copies from
// and to pinned memory run at full speed and asynchronously. Without it (the driver
// refused, e.g. a locked-memory limit) the copies still work, through the driver's
// own staging.
class HostRegistration {
 public:
  HostRegistration(char* p, size_t n);
  ~HostRegistration();
  HostRegistration(const HostRegistration&) = delete;
  HostRegistration& operator=(const HostRegistration&) = delete;

 private:
  char* p_;
  bool ok_ = false;
};

using Clock = std::chrono::steady_clock;

// Progress reports at most every 100 ms (and always the last one).
struct Reporter {
  const Progress& p;
  const char* phase;
  uint64_t total;
  std::atomic<uint64_t> done{0};
  std::mutex mu;
  Clock::time_point last{};
  Reporter(const Progress& pr, const char* ph, uint64_t t) : p(pr), phase(ph), total(t) { p(phase, 0, total); }
  void add(uint64_t n) {
    uint64_t d = done.fetch_add(n) + n;
    std::lock_guard lk(mu);
    auto now = Clock::now();
    if (d < total && now - last < std::chrono::milliseconds(100)) return;
    last = now;
    p(phase, d, total);
  }
};

// The engine's own context on each device: the primary one, retained while in use.
struct DeviceContexts {
  std::map<int, CUcontext> held;
  CUcontext get(int pdev) {
    auto it = held.find(pdev);
    if (it != held.end()) return it->second;
    CUcontext c = nullptr;
    check(real::cuDevicePrimaryCtxRetain(&c, pdev), "retaining a device's primary context");
    held[pdev] = c;
    return c;
  }
  ~DeviceContexts() {
    for (auto& [d, c] : held) real::cuDevicePrimaryCtxRelease_v2(d);
  }
};

// Pinned staging buffers, handed out one at a time.
struct Staging {
  struct Slot {
    char* buf = nullptr;
    CUevent ev = nullptr;
  };
  std::vector<Slot> slots;
  std::vector<size_t> free_list;
  std::mutex mu;
  std::condition_variable cv;
  Staging(size_t n, size_t bytes, CUcontext any) {
    CtxScope scope(any);
    for (size_t i = 0; i < n; i++) {
      Slot s;
      void* p = nullptr;
      if (CUresult e = real::cuMemHostAlloc(&p, bytes, CU_MEMHOSTALLOC_PORTABLE)) {
        release();
        throw cuda_error("allocating pinned staging memory", e, ErrorClass::RetryLater);
      }
      s.buf = static_cast<char*>(p);
      slots.push_back(s);
      free_list.push_back(i);
    }
  }
  void release() {
    for (auto& s : slots)
      if (s.buf) real::cuMemFreeHost(s.buf);
    slots.clear();
  }
  ~Staging() { release(); }
  size_t acquire() {
    std::unique_lock lk(mu);
    cv.wait(lk, [this] { return !free_list.empty(); });
    size_t i = free_list.back();
    free_list.pop_back();
    return i;
  }
  void put_back(size_t i) {
    {
      std::lock_guard lk(mu);
      free_list.push_back(i);
    }
    cv.notify_one();
  }
};

// Copies in flight: pieces of a blob spread over this many streams per context.
constexpr unsigned kStreams = 4;
// RAM snapshots copy whole blobs in pieces of this size.
constexpr uint64_t kPiece = 64ull << 20;

struct Streams {
  std::vector<CUstream> s;
  explicit Streams(unsigned n) {
    for (unsigned i = 0; i < n; i++) {
      CUstream x = nullptr;
      check(real::cuStreamCreate(&x, CU_STREAM_NON_BLOCKING), "creating a copy stream");
      s.push_back(x);
    }
  }
  void sync() {
    for (CUstream x : s) check(real::cuStreamSynchronize(x), "copying device memory");
  }
  ~Streams() {  // also on errors: nothing may still copy into memory about to go away
    for (CUstream x : s) {
      real::cuStreamSynchronize(x);
      real::cuStreamDestroy_v2(x);
    }
  }
};

enum class Direction { ToHost, ToDevice };

// Blobs grouped by the real context their copies run in (a blob without one uses its
// device's primary context).
std::map<CUcontext, std::vector<BlobRef*>> by_context(std::vector<BlobRef>& refs, DeviceContexts& dc);

// Whole blobs between the device and host buffers that hold them entirely (RAM
// snapshots): kPiece pieces on kStreams streams per context, each host buffer pinned
// while its copies run. host(ref) gives the buffer of a blob.
void copy_whole(Direction d, std::vector<BlobRef>& refs, const std::function<char*(const BlobRef&)>& host,
                Reporter& rep);

// Chunks through pinned staging slots, with worker threads on the host side: going to
// the host, a worker takes each chunk once its copy landed (consume); going to the
// device, a worker fills a slot (produce) and queues its copy, and the slot is reused
// once that copy is done. At most staging_bytes of host memory are in flight. One
// context at a time: begin(ctx), chunk()..., end(); any error is rethrown by end() or
// by chunk() once a worker failed, after everything in flight has drained.
class StagedCopy {
 public:
  using Work = std::function<void(char* slot)>;
  StagedCopy(Direction d, uint64_t chunk_bytes, uint64_t staging_bytes, CUcontext any);
  ~StagedCopy();
  StagedCopy(const StagedCopy&) = delete;
  StagedCopy& operator=(const StagedCopy&) = delete;

  void begin(CUcontext ctx);
  // ToHost: copies n bytes at dev into a slot, then a worker runs work(slot).
  // ToDevice: a worker runs work(slot), then copies n bytes of it to dev.
  void chunk(CUdeviceptr dev, uint64_t n, Work work);
  bool failed() { return workers_.failed(); }
  void end();  // waits for every chunk of this context; rethrows the first error

 private:
  void drain() noexcept;
  Direction dir_;
  Staging staging_;
  Workers workers_;
  CUcontext ctx_ = nullptr;
  std::unique_ptr<CtxScope> scope_;
  std::unique_ptr<Streams> streams_;
  unsigned next_ = 0;
};

}  // namespace ferry::engine
