// mlp_trainer: a two-layer perceptron trained with SGD or Adam on synthetic data,
// written against the plain CUDA runtime API the way training frameworks use it:
// batches are produced on the host into pinned buffers and uploaded on a copy stream
// while the compute stream trains (double buffering coordinated by events);
// activations come from cudaMallocAsync; the Adam step counter is a __device__
// variable; matmuls and reductions use shared memory. Every reduction has a fixed
// order, so the printed losses and the final weight checksum are bit-identical from
// run to run on the same device type.
//
// With --loader-workers N the batches come from N worker processes forked once CUDA is
// initialized, without exec, over pipes -- the shape of a PyTorch DataLoader with
// num_workers=N (fork is its default on Linux). The workers never call CUDA; they do
// inherit what the process held of the driver, as a DataLoader's workers do.
//
// With --ferry-at STEP:ACTION it also shows ferry's C++ API (include/ferry/ferry.hpp):
// at the end of step STEP it checkpoints itself, migrates to another GPU, or suspends
// and resumes, then trains on; the result must not change.
//
// The same file is compiled by g++ into the kernel library of the simulated GPU;
// host-only code is skipped there (FERRY_EMU_KERNEL_BUILD).
#include <cuda_runtime.h>

#include <cstdint>

#include "mlp_data.h"

constexpr int kTile = 16;

__device__ unsigned long long g_adam_t;  // optimizer step, read by adam_update

// C[M,N] (+)= op(A)[M,K] * op(B)[K,N]; op transposes when the flag is set.
__global__ void matmul(const float* A, const float* B, float* C, int M, int N, int K, int transA, int transB,
                       int accumulate) {
  __shared__ float As[kTile][kTile];
  __shared__ float Bs[kTile][kTile];
  int row = blockIdx.y * kTile + threadIdx.y;
  int col = blockIdx.x * kTile + threadIdx.x;
  float acc = 0.0f;
  for (int k0 = 0; k0 < K; k0 += kTile) {
    int ka = k0 + threadIdx.x;
    int kb = k0 + threadIdx.y;
    As[threadIdx.y][threadIdx.x] =
        (row < M && ka < K) ? (transA ? A[ka * M + row] : A[row * K + ka]) : 0.0f;
    Bs[threadIdx.y][threadIdx.x] =
        (kb < K && col < N) ? (transB ? B[col * K + kb] : B[kb * N + col]) : 0.0f;
    __syncthreads();
    for (int k = 0; k < kTile; k++) acc = fmaf(As[threadIdx.y][k], Bs[k][threadIdx.x], acc);
    __syncthreads();
  }
  if (row < M && col < N) C[row * N + col] = accumulate ? C[row * N + col] + acc : acc;
}

__global__ void bias_act(float* Z, const float* b, int M, int N, int relu) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= M * N) return;
  float v = Z[i] + b[i % N];
  Z[i] = (relu && v < 0.0f) ? 0.0f : v;
}

// dY = (Y - T) * scale; per-block partial sums of the squared error.
__global__ void mse_grad(const float* Y, const float* T, float* dY, float* partial, int n, float scale) {
  __shared__ float s[256];
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  float e = 0.0f;
  if (i < n) {
    float d = Y[i] - T[i];
    dY[i] = d * scale;
    e = d * d;
  }
  s[threadIdx.x] = e;
  __syncthreads();
  for (unsigned stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) s[threadIdx.x] += s[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = s[0];
}

// One block sums the partials in a fixed order: out = sum * scale.
__global__ void reduce_sum(const float* partial, int n, float* out, float scale) {
  __shared__ float s[256];
  float acc = 0.0f;
  for (int i = static_cast<int>(threadIdx.x); i < n; i += static_cast<int>(blockDim.x)) acc += partial[i];
  s[threadIdx.x] = acc;
  __syncthreads();
  for (unsigned stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) s[threadIdx.x] += s[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) *out = s[0] * scale;
}

__global__ void relu_backward(float* dH, const float* H, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n && H[i] <= 0.0f) dH[i] = 0.0f;
}

