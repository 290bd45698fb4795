// cuGetProcAddress, the export tables cudart fetches, error strings, misc entry points.
#include <dlfcn.h>
#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "emu.hpp"
#include <ferry_common/export_tables.hpp>
#include <ferry_common/integrity.hpp>
#include <ferry_common/settings.hpp>

#include <cudaProfiler.h>

namespace ferry::emu {
CUresult cls_put(CUcontext ctx, void* key, void* value, void (*dtor)(CUcontext, void*, void*));
CUresult cls_delete(CUcontext ctx, void* key);
CUresult cls_get(void** value, CUcontext ctx, void* key);
}  // namespace ferry::emu

using namespace ferry::emu;

namespace {

struct EpRow {
  const char* variant;
  const char* base;
  int version;
  int kind;  // 0 legacy, 1 _ptds, 2 _ptsz
};

const EpRow kRows[] = {
#define FERRY_EP(variant, pfn, base, version, kind) {#variant, base, version, kind},
#include "entry_points.inc"
#undef FERRY_EP
};

void* self_handle() {
  static void* h = [] {
    Dl_info info{};
    dladdr(reinterpret_cast<void*>(&cuGetProcAddress_v2), &info);
    void* handle = dlopen(info.dli_fname, RTLD_NOLOAD | RTLD_LAZY);
    if (!handle) fatal("cannot find the emulator's own handle: %s", dlerror());
    return handle;
  }();
  return h;
}

// The exported variant the real driver would hand out for (symbol, version, flags).
// With the per-thread-stream flag, a name that has per-thread variants gets the newest
// one of them its version allows or none (not its legacy variant): measured on driver
// 580 (tests/data/gpa-*.tsv), e.g. cuMemcpyHtoD at 3020 with flags 2.
const char* variant_for(const char* symbol, int version, cuuint64_t flags, CUdriverProcAddressQueryResult* status) {
  auto lo = std::lower_bound(std::begin(kRows), std::end(kRows), symbol,
                             [](const EpRow& r, const char* s) { return strcmp(r.base, s) < 0; });
  auto hi = std::upper_bound(lo, std::end(kRows), symbol,
                             [](const char* s, const EpRow& r) { return strcmp(s, r.base) < 0; });
  if (lo == hi) {
    *status = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    return nullptr;
  }
  const bool per_thread = flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM;
  bool has_per_thread = false;
  const EpRow* best = nullptr;
  for (auto it = lo; it != hi; ++it) {
    has_per_thread |= it->kind != 0;
    if (it->kind == 0 && it->version <= version && (!best || it->version > best->version)) best = &*it;
  }
  if (per_thread && has_per_thread) {
    best = nullptr;
    for (auto it = lo; it != hi; ++it)
      if (it->kind != 0 && it->version <= version && (!best || it->version > best->version)) best = &*it;
  }
  *status = best ? CU_GET_PROC_ADDRESS_SUCCESS : CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT;
  return best ? best->variant : nullptr;
}

FILE* gpa_trace() {
  static FILE* f = [] {
    const char* path = ferry::settings::raw("FERRY_EMU_TRACE_GPA");
    return path ? fopen(path, "a") : nullptr;
  }();
  return f;
}

CUresult get_proc_address(const char* symbol, void** pfn, int version, cuuint64_t flags,
                          CUdriverProcAddressQueryResult* status_out) {
  if (!symbol || !pfn) return CUDA_ERROR_INVALID_VALUE;
  CUdriverProcAddressQueryResult status = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
  *pfn = nullptr;
  CUresult rc;
  if (version > kDriverVersion) {
    rc = CUDA_ERROR_INVALID_VALUE;
  } else if (const char* variant = variant_for(symbol, version, flags, &status)) {
    *pfn = dlsym(self_handle(), variant);
    if (!*pfn) status = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;  // a variant the emulator does not implement
    rc = *pfn ? CUDA_SUCCESS : CUDA_ERROR_NOT_FOUND;
  } else {
    // Driver 580 answers a too-old version with success, the status saying why there is
    // no function; a name it does not have with CUDA_ERROR_NOT_FOUND *(documented, not measured)*.
    rc = status == CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT ? CUDA_SUCCESS : CUDA_ERROR_NOT_FOUND;
  }
  if (FILE* t = gpa_trace()) {
    // One line per request: what cudart asked for and whether we had it.
    fprintf(t, "%s %d %llu %s\n", *symbol ? symbol : "\"\"", version, static_cast<unsigned long long>(flags),
            *pfn ? "found" : (status == CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT ? "version" : "missing"));
    fflush(t);
  }
  if (status_out) *status_out = status;
  return rc;
}

// ---- export tables ---------------------------------------------------------------------

CUresult unsupported_slot() { return CUDA_ERROR_NOT_SUPPORTED; }
#define STUB reinterpret_cast<void*>(&unsupported_slot)

CUresult cudart_primary_ctx(CUcontext* pctx, CUdevice dev) {
  // The primary context's handle without retaining or activating it.
  if (CUresult e = ensure_init()) return e;
  Device* d = device(dev);
  if (!d) return CUDA_ERROR_INVALID_DEVICE;
  if (!pctx) return CUDA_ERROR_INVALID_VALUE;
  *pctx = reinterpret_cast<CUcontext>(d->primary);
  return CUDA_SUCCESS;
}

uint32_t g_hooks_a[1024];
uint32_t g_hooks_b[14];
void tools_hook_a(void** ptr, size_t* size) {
  if (ptr) *ptr = g_hooks_a;
  if (size) *size = 1024;
}
void tools_hook_b(void** ptr, size_t* size) {
  if (ptr) *ptr = g_hooks_b;
  if (size) *size = 14;
}

CUresult context_check(CUcontext, uint32_t* result1, void** result2) {
  if (result1) *result1 = 0;
  if (result2) *result2 = nullptr;
  return CUDA_SUCCESS;
}
uint32_t context_check_3() { return 0; }

CUresult integrity_check(uint32_t version, uint64_t unix_seconds, uint64_t result[2]);

void* g_cudart_interface[13] = {reinterpret_cast<void*>(13 * sizeof(void*)),
                                STUB, reinterpret_cast<void*>(&cudart_primary_ctx), STUB, STUB, STUB, STUB, STUB,
                                STUB, STUB, STUB, STUB, STUB};
void* g_tools_hooks[7] = {reinterpret_cast<void*>(7 * sizeof(void*)), STUB, reinterpret_cast<void*>(&tools_hook_a),
                          STUB, STUB, STUB, reinterpret_cast<void*>(&tools_hook_b)};
void* g_tools_tls[4] = {reinterpret_cast<void*>(4 * sizeof(void*)), STUB, STUB, STUB};
void* g_cls[5] = {reinterpret_cast<void*>(&cls_put), reinterpret_cast<void*>(&cls_delete),
                  reinterpret_cast<void*>(&cls_get), STUB, nullptr};
void* g_context_checks[4] = {reinterpret_cast<void*>(4 * sizeof(void*)), STUB, reinterpret_cast<void*>(&context_check),
                             reinterpret_cast<void*>(&context_check_3)};
void* g_integrity[3] = {reinterpret_cast<void*>(3 * sizeof(void*)), reinterpret_cast<void*>(&integrity_check), STUB};

CUresult integrity_check(uint32_t version, uint64_t unix_seconds, uint64_t result[2]) {
  if (!result) return CUDA_ERROR_INVALID_VALUE;
  ferry::integrity::Inputs in =
      ferry::integrity::inputs_here(kDriverVersion, version, unix_seconds, &g_cudart_interface[0], g_integrity);
  {
    std::lock_guard lk(drv().mu);
    for (auto& d : drv().devices) {
      if (static_cast<size_t>(d->ordinal) >= drv().present) break;
      ferry::integrity::DeviceIdentity id{};
      memcpy(id.uuid, d->cfg.uuid.bytes, 16);
      id.pci_domain = d->cfg.pci_domain;
      id.pci_bus = d->cfg.pci_bus;
      id.pci_device = d->cfg.pci_device;
      in.devices.push_back(id);
    }
  }
  unsigned char out[16];
  ferry::integrity::compute(in, out);
  // Test hook: a negative control proving cudart really checks this answer.
  static const bool broken = ferry::settings::raw("FERRY_EMU_TEST_BREAK_INTEGRITY") != nullptr;
  if (broken && version % 10 >= 2) out[0] ^= 1;
  memcpy(result, out, 16);
  return CUDA_SUCCESS;
}

// TOOLS_CONTEXT: functions that take the driver's own context and stream. NVIDIA's layout
// is not public (these slots are ours); what matters is that its functions read the
// handles as the driver's objects, so another value crashes a real process. Here it is
// refused, with a message.
namespace tc = ferry::export_tables::emu_tools_context;

CUresult tools_context_of(CUcontext h, Context** out) {
  if (CUresult e = ensure_init()) return e;
  Context* c = h ? reinterpret_cast<Context*>(h) : current_ctx();
  if (!c) return CUDA_ERROR_INVALID_CONTEXT;
  if (!valid_ctx(c)) {
    log("export table 21318c60: %p is no context of this driver (a real driver would crash here)",
        static_cast<void*>(h));
    return CUDA_ERROR_INVALID_CONTEXT;
  }
  *out = c;
  return CUDA_SUCCESS;
}
CUresult tools_context_device(CUcontext h, CUdevice* dev) {
  Context* c = nullptr;
  if (CUresult e = tools_context_of(h, &c)) return e;
  if (!dev) return CUDA_ERROR_INVALID_VALUE;
  *dev = c->dev->ordinal;
  return CUDA_SUCCESS;
}
CUresult tools_context_id(CUcontext h, unsigned long long* id) {
  Context* c = nullptr;
  if (CUresult e = tools_context_of(h, &c)) return e;
  if (!id) return CUDA_ERROR_INVALID_VALUE;
  *id = c->id;
  return CUDA_SUCCESS;
}
CUresult tools_stream_id(CUcontext h, CUstream s, unsigned long long* id) {
  Context* c = nullptr;
  if (CUresult e = tools_context_of(h, &c)) return e;
  Context* owner = nullptr;
  CUresult err = CUDA_SUCCESS;
  auto st = resolve_stream(s, &owner, &err);
  if (!st) {
    log("export table 21318c60: %p is no stream of this driver (a real driver would crash here)",
        static_cast<void*>(s));
    return err;
  }
  if (owner != c) return CUDA_ERROR_INVALID_HANDLE;
  if (!id) return CUDA_ERROR_INVALID_VALUE;
  *id = st->id;
  return CUDA_SUCCESS;
}
const unsigned long long kToolsContextData = tc::kDataWord;
void* g_tools_context[tc::kSlots] = {
    reinterpret_cast<void*>(tc::kSlots * sizeof(void*)), STUB, STUB,
    reinterpret_cast<void*>(&tools_context_device), reinterpret_cast<void*>(&tools_context_id),
    reinterpret_cast<void*>(&tools_stream_id), STUB,
    const_cast<void*>(static_cast<const void*>(&kToolsContextData))};
static_assert(tc::kDevice == 3 && tc::kContextId == 4 && tc::kStreamId == 5 && tc::kData == 7);

// Ferry's own table (export_tables.hpp): the descriptor standing in for /dev/nvidia*.
int driver_device_file() { return drv().device_file; }
void* g_emu_driver_files[ferry::export_tables::emu_driver_files::kSlots] = {
    reinterpret_cast<void*>(ferry::export_tables::emu_driver_files::kSlots * sizeof(void*)),
    reinterpret_cast<void*>(&driver_device_file)};

struct TableId {
  ferry::export_tables::Id uuid;
  void** table;
};

const TableId kTables[] = {
    {ferry::export_tables::kCudartInterface, g_cudart_interface},
    {ferry::export_tables::kToolsHooks, g_tools_hooks},
    {ferry::export_tables::kToolsTls, g_tools_tls},
    {ferry::export_tables::kContextLocalStorage, g_cls},
    {ferry::export_tables::kContextChecks, g_context_checks},
    {ferry::export_tables::kIntegrityCheck, g_integrity},
    {ferry::export_tables::kToolsContext, g_tools_context},
    {ferry::export_tables::kEmuDriverFiles, g_emu_driver_files},
};

}  // namespace

