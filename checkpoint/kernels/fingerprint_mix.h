// The arithmetic of the chunk fingerprints (see fingerprint.cu), shared by the GPU
// kernel, its host build for the simulated GPU, and the engine, which computes the
// same fingerprints on the host for snapshots already in host memory. All three must
// agree bit for bit: an image's fingerprints are compared with the GPU's later.
#pragma once

#if defined(__CUDACC__)
#define FERRY_FP_FN __host__ __device__ __forceinline__
#else
#define FERRY_FP_FN inline
#endif

namespace ferry_fp {

// A bijection of 64-bit words (odd multiplications and xor-shifts are invertible).
FERRY_FP_FN unsigned long long mix(unsigned long long x) {
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 31;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 29;
  return x;
}

// Word i of a chunk, mixed with its position.
FERRY_FP_FN unsigned long long word(unsigned long long v, unsigned long long i) {
  return mix(v ^ (i * 0x9e3779b97f4a7c15ull));
}

// The two lanes a mixed word adds to.
FERRY_FP_FN void add(unsigned long long x, unsigned long long& a, unsigned long long& b) {
  a += x;
  b += x * (x | 1);
}

// Adds the bytes of a chunk of n bytes at p after its last whole word, if any, as one
// little-endian word at the next position.
FERRY_FP_FN void add_tail(const unsigned char* p, unsigned long long n, unsigned long long& a, unsigned long long& b) {
  const unsigned long long words = n / 8, rest = n & 7;
  if (!rest) return;
  unsigned long long v = 0;
  for (unsigned long long k = 0; k < rest; k++) v |= static_cast<unsigned long long>(p[8 * words + k]) << (8 * k);
  add(word(v, words), a, b);
}

// The fingerprint from the lanes' sums and the chunk's length in bytes.
FERRY_FP_FN void finish(unsigned long long a, unsigned long long b, unsigned long long n, unsigned long long out[2]) {
  out[0] = mix(a ^ n);
  out[1] = mix(b + n);
}

}  // namespace ferry_fp
