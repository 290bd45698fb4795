// CUDA-on-host: lets g++ compile the device half of an ordinary .cu file into a host
// kernel library for the simulated GPU.
//
// The build (cmake/FerryCuda.cmake) compiles the .cu a second time with this header
// force-included and FERRY_EMU_KERNEL_BUILD defined; host-only code in the .cu is
// skipped with `#ifndef FERRY_EMU_KERNEL_BUILD`. Kernels become plain functions with
// the same mangled names nvcc gives them; a generated table maps those names to
// trampolines (see ferry_emu_kernel_table below). Each CUDA thread of a block runs
// as a fiber on one OS thread, so __shared__ variables are `thread_local` (block
// scope makes them static: one copy per OS thread = per running block) and __syncthreads() is a fiber switch
// into the emulator's block scheduler.
//
// Supported: grid/block indexing, static and dynamic __shared__ memory,
// __syncthreads[_count|_and|_or], warp shuffles/votes (full-warp masks), atomics,
// the common float intrinsics, __device__/__constant__ variables (which live in the
// per-context copy of the library). Not supported: textures/surfaces, cooperative
// groups, inline PTX, kernels with internal linkage in anonymous namespaces.
#ifndef FERRY_EMU_CUDA_ON_HOST_H
#define FERRY_EMU_CUDA_ON_HOST_H

#include <ferry_emu/kernel_abi.h>

#include <atomic>
#include <cmath>
#include <math.h>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <cstdlib>
#include <type_traits>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __constant__
#define __managed__
#define __shared__ thread_local
#define __forceinline__ inline __attribute__((always_inline))
// No __noinline__: libstdc++ spells GNU's attribute that way inside its own
// __attribute__((...)) and [[__gnu__::...]] (<memory> with g++ 12; graph_loop.cu with the g++ 13+ of a GPU machine),
// which a macro of that name breaks; an emulated kernel writes __attribute__((noinline)).
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __grid_constant__
#define __CUDACC_EMU__ 1

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};

#define FERRY_EMU_VEC2(T, N) struct N { T x, y; };  inline N make_##N(T a, T b) { return N{a, b}; }
#define FERRY_EMU_VEC3(T, N) struct N { T x, y, z; }; inline N make_##N(T a, T b, T c) { return N{a, b, c}; }
#define FERRY_EMU_VEC4(T, N) struct alignas(4 * sizeof(T) <= 16 ? 4 * sizeof(T) : 16) N { T x, y, z, w; }; \
  inline N make_##N(T a, T b, T c, T d) { return N{a, b, c, d}; }
FERRY_EMU_VEC2(float, float2)
FERRY_EMU_VEC3(float, float3)
FERRY_EMU_VEC4(float, float4)
FERRY_EMU_VEC2(int, int2)
FERRY_EMU_VEC3(int, int3)
FERRY_EMU_VEC4(int, int4)
FERRY_EMU_VEC2(double, double2)
FERRY_EMU_VEC2(unsigned, uint2)
FERRY_EMU_VEC4(unsigned, uint4)
#undef FERRY_EMU_VEC2
#undef FERRY_EMU_VEC3
#undef FERRY_EMU_VEC4
inline uint3 make_uint3(unsigned a, unsigned b, unsigned c) { return uint3{a, b, c}; }

namespace ferry_emu {
namespace detail {
inline thread_local ferry_emu_thread_state* tls_state = nullptr;
inline ferry_emu_thread_state* st() { return tls_state; }
}  // namespace detail
}  // namespace ferry_emu

namespace ferry_emu {
namespace detail {
inline ::uint3 as_uint3(const ferry_emu_dim& d) { return ::uint3{d.x, d.y, d.z}; }
inline ::dim3 as_dim3(const ferry_emu_dim& d) { return ::dim3(d.x, d.y, d.z); }
}  // namespace detail
}  // namespace ferry_emu
#define threadIdx (::ferry_emu::detail::as_uint3(::ferry_emu::detail::st()->thread_idx))
#define blockIdx (::ferry_emu::detail::as_uint3(::ferry_emu::detail::st()->block_idx))
#define blockDim (::ferry_emu::detail::as_dim3(::ferry_emu::detail::st()->block_dim))
#define gridDim (::ferry_emu::detail::as_dim3(::ferry_emu::detail::st()->grid_dim))
static constexpr int warpSize = 32;

