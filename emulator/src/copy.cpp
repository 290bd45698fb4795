// Memory copies and memsets in every direction, synchronous and stream-ordered.
//
// Host-memory semantics follow the real driver: an asynchronous copy from pageable
// host memory reads the source before the call returns (staging), an asynchronous
// copy into pageable host memory completes before the call returns, and only pinned
// memory gives truly asynchronous copies. Programs that rely on pinned-memory
// ordering therefore behave here as they do on a GPU.
#include <cstring>
#include <vector>

#include "emu.hpp"

using namespace ferry::emu;

namespace {

CUstream ptsz(CUstream s) { return s ? s : CU_STREAM_PER_THREAD; }

enum class Side { Host, Device, Any };

// A side is "device" when it is registered device memory, or lies where only device
// memory can be (then it must be valid); anything else is host memory.
CUresult classify(uintptr_t p, size_t n, Side want, bool* device_side, bool* pinned) {
  *pinned = false;
  if (want == Side::Host) {
    *device_side = false;
    *pinned = is_pinned_host(reinterpret_cast<void*>(p), n);
    return CUDA_SUCCESS;
  }
  bool dev = looks_like_device(p);
  if (want == Side::Device || dev) {
    if (!dev && is_pinned_host(reinterpret_cast<void*>(p), n)) {  // UVA: pinned host is addressable
      *device_side = false;
      *pinned = true;
      return CUDA_SUCCESS;
    }
    *device_side = true;
    return check_device_access(p, n);
  }
  *device_side = false;
  *pinned = is_pinned_host(reinterpret_cast<void*>(p), n);
  return CUDA_SUCCESS;
}

CUresult copy(uintptr_t dst, Side dside, uintptr_t src, Side sside, size_t n, CUstream h, bool sync) {
  Context* c = nullptr;
  CUresult err;
  auto s = resolve_stream(h, &c, &err);
  if (!s) return err;
  if (n == 0) return CUDA_SUCCESS;
  if (CUresult e = c->sticky.load()) return e;
  bool d_dev, d_pin, s_dev, s_pin;
  if (CUresult e = classify(dst, n, dside, &d_dev, &d_pin)) return e;
  if (CUresult e = classify(src, n, sside, &s_dev, &s_pin)) return e;
  // A captured copy reads its source when the graph runs, as the hardware would.
  bool captured = capturing(s);
  if (captured && sync) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
  // Pageable source: stage it now so the caller may reuse its buffer at once.
  std::shared_ptr<char[]> staged;
  if (!s_dev && !s_pin && !captured) {
    staged.reset(new char[n]);  // not zeroed: it is overwritten at once
    std::memcpy(staged.get(), reinterpret_cast<void*>(src), n);
  }
  uint64_t seq = enqueue(s, Op{{}, [c, dst, src, n, staged]() {
                                 if (c->sticky.load() != CUDA_SUCCESS) return CUDA_SUCCESS;
                                 std::memmove(reinterpret_cast<void*>(dst),
                                              staged ? staged.get() : reinterpret_cast<void*>(src), n);
                                 return CUDA_SUCCESS;
                               }});
  // Pageable destination: the copy is complete when the call returns.
  if (!captured && (sync || (!d_dev && !d_pin))) {
    wait_for(s, seq);
    return sync ? c->sticky.load() : CUDA_SUCCESS;
  }
  return CUDA_SUCCESS;
}

template <class T>
CUresult memset_2d(CUdeviceptr dst, size_t pitch, T value, size_t width, size_t height, CUstream h, bool sync) {
  Context* c = nullptr;
  CUresult err;
  auto s = resolve_stream(h, &c, &err);
  if (!s) return err;
  if (width == 0 || height == 0) return CUDA_SUCCESS;
  if (dst % sizeof(T)) return CUDA_ERROR_INVALID_VALUE;
  if (height > 1 && pitch < width * sizeof(T)) return CUDA_ERROR_INVALID_VALUE;
  size_t row = width * sizeof(T);
  size_t extent = (height - 1) * pitch + row;
  if (CUresult e = check_device_access(dst, extent)) return e;
  if (sync && capturing(s)) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
  uint64_t seq = enqueue(s, Op{{}, [c, dst, pitch, value, width, height]() {
                                 if (c->sticky.load() != CUDA_SUCCESS) return CUDA_SUCCESS;
                                 for (size_t y = 0; y < height; y++) {
                                   T* p = reinterpret_cast<T*>(dst + y * pitch);
                                   if (sizeof(T) == 1)
                                     std::memset(p, static_cast<int>(value), width);
                                   else
                                     for (size_t x = 0; x < width; x++) p[x] = value;
                                 }
                                 return CUDA_SUCCESS;
                               }});
  if (sync) {
    wait_for(s, seq);
    return c->sticky.load();
  }
  return CUDA_SUCCESS;
}

CUresult copy_2d(const CUDA_MEMCPY2D* p, CUstream h, bool sync) {
  if (!p) return CUDA_ERROR_INVALID_VALUE;
  auto addr = [](CUmemorytype t, const void* host, CUdeviceptr dev, size_t x, size_t y, size_t pitch, Side* side,
                 uintptr_t* out) -> CUresult {
    switch (t) {
      case CU_MEMORYTYPE_HOST: *side = Side::Host; *out = reinterpret_cast<uintptr_t>(host); break;
      case CU_MEMORYTYPE_DEVICE: *side = Side::Device; *out = dev; break;
      case CU_MEMORYTYPE_UNIFIED: *side = Side::Any; *out = dev; break;
      default: return CUDA_ERROR_NOT_SUPPORTED;  // arrays are not emulated
    }
    *out += y * pitch + x;
    return CUDA_SUCCESS;
  };
  Side ss, ds;
  uintptr_t sa, da;
  if (CUresult e = addr(p->srcMemoryType, p->srcHost, p->srcDevice, p->srcXInBytes, p->srcY, p->srcPitch, &ss, &sa))
    return e;
  if (CUresult e = addr(p->dstMemoryType, p->dstHost, p->dstDevice, p->dstXInBytes, p->dstY, p->dstPitch, &ds, &da))
    return e;
  if (p->Height > 1 && (p->srcPitch < p->WidthInBytes || p->dstPitch < p->WidthInBytes)) return CUDA_ERROR_INVALID_VALUE;
  for (size_t y = 0; y < p->Height; y++) {
    CUresult e = copy(da + y * p->dstPitch, ds, sa + y * p->srcPitch, ss, p->WidthInBytes, h, sync && y + 1 == p->Height);
    if (e) return e;
  }
  return CUDA_SUCCESS;
}

}  // namespace

