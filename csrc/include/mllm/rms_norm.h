// RMSNorm per-row arithmetic. A row is worked on by `stride` workers, worker `start` taking columns start,
// start + stride, ...: the CPU kernel calls these with (0, 1), the CUDA kernel with (threadIdx.x, blockDim.x) and
// reduces the partial sums across the block in between.
#pragma once

#include "mllm/common.h"

namespace mllm {

template <class T, class A>
MLLM_HD A rms_partial_sumsq(const T* x, int64_t n, int64_t start, int64_t stride) {
  A acc = 0;
  for (int64_t j = start; j < n; j += stride) {
    A v = load<A>(x, j);
    acc += v * v;
  }
  return acc;
}

// total = x + residual rounded to T (the residual stream the next layer reads), and its partial sum of squares
template <class T, class A>
MLLM_HD A rms_partial_add_sumsq(const T* x, const T* r, T* total, int64_t n, int64_t start, int64_t stride) {
  A acc = 0;
  for (int64_t j = start; j < n; j += stride) {
    store(total, j, load<A>(x, j) + load<A>(r, j));
    A v = load<A>(total, j);
    acc += v * v;
  }
  return acc;
}

template <class A> MLLM_HD A rms_rstd(A sumsq, int64_t n, A eps) { return A(1) / sqrt(sumsq / A(n) + eps); }

template <class T, class A>
MLLM_HD void rms_partial_apply(const T* x, const A* w, T* y, A rstd, int64_t n, int64_t start, int64_t stride) {
  for (int64_t j = start; j < n; j += stride) store(y, j, load<A>(x, j) * rstd * w[j]);
}

// backward: dot = sum_j g_j w_j x_j over the row
template <class T, class A>
MLLM_HD A rms_partial_dot(const T* g, const T* x, const A* w, int64_t n, int64_t start, int64_t stride) {
  A acc = 0;
  for (int64_t j = start; j < n; j += stride) acc += load<A>(g, j) * w[j] * load<A>(x, j);
  return acc;
}

// dx_j = rstd (g_j w_j - x_j rstd^2 dot / n); dw_j += g_j x_j rstd (dw: this worker's accumulator row)
template <class T, class A>
MLLM_HD void rms_partial_backward(const T* g, const T* x, const A* w, T* dx, A* dw, A rstd, A dot, int64_t n,
                                  int64_t start, int64_t stride) {
  A c = rstd * rstd * dot / A(n);
  for (int64_t j = start; j < n; j += stride) {
    A gj = load<A>(g, j), xj = load<A>(x, j);
    store(dx, j, rstd * (gj * w[j] - xj * c));
    dw[j] += gj * xj * rstd;
  }
}

}  // namespace mllm
