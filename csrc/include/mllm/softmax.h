// Scaled masked softmax per-row arithmetic (apex's scaled_masked_softmax family): score = x * scale, -10000 where
// the boolean mask is set (a fully masked row comes out uniform, as in apex and megatron-core's unfused path);
// columns j >= n_active (causal: n_active = i + 1) are hidden and come out 0. Backward: dx = scale y (g - <g, y>).
#pragma once

#include "mllm/common.h"

namespace mllm {

template <class T, class A> MLLM_HD A softmax_score(const T* x, const uint8_t* mask, int64_t j, A scale) {
  return (mask != nullptr && mask[j]) ? A(-10000) : load<A>(x, j) * scale;
}

template <class T, class A>
MLLM_HD A softmax_partial_max(const T* x, const uint8_t* mask, int64_t n_active, A scale, int64_t start,
                              int64_t stride) {
  A m = neg_inf<A>();
  for (int64_t j = start; j < n_active; j += stride) {
    A v = softmax_score(x, mask, j, scale);
    m = v > m ? v : m;
  }
  return m;
}

template <class T, class A>
MLLM_HD A softmax_partial_sum(const T* x, const uint8_t* mask, int64_t n_active, A scale, A m, int64_t start,
                              int64_t stride) {
  A s = 0;
  for (int64_t j = start; j < n_active; j += stride) s += exp(softmax_score(x, mask, j, scale) - m);
  return s;
}

template <class T, class A>
MLLM_HD void softmax_partial_write(const T* x, const uint8_t* mask, T* y, int64_t n_active, int64_t n, A scale, A m,
                                   A inv_sum, int64_t start, int64_t stride) {
  for (int64_t j = start; j < n; j += stride)
    store(y, j, j < n_active ? exp(softmax_score(x, mask, j, scale) - m) * inv_sum : A(0));
}

template <class T, class A>
MLLM_HD A softmax_partial_dot(const T* g, const T* y, int64_t n, int64_t start, int64_t stride) {
  A acc = 0;
  for (int64_t j = start; j < n; j += stride) acc += load<A>(g, j) * load<A>(y, j);
  return acc;
}

template <class T, class A>
MLLM_HD void softmax_partial_backward(const T* g, const T* y, T* dx, int64_t n, A dot, A scale, int64_t start,
                                      int64_t stride) {
  for (int64_t j = start; j < n; j += stride) store(dx, j, scale * load<A>(y, j) * (load<A>(g, j) - dot));
}

}  // namespace mllm
