// Drives NVIDIA's checkpoint API on another process by pid, one step per argument, as
// cuda-checkpoint does: ckpt_ctl PID STEP... with STEP one of
//   state | tid | lock[:TIMEOUT_MS] | checkpoint | restore[:OLDUUID=NEWUUID,...] | unlock
// (UUIDs as 32 hex digits). Prints "STEP RESULT VALUE" per step; exits 0 when every
// step succeeded, 1 otherwise (it goes on after a failure so a test sees every answer).
// The driver is whatever libcuda.so.1 the loader finds (the simulated GPU in tests).
#include <cuda.h>
#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

template <class F>
F sym(void* lib, const char* n) {
  void* p = dlsym(lib, n);
  if (!p) {
    fprintf(stderr, "ckpt_ctl: the driver has no %s\n", n);
    exit(2);
  }
  return reinterpret_cast<F>(p);
}

bool uuid_of(const std::string& hex, CUuuid* u) {
  if (hex.size() != 32) return false;
  for (int i = 0; i < 16; i++) u->bytes[i] = static_cast<char>(strtol(hex.substr(2 * i, 2).c_str(), nullptr, 16));
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: ckpt_ctl PID state|tid|lock[:MS]|checkpoint|restore[:OLD=NEW,...]|unlock...\n");
    return 64;
  }
  void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    fprintf(stderr, "ckpt_ctl: %s\n", dlerror());
    return 2;
  }
  int pid = atoi(argv[1]);
  if (CUresult e = sym<CUresult (*)(unsigned)>(lib, "cuInit")(0)) {
    fprintf(stderr, "ckpt_ctl: cuInit failed: %d\n", static_cast<int>(e));
    return 2;
  }
  auto state = sym<CUresult (*)(int, CUprocessState*)>(lib, "cuCheckpointProcessGetState");
  auto tid = sym<CUresult (*)(int, int*)>(lib, "cuCheckpointProcessGetRestoreThreadId");
  auto lock = sym<CUresult (*)(int, CUcheckpointLockArgs*)>(lib, "cuCheckpointProcessLock");
  auto checkpoint = sym<CUresult (*)(int, CUcheckpointCheckpointArgs*)>(lib, "cuCheckpointProcessCheckpoint");
  auto restore = sym<CUresult (*)(int, CUcheckpointRestoreArgs*)>(lib, "cuCheckpointProcessRestore");
  auto unlock = sym<CUresult (*)(int, CUcheckpointUnlockArgs*)>(lib, "cuCheckpointProcessUnlock");
  int failed = 0;
  for (int i = 2; i < argc; i++) {
    std::string step = argv[i], arg;
    if (size_t c = step.find(':'); c != std::string::npos) arg = step.substr(c + 1), step = step.substr(0, c);
    CUresult r = CUDA_ERROR_INVALID_VALUE;
    long value = 0;
    if (step == "state") {
      CUprocessState s = CU_PROCESS_STATE_FAILED;
      r = state(pid, &s);
      value = s;
    } else if (step == "tid") {
      int t = 0;
      r = tid(pid, &t);
      value = t;
    } else if (step == "lock") {
      CUcheckpointLockArgs a{};
      a.timeoutMs = static_cast<unsigned>(atoi(arg.c_str()));
      r = lock(pid, &a);
    } else if (step == "checkpoint") {
      CUcheckpointCheckpointArgs a{};
      r = checkpoint(pid, &a);
    } else if (step == "restore") {
      std::vector<CUcheckpointGpuPair> pairs;
      size_t pos = 0;
      while (pos < arg.size()) {
        size_t comma = arg.find(',', pos);
        std::string p = arg.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
        pos = comma == std::string::npos ? arg.size() : comma + 1;
        size_t eq = p.find('=');
        CUcheckpointGpuPair g{};
        if (eq == std::string::npos || !uuid_of(p.substr(0, eq), &g.oldUuid) || !uuid_of(p.substr(eq + 1), &g.newUuid)) {
          fprintf(stderr, "ckpt_ctl: bad GPU pair %s\n", p.c_str());
          return 64;
        }
        pairs.push_back(g);
      }
      CUcheckpointRestoreArgs a{};
      a.gpuPairs = pairs.empty() ? nullptr : pairs.data();
      a.gpuPairsCount = static_cast<unsigned>(pairs.size());
      r = restore(pid, &a);
    } else if (step == "unlock") {
      CUcheckpointUnlockArgs a{};
      r = unlock(pid, &a);
    } else {
      fprintf(stderr, "ckpt_ctl: unknown step %s\n", step.c_str());
      return 64;
    }
    printf("%s %d %ld\n", argv[i], static_cast<int>(r), value);
    fflush(stdout);
    failed += r != CUDA_SUCCESS;
  }
  return failed ? 1 : 0;
}
