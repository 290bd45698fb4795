#include "engine_util.hpp"

#include <cerrno>
#include <cstring>

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

}  // namespace ferry::engine