#define H2D(d, s, n, st, sync) copy(d, Side::Device, reinterpret_cast<uintptr_t>(s), Side::Host, n, st, sync)
#define D2H(d, s, n, st, sync) copy(reinterpret_cast<uintptr_t>(d), Side::Host, s, Side::Device, n, st, sync)
#define D2D(d, s, n, st, sync) copy(d, Side::Device, s, Side::Device, n, st, sync)
#define ANY(d, s, n, st, sync) copy(d, Side::Any, s, Side::Any, n, st, sync)

// Synchronous forms run on the legacy (or, _ptds, the per-thread) default stream.
FERRY_EXPORT CUresult cuMemcpyHtoD_v2(CUdeviceptr d, const void* s, size_t n) { return H2D(d, s, n, CU_STREAM_LEGACY, true); }
FERRY_EXPORT CUresult cuMemcpyHtoD_v2_ptds(CUdeviceptr d, const void* s, size_t n) { return H2D(d, s, n, CU_STREAM_PER_THREAD, true); }
FERRY_EXPORT CUresult cuMemcpyDtoH_v2(void* d, CUdeviceptr s, size_t n) { return D2H(d, s, n, CU_STREAM_LEGACY, true); }
FERRY_EXPORT CUresult cuMemcpyDtoH_v2_ptds(void* d, CUdeviceptr s, size_t n) { return D2H(d, s, n, CU_STREAM_PER_THREAD, true); }
FERRY_EXPORT CUresult cuMemcpyDtoD_v2(CUdeviceptr d, CUdeviceptr s, size_t n) { return D2D(d, s, n, CU_STREAM_LEGACY, true); }
FERRY_EXPORT CUresult cuMemcpyDtoD_v2_ptds(CUdeviceptr d, CUdeviceptr s, size_t n) { return D2D(d, s, n, CU_STREAM_PER_THREAD, true); }
FERRY_EXPORT CUresult cuMemcpy(CUdeviceptr d, CUdeviceptr s, size_t n) { return ANY(d, s, n, CU_STREAM_LEGACY, true); }
FERRY_EXPORT CUresult cuMemcpy_ptds(CUdeviceptr d, CUdeviceptr s, size_t n) { return ANY(d, s, n, CU_STREAM_PER_THREAD, true); }

