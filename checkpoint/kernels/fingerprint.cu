// Change detection for incremental checkpoints, run on the GPU by the engine
// (checkpoint/snapshot.cpp): one block per chunk of a blob computes a 128-bit
// fingerprint of the chunk's bytes, so that a checkpoint with a parent copies to the
// host only the chunks whose fingerprint differs from the parent's. Reading device
// memory at HBM speed costs a fraction of copying it over PCIe and hashing it on the
// host.
//
// Each 8-byte word w at index i gives x = mix(w ^ pos(i)), and the chunk's fingerprint
// is (sum of x, sum of x*(x|1)) mod 2^64. mix is a bijection, so changing any single
// word always changes the first sum; several changed words go unseen only if both
// sums cancel at once, which pseudo-random x make a chance of about 2^-128. Sums are
// order-free, which lets the threads of a block work in any order and reduce through
// shared memory; the position term keeps swapped words apart. The length enters at
// the end, so chunks that differ only in length differ. One mix per word keeps the
// kernel bound by memory bandwidth on a GPU.
//
// The engine keeps the fingerprints in the image next to the content hashes; they
// never address data, they only say "unchanged since the parent".

#include "fingerprint_mix.h"

namespace {
constexpr unsigned kFpThreads = 256;
}  // namespace

// data: the blob (8-byte aligned); size: its bytes; chunk: the chunk size (a multiple
// of 8); out: two words per chunk. Launch with one block of kFpThreads per chunk.
extern "C" __global__ void ferry_fingerprint_chunks(const unsigned long long* data, unsigned long long size,
                                                    unsigned long long chunk, unsigned long long* out) {
  __shared__ unsigned long long sa[kFpThreads];
  __shared__ unsigned long long sb[kFpThreads];
  const unsigned long long c = blockIdx.x;
  const unsigned long long begin = c * chunk;
  const unsigned long long n = size - begin < chunk ? size - begin : chunk;
  const unsigned long long words = n / 8;
  const unsigned long long* w = data + begin / 8;
  unsigned long long a = 0, b = 0;
#if FERRY_EMU_KERNEL_BUILD
  // The simulated GPU runs a block's threads one after another on a CPU core: each
  // takes a contiguous slice, which caches and prefetchers like. The sums do not
  // depend on which thread adds which word, so the fingerprints are the same.
  const unsigned long long per = (words + blockDim.x - 1) / blockDim.x;
  const unsigned long long lo = threadIdx.x * per, hi = lo + per < words ? lo + per : words;
  for (unsigned long long i = lo; i < hi; i++) {
#else
  // On a GPU neighbouring threads read neighbouring words (coalesced loads).
  for (unsigned long long i = threadIdx.x; i < words; i += blockDim.x) {
#endif
    ferry_fp::add(ferry_fp::word(w[i], i), a, b);
  }
  if (threadIdx.x == 0) ferry_fp::add_tail(reinterpret_cast<const unsigned char*>(w), n, a, b);
  sa[threadIdx.x] = a;
  sb[threadIdx.x] = b;
  __syncthreads();
  for (unsigned s = blockDim.x / 2; s > 0; s /= 2) {
    if (threadIdx.x < s) {
      sa[threadIdx.x] += sa[threadIdx.x + s];
      sb[threadIdx.x] += sb[threadIdx.x + s];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) ferry_fp::finish(sa[0], sb[0], n, out + 2 * c);
}
