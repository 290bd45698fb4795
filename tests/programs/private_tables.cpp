// Calls the simulated GPU's private TOOLS_CONTEXT export table the way cuBLAS calls the
// real driver's: with the context and stream the program holds. Under ferry those are
// virtual handles, which must reach the driver as the real ones
// (interpose/private_calls.hpp). Prints what it compared; exit 0 when all agree.
// `--wait-for FILE`: after one round, print "waiting" and check again once FILE exists
// (a test suspends and resumes the process in between: new real handles).
#include <cuda.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include <ferry_common/export_tables.hpp>

namespace tc = ferry::export_tables::emu_tools_context;

namespace {
int fails = 0;
void expect(bool ok, const char* what) {
  printf("%s: %s\n", what, ok ? "ok" : "WRONG");
  if (!ok) fails++;
}

// One round of comparisons; false when the table is missing. After a restore the shim
// keeps the ids the program saw while the driver's objects are new ones, so then only
// the answers' success is compared.
bool compare(CUcontext ctx, CUstream s, bool restored) {
  CUuuid id;
  memcpy(id.bytes, ferry::export_tables::kToolsContext.data(), 16);
  const void* table = nullptr;
  if (cuGetExportTable(&table, &id) != CUDA_SUCCESS || !table) {
    fprintf(stderr, "private_tables: the driver has no TOOLS_CONTEXT table\n");
    return false;
  }
  auto slots = static_cast<void* const*>(table);
  expect(reinterpret_cast<uintptr_t>(slots[0]) == tc::kSlots * sizeof(void*), "size word");
  expect(*static_cast<const unsigned long long*>(slots[tc::kData]) == tc::kDataWord, "data slot");

  using DeviceFn = CUresult (*)(CUcontext, CUdevice*);
  using ContextIdFn = CUresult (*)(CUcontext, unsigned long long*);
  using StreamIdFn = CUresult (*)(CUcontext, CUstream, unsigned long long*);
  auto device_of = reinterpret_cast<DeviceFn>(slots[tc::kDevice]);
  auto context_id = reinterpret_cast<ContextIdFn>(slots[tc::kContextId]);
  auto stream_id = reinterpret_cast<StreamIdFn>(slots[tc::kStreamId]);

  CUdevice d = -1, public_d = -2;
  CUresult r = device_of(ctx, &d);
  cuCtxGetDevice(&public_d);
  printf("device: private %d (result %d), public %d\n", d, r, public_d);
  expect(r == CUDA_SUCCESS && d == public_d, "device of the context");

  unsigned long long cid = 0, public_cid = 1;
  r = context_id(ctx, &cid);
  cuCtxGetId(ctx, &public_cid);
  printf("context id: private %llu (result %d), public %llu\n", cid, r, public_cid);
  expect(r == CUDA_SUCCESS && (restored || cid == public_cid), "id of the context");

  unsigned long long sid = 0, public_sid = 1;
  r = stream_id(ctx, s, &sid);
  cuStreamGetId(s, &public_sid);
  printf("stream id: private %llu (result %d), public %llu\n", sid, r, public_sid);
  expect(r == CUDA_SUCCESS && (restored || sid == public_sid), "id of the stream");

  // Arguments that are not handles reach the driver as they are.
  unsigned long long none = 0;
  r = stream_id(nullptr, nullptr, &none);  // the current context's NULL stream
  expect(r == CUDA_SUCCESS && none != 0 && none != sid, "the NULL stream of the current context");
  r = context_id(reinterpret_cast<CUcontext>(0x1234), &none);
  expect(r == CUDA_ERROR_INVALID_CONTEXT, "a value that is no context is refused");
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  const char* wait_for = argc > 2 && strcmp(argv[1], "--wait-for") == 0 ? argv[2] : nullptr;
  CUdevice dev;
  CUcontext ctx;
  CUstream s;
  if (cuInit(0) || cuDeviceGet(&dev, 0) || cuDevicePrimaryCtxRetain(&ctx, dev) || cuCtxSetCurrent(ctx) ||
      cuStreamCreate(&s, CU_STREAM_NON_BLOCKING)) {
    fprintf(stderr, "private_tables: no context and stream\n");
    return 2;
  }
  if (!compare(ctx, s, false)) return 2;
  if (wait_for) {
    printf("waiting\n");
    fflush(stdout);
    for (int i = 0; i < 1200 && access(wait_for, F_OK) != 0; i++) usleep(50 * 1000);
    if (!compare(ctx, s, true)) return 2;
  }
  cuStreamDestroy(s);
  cuDevicePrimaryCtxRelease(dev);
  printf("%s\n", fails ? "private tables: FAILED" : "private tables: all agree");
  return fails ? 1 : 0;
}