FERRY_EXPORT CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void* s, size_t n, CUstream st) { return H2D(d, s, n, st, false); }
FERRY_EXPORT CUresult cuMemcpyHtoDAsync_v2_ptsz(CUdeviceptr d, const void* s, size_t n, CUstream st) { return H2D(d, s, n, ptsz(st), false); }
FERRY_EXPORT CUresult cuMemcpyDtoHAsync_v2(void* d, CUdeviceptr s, size_t n, CUstream st) { return D2H(d, s, n, st, false); }
FERRY_EXPORT CUresult cuMemcpyDtoHAsync_v2_ptsz(void* d, CUdeviceptr s, size_t n, CUstream st) { return D2H(d, s, n, ptsz(st), false); }
FERRY_EXPORT CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr d, CUdeviceptr s, size_t n, CUstream st) { return D2D(d, s, n, st, false); }
FERRY_EXPORT CUresult cuMemcpyDtoDAsync_v2_ptsz(CUdeviceptr d, CUdeviceptr s, size_t n, CUstream st) { return D2D(d, s, n, ptsz(st), false); }
FERRY_EXPORT CUresult cuMemcpyAsync(CUdeviceptr d, CUdeviceptr s, size_t n, CUstream st) { return ANY(d, s, n, st, false); }
FERRY_EXPORT CUresult cuMemcpyAsync_ptsz(CUdeviceptr d, CUdeviceptr s, size_t n, CUstream st) { return ANY(d, s, n, ptsz(st), false); }

FERRY_EXPORT CUresult cuMemcpyPeer(CUdeviceptr d, CUcontext, CUdeviceptr s, CUcontext, size_t n) { return D2D(d, s, n, CU_STREAM_LEGACY, true); }
FERRY_EXPORT CUresult cuMemcpyPeer_ptds(CUdeviceptr d, CUcontext, CUdeviceptr s, CUcontext, size_t n) { return D2D(d, s, n, CU_STREAM_PER_THREAD, true); }
FERRY_EXPORT CUresult cuMemcpyPeerAsync(CUdeviceptr d, CUcontext, CUdeviceptr s, CUcontext, size_t n, CUstream st) { return D2D(d, s, n, st, false); }
FERRY_EXPORT CUresult cuMemcpyPeerAsync_ptsz(CUdeviceptr d, CUcontext, CUdeviceptr s, CUcontext, size_t n, CUstream st) { return D2D(d, s, n, ptsz(st), false); }

FERRY_EXPORT CUresult cuMemcpy2D_v2(const CUDA_MEMCPY2D* p) { return copy_2d(p, CU_STREAM_LEGACY, true); }
FERRY_EXPORT CUresult cuMemcpy2D_v2_ptds(const CUDA_MEMCPY2D* p) { return copy_2d(p, CU_STREAM_PER_THREAD, true); }
FERRY_EXPORT CUresult cuMemcpy2DUnaligned_v2(const CUDA_MEMCPY2D* p) { return copy_2d(p, CU_STREAM_LEGACY, true); }
FERRY_EXPORT CUresult cuMemcpy2DUnaligned_v2_ptds(const CUDA_MEMCPY2D* p) { return copy_2d(p, CU_STREAM_PER_THREAD, true); }
FERRY_EXPORT CUresult cuMemcpy2DAsync_v2(const CUDA_MEMCPY2D* p, CUstream st) { return copy_2d(p, st, false); }
FERRY_EXPORT CUresult cuMemcpy2DAsync_v2_ptsz(const CUDA_MEMCPY2D* p, CUstream st) { return copy_2d(p, ptsz(st), false); }

