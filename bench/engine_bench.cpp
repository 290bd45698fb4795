// The engine's speed and memory against plain baselines measured in the same run, on
// the simulated GPU (or a real one: --real-driver PATH).
//
//   checkpoint to an image      vs  write()+fsync of the same bytes to a file (target >= 0.8)
//   checkpoint to host RAM      vs  cuMemcpyDtoH of the same bytes (target >= 0.8)
//   unchanged second checkpoint vs  the first: bytes written (target < 1%) and time (target < 10%);
//                                   and vs the same without GPU fingerprints (every chunk copied)
//   restore from the image      vs  read() of the same bytes from a file
//   suspend + resume            as a function of GiB
//   peak host memory of a checkpoint vs the staging budget
//
// The shim is loaded into this process (dlopen, like `ferry run` preloads it) and
// driven through its C API. Device memory is filled with incompressible bytes.
#include <cuda.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <ferry/ferry_c.h>

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

void* g_shim = nullptr;
template <class T>
T sym(const char* name) {
  void* p = dlsym(g_shim, name);
  if (!p) {
    fprintf(stderr, "engine_bench: %s not found in the shim\n", name);
    exit(1);
  }
  return reinterpret_cast<T>(p);
}

void ck(CUresult r, const char* what) {
  if (r != CUDA_SUCCESS) {
    fprintf(stderr, "engine_bench: %s failed (%d)\n", what, r);
    exit(1);
  }
}

ferry_result op(const char* name, ferry_options o) {
  auto fn = sym<int (*)(const ferry_options*, ferry_result*)>(name);
  ferry_result r{};
  r.size = sizeof r;
  if (fn(&o, &r) != 0) {
    fprintf(stderr, "engine_bench: %s failed: %s\n", name, r.message);
    exit(1);
  }
  return r;
}

long hwm_kib() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("VmHWM:", 0) == 0) return atol(line.c_str() + 6);
  return 0;
}
void reset_hwm() {
  int fd = open("/proc/self/clear_refs", O_WRONLY);
  if (fd >= 0) {
    if (write(fd, "5", 1) != 1) perror("clear_refs");
    close(fd);
  }
}
long rss_kib() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("VmRSS:", 0) == 0) return atol(line.c_str() + 6);
  return 0;
}

double write_file(const std::string& path, const std::vector<char>& block, size_t total) {
  auto t = Clock::now();
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  for (size_t off = 0; off < total; off += block.size())
    if (write(fd, block.data(), std::min(block.size(), total - off)) < 0) perror("write");
  fsync(fd);
  close(fd);
  return since(t);
}

void row(const char* what, double base, double ours, const char* target) {
  printf("%-44s %9.3f s %9.3f s   %6.2f   %s\n", what, base, ours, base / ours, target);
}

}  // namespace

