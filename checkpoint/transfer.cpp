#include "transfer.hpp"

#include <cerrno>
#include <algorithm>
#include <cstring>
#include <memory>

#include <sys/mman.h>
#include <unistd.h>

namespace ferry::engine {

Workers::Workers(unsigned n, std::function<void()> per_thread_init) : init_(std::move(per_thread_init)) {
  if (n == 0) n = 1;
  limit_ = 4 * n;
  for (unsigned i = 0; i < n; i++) threads_.emplace_back([this] { loop(); });
}

Workers::~Workers() {
  {
    std::lock_guard lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  space_cv_.notify_all();
  for (auto& t : threads_) t.join();
}

void Workers::loop() {
  if (init_) init_();
  for (;;) {
    std::function<void()> task;
    {
      std::unique_lock lk(mu_);
      cv_.wait(lk, [this] { return stop_ || !q_.empty(); });
      if (q_.empty()) return;
      task = std::move(q_.front());
      q_.pop_front();
      running_++;
    }
    space_cv_.notify_one();
    // Tasks still run after an error: each one owns resources (staging slots) that it
    // gives back; callers stop submitting once failed() says so.
    try {
      task();
    } catch (...) {
      std::lock_guard lk(mu_);
      if (!error_) error_ = std::current_exception();
    }
    {
      std::lock_guard lk(mu_);
      running_--;
    }
    idle_cv_.notify_all();
  }
}

void Workers::submit(std::function<void()> task) {
  std::unique_lock lk(mu_);
  space_cv_.wait(lk, [this] { return q_.size() < limit_; });
  q_.push_back(std::move(task));
  lk.unlock();
  cv_.notify_one();
}

void Workers::finish() {
  std::unique_lock lk(mu_);
  idle_cv_.wait(lk, [this] { return q_.empty() && running_ == 0; });
  if (error_) {
    std::exception_ptr e = error_;
    error_ = nullptr;
    std::rethrow_exception(e);
  }
}

bool Workers::failed() {
  std::lock_guard lk(mu_);
  return error_ != nullptr;
}

HostBuffer::HostBuffer(size_t bytes) : n(bytes) {
  if (n == 0) return;
  void* m = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED)
    throw Error(ErrorClass::RetryLater, "not enough host memory for a " + std::to_string(n >> 20) +
                                            " MiB snapshot (" + strerror(errno) + ")");
  madvise(m, n, MADV_HUGEPAGE);
  p = static_cast<char*>(m);
}

HostBuffer& HostBuffer::operator=(HostBuffer&& o) noexcept {
  if (this != &o) {
    if (p) munmap(p, n);
    p = o.p, n = o.n;
    o.p = nullptr, o.n = 0;
  }
  return *this;
}

HostBuffer::~HostBuffer() {
  if (p) munmap(p, n);
}

HostRegistration::HostRegistration(char* p, size_t n) : p_(p) {
  ok_ = n > 0 && real::cuMemHostRegister_v2(p, n, CU_MEMHOSTREGISTER_PORTABLE) == CUDA_SUCCESS;
}

HostRegistration::~HostRegistration() {
  if (ok_) real::cuMemHostUnregister(p_);
}

unsigned worker_count() {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  if (n < 2) return 2;
  return static_cast<unsigned>(std::min<long>(n, 8));
}

std::map<CUcontext, std::vector<BlobRef*>> by_context(std::vector<BlobRef>& refs, DeviceContexts& dc) {
  std::map<CUcontext, std::vector<BlobRef*>> g;
  for (auto& r : refs) g[r.ctx ? r.ctx : dc.get(r.pdev)].push_back(&r);
  return g;
}

void copy_whole(Direction d, std::vector<BlobRef>& refs, const std::function<char*(const BlobRef&)>& host,
                Reporter& rep) {
  DeviceContexts dc;
  for (auto& [ctx, group] : by_context(refs, dc)) {
    CtxScope scope(ctx);
    std::vector<std::unique_ptr<HostRegistration>> pinned;  // released after the streams drained
    Streams streams(kStreams);
    unsigned k = 0;
    for (BlobRef* r : group) {
      char* h = host(*r);
      pinned.push_back(std::make_unique<HostRegistration>(h, r->size));
      for (uint64_t off = 0; off < r->size; off += kPiece) {
        uint64_t n = std::min(kPiece, r->size - off);
        CUstream s = streams.s[k++ % kStreams];
        if (d == Direction::ToHost)
          check(real::cuMemcpyDtoHAsync_v2(h + off, r->at + off, n, s), "copying device memory to host memory");
        else
          check(real::cuMemcpyHtoDAsync_v2(r->at + off, h + off, n, s), "copying memory back");
        rep.add(n);
      }
    }
    streams.sync();
  }
}

StagedCopy::StagedCopy(Direction d, uint64_t chunk_bytes, uint64_t staging_bytes, CUcontext any)
    : dir_(d), staging_(std::max<size_t>(2, staging_bytes / chunk_bytes), chunk_bytes, any), workers_(worker_count()) {}

StagedCopy::~StagedCopy() {
  if (streams_) drain();
}

void StagedCopy::begin(CUcontext ctx) {
  ctx_ = ctx;
  scope_ = std::make_unique<CtxScope>(ctx);
  streams_ = std::make_unique<Streams>(kStreams);
  for (auto& s : staging_.slots) {
    if (CUresult e = real::cuEventCreate(&s.ev, CU_EVENT_DISABLE_TIMING)) {
      drain();
      throw cuda_error("creating a copy event", e);
    }
  }
}

void StagedCopy::chunk(CUdeviceptr dev, uint64_t n, Work work) {
  size_t slot = staging_.acquire();
  auto& sl = staging_.slots[slot];
  CUstream st = streams_->s[next_++ % kStreams];
  CUcontext cx = ctx_;
  if (dir_ == Direction::ToHost) {
    CUresult e = real::cuMemcpyDtoHAsync_v2(sl.buf, dev, n, st);
    if (e == CUDA_SUCCESS) e = real::cuEventRecord(sl.ev, st);
    if (e != CUDA_SUCCESS) {
      staging_.put_back(slot);
      throw cuda_error("copying device memory to host memory", e);
    }
  }
  workers_.submit([this, slot, dev, n, st, cx, work = std::move(work)] {
    auto& s = staging_.slots[slot];
    try {
      CtxScope sc(cx);
      // Going to the host: this chunk's copy; going to the device: the slot's previous one.
      check(real::cuEventSynchronize(s.ev), dir_ == Direction::ToHost ? "copying device memory to host memory"
                                                                        : "copying memory back");
      work(s.buf);
      if (dir_ == Direction::ToDevice) {
        check(real::cuMemcpyHtoDAsync_v2(dev, s.buf, n, st), "copying memory back");
        check(real::cuEventRecord(s.ev, st), "recording a copy event");
      }
    } catch (...) {
      staging_.put_back(slot);
      throw;
    }
    staging_.put_back(slot);
  });
}

void StagedCopy::drain() noexcept {
  try {
    workers_.finish();
  } catch (...) {
  }
  if (streams_) {
    for (CUstream x : streams_->s) real::cuStreamSynchronize(x);
  }
  for (auto& s : staging_.slots)
    if (s.ev) {
      real::cuEventDestroy_v2(s.ev);
      s.ev = nullptr;
    }
  streams_.reset();
  scope_.reset();
}

void StagedCopy::end() {
  std::exception_ptr err;
  try {
    workers_.finish();
    streams_->sync();
  } catch (...) {
    err = std::current_exception();
  }
  drain();
  if (err) std::rethrow_exception(err);
}

}  // namespace ferry::engine