FERRY_EXPORT CUresult cuMemsetD8_v2(CUdeviceptr d, unsigned char v, size_t n) { return memset_2d<unsigned char>(d, n, v, n, 1, CU_STREAM_LEGACY, true); }
FERRY_EXPORT CUresult cuMemsetD8_v2_ptds(CUdeviceptr d, unsigned char v, size_t n) { return memset_2d<unsigned char>(d, n, v, n, 1, CU_STREAM_PER_THREAD, true); }
FERRY_EXPORT CUresult cuMemsetD16_v2(CUdeviceptr d, unsigned short v, size_t n) { return memset_2d<unsigned short>(d, 2 * n, v, n, 1, CU_STREAM_LEGACY, true); }
FERRY_EXPORT CUresult cuMemsetD16_v2_ptds(CUdeviceptr d, unsigned short v, size_t n) { return memset_2d<unsigned short>(d, 2 * n, v, n, 1, CU_STREAM_PER_THREAD, true); }
FERRY_EXPORT CUresult cuMemsetD32_v2(CUdeviceptr d, unsigned int v, size_t n) { return memset_2d<unsigned int>(d, 4 * n, v, n, 1, CU_STREAM_LEGACY, true); }
FERRY_EXPORT CUresult cuMemsetD32_v2_ptds(CUdeviceptr d, unsigned int v, size_t n) { return memset_2d<unsigned int>(d, 4 * n, v, n, 1, CU_STREAM_PER_THREAD, true); }
FERRY_EXPORT CUresult cuMemsetD8Async(CUdeviceptr d, unsigned char v, size_t n, CUstream st) { return memset_2d<unsigned char>(d, n, v, n, 1, st, false); }
FERRY_EXPORT CUresult cuMemsetD8Async_ptsz(CUdeviceptr d, unsigned char v, size_t n, CUstream st) { return memset_2d<unsigned char>(d, n, v, n, 1, ptsz(st), false); }
FERRY_EXPORT CUresult cuMemsetD16Async(CUdeviceptr d, unsigned short v, size_t n, CUstream st) { return memset_2d<unsigned short>(d, 2 * n, v, n, 1, st, false); }
FERRY_EXPORT CUresult cuMemsetD16Async_ptsz(CUdeviceptr d, unsigned short v, size_t n, CUstream st) { return memset_2d<unsigned short>(d, 2 * n, v, n, 1, ptsz(st), false); }
FERRY_EXPORT CUresult cuMemsetD32Async(CUdeviceptr d, unsigned int v, size_t n, CUstream st) { return memset_2d<unsigned int>(d, 4 * n, v, n, 1, st, false); }
FERRY_EXPORT CUresult cuMemsetD32Async_ptsz(CUdeviceptr d, unsigned int v, size_t n, CUstream st) { return memset_2d<unsigned int>(d, 4 * n, v, n, 1, ptsz(st), false); }
FERRY_EXPORT CUresult cuMemsetD2D8_v2(CUdeviceptr d, size_t p, unsigned char v, size_t w, size_t h) { return memset_2d<unsigned char>(d, p, v, w, h, CU_STREAM_LEGACY, true); }
FERRY_EXPORT CUresult cuMemsetD2D8_v2_ptds(CUdeviceptr d, size_t p, unsigned char v, size_t w, size_t h) { return memset_2d<unsigned char>(d, p, v, w, h, CU_STREAM_PER_THREAD, true); }
FERRY_EXPORT CUresult cuMemsetD2D16_v2(CUdeviceptr d, size_t p, unsigned short v, size_t w, size_t h) { return memset_2d<unsigned short>(d, p, v, w, h, CU_STREAM_LEGACY, true); }
FERRY_EXPORT CUresult cuMemsetD2D16_v2_ptds(CUdeviceptr d, size_t p, unsigned short v, size_t w, size_t h) { return memset_2d<unsigned short>(d, p, v, w, h, CU_STREAM_PER_THREAD, true); }
FERRY_EXPORT CUresult cuMemsetD2D32_v2(CUdeviceptr d, size_t p, unsigned int v, size_t w, size_t h) { return memset_2d<unsigned int>(d, p, v, w, h, CU_STREAM_LEGACY, true); }
FERRY_EXPORT CUresult cuMemsetD2D32_v2_ptds(CUdeviceptr d, size_t p, unsigned int v, size_t w, size_t h) { return memset_2d<unsigned int>(d, p, v, w, h, CU_STREAM_PER_THREAD, true); }
FERRY_EXPORT CUresult cuMemsetD2D8Async(CUdeviceptr d, size_t p, unsigned char v, size_t w, size_t h, CUstream st) { return memset_2d<unsigned char>(d, p, v, w, h, st, false); }
FERRY_EXPORT CUresult cuMemsetD2D8Async_ptsz(CUdeviceptr d, size_t p, unsigned char v, size_t w, size_t h, CUstream st) { return memset_2d<unsigned char>(d, p, v, w, h, ptsz(st), false); }
FERRY_EXPORT CUresult cuMemsetD2D16Async(CUdeviceptr d, size_t p, unsigned short v, size_t w, size_t h, CUstream st) { return memset_2d<unsigned short>(d, p, v, w, h, st, false); }
FERRY_EXPORT CUresult cuMemsetD2D16Async_ptsz(CUdeviceptr d, size_t p, unsigned short v, size_t w, size_t h, CUstream st) { return memset_2d<unsigned short>(d, p, v, w, h, ptsz(st), false); }
FERRY_EXPORT CUresult cuMemsetD2D32Async(CUdeviceptr d, size_t p, unsigned int v, size_t w, size_t h, CUstream st) { return memset_2d<unsigned int>(d, p, v, w, h, st, false); }
FERRY_EXPORT CUresult cuMemsetD2D32Async_ptsz(CUdeviceptr d, size_t p, unsigned int v, size_t w, size_t h, CUstream st) { return memset_2d<unsigned int>(d, p, v, w, h, ptsz(st), false); }