int main(int argc, char** argv) {
  double gib = 1.0;
  std::string dir = "/tmp/ferry-engine-bench", real_driver;
  unsigned long long staging_mb = 256;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--gib") gib = atof(argv[i + 1]);
    else if (a == "--dir") dir = argv[i + 1];
    else if (a == "--real-driver") real_driver = argv[i + 1];
    else if (a == "--staging-mb") staging_mb = strtoull(argv[i + 1], nullptr, 10);
    else {
      fprintf(stderr, "usage: engine_bench [--gib G] [--dir D] [--staging-mb N] [--real-driver libcuda.so.1]\n");
      return 2;
    }
  }
  if (real_driver.empty()) {
    setenv("FERRY_REAL_DRIVER", FERRY_BENCH_EMULATOR, 1);
    setenv("FERRY_EMU_MEMORY", "64G", 1);
    setenv("FERRY_EMU_KERNELS", FERRY_BENCH_KERNEL_DIR, 0);  // the engine's fingerprint kernel
  } else {
    setenv("FERRY_REAL_DRIVER", real_driver.c_str(), 1);
  }
  setenv("FERRY_CONTROL", "off", 1);
  g_shim = dlopen(FERRY_BENCH_SHIM, RTLD_NOW | RTLD_GLOBAL);
  if (!g_shim) {
    fprintf(stderr, "engine_bench: %s\n", dlerror());
    return 1;
  }
  auto cuInit_ = sym<CUresult (*)(unsigned)>("cuInit");
  auto retain = sym<CUresult (*)(CUcontext*, CUdevice)>("cuDevicePrimaryCtxRetain");
  auto set = sym<CUresult (*)(CUcontext)>("cuCtxSetCurrent");
  auto alloc = sym<CUresult (*)(CUdeviceptr*, size_t)>("cuMemAlloc_v2");
  auto htod = sym<CUresult (*)(CUdeviceptr, const void*, size_t)>("cuMemcpyHtoD_v2");
  auto dtoh = sym<CUresult (*)(void*, CUdeviceptr, size_t)>("cuMemcpyDtoH_v2");
  ck(cuInit_(0), "cuInit");
  CUcontext ctx;
  ck(retain(&ctx, 0), "retain");
  ck(set(ctx), "set");

  const size_t seg = 64ull << 20;
  const size_t total = static_cast<size_t>(gib * (1ull << 30)) / seg * seg;
  std::vector<CUdeviceptr> segs;
  std::vector<char> block(seg);
  std::mt19937_64 rng(1);
  for (size_t off = 0; off < total; off += seg) {
    CUdeviceptr p;
    ck(alloc(&p, seg), "cuMemAlloc");
    for (size_t i = 0; i < seg; i += 8) {
      uint64_t v = rng();
      memcpy(block.data() + i, &v, 8);
    }
    ck(htod(p, block.data(), seg), "cuMemcpyHtoD");
    segs.push_back(p);
  }
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  printf("engine_bench: %.2f GiB of device memory in %zu segments, images in %s, staging %llu MiB\n",
         static_cast<double>(total) / (1 << 30), segs.size(), dir.c_str(), staging_mb);
  printf("%-44s %11s %11s   %6s   %s\n", "operation", "baseline", "ferry", "ratio", "(baseline/ferry; target)");

  // Disk.
  double t_write = write_file(dir + "/plain.bin", block, total);
  ferry_options o = FERRY_OPTIONS_INIT;
  std::string img1 = dir + "/img1", img2 = dir + "/img2";
  o.dir = img1.c_str();
  o.staging_bytes = staging_mb << 20;
  long rss0 = rss_kib();
  reset_hwm();
  ferry_result r1 = op("ferry_checkpoint", o);
  long peak = hwm_kib() - rss0;
  row("checkpoint to image vs write+fsync", t_write, r1.seconds, ">= 0.8");

  // Unchanged: everything is referenced from the parent. Once without the GPU
  // fingerprints (every chunk copied and hashed on the host), once with them.
  o.parent = img1.c_str();
  std::string img2_all = dir + "/img2-all";
  o.dir = img2_all.c_str();
  setenv("FERRY_FINGERPRINTS", "off", 1);
  ferry_result r2_all = op("ferry_checkpoint", o);
  unsetenv("FERRY_FINGERPRINTS");
  o.dir = img2.c_str();
  ferry_result r2 = op("ferry_checkpoint", o);
  printf("%-44s %9.3f s %9.3f s   %6.2f   time < 10%% of the first: %s\n", "second checkpoint, nothing changed",
         r1.seconds, r2.seconds, r1.seconds / r2.seconds, r2.seconds < 0.1 * r1.seconds ? "yes" : "NO");
  printf("%-44s %9.1f MiB %7.1f MiB %7.4f%%  bytes < 1%%: %s\n", "  bytes written (first, second)",
         static_cast<double>(r1.written) / (1 << 20), static_cast<double>(r2.written) / (1 << 20),
         100.0 * static_cast<double>(r2.written) / static_cast<double>(r1.written),
         r2.written * 100 < r1.written ? "yes" : "NO");
  row("  vs the same without GPU fingerprints", r2_all.seconds, r2.seconds, "(copies and hashes everything)");
  printf("%-44s %9.1f MiB %7.1f MiB\n", "  bytes copied from the GPU (without, with)",
         static_cast<double>(r2_all.copied) / (1 << 20), static_cast<double>(r2.copied) / (1 << 20));

  // Host RAM. The baseline gets fresh memory as the snapshot does (page faults are
  // part of the cost of holding a GPU's memory in RAM), with the same huge-page advice.
  auto t = Clock::now();
  char* host = static_cast<char*>(mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  madvise(host, total, MADV_HUGEPAGE);
  for (size_t i = 0; i < segs.size(); i++) ck(dtoh(host + i * seg, segs[i], seg), "cuMemcpyDtoH");
  double t_memcpy = since(t);
  munmap(host, total);
  ferry_options ram = FERRY_OPTIONS_INIT;
  std::string img3 = dir + "/img3";
  ram.dir = img3.c_str();
  ram.leave_running = 1;
  ferry_result r3 = op("ferry_checkpoint", ram);
  row("checkpoint to host RAM (program stopped)", t_memcpy, r3.stopped_seconds, ">= 0.8 (vs cuMemcpyDtoH)");
  printf("%-44s %11s %9.3f s   (persisted while the program runs)\n", "  the whole --leave-running checkpoint", "",
         r3.seconds);
  // The copy engine's ceiling: pinned host memory allocated (and faulted in) before
  // the clock starts.
  {
    auto alloc_host = sym<CUresult (*)(void**, size_t)>("cuMemAllocHost_v2");
    auto free_host = sym<CUresult (*)(void*)>("cuMemFreeHost");
    void* pinned = nullptr;
    ck(alloc_host(&pinned, seg), "cuMemAllocHost");
    memset(pinned, 1, seg);
    t = Clock::now();
    for (CUdeviceptr p : segs) ck(dtoh(pinned, p, seg), "cuMemcpyDtoH");
    double t_pinned = since(t);
    ck(free_host(pinned), "cuMemFreeHost");
    row("  vs cuMemcpyDtoH into ready pinned memory", t_pinned, r3.stopped_seconds, "(the copy engine's ceiling)");
  }

  // Restore from the image. The baseline loads the same bytes from a file into fresh
  // device memory, as a restore does.
  std::vector<CUdeviceptr> fresh;
  t = Clock::now();
  {
    int fd = open((dir + "/plain.bin").c_str(), O_RDONLY);
    for (size_t off = 0; off < total; off += seg) {
      CUdeviceptr p;
      ck(alloc(&p, seg), "cuMemAlloc");
      if (read(fd, block.data(), seg) != static_cast<ssize_t>(seg)) perror("read");
      ck(htod(p, block.data(), seg), "cuMemcpyHtoD");
      fresh.push_back(p);
    }
    close(fd);
  }
  double t_read = since(t);
  auto mfree = sym<CUresult (*)(CUdeviceptr)>("cuMemFree_v2");
  for (CUdeviceptr p : fresh) ck(mfree(p), "cuMemFree");
  ferry_options discard = FERRY_OPTIONS_INIT;
  discard.discard = 1;
  op("ferry_suspend", discard);
  ferry_options rest = FERRY_OPTIONS_INIT;
  rest.dir = img1.c_str();
  rest.staging_bytes = staging_mb << 20;
  ferry_result r4 = op("ferry_restore", rest);
  row("restore from image vs read+cuMemcpyHtoD", t_read, r4.seconds, "");

  printf("%-44s %9.1f MiB %7.1f MiB   %s\n", "peak host memory of a checkpoint vs staging", static_cast<double>(staging_mb),
         static_cast<double>(peak) / 1024, peak / 1024 <= static_cast<long>(staging_mb) + 64 ? "within budget (+64 MiB)"
                                                                                                : "OVER BUDGET");
  // The data survived everything.
  std::vector<char> check(seg);
  std::mt19937_64 rng2(1);
  for (size_t i = 0; i < segs.size(); i++) {
    ck(dtoh(check.data(), segs[i], seg), "cuMemcpyDtoH");
    for (size_t k = 0; k < seg; k += 8) {
      uint64_t v = rng2(), got;
      memcpy(&got, check.data() + k, 8);
      if (got != v) {
        fprintf(stderr, "engine_bench: device memory differs after the operations\n");
        return 1;
      }
    }
  }
  // Suspend + resume through host RAM, as the state shrinks (half the segments freed
  // each round).
  printf("%-44s %11s %11s\n", "suspend + resume through host RAM", "GiB", "seconds");
  while (!segs.empty()) {
    double g = static_cast<double>(segs.size() * seg) / (1 << 30);
    auto t0 = Clock::now();
    op("ferry_suspend", ferry_options{});
    op("ferry_resume", ferry_options{});
    double secs = since(t0);
    printf("%-44s %11.3f %9.3f s  (%.2f s/GiB)\n", "", g, secs, secs / g);
    if (segs.size() == 1) break;
    size_t keep = segs.size() / 2;
    while (segs.size() > keep) {
      ck(mfree(segs.back()), "cuMemFree");
      segs.pop_back();
    }
  }
  std::filesystem::remove_all(dir);
  return 0;
}