FERRY_EXPORT CUresult cuGetProcAddress_v2(const char* symbol, void** pfn, int cudaVersion, cuuint64_t flags,
                                          CUdriverProcAddressQueryResult* symbolStatus) {
  return get_proc_address(symbol, pfn, cudaVersion, flags, symbolStatus);
}

FERRY_EXPORT CUresult cuGetProcAddress(const char* symbol, void** pfn, int cudaVersion, cuuint64_t flags) {
  return get_proc_address(symbol, pfn, cudaVersion, flags, nullptr);
}

FERRY_EXPORT CUresult cuGetExportTable(const void** ppExportTable, const CUuuid* pExportTableId) {
  if (!ppExportTable || !pExportTableId) return CUDA_ERROR_INVALID_VALUE;
  for (const auto& t : kTables) {
    if (ferry::export_tables::same(pExportTableId->bytes, t.uuid)) {
      *ppExportTable = t.table;
      return CUDA_SUCCESS;
    }
  }
  return CUDA_ERROR_INVALID_VALUE;  // includes the "bypass" probe cudart sends first
}

// ---- errors ------------------------------------------------------------------------------

namespace {
const char* error_name(CUresult e) {
  switch (static_cast<int>(e)) {
#define FERRY_ERR(name, value) \
  case value:                  \
    return #name;
#include "error_names.inc"
#undef FERRY_ERR
    default: return nullptr;
  }
}

const char* error_text(CUresult e) {
  switch (e) {
    case CUDA_SUCCESS: return "no error";
    case CUDA_ERROR_INVALID_VALUE: return "invalid argument";
    case CUDA_ERROR_OUT_OF_MEMORY: return "out of memory";
    case CUDA_ERROR_NOT_INITIALIZED: return "initialization error";
    case CUDA_ERROR_DEINITIALIZED: return "driver shutting down";
    case CUDA_ERROR_STUB_LIBRARY: return "CUDA driver is a stub library";
    case CUDA_ERROR_NO_DEVICE: return "no CUDA-capable device is detected";
    case CUDA_ERROR_INVALID_DEVICE: return "invalid device ordinal";
    case CUDA_ERROR_INVALID_IMAGE: return "device kernel image is invalid";
    case CUDA_ERROR_INVALID_CONTEXT: return "invalid device context";
    case CUDA_ERROR_NO_BINARY_FOR_GPU: return "no kernel image is available for execution on the device";
    case CUDA_ERROR_INVALID_PTX: return "a PTX JIT compilation failed";
    case CUDA_ERROR_FILE_NOT_FOUND: return "file not found";
    case CUDA_ERROR_INVALID_HANDLE: return "invalid resource handle";
    case CUDA_ERROR_NOT_FOUND: return "named symbol not found";
    case CUDA_ERROR_NOT_READY: return "device not ready";
    case CUDA_ERROR_ILLEGAL_ADDRESS: return "an illegal memory access was encountered";
    case CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES: return "too many resources requested for launch";
    case CUDA_ERROR_PRIMARY_CONTEXT_ACTIVE: return "primary context active";
    case CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED: return "part or all of the requested memory range is already mapped";
    case CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED: return "pointer does not correspond to a registered memory region";
    case CUDA_ERROR_LAUNCH_FAILED: return "unspecified launch failure";
    case CUDA_ERROR_NOT_SUPPORTED: return "operation not supported";
    case CUDA_ERROR_UNKNOWN: return "unknown error";
    default: return nullptr;
  }
}
}  // namespace

