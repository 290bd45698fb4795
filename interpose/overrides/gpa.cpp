// cuGetProcAddress and the export tables cudart fetches.
//
// GPA: the real driver resolves (name, version, flags) to its ABI variant; we hand
// back our wrapper of exactly that variant, found by the address the driver returned.
// Export tables: cudart gets the primary context from CUDART_INTERFACE[2] and keeps
// its per-context state in CONTEXT_LOCAL_STORAGE. Both must see virtual contexts, so
// the shim hands out a copy of CUDART_INTERFACE with slot 2 wrapped, its own
// context-local storage keyed by virtual context (so cudart's state survives a
// restore into a new real context), and CONTEXT_CHECKS with slot 2 translating.
// Because cudart verifies a hash over the table addresses (INTEGRITY_CHECK, docs/driver-facts.md §7),
// the integrity table is copied too and its answer recomputed for the copies.
// Every other table, and the other slots of those copies, call the driver through
// private_calls.hpp, which hands the driver real handles for the virtual ones.
#include <pthread.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>

#include <ferry_common/export_tables.hpp>
#include <ferry_common/integrity.hpp>

#include "../contexts.hpp"
#include "../log.hpp"
#include "../private_calls.hpp"
#include "../shim.hpp"
#include "shim_decls.hpp"

using namespace ferry;

