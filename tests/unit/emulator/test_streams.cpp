// Streams run asynchronously and in order; events, waits, host functions, callbacks;
// the legacy default stream synchronizes with blocking streams only.
#include <atomic>
#include <mutex>
#include <thread>

#include "emu_test.hpp"

using emu_test::primary;

namespace {
struct Gate {
  std::atomic<bool> open{false};
};
void wait_gate(void* g) {
  while (!static_cast<Gate*>(g)->open.load()) std::this_thread::yield();
}
std::mutex g_log_mu;
std::vector<int> g_log;
void log_value(void* v) {
  std::lock_guard lk(g_log_mu);
  g_log.push_back(static_cast<int>(reinterpret_cast<intptr_t>(v)));
}
}  // namespace

TEST_CASE("work on one stream runs in order, asynchronously", "[streams]") {
  primary(0);
  CUstream s;
  CU_OK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
  Gate gate;
  CU_OK(cuLaunchHostFunc(s, wait_gate, &gate));
  g_log.clear();
  for (intptr_t i = 0; i < 50; i++) CU_OK(cuLaunchHostFunc(s, log_value, reinterpret_cast<void*>(i)));
  // Nothing has run yet: the stream is held at the gate while we carry on.
  REQUIRE(cuStreamQuery(s) == CUDA_ERROR_NOT_READY);
  {
    std::lock_guard lk(g_log_mu);
    REQUIRE(g_log.empty());
  }
  gate.open = true;
  CU_OK(cuStreamSynchronize(s));
  CU_OK(cuStreamQuery(s));
  std::vector<int> want(50);
  for (int i = 0; i < 50; i++) want[i] = i;
  REQUIRE(g_log == want);
  CU_OK(cuStreamDestroy(s));
}

TEST_CASE("many threads issuing work concurrently keep per-stream order", "[streams][concurrency]") {
  primary(0);
  const int threads = 8, per_thread = 200, n = 256;
  CUdeviceptr buf;
  CU_OK(cuMemAlloc(&buf, threads * n * sizeof(int)));
  CU_OK(cuMemsetD32(buf, 0, threads * n));
  CUfunction f = emu_test::kernel("add_one");
  CUcontext ctx;
  CU_OK(cuCtxGetCurrent(&ctx));
  std::vector<std::thread> ts;
  std::atomic<int> failures{0};
  for (int t = 0; t < threads; t++) {
    ts.emplace_back([&, t] {
      cuCtxSetCurrent(ctx);
      CUstream s;
      if (cuStreamCreate(&s, t % 2 ? CU_STREAM_NON_BLOCKING : 0) != CUDA_SUCCESS) return void(failures++);
      CUdeviceptr mine = buf + static_cast<CUdeviceptr>(t) * n * sizeof(int);
      int count = n;
      std::vector<int> host(n);
      for (int i = 0; i < per_thread; i++) {
        void* args[] = {&mine, &count};
        if (cuLaunchKernel(f, 1, 1, 1, n, 1, 1, 0, s, args, nullptr) != CUDA_SUCCESS) failures++;
        if (i % 50 == 49) {
          // An async read-back in the middle must see exactly the launches before it.
          if (cuMemcpyDtoHAsync(host.data(), mine, n * sizeof(int), s) != CUDA_SUCCESS) failures++;
          if (host[0] != i + 1 || host[n - 1] != i + 1) failures++;
        }
      }
      if (cuStreamSynchronize(s) != CUDA_SUCCESS || cuStreamDestroy(s) != CUDA_SUCCESS) failures++;
    });
  }
  for (auto& t : ts) t.join();
  REQUIRE(failures == 0);
  std::vector<int> out(threads * n);
  CU_OK(cuMemcpyDtoH(out.data(), buf, out.size() * sizeof(int)));
  for (int v : out) REQUIRE(v == per_thread);
  CU_OK(cuMemFree(buf));
}

TEST_CASE("events: record, query, synchronize, elapsed time, cross-stream wait", "[streams]") {
  primary(0);
  CUstream a, b;
  CU_OK(cuStreamCreate(&a, CU_STREAM_NON_BLOCKING));
  CU_OK(cuStreamCreate(&b, CU_STREAM_NON_BLOCKING));
  CUevent start, stop, nt;
  CU_OK(cuEventCreate(&start, CU_EVENT_DEFAULT));
  CU_OK(cuEventCreate(&stop, CU_EVENT_DEFAULT));
  CU_OK(cuEventCreate(&nt, CU_EVENT_DISABLE_TIMING));
  CU_OK(cuEventQuery(stop));  // never recorded: complete
  Gate gate;
  CU_OK(cuEventRecord(start, a));
  CU_OK(cuLaunchHostFunc(a, wait_gate, &gate));
  CUdeviceptr d;
  CU_OK(cuMemAlloc(&d, 4));
  CU_OK(cuMemsetD32Async(d, 41, 1, a));
  CU_OK(cuEventRecord(stop, a));
  CU_OK(cuEventRecord(nt, a));
  REQUIRE(cuEventQuery(stop) == CUDA_ERROR_NOT_READY);
  float ms = 0;
  REQUIRE(cuEventElapsedTime(&ms, start, stop) == CUDA_ERROR_NOT_READY);
  // b waits for a's work through the event, then adds one.
  CU_OK(cuStreamWaitEvent(b, stop, 0));
  CUfunction f = emu_test::kernel("add_one");
  int one = 1;
  CU_OK(emu_test::launch(f, 1, 1, {&d, &one}, b));
  REQUIRE(cuStreamQuery(b) == CUDA_ERROR_NOT_READY);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  gate.open = true;
  CU_OK(cuEventSynchronize(stop));
  CU_OK(cuStreamSynchronize(b));
  int v = 0;
  CU_OK(cuMemcpyDtoH(&v, d, 4));
  REQUIRE(v == 42);
  CU_OK(cuEventElapsedTime(&ms, start, stop));
  REQUIRE(ms >= 15.0f);
  REQUIRE(cuEventElapsedTime(&ms, start, nt) == CUDA_ERROR_INVALID_HANDLE);
  for (CUevent e : {start, stop, nt}) CU_OK(cuEventDestroy(e));
  REQUIRE(cuEventQuery(start) == CUDA_ERROR_INVALID_HANDLE);
  CU_OK(cuStreamDestroy(a));
  CU_OK(cuStreamDestroy(b));
  CU_OK(cuMemFree(d));
}