// ---- 3D and batched copies (linear memory; arrays are not emulated) ----------------------

namespace {

CUresult copy_3d(const CUDA_MEMCPY3D* p, CUstream h, bool sync) {
  if (!p) return CUDA_ERROR_INVALID_VALUE;
  if (p->srcMemoryType == CU_MEMORYTYPE_ARRAY || p->dstMemoryType == CU_MEMORYTYPE_ARRAY) return CUDA_ERROR_NOT_SUPPORTED;
  if (p->Depth == 0 || p->Height == 0 || p->WidthInBytes == 0) return CUDA_SUCCESS;
  size_t sh = p->srcHeight ? p->srcHeight : p->Height, dh = p->dstHeight ? p->dstHeight : p->Height;
  for (size_t z = 0; z < p->Depth; z++) {
    CUDA_MEMCPY2D c{};
    c.srcMemoryType = p->srcMemoryType;
    c.srcHost = p->srcHost;
    c.srcDevice = p->srcDevice;
    c.srcPitch = p->srcPitch;
    c.srcXInBytes = p->srcXInBytes;
    c.srcY = p->srcY + (p->srcZ + z) * sh;
    c.dstMemoryType = p->dstMemoryType;
    c.dstHost = p->dstHost;
    c.dstDevice = p->dstDevice;
    c.dstPitch = p->dstPitch;
    c.dstXInBytes = p->dstXInBytes;
    c.dstY = p->dstY + (p->dstZ + z) * dh;
    c.WidthInBytes = p->WidthInBytes;
    c.Height = p->Height;
    if (CUresult e = copy_2d(&c, h, sync && z + 1 == p->Depth)) return e;
  }
  return CUDA_SUCCESS;
}

CUresult copy_3d_peer(const CUDA_MEMCPY3D_PEER* p, CUstream h, bool sync) {
  if (!p) return CUDA_ERROR_INVALID_VALUE;
  CUDA_MEMCPY3D c{};
  c.srcXInBytes = p->srcXInBytes, c.srcY = p->srcY, c.srcZ = p->srcZ, c.srcMemoryType = p->srcMemoryType;
  c.srcHost = p->srcHost, c.srcDevice = p->srcDevice, c.srcArray = p->srcArray, c.srcPitch = p->srcPitch;
  c.srcHeight = p->srcHeight;
  c.dstXInBytes = p->dstXInBytes, c.dstY = p->dstY, c.dstZ = p->dstZ, c.dstMemoryType = p->dstMemoryType;
  c.dstHost = p->dstHost, c.dstDevice = p->dstDevice, c.dstArray = p->dstArray, c.dstPitch = p->dstPitch;
  c.dstHeight = p->dstHeight;
  c.WidthInBytes = p->WidthInBytes, c.Height = p->Height, c.Depth = p->Depth;
  return copy_3d(&c, h, sync);
}

CUresult copy_batch(CUdeviceptr* dsts, CUdeviceptr* srcs, size_t* sizes, size_t count, size_t* fail, CUstream h) {
  if (!dsts || !srcs || !sizes || count == 0) return CUDA_ERROR_INVALID_VALUE;
  if (!h || h == CU_STREAM_LEGACY) return CUDA_ERROR_INVALID_VALUE;  // the legacy stream is not allowed
  for (size_t i = 0; i < count; i++) {
    if (CUresult e = ANY(dsts[i], srcs[i], sizes[i], h, false)) {
      if (fail) *fail = i;
      return e;
    }
  }
  if (fail) *fail = SIZE_MAX;
  return CUDA_SUCCESS;
}

CUresult copy_3d_batch(size_t n, CUDA_MEMCPY3D_BATCH_OP* ops, size_t* fail, unsigned long long flags, CUstream h) {
  if (!ops || n == 0 || flags) return CUDA_ERROR_INVALID_VALUE;
  for (size_t i = 0; i < n; i++) {
    const CUDA_MEMCPY3D_BATCH_OP& o = ops[i];
    if (o.src.type != CU_MEMCPY_OPERAND_TYPE_POINTER || o.dst.type != CU_MEMCPY_OPERAND_TYPE_POINTER) {
      if (fail) *fail = i;
      return CUDA_ERROR_NOT_SUPPORTED;
    }
    CUDA_MEMCPY3D c{};
    c.srcMemoryType = CU_MEMORYTYPE_UNIFIED;
    c.srcDevice = o.src.op.ptr.ptr;
    c.srcPitch = o.src.op.ptr.rowLength ? o.src.op.ptr.rowLength : o.extent.width;
    c.srcHeight = o.src.op.ptr.layerHeight ? o.src.op.ptr.layerHeight : o.extent.height;
    c.dstMemoryType = CU_MEMORYTYPE_UNIFIED;
    c.dstDevice = o.dst.op.ptr.ptr;
    c.dstPitch = o.dst.op.ptr.rowLength ? o.dst.op.ptr.rowLength : o.extent.width;
    c.dstHeight = o.dst.op.ptr.layerHeight ? o.dst.op.ptr.layerHeight : o.extent.height;
    c.WidthInBytes = o.extent.width;
    c.Height = o.extent.height;
    c.Depth = o.extent.depth;
    if (CUresult e = copy_3d(&c, h, false)) {
      if (fail) *fail = i;
      return e;
    }
  }
  if (fail) *fail = SIZE_MAX;
  return CUDA_SUCCESS;
}

}  // namespace

