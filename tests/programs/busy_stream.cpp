// Keeps a stream busy: a host function that sleeps for the given milliseconds, queued
// again and again, then prints "done". Used to show that NVIDIA's checkpoint API's lock
// waits for queued work and gives up at its timeout.
#include <cuda.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>

namespace {
void sleepy(void* ms) { usleep(static_cast<useconds_t>(reinterpret_cast<uintptr_t>(ms) * 1000)); }
}  // namespace

int main(int argc, char** argv) {
  int rounds = argc > 1 ? atoi(argv[1]) : 10;
  uintptr_t ms = argc > 2 ? static_cast<uintptr_t>(atoi(argv[2])) : 500;
  CUcontext c;
  CUstream s;
  if (cuInit(0) || cuDevicePrimaryCtxRetain(&c, 0) || cuCtxSetCurrent(c) || cuStreamCreate(&s, CU_STREAM_NON_BLOCKING))
    return 2;
  printf("busy\n");
  fflush(stdout);
  for (int i = 0; i < rounds; i++) {
    if (cuLaunchHostFunc(s, sleepy, reinterpret_cast<void*>(ms))) return 3;
    if (cuStreamSynchronize(s)) return 4;
  }
  printf("done\n");
  return 0;
}