TEST_CASE("the legacy default stream waits for blocking streams, not for non-blocking ones", "[streams]") {
  primary(0);
  CUstream blocking, nonblocking;
  CU_OK(cuStreamCreate(&blocking, CU_STREAM_DEFAULT));
  CU_OK(cuStreamCreate(&nonblocking, CU_STREAM_NON_BLOCKING));
  Gate g1, g2;
  CU_OK(cuLaunchHostFunc(nonblocking, wait_gate, &g1));
  // NULL-stream work completes although a non-blocking stream is held.
  CU_OK(cuLaunchHostFunc(nullptr, log_value, reinterpret_cast<void*>(1)));
  CU_OK(cuStreamSynchronize(nullptr));
  g1.open = true;
  CU_OK(cuStreamSynchronize(nonblocking));
  // NULL-stream work waits for a held blocking stream...
  g_log.clear();
  CU_OK(cuLaunchHostFunc(blocking, wait_gate, &g2));
  CU_OK(cuLaunchHostFunc(blocking, log_value, reinterpret_cast<void*>(10)));
  CU_OK(cuLaunchHostFunc(nullptr, log_value, reinterpret_cast<void*>(20)));
  // ...and blocking-stream work issued later waits for the NULL stream.
  CU_OK(cuLaunchHostFunc(blocking, log_value, reinterpret_cast<void*>(30)));
  REQUIRE(cuStreamQuery(nullptr) == CUDA_ERROR_NOT_READY);
  g2.open = true;
  CU_OK(cuCtxSynchronize());
  REQUIRE(g_log == std::vector<int>{10, 20, 30});
  CU_OK(cuStreamDestroy(blocking));
  CU_OK(cuStreamDestroy(nonblocking));
}

namespace {
void callback(CUstream s, CUresult status, void* user) {
  auto* seen = static_cast<std::pair<CUstream, CUresult>*>(user);
  *seen = {s, status};
}
}  // namespace

TEST_CASE("stream callbacks get their stream and the context status", "[streams]") {
  primary(0);
  CUstream s;
  CU_OK(cuStreamCreate(&s, 0));
  std::pair<CUstream, CUresult> seen{nullptr, CUDA_ERROR_UNKNOWN};
  CU_OK(cuStreamAddCallback(s, callback, &seen, 0));
  CU_OK(cuStreamSynchronize(s));
  REQUIRE(seen.first == s);
  REQUIRE(seen.second == CUDA_SUCCESS);
  REQUIRE(cuStreamAddCallback(s, callback, &seen, 1) == CUDA_ERROR_INVALID_VALUE);
  CU_OK(cuStreamDestroy(s));
}

TEST_CASE("stream properties: flags, priorities, ids, per-thread default streams", "[streams]") {
  CUcontext ctx = primary(0);
  int least = 1, greatest = 1;
  CU_OK(cuCtxGetStreamPriorityRange(&least, &greatest));
  REQUIRE(least == 0);
  REQUIRE(greatest < 0);
  CUstream s;
  CU_OK(cuStreamCreateWithPriority(&s, CU_STREAM_NON_BLOCKING, greatest));
  int prio = 0;
  unsigned flags = 0;
  CU_OK(cuStreamGetPriority(s, &prio));
  CU_OK(cuStreamGetFlags(s, &flags));
  REQUIRE(prio == greatest);
  REQUIRE(flags == CU_STREAM_NON_BLOCKING);
  CUcontext owner;
  CU_OK(cuStreamGetCtx(s, &owner));
  REQUIRE(owner == ctx);
  unsigned long long id_main = 0, id_other = 0;
  CU_OK(cuStreamGetId(CU_STREAM_PER_THREAD, &id_main));
  std::thread t([&] {
    cuCtxSetCurrent(ctx);
    cuStreamGetId(CU_STREAM_PER_THREAD, &id_other);
  });
  t.join();
  REQUIRE(id_main != 0);
  REQUIRE(id_other != 0);
  REQUIRE(id_main != id_other);
  CU_OK(cuStreamDestroy(s));
  REQUIRE(cuStreamQuery(s) == CUDA_ERROR_INVALID_HANDLE);
}