// Dynamic shared memory: `extern __shared__ T name[];` cannot be rewritten by the
// preprocessor, so kernels that need it use this macro, which expands to the
// standard declaration under nvcc (see ferry_emu/portable.h).
#define FERRY_DYNAMIC_SHARED(T, name) T* name = static_cast<T*>(::ferry_emu::detail::st()->dynamic_shared)

inline void __syncthreads() { ::ferry_emu::detail::st()->rt->block_barrier(0, 0); }
inline int __syncthreads_count(int p) { return ::ferry_emu::detail::st()->rt->block_barrier(1, p); }
inline int __syncthreads_and(int p) { return ::ferry_emu::detail::st()->rt->block_barrier(2, p); }
inline int __syncthreads_or(int p) { return ::ferry_emu::detail::st()->rt->block_barrier(3, p); }
inline void __syncwarp(unsigned = 0xffffffffu) { ::ferry_emu::detail::st()->rt->warp_exchange(0, 0); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __trap() { ::ferry_emu::detail::st()->rt->trap("__trap() called"); }

namespace ferry_emu {
template <class T>
inline std::uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "warp exchange of values up to 8 bytes");
  std::uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <class T>
inline T from_bits(std::uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}
inline unsigned lane_id() {
  auto* s = detail::st();
  unsigned linear = s->thread_idx.x + s->block_dim.x * (s->thread_idx.y + s->block_dim.y * s->thread_idx.z);
  return linear % 32u;
}
template <class T>
inline T shfl(T v, int src) {
  return from_bits<T>(detail::st()->rt->warp_exchange(to_bits(v), src));
}
}  // namespace ferry_emu

template <class T>
inline T __shfl_sync(unsigned, T v, int src, int width = 32) {
  int lane = static_cast<int>(::ferry_emu::lane_id());
  int base = lane - lane % width;
  return ::ferry_emu::shfl(v, base + ((src % width) + width) % width);
}
template <class T>
inline T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32) {
  int lane = static_cast<int>(::ferry_emu::lane_id());
  int in_seg = lane % width;
  int src = (in_seg + static_cast<int>(delta) < width) ? lane + static_cast<int>(delta) : lane;
  return ::ferry_emu::shfl(v, src);
}
template <class T>
inline T __shfl_up_sync(unsigned, T v, unsigned delta, int width = 32) {
  int lane = static_cast<int>(::ferry_emu::lane_id());
  int in_seg = lane % width;
  int src = (in_seg >= static_cast<int>(delta)) ? lane - static_cast<int>(delta) : lane;
  return ::ferry_emu::shfl(v, src);
}
template <class T>
inline T __shfl_xor_sync(unsigned, T v, int mask, int width = 32) {
  int lane = static_cast<int>(::ferry_emu::lane_id());
  int src = lane ^ mask;
  if ((src / width) != (lane / width)) src = lane;
  return ::ferry_emu::shfl(v, src);
}
inline unsigned __ballot_sync(unsigned, int p) {
  return static_cast<unsigned>(::ferry_emu::detail::st()->rt->warp_exchange(p != 0, -1));
}
inline int __any_sync(unsigned m, int p) { return __ballot_sync(m, p) != 0; }
inline int __all_sync(unsigned m, int p) {
  unsigned b = __ballot_sync(m, 1);
  return __ballot_sync(m, p) == b;
}

