// A plain host computation of mlp_trainer's model (straightforward loops, no tiling,
// sequential sums): the independent reference its losses must agree with.
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include "mlp_data.h"

namespace mlp_ref {

inline std::vector<double> losses(int steps, int B, int I, int H, int O, const std::string& opt, float lr,
                                  unsigned long long seed) {
  const bool adam = opt == "adam";
  std::vector<float> W1(static_cast<size_t>(I) * H), b1(H, 0.0f), W2(static_cast<size_t>(H) * O), b2(O, 0.0f);
  for (size_t i = 0; i < W1.size(); i++) W1[i] = mlp::init_weight(seed, 1, i, I);
  for (size_t i = 0; i < W2.size(); i++) W2[i] = mlp::init_weight(seed, 2, i, H);
  std::vector<std::vector<float>*> params = {&W1, &b1, &W2, &b2};
  std::vector<std::vector<float>> m(4), v(4), g(4);
  for (int p = 0; p < 4; p++) {
    m[p].assign(params[p]->size(), 0.0f);
    v[p].assign(params[p]->size(), 0.0f);
    g[p].assign(params[p]->size(), 0.0f);
  }
  std::vector<float> x(static_cast<size_t>(B) * I), t(static_cast<size_t>(B) * O), h(static_cast<size_t>(B) * H),
      y(static_cast<size_t>(B) * O), dy(y.size()), dh(h.size());
  std::vector<double> out;
  for (int step = 0; step < steps; step++) {
    mlp::make_batch(x.data(), t.data(), B, I, O, static_cast<uint64_t>(step), seed);
    for (int b = 0; b < B; b++)
      for (int j = 0; j < H; j++) {
        float acc = 0.0f;
        for (int k = 0; k < I; k++) acc += x[b * I + k] * W1[k * H + j];
        float z = acc + b1[j];
        h[b * H + j] = z < 0.0f ? 0.0f : z;
      }
    for (int b = 0; b < B; b++)
      for (int j = 0; j < O; j++) {
        float acc = 0.0f;
        for (int k = 0; k < H; k++) acc += h[b * H + k] * W2[k * O + j];
        y[b * O + j] = acc + b2[j];
      }
    double loss = 0.0;
    const float gscale = 1.0f / static_cast<float>(B * O);
    for (size_t i = 0; i < y.size(); i++) {
      float d = y[i] - t[i];
      dy[i] = d * gscale;
      loss += static_cast<double>(d) * d;
    }
    out.push_back(loss * 0.5 / (B * O));
    for (int k = 0; k < H; k++)
      for (int j = 0; j < O; j++) {
        float acc = 0.0f;
        for (int b = 0; b < B; b++) acc += h[b * H + k] * dy[b * O + j];
        g[2][k * O + j] = acc;
      }
    for (int j = 0; j < O; j++) {
      float acc = 0.0f;
      for (int b = 0; b < B; b++) acc += dy[b * O + j];
      g[3][j] = acc;
    }
    for (int b = 0; b < B; b++)
      for (int k = 0; k < H; k++) {
        float acc = 0.0f;
        for (int j = 0; j < O; j++) acc += dy[b * O + j] * W2[k * O + j];
        dh[b * H + k] = h[b * H + k] <= 0.0f ? 0.0f : acc;
      }
    for (int k = 0; k < I; k++)
      for (int j = 0; j < H; j++) {
        float acc = 0.0f;
        for (int b = 0; b < B; b++) acc += x[b * I + k] * dh[b * H + j];
        g[0][k * H + j] = acc;
      }
    for (int j = 0; j < H; j++) {
      float acc = 0.0f;
      for (int b = 0; b < B; b++) acc += dh[b * H + j];
      g[1][j] = acc;
    }
    const float t_step = static_cast<float>(step + 1);
    for (int p = 0; p < 4; p++) {
      auto& w = *params[p];
      for (size_t i = 0; i < w.size(); i++) {
        if (!adam) {
          w[i] -= lr * g[p][i];
          continue;
        }
        m[p][i] = 0.9f * m[p][i] + 0.1f * g[p][i];
        v[p][i] = 0.999f * v[p][i] + 0.001f * g[p][i] * g[p][i];
        float mhat = m[p][i] / (1.0f - std::pow(0.9f, t_step));
        float vhat = v[p][i] / (1.0f - std::pow(0.999f, t_step));
        w[i] -= lr * mhat / (std::sqrt(vhat) + 1e-8f);
      }
    }
  }
  return out;
}

}  // namespace mlp_ref
