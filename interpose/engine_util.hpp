// Small pieces the engine's snapshot and rebuild halves share.
#pragma once

#include <cuda.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "engine.hpp"
#include "shim_decls.hpp"

namespace ferry::engine {

inline std::string hex(uint64_t v) {
  char b[24];
  snprintf(b, sizeof b, "0x%llx", static_cast<unsigned long long>(v));
  return b;
}
inline std::string hex(const void* p) { return hex(reinterpret_cast<uint64_t>(p)); }
inline uint64_t unhex(const nlohmann::json& j) { return std::stoull(j.get<std::string>(), nullptr, 16); }

// Raw bytes of a POD as hex text (CUDA property structs), and back.
template <class T>
std::string pod_hex(const T& v) {
  const auto* b = reinterpret_cast<const unsigned char*>(&v);
  std::string s;
  char t[3];
  for (size_t i = 0; i < sizeof v; i++) {
    snprintf(t, sizeof t, "%02x", b[i]);
    s += t;
  }
  return s;
}
template <class T>
T pod_unhex(const std::string& s) {
  T v{};
  auto* b = reinterpret_cast<unsigned char*>(&v);
  for (size_t i = 0; i < sizeof v && 2 * i + 1 < s.size(); i++) b[i] = static_cast<unsigned char>(std::stoi(s.substr(2 * i, 2), nullptr, 16));
  return v;
}

inline Error cuda_error(const char* what, CUresult r, ErrorClass cls = ErrorClass::Bug) {
  const char* name = nullptr;
  real::cuGetErrorName(r, &name);
  return Error(cls, std::string(what) + " failed: " + (name ? name : std::to_string(static_cast<int>(r))));
}
inline void check(CUresult r, const char* what, ErrorClass cls = ErrorClass::Bug) {
  if (r != CUDA_SUCCESS) throw cuda_error(what, r, cls);
}

// Makes a real context current on the engine's thread for a scope.
struct CtxScope {
  bool pushed = false;
  explicit CtxScope(CUcontext real) {
    if (real) pushed = real::cuCtxPushCurrent_v2(real) == CUDA_SUCCESS;
  }
  ~CtxScope() {
    CUcontext c;
    if (pushed) real::cuCtxPopCurrent_v2(&c);
  }
  CtxScope(const CtxScope&) = delete;
  CtxScope& operator=(const CtxScope&) = delete;
};

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

constexpr unsigned kStreams = 4;

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


}  // namespace ferry::engine