__global__ void col_sum(const float* D, float* out, int M, int N) {
  int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= N) return;
  float acc = 0.0f;
  for (int i = 0; i < M; i++) acc += D[i * N + j];
  out[j] = acc;
}

__global__ void sgd_update(float* w, const float* g, int n, float lr) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) w[i] = fmaf(-lr, g[i], w[i]);
}

__global__ void tick_step() { g_adam_t += 1; }

__global__ void adam_update(float* w, const float* g, float* m, float* v, int n, float lr, float b1, float b2,
                            float eps) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float t = static_cast<float>(g_adam_t);
  float gi = g[i];
  float mi = b1 * m[i] + (1.0f - b1) * gi;
  float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
  m[i] = mi;
  v[i] = vi;
  float mhat = mi / (1.0f - powf(b1, t));
  float vhat = vi / (1.0f - powf(b2, t));
  w[i] -= lr * mhat / (sqrtf(vhat) + eps);
}

// Ballast memory: a pattern the run checks at the end, to hold gigabytes on purpose.
__global__ void fill_pattern(unsigned* p, size_t n, unsigned seed) {
  size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (; i < n; i += stride) p[i] = static_cast<unsigned>(i * 2654435761u) ^ seed;
}

#ifndef FERRY_EMU_KERNEL_BUILD
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

#include <fcntl.h>
#include <poll.h>
#include <sys/wait.h>
#include <unistd.h>
#include <utility>
#include <vector>

#include <ferry/ferry.hpp>

namespace {

void check(cudaError_t e, const char* what, int line) {
  if (e == cudaSuccess) return;
  fprintf(stderr, "mlp_trainer: %s failed (line %d): %s (%s)\n", what, line, cudaGetErrorString(e),
          cudaGetErrorName(e));
  exit(1);
}
#define CK(call) check((call), #call, __LINE__)

struct Options {
  int batch = 64, in = 32, hidden = 64, out = 8, steps = 50, device = 0;
  std::string opt = "adam";
  float lr = 0.01f;
  unsigned long long seed = 42;
  size_t ballast_mb = 0;
  int ballast_device = -1;  // the ballast on another device: the process then holds memory on two
  int step_delay_ms = 0;
  int loader_workers = 0;
  bool quiet = false;
  std::vector<std::pair<int, std::string>> ferry_at;  // (step, action)
};

void usage() {
  fprintf(stderr,
          "usage: mlp_trainer [--steps N] [--batch N] [--in N] [--hidden N] [--out N] [--opt sgd|adam]\n"
          "                   [--lr X] [--seed N] [--device N] [--ballast-mb N] [--ballast-device N]\n"
          "                   [--step-delay-ms N] [--loader-workers N] [--quiet]\n"
          "                   [--ferry-at STEP:checkpoint:DIR | STEP:migrate:DEVICE | STEP:suspend-resume]...\n");
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    auto next = [&]() -> const char* {
      if (i + 1 >= argc) {
        fprintf(stderr, "mlp_trainer: %s needs a value\n", a.c_str());
        usage();
        exit(2);
      }
      return argv[++i];
    };
    if (a == "--steps") o.steps = atoi(next());
    else if (a == "--batch") o.batch = atoi(next());
    else if (a == "--in") o.in = atoi(next());
    else if (a == "--hidden") o.hidden = atoi(next());
    else if (a == "--out") o.out = atoi(next());
    else if (a == "--opt") o.opt = next();
    else if (a == "--lr") o.lr = static_cast<float>(atof(next()));
    else if (a == "--seed") o.seed = strtoull(next(), nullptr, 0);
    else if (a == "--device") o.device = atoi(next());
    else if (a == "--ballast-mb") o.ballast_mb = strtoull(next(), nullptr, 0);
    else if (a == "--ballast-device") o.ballast_device = atoi(next());
    else if (a == "--step-delay-ms") o.step_delay_ms = atoi(next());
    else if (a == "--loader-workers") o.loader_workers = atoi(next());
    else if (a == "--quiet") o.quiet = true;
    else if (a == "--ferry-at") {
      std::string v = next();
      size_t c = v.find(':');
      if (c == std::string::npos) {
        usage();
        exit(2);
      }
      o.ferry_at.emplace_back(atoi(v.c_str()), v.substr(c + 1));
    }
    else if (a == "--help" || a == "-h") { usage(); exit(0); }
    else {
      fprintf(stderr, "mlp_trainer: unknown option %s\n", a.c_str());
      usage();
      exit(2);
    }
  }
  if (o.batch <= 0 || o.in <= 0 || o.hidden <= 0 || o.out <= 0 || o.steps < 0 || o.loader_workers < 0 ||
      (o.opt != "sgd" && o.opt != "adam")) {
    fprintf(stderr, "mlp_trainer: invalid sizes or optimizer\n");
    exit(2);
  }
  return o;
}

