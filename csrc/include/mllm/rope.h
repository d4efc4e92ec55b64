// RoPE per-row arithmetic, megatron-core's non-interleaved rotate-half convention: channel i < d_rot/2 pairs with
// i + d_rot/2; y_i = x_i cos a_i - x_{i+h} sin a_i, y_{i+h} = x_{i+h} cos a_{i+h} + x_i sin a_{i+h}; channels from
// d_rot on pass through. The backward is the transposed rotation. cos/sin of the row's angles come precomputed
// (once per position, shared by its batch x heads rows).
#pragma once

#include "mllm/common.h"

namespace mllm {

template <class A> MLLM_HD void rope_angles(const A* angles, A* c, A* s, int64_t d_rot, int64_t start, int64_t stride) {
  for (int64_t i = start; i < d_rot; i += stride) {
    c[i] = cos(angles[i]);
    s[i] = sin(angles[i]);
  }
}

template <class T, class A>
MLLM_HD void rope_row(const T* in, T* out, const A* c, const A* s, int64_t d, int64_t d_rot, bool backward,
                      int64_t start, int64_t stride) {
  const int64_t h = d_rot / 2;
  for (int64_t i = start; i < h; i += stride) {
    A x1 = load<A>(in, i), x2 = load<A>(in, i + h);
    A y1, y2;
    if (!backward) {
      y1 = x1 * c[i] - x2 * s[i];
      y2 = x2 * c[i + h] + x1 * s[i + h];
    } else {
      y1 = x1 * c[i] + x2 * s[i + h];
      y2 = x2 * c[i + h] - x1 * s[i];
    }
    store(out, i, y1);
    store(out, i + h, y2);
  }
  for (int64_t j = d_rot + start; j < d; j += stride) out[j] = in[j];
}

}  // namespace mllm