// Atomics: blocks of one launch may run on several OS threads, so these are real
// atomic read-modify-writes on host memory.
#define FERRY_EMU_ATOMIC_INT(T)                                                                     \
  inline T atomicAdd(T* a, T v) { return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST); }              \
  inline T atomicSub(T* a, T v) { return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST); }              \
  inline T atomicExch(T* a, T v) { return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST); }            \
  inline T atomicAnd(T* a, T v) { return __atomic_fetch_and(a, v, __ATOMIC_SEQ_CST); }              \
  inline T atomicOr(T* a, T v) { return __atomic_fetch_or(a, v, __ATOMIC_SEQ_CST); }                \
  inline T atomicXor(T* a, T v) { return __atomic_fetch_xor(a, v, __ATOMIC_SEQ_CST); }              \
  inline T atomicCAS(T* a, T cmp, T v) {                                                             \
    __atomic_compare_exchange_n(a, &cmp, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);             \
    return cmp;                                                                                     \
  }                                                                                                 \
  inline T atomicMax(T* a, T v) {                                                                   \
    T old = __atomic_load_n(a, __ATOMIC_SEQ_CST);                                                   \
    while (old < v && !__atomic_compare_exchange_n(a, &old, v, true, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) { \
    }                                                                                               \
    return old;                                                                                     \
  }                                                                                                 \
  inline T atomicMin(T* a, T v) {                                                                   \
    T old = __atomic_load_n(a, __ATOMIC_SEQ_CST);                                                   \
    while (old > v && !__atomic_compare_exchange_n(a, &old, v, true, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) { \
    }                                                                                               \
    return old;                                                                                     \
  }
FERRY_EMU_ATOMIC_INT(int)
FERRY_EMU_ATOMIC_INT(unsigned)
FERRY_EMU_ATOMIC_INT(unsigned long long)
#undef FERRY_EMU_ATOMIC_INT

namespace ferry_emu {
template <class F, class I>
inline F float_atomic_add(F* a, F v) {
  static_assert(sizeof(F) == sizeof(I));
  I* ai = reinterpret_cast<I*>(a);
  I old = __atomic_load_n(ai, __ATOMIC_SEQ_CST);
  for (;;) {
    F cur;
    std::memcpy(&cur, &old, sizeof(F));
    F next = cur + v;
    I want;
    std::memcpy(&want, &next, sizeof(F));
    if (__atomic_compare_exchange_n(ai, &old, want, true, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) return cur;
  }
}
}  // namespace ferry_emu
inline float atomicAdd(float* a, float v) { return ferry_emu::float_atomic_add<float, std::uint32_t>(a, v); }
inline double atomicAdd(double* a, double v) { return ferry_emu::float_atomic_add<double, std::uint64_t>(a, v); }
inline float atomicExch(float* a, float v) {
  std::uint32_t in, out;
  std::memcpy(&in, &v, 4);
  out = __atomic_exchange_n(reinterpret_cast<std::uint32_t*>(a), in, __ATOMIC_SEQ_CST);
  float r;
  std::memcpy(&r, &out, 4);
  return r;
}

// Device intrinsics with their host equivalents. The fast-math forms (__expf, ...)
// are computed at full precision here, so results may differ from a GPU in the last
// bits; runs on the emulator are still bit-identical from run to run.
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __powf(float x, float y) { return std::pow(x, y); }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
inline float __tanhf(float x) { return std::tanh(x); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline int __float2int_rn(float x) { return static_cast<int>(std::nearbyint(x)); }
inline int __float2int_rz(float x) { return static_cast<int>(x); }
inline float __int2float_rn(int x) { return static_cast<float>(x); }
inline int __float_as_int(float x) { int i; std::memcpy(&i, &x, 4); return i; }
inline unsigned __float_as_uint(float x) { unsigned i; std::memcpy(&i, &x, 4); return i; }
inline float __int_as_float(int i) { float x; std::memcpy(&x, &i, 4); return x; }
inline float __uint_as_float(unsigned i) { float x; std::memcpy(&x, &i, 4); return x; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }
template <class T>
inline T __ldg(const T* p) { return *p; }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }

// ---- the kernel table -------------------------------------------------------------
namespace ferry_emu {
template <auto F>
struct kernel_traits;
template <class... A, void (*F)(A...)>
struct kernel_traits<F> {
  static constexpr std::uint32_t count = sizeof...(A);
  static constexpr std::uint32_t sizes[count ? count : 1] = {static_cast<std::uint32_t>(sizeof(A))...};
  static constexpr std::uint32_t aligns[count ? count : 1] = {static_cast<std::uint32_t>(alignof(A))...};
  template <std::size_t... I>
  static void call(void* const* p, std::index_sequence<I...>) {
    F(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(p[I])...);
  }
  static void invoke(void* const* params) { call(params, std::index_sequence_for<A...>{}); }
};
template <auto F>
constexpr ferry_emu_kernel_entry entry(const char* name) {
  using K = kernel_traits<F>;
  return ferry_emu_kernel_entry{name, &K::invoke, K::count, K::sizes, K::aligns};
}
inline void bind_thread(ferry_emu_thread_state* s) { detail::tls_state = s; }
}  // namespace ferry_emu

#define FERRY_EMU_DEFINE_KERNEL_LIBRARY(table)                                                        \
  extern "C" __attribute__((visibility("default"))) const ferry_emu_kernel_library*                    \
  ferry_emu_kernel_library_v1(void) {                                                                 \
    static const ferry_emu_kernel_library lib = {FERRY_EMU_KERNEL_ABI,                                 \
                                                 static_cast<std::uint32_t>(sizeof(table) / sizeof(table[0])), \
                                                 table, &::ferry_emu::bind_thread};                    \
    return &lib;                                                                                      \
  }

#endif