unsigned blocks(size_t n, unsigned t = 256) { return static_cast<unsigned>((n + t - 1) / t); }

struct Param {
  float* w = nullptr;
  float* g = nullptr;
  float* m = nullptr;
  float* v = nullptr;
  size_t n = 0;
};

Param make_param(size_t n, int layer, int fan_in, unsigned long long seed, bool adam) {
  Param p;
  p.n = n;
  std::vector<float> host(n);
  for (size_t i = 0; i < n; i++) host[i] = layer < 0 ? 0.0f : mlp::init_weight(seed, layer, i, fan_in);
  CK(cudaMalloc(&p.w, n * sizeof(float)));
  CK(cudaMalloc(&p.g, n * sizeof(float)));
  CK(cudaMemcpy(p.w, host.data(), n * sizeof(float), cudaMemcpyHostToDevice));
  if (adam) {
    CK(cudaMalloc(&p.m, n * sizeof(float)));
    CK(cudaMalloc(&p.v, n * sizeof(float)));
    CK(cudaMemset(p.m, 0, n * sizeof(float)));
    CK(cudaMemset(p.v, 0, n * sizeof(float)));
  }
  return p;
}

void mm(const float* A, const float* B, float* C, int M, int N, int K, int ta, int tb, cudaStream_t s) {
  dim3 block(kTile, kTile);
  dim3 grid((N + kTile - 1) / kTile, (M + kTile - 1) / kTile);
  matmul<<<grid, block, 0, s>>>(A, B, C, M, N, K, ta, tb, 0);
  CK(cudaGetLastError());
}

bool io_all(bool writing, int fd, void* p, size_t n) {
  char* c = static_cast<char*>(p);
  while (n) {
    ssize_t k = writing ? write(fd, c, n) : read(fd, c, n);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return false;
    c += k;
    n -= static_cast<size_t>(k);
  }
  return true;
}

// DataLoader-style workers: worker w makes the batches of steps w, w+N, ... and sends
// each (inputs, then targets) down its own pipe; the pipe's capacity is the prefetch.
struct Loader {
  std::vector<int> fds;
  std::vector<pid_t> pids;

