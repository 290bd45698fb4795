// Synthetic training data for mlp_trainer, shared by the program and by the host
// reference the tests compare it with: the same bits on every machine.
#pragma once

#include <cmath>
#include <cstdint>

namespace mlp {

inline uint64_t mix(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Uniform in [-1, 1), exactly representable (24 random bits).
inline float uniform(uint64_t seed, uint64_t stream, uint64_t i) {
  uint64_t r = mix(seed * 0x100000001b3ull ^ mix(stream * 0x9e3779b97f4a7c15ull + i));
  return static_cast<float>(static_cast<int32_t>(r >> 40) - (1 << 23)) / static_cast<float>(1 << 23);
}

// One batch: inputs x[b][i] and targets t[b][o], a smooth function of the inputs.
inline void make_batch(float* x, float* t, int batch, int in, int out, uint64_t step, uint64_t seed) {
  for (int b = 0; b < batch; b++) {
    for (int i = 0; i < in; i++) x[b * in + i] = uniform(seed, 1000 + step, static_cast<uint64_t>(b * in + i));
    for (int o = 0; o < out; o++) {
      float a = x[b * in + (o % in)];
      float c = x[b * in + ((o * 7 + 1) % in)];
      float d = x[b * in + ((o * 3 + 2) % in)];
      t[b * out + o] = 0.5f * a - 0.25f * c * d + 0.125f * static_cast<float>(o % 3);
    }
  }
}

// Initial weights: scaled uniform, like a Glorot-style initialiser.
inline float init_weight(uint64_t seed, int layer, uint64_t i, int fan_in) {
  return uniform(seed, static_cast<uint64_t>(layer), i) / std::sqrt(static_cast<float>(fan_in));
}

inline uint64_t fnv1a(uint64_t h, const void* data, size_t n) {
  const unsigned char* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}
constexpr uint64_t kFnvBasis = 0xcbf29ce484222325ull;

}  // namespace mlp