FERRY_EXPORT CUresult cuGetErrorName(CUresult error, const char** pStr) {
  if (!pStr) return CUDA_ERROR_INVALID_VALUE;
  const char* n = error_name(error);
  *pStr = n;
  return n ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

FERRY_EXPORT CUresult cuGetErrorString(CUresult error, const char** pStr) {
  if (!pStr) return CUDA_ERROR_INVALID_VALUE;
  const char* name = error_name(error);
  if (!name) {
    *pStr = nullptr;
    return CUDA_ERROR_INVALID_VALUE;
  }
  const char* t = error_text(error);
  *pStr = t ? t : name;
  return CUDA_SUCCESS;
}

// ---- small entry points with nothing to emulate -----------------------------------------

FERRY_EXPORT CUresult cuProfilerInitialize(const char*, const char*, CUoutput_mode) { return CUDA_SUCCESS; }
FERRY_EXPORT CUresult cuProfilerStart() { return CUDA_SUCCESS; }
FERRY_EXPORT CUresult cuProfilerStop() { return CUDA_SUCCESS; }
FERRY_EXPORT CUresult cuFlushGPUDirectRDMAWrites(CUflushGPUDirectRDMAWritesTarget, CUflushGPUDirectRDMAWritesScope) {
  return CUDA_SUCCESS;
}