namespace {

CUresult resolve(const char* symbol, void** pfn, CUdriverProcAddressQueryResult* status, CUresult r) {
  if (r != CUDA_SUCCESS || !pfn || !*pfn || !active()) return r;
  if (void* w = wrapper_for_real(*pfn)) {
    *pfn = w;
  } else {
    FERRY_DEBUG("cuGetProcAddress(%s): not an exported entry point; passed through", symbol);
  }
  (void)status;
  return r;
}

// ---- the tables ---------------------------------------------------------------------

using export_tables::kContextChecks;
using export_tables::kCudartInterface;
constexpr const auto& kIntegrity = export_tables::kIntegrityCheck;
constexpr const auto& kCls = export_tables::kContextLocalStorage;

constexpr size_t kMaxSlots = 64;
std::mutex g_tables_mu;
void* g_cudart[kMaxSlots];
void* g_integrity[kMaxSlots];
void* g_checks[kMaxSlots];
bool g_have_cudart = false, g_have_integrity = false, g_have_checks = false;
CUresult (*g_real_primary)(CUcontext*, CUdevice) = nullptr;
CUresult (*g_real_integrity)(uint32_t, uint64_t, uint64_t*) = nullptr;
CUresult (*g_real_check)(CUcontext, uint32_t*, void**) = nullptr;

// Slots of a table that starts with its size word (bytes, that word included); 0 if
// its first word is not one.
size_t slots_of(const void* table, size_t max = kMaxSlots) {
  size_t bytes = reinterpret_cast<uintptr_t>(static_cast<void* const*>(table)[0]);
  size_t n = bytes / sizeof(void*);
  return (bytes % sizeof(void*) == 0 && n >= 2 && n <= max) ? n : 0;
}

void hex_of(const CUuuid* id, char (&hex)[33]) {
  for (int i = 0; i < 16; i++) snprintf(hex + 2 * i, 3, "%02x", static_cast<unsigned char>(id->bytes[i]));
}

// Slots 1..n-1 of `copy`, all but `skip` (ours), call the driver with real handles.
void translate_slots(void** copy, size_t n, const CUuuid* id, size_t skip) {
  char hex[33];
  hex_of(id, hex);
  for (size_t i = 1; i < n; i++) {
    if (i == skip) continue;
    char what[48];
    snprintf(what, sizeof what, "export table %.8s slot %zu", hex, i);
    copy[i] = private_calls::translating(copy[i], what);
  }
}

// Tables ferry knows nothing of: a copy whose function slots translate handles, one per
// table, kept for the life of the process (libraries keep the pointer). A table without
// a size word cannot be measured and passes through.
std::map<const void*, void**> g_other_copies;
const void* translated_copy(const void* table, const CUuuid* id) {
  size_t n = slots_of(table, 1024);
  if (!n) return table;
  void**& copy = g_other_copies[table];
  if (!copy) {
    copy = new void*[n];
    memcpy(copy, table, n * sizeof(void*));
    translate_slots(copy, n, id, 0);
  }
  return copy;
}

CUresult cudart_primary(CUcontext* pctx, CUdevice dev) {
  CUcontext real = nullptr;
  CUresult r = g_real_primary(&real, vh::real_device(dev));
  if (r != CUDA_SUCCESS || !pctx) return r;
  tr::Ctx* c = ctx::primary(dev, real);
  *pctx = c ? vh::as<CUcontext>(c->v) : real;
  return r;
}

CUresult context_check(CUcontext c, uint32_t* r1, void** r2) { return g_real_check(vh::real(c), r1, r2); }

int real_driver_version() {
  int v = 0;
  real::cuDriverGetVersion(&v);
  return v;
}

CUresult integrity_rehash(uint32_t version, uint64_t unix_seconds, uint64_t* result) {
  CUresult r = g_real_integrity(version, unix_seconds, result);
  if (r != CUDA_SUCCESS || !result || version % 10 < 2) return r;
  ferry::integrity::Inputs in = ferry::integrity::inputs_here(static_cast<uint32_t>(real_driver_version()), version,
                                                             unix_seconds, &g_cudart[0], g_integrity);
  // The devices as cudart saw them: through our (virtual) device queries.
  int n = 0;
  real::cuDeviceGetCount(&n);
  for (int d = 0; d < n; d++) {
    ferry::integrity::DeviceIdentity id{};
    CUuuid u{};
    CUdevice p = vh::real_device(d);
    real::cuDeviceGetUuid_v2(&u, p);
    memcpy(id.uuid, u.bytes, 16);
    real::cuDeviceGetAttribute(&id.pci_domain, CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID, p);
    real::cuDeviceGetAttribute(&id.pci_bus, CU_DEVICE_ATTRIBUTE_PCI_BUS_ID, p);
    real::cuDeviceGetAttribute(&id.pci_device, CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID, p);
    in.devices.push_back(id);
  }
  unsigned char out[16];
  ferry::integrity::compute(in, out);
  memcpy(result, out, 16);
  return r;
}

// Context-local storage, kept by the shim and keyed by virtual context.
CUresult cls_put(CUcontext c, void* key, void* value, void (*dtor)(CUcontext, void*, void*)) {
  tr::Ctx* x = ctx::of_or_current(c);
  if (!x) return CUDA_ERROR_INVALID_CONTEXT;
  auto& st = tr::state();
  std::lock_guard lk(st.mu);
  x->cls[key] = tr::ClsEntry{value, dtor};
  return CUDA_SUCCESS;
}
CUresult cls_delete(CUcontext c, void* key) {
  tr::Ctx* x = ctx::of_or_current(c);
  if (!x) return CUDA_ERROR_INVALID_CONTEXT;
  auto& st = tr::state();
  std::lock_guard lk(st.mu);
  return x->cls.erase(key) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}
CUresult cls_get(void** value, CUcontext c, void* key) {
  tr::Ctx* x = ctx::of_or_current(c);
  if (!x) return CUDA_ERROR_INVALID_HANDLE;
  auto& st = tr::state();
  std::lock_guard lk(st.mu);
  auto it = x->cls.find(key);
  if (it == x->cls.end()) return CUDA_ERROR_INVALID_HANDLE;
  if (value) *value = it->second.value;
  return CUDA_SUCCESS;
}
CUresult cls_unused() { return CUDA_ERROR_NOT_SUPPORTED; }
void* g_cls[5] = {reinterpret_cast<void*>(&cls_put), reinterpret_cast<void*>(&cls_delete),
                  reinterpret_cast<void*>(&cls_get), reinterpret_cast<void*>(&cls_unused), nullptr};

bool is(const CUuuid* id, const export_tables::Id& want) { return export_tables::same(id->bytes, want); }

}  // namespace