FERRY_EXPORT CUresult cuMemcpy3D_v2(const CUDA_MEMCPY3D* p) { return copy_3d(p, CU_STREAM_LEGACY, true); }
FERRY_EXPORT CUresult cuMemcpy3D_v2_ptds(const CUDA_MEMCPY3D* p) { return copy_3d(p, CU_STREAM_PER_THREAD, true); }
FERRY_EXPORT CUresult cuMemcpy3DAsync_v2(const CUDA_MEMCPY3D* p, CUstream s) { return copy_3d(p, s, false); }
FERRY_EXPORT CUresult cuMemcpy3DAsync_v2_ptsz(const CUDA_MEMCPY3D* p, CUstream s) { return copy_3d(p, ptsz(s), false); }
FERRY_EXPORT CUresult cuMemcpy3DPeer(const CUDA_MEMCPY3D_PEER* p) { return copy_3d_peer(p, CU_STREAM_LEGACY, true); }
FERRY_EXPORT CUresult cuMemcpy3DPeer_ptds(const CUDA_MEMCPY3D_PEER* p) { return copy_3d_peer(p, CU_STREAM_PER_THREAD, true); }
FERRY_EXPORT CUresult cuMemcpy3DPeerAsync(const CUDA_MEMCPY3D_PEER* p, CUstream s) { return copy_3d_peer(p, s, false); }
FERRY_EXPORT CUresult cuMemcpy3DPeerAsync_ptsz(const CUDA_MEMCPY3D_PEER* p, CUstream s) {
  return copy_3d_peer(p, ptsz(s), false);
}
FERRY_EXPORT CUresult cuMemcpyBatchAsync(CUdeviceptr* dsts, CUdeviceptr* srcs, size_t* sizes, size_t count,
                                         CUmemcpyAttributes*, size_t*, size_t, size_t* failIdx, CUstream s) {
  return copy_batch(dsts, srcs, sizes, count, failIdx, s);
}
FERRY_EXPORT CUresult cuMemcpyBatchAsync_ptsz(CUdeviceptr* dsts, CUdeviceptr* srcs, size_t* sizes, size_t count,
                                              CUmemcpyAttributes*, size_t*, size_t, size_t* failIdx, CUstream s) {
  return copy_batch(dsts, srcs, sizes, count, failIdx, ptsz(s));
}
FERRY_EXPORT CUresult cuMemcpyBatchAsync_v2(CUdeviceptr* dsts, CUdeviceptr* srcs, size_t* sizes, size_t count,
                                            CUmemcpyAttributes*, size_t*, size_t, CUstream s) {
  return copy_batch(dsts, srcs, sizes, count, nullptr, s);
}
FERRY_EXPORT CUresult cuMemcpyBatchAsync_v2_ptsz(CUdeviceptr* dsts, CUdeviceptr* srcs, size_t* sizes, size_t count,
                                                 CUmemcpyAttributes*, size_t*, size_t, CUstream s) {
  return copy_batch(dsts, srcs, sizes, count, nullptr, ptsz(s));
}
FERRY_EXPORT CUresult cuMemcpy3DBatchAsync(size_t n, CUDA_MEMCPY3D_BATCH_OP* ops, size_t* failIdx,
                                           unsigned long long flags, CUstream s) {
  return copy_3d_batch(n, ops, failIdx, flags, s);
}
FERRY_EXPORT CUresult cuMemcpy3DBatchAsync_ptsz(size_t n, CUDA_MEMCPY3D_BATCH_OP* ops, size_t* failIdx,
                                                unsigned long long flags, CUstream s) {
  return copy_3d_batch(n, ops, failIdx, flags, ptsz(s));
}
FERRY_EXPORT CUresult cuMemcpy3DBatchAsync_v2(size_t n, CUDA_MEMCPY3D_BATCH_OP* ops, unsigned long long flags,
                                              CUstream s) {
  return copy_3d_batch(n, ops, nullptr, flags, s);
}
FERRY_EXPORT CUresult cuMemcpy3DBatchAsync_v2_ptsz(size_t n, CUDA_MEMCPY3D_BATCH_OP* ops, unsigned long long flags,
                                                   CUstream s) {
  return copy_3d_batch(n, ops, nullptr, flags, ptsz(s));
}