  void start(int workers, const Options& o) {
    const size_t nx = static_cast<size_t>(o.batch) * o.in, nt = static_cast<size_t>(o.batch) * o.out;
    std::vector<float> x(nx), t(nt);  // before fork: the child allocates nothing
    for (int w = 0; w < workers; w++) {
      int p[2];
      if (pipe2(p, O_CLOEXEC) != 0) {
        perror("mlp_trainer: pipe");
        exit(1);
      }
      pid_t pid = fork();
      if (pid < 0) {
        perror("mlp_trainer: fork");
        exit(1);
      }
      if (pid == 0) {
        close(p[0]);
        for (int fd : fds) close(fd);
        for (int step = w; step < o.steps; step += workers) {
          mlp::make_batch(x.data(), t.data(), o.batch, o.in, o.out, static_cast<uint64_t>(step), o.seed);
          if (!io_all(true, p[1], x.data(), nx * sizeof(float)) || !io_all(true, p[1], t.data(), nt * sizeof(float)))
            _exit(3);
        }
        // Like a DataLoader's, a worker lives until the trainer is done with it (its end
        // of the pipe closed), not only until its last batch is sent.
        pollfd pf{p[1], 0, 0};
        while (poll(&pf, 1, -1) < 0 && errno == EINTR) {
        }
        _exit(0);
      }
      close(p[1]);
      fds.push_back(p[0]);
      pids.push_back(pid);
    }
  }
  void next(int step, float* x, float* t, const Options& o) {
    int fd = fds[static_cast<size_t>(step) % fds.size()];
    if (!io_all(false, fd, x, sizeof(float) * o.batch * o.in) || !io_all(false, fd, t, sizeof(float) * o.batch * o.out)) {
      fprintf(stderr, "mlp_trainer: loader worker %zu sent no batch for step %d\n", static_cast<size_t>(step) % fds.size(),
              step);
      exit(1);
    }
  }
  // Every worker has sent all its batches and exited cleanly.
  bool finish() {
    bool ok = true;
    for (size_t w = 0; w < pids.size(); w++) {
      close(fds[w]);
      int st = 0;
      if (waitpid(pids[w], &st, 0) != pids[w] || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "mlp_trainer: loader worker %zu ended badly (status %d)\n", w, st);
        ok = false;
      }
    }
    return ok;
  }
};