CUresult ferry::ov::cuGetProcAddress_v2(const char* symbol, void** pfn, int cudaVersion, cuuint64_t flags,
                                        CUdriverProcAddressQueryResult* status) {
  return resolve(symbol, pfn, status, real::cuGetProcAddress_v2(symbol, pfn, cudaVersion, flags, status));
}

CUresult ferry::ov::cuGetProcAddress(const char* symbol, void** pfn, int cudaVersion, cuuint64_t flags) {
  return resolve(symbol, pfn, nullptr, real::cuGetProcAddress(symbol, pfn, cudaVersion, flags));
}

CUresult ferry::ov::cuGetExportTable(const void** ppExportTable, const CUuuid* id) {
  CUresult r = real::cuGetExportTable(ppExportTable, id);
  if (id && log::enabled(log::Debug)) {  // which tables libraries fetch: the real-GPU kit reports it
    char hex[33];
    hex_of(id, hex);
    FERRY_DEBUG("cuGetExportTable %s: %s", hex, r == CUDA_SUCCESS ? "found" : "not found");
  }
  if (r != CUDA_SUCCESS || !ppExportTable || !id || !active()) return r;
  const void* t = *ppExportTable;
  std::lock_guard lk(g_tables_mu);
  if (is(id, kCls)) {
    *ppExportTable = g_cls;
  } else if (is(id, kCudartInterface) || is(id, kIntegrity)) {
    // The two hashed tables are replaced together, or not at all.
    if (!g_have_cudart || !g_have_integrity) {
      const void* cudart = nullptr;
      const void* integrity = nullptr;
      CUuuid a, b;
      memcpy(a.bytes, kCudartInterface.data(), 16);
      memcpy(b.bytes, kIntegrity.data(), 16);
      if (real::cuGetExportTable(&cudart, &a) == CUDA_SUCCESS &&
          real::cuGetExportTable(&integrity, &b) == CUDA_SUCCESS && slots_of(cudart) > 2 && slots_of(integrity) > 1) {
        memcpy(g_cudart, cudart, slots_of(cudart) * sizeof(void*));
        memcpy(g_integrity, integrity, slots_of(integrity) * sizeof(void*));
        g_real_primary = reinterpret_cast<decltype(g_real_primary)>(g_cudart[2]);
        g_real_integrity = reinterpret_cast<decltype(g_real_integrity)>(g_integrity[1]);
        g_cudart[2] = reinterpret_cast<void*>(&cudart_primary);
        translate_slots(g_cudart, slots_of(cudart), &a, 2);
        g_integrity[1] = reinterpret_cast<void*>(&integrity_rehash);
        g_have_cudart = g_have_integrity = true;
      } else {
        FERRY_WARN("the driver's CUDART_INTERFACE/INTEGRITY_CHECK tables have an unexpected layout; passed through");
      }
    }
    if (g_have_cudart) *ppExportTable = is(id, kCudartInterface) ? g_cudart : g_integrity;
  } else if (is(id, kContextChecks)) {
    if (!g_have_checks && slots_of(t) > 2) {
      memcpy(g_checks, t, slots_of(t) * sizeof(void*));
      g_real_check = reinterpret_cast<decltype(g_real_check)>(g_checks[2]);
      g_checks[2] = reinterpret_cast<void*>(&context_check);
      translate_slots(g_checks, slots_of(t), id, 2);
      g_have_checks = true;
    }
    if (g_have_checks) *ppExportTable = g_checks;
  } else {
    *ppExportTable = translated_copy(t, id);
  }
  return r;
}