// One ferry operation through the C++ API, reported on stdout.
void ferry_action(int step, const std::string& action) {
  ferry::Result r;
  if (action.rfind("checkpoint:", 0) == 0) {
    r = ferry::checkpoint(action.substr(11));
  } else if (action.rfind("migrate:", 0) == 0) {
    r = ferry::migrate(atoi(action.c_str() + 8));
  } else if (action == "suspend-resume") {
    r = ferry::suspend();
    if (r) r = ferry::resume();
  } else {
    fprintf(stderr, "mlp_trainer: unknown --ferry-at action %s\n", action.c_str());
    exit(2);
  }
  if (r)
    printf("ferry %s after step %d: ok (%.1f MiB of device memory, program stopped %.3f s)\n", action.c_str(), step,
           static_cast<double>(r.device_bytes) / (1 << 20), r.stopped_seconds);
  else
    printf("ferry %s after step %d: failed: %s\n", action.c_str(), step, r.message.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  Options o = parse(argc, argv);
  setvbuf(stdout, nullptr, _IOLBF, 0);
  CK(cudaSetDevice(o.device));
  cudaDeviceProp prop{};
  CK(cudaGetDeviceProperties(&prop, o.device));
  const bool adam = o.opt == "adam";
  const int B = o.batch, I = o.in, H = o.hidden, O = o.out;
  printf("mlp_trainer: device %d (%s, sm_%d%d), batch %d, layers %d-%d-%d, %s lr %g, %d steps\n", o.device, prop.name,
         prop.major, prop.minor, B, I, H, O, o.opt.c_str(), static_cast<double>(o.lr), o.steps);

  int lo = 0, hi = 0;
  CK(cudaDeviceGetStreamPriorityRange(&lo, &hi));
  cudaStream_t compute, copy;
  CK(cudaStreamCreateWithPriority(&compute, cudaStreamNonBlocking, hi));
  CK(cudaStreamCreateWithFlags(&copy, cudaStreamNonBlocking));

  Param W1 = make_param(static_cast<size_t>(I) * H, 1, I, o.seed, adam);
  Param b1 = make_param(static_cast<size_t>(H), -1, 1, o.seed, adam);
  Param W2 = make_param(static_cast<size_t>(H) * O, 2, H, o.seed, adam);
  Param b2 = make_param(static_cast<size_t>(O), -1, 1, o.seed, adam);
  Param* params[] = {&W1, &b1, &W2, &b2};
  unsigned long long zero = 0;
  CK(cudaMemcpyToSymbol(g_adam_t, &zero, sizeof zero));

  unsigned* ballast = nullptr;
  size_t ballast_words = o.ballast_mb * (1u << 20) / sizeof(unsigned);
  if (ballast_words && o.ballast_device >= 0 && o.ballast_device != o.device) {
    CK(cudaSetDevice(o.ballast_device));
    CK(cudaMalloc(&ballast, ballast_words * sizeof(unsigned)));
    fill_pattern<<<1024, 256>>>(ballast, ballast_words, static_cast<unsigned>(o.seed));
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    CK(cudaSetDevice(o.device));
  } else if (ballast_words) {
    CK(cudaMalloc(&ballast, ballast_words * sizeof(unsigned)));
    fill_pattern<<<1024, 256, 0, compute>>>(ballast, ballast_words, static_cast<unsigned>(o.seed));
    CK(cudaGetLastError());
  }

  Loader loader;
  if (o.loader_workers) loader.start(o.loader_workers, o);

  // Double-buffered input pipeline: pinned host staging -> device, on the copy stream.
  float *hx[2], *ht[2], *dx[2], *dt[2];
  cudaEvent_t uploaded[2], consumed[2];
  for (int k = 0; k < 2; k++) {
    CK(cudaMallocHost(&hx[k], sizeof(float) * B * I));
    CK(cudaHostAlloc(&ht[k], sizeof(float) * B * O, cudaHostAllocDefault));
    CK(cudaMalloc(&dx[k], sizeof(float) * B * I));
    CK(cudaMalloc(&dt[k], sizeof(float) * B * O));
    CK(cudaEventCreateWithFlags(&uploaded[k], cudaEventDisableTiming));
    CK(cudaEventCreateWithFlags(&consumed[k], cudaEventDisableTiming));
  }
  float* loss_host = nullptr;
  CK(cudaMallocHost(&loss_host, sizeof(float)));
  cudaEvent_t loss_ready, t0, t1;
  CK(cudaEventCreate(&loss_ready));
  CK(cudaEventCreate(&t0));
  CK(cudaEventCreate(&t1));

  auto upload = [&](int step) {
    int k = step % 2;
    CK(cudaEventSynchronize(consumed[k]));  // the host buffer is free once its upload ran
    if (o.loader_workers)
      loader.next(step, hx[k], ht[k], o);
    else
      mlp::make_batch(hx[k], ht[k], B, I, O, static_cast<uint64_t>(step), o.seed);
    CK(cudaStreamWaitEvent(copy, consumed[k], 0));
    CK(cudaMemcpyAsync(dx[k], hx[k], sizeof(float) * B * I, cudaMemcpyHostToDevice, copy));
    CK(cudaMemcpyAsync(dt[k], ht[k], sizeof(float) * B * O, cudaMemcpyHostToDevice, copy));
    CK(cudaEventRecord(uploaded[k], copy));
  };

  CK(cudaEventRecord(t0, compute));
  if (o.steps > 0) upload(0);
  const float loss_scale = 0.5f / static_cast<float>(B * O);
  const float grad_scale = 1.0f / static_cast<float>(B * O);
  for (int step = 0; step < o.steps; step++) {
    int k = step % 2;
    CK(cudaStreamWaitEvent(compute, uploaded[k], 0));
    float *h, *y, *dy, *dh, *partial, *loss;
    size_t nout = static_cast<size_t>(B) * O, nh = static_cast<size_t>(B) * H;
    CK(cudaMallocAsync(&h, sizeof(float) * nh, compute));
    CK(cudaMallocAsync(&y, sizeof(float) * nout, compute));
    CK(cudaMallocAsync(&dy, sizeof(float) * nout, compute));
    CK(cudaMallocAsync(&dh, sizeof(float) * nh, compute));
    CK(cudaMallocAsync(&partial, sizeof(float) * blocks(nout), compute));
    CK(cudaMallocAsync(&loss, sizeof(float), compute));

    mm(dx[k], W1.w, h, B, H, I, 0, 0, compute);
    bias_act<<<blocks(nh), 256, 0, compute>>>(h, b1.w, B, H, 1);
    mm(h, W2.w, y, B, O, H, 0, 0, compute);
    bias_act<<<blocks(nout), 256, 0, compute>>>(y, b2.w, B, O, 0);
    mse_grad<<<blocks(nout), 256, 0, compute>>>(y, dt[k], dy, partial, static_cast<int>(nout), grad_scale);
    reduce_sum<<<1, 256, 0, compute>>>(partial, static_cast<int>(blocks(nout)), loss, loss_scale);
    CK(cudaEventRecord(consumed[k], compute));  // inputs are read; the next upload may reuse them
    if (step + 1 < o.steps) upload(step + 1);

    mm(h, dy, W2.g, H, O, B, 1, 0, compute);
    col_sum<<<blocks(O), 256, 0, compute>>>(dy, b2.g, B, O);
    mm(dy, W2.w, dh, B, H, O, 0, 1, compute);
    relu_backward<<<blocks(nh), 256, 0, compute>>>(dh, h, static_cast<int>(nh));
    mm(dx[k], dh, W1.g, I, H, B, 1, 0, compute);
    col_sum<<<blocks(H), 256, 0, compute>>>(dh, b1.g, B, H);
    tick_step<<<1, 1, 0, compute>>>();
    if (adam) {
      for (Param* p : params)
        adam_update<<<blocks(p->n), 256, 0, compute>>>(p->w, p->g, p->m, p->v, static_cast<int>(p->n), o.lr, 0.9f,
                                                       0.999f, 1e-8f);
    } else {
      for (Param* p : params) sgd_update<<<blocks(p->n), 256, 0, compute>>>(p->w, p->g, static_cast<int>(p->n), o.lr);
    }
    CK(cudaGetLastError());
    CK(cudaMemcpyAsync(loss_host, loss, sizeof(float), cudaMemcpyDeviceToHost, compute));
    CK(cudaEventRecord(loss_ready, compute));
    for (float* p : {h, y, dy, dh, partial, loss}) CK(cudaFreeAsync(p, compute));
    CK(cudaEventSynchronize(loss_ready));
    if (!o.quiet || step + 1 == o.steps) printf("step %d loss %.9g\n", step + 1, static_cast<double>(*loss_host));
    if (o.step_delay_ms) std::this_thread::sleep_for(std::chrono::milliseconds(o.step_delay_ms));
    for (auto& [at, action] : o.ferry_at)
      if (at == step + 1) ferry_action(at, action);
  }
  CK(cudaEventRecord(t1, compute));
  CK(cudaDeviceSynchronize());
  float ms = 0;
  CK(cudaEventElapsedTime(&ms, t0, t1));

  uint64_t sum = mlp::kFnvBasis;
  for (Param* p : params) {
    std::vector<float> w(p->n);
    CK(cudaMemcpy(w.data(), p->w, p->n * sizeof(float), cudaMemcpyDeviceToHost));
    sum = mlp::fnv1a(sum, w.data(), w.size() * sizeof(float));
  }
  unsigned long long t = 0;
  CK(cudaMemcpyFromSymbol(&t, g_adam_t, sizeof t));
  int bad_ballast = 0;
  if (ballast_words) {
    std::vector<unsigned> host(ballast_words);
    CK(cudaMemcpy(host.data(), ballast, ballast_words * sizeof(unsigned), cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < ballast_words; i++)
      if (host[i] != (static_cast<unsigned>(i * 2654435761u) ^ static_cast<unsigned>(o.seed))) bad_ballast++;
    printf("ballast %zu MiB %s\n", o.ballast_mb, bad_ballast ? "CORRUPT" : "intact");
  }
  printf("optimizer steps %llu\n", t);
  printf("weights checksum %016llx\n", static_cast<unsigned long long>(sum));
  fprintf(stderr, "mlp_trainer: %.1f ms on the device clock\n", static_cast<double>(ms));
  bool loaders_ok = loader.finish();
  return bad_ballast || !loaders_ok ? 1 : 0;
}
#endif
