// Vocab-parallel cross entropy per-row arithmetic over this rank's shard of a logits row: an online (max, sum exp)
// and the sum of the logits in one pass (columns < n_valid; the rest is vocabulary padding), and the gradient
// g * (softmax_j - (1 - smoothing) [j == target] - smoothing / K), 0 on padding columns.
#pragma once

#include "mllm/common.h"

namespace mllm {

template <class T, class A>
MLLM_HD void ce_partial_stats(const T* x, int64_t n_valid, A& m, A& s, A& sum, int64_t start, int64_t stride) {
  for (int64_t j = start; j < n_valid; j += stride) {
    A v = load<A>(x, j);
    online_add(m, s, v);
    sum += v;
  }
}

template <class T, class A>
MLLM_HD void ce_partial_grad(const T* x, T* grad, int64_t n_valid, int64_t n, int64_t target, A lse, A gscale,
                             A smoothing, A inv_k, int64_t start, int64_t stride) {
  for (int64_t j = start; j < n; j += stride) {
    A v = 0;
    if (j < n_valid) {
      v = exp(load<A>(x, j) - lse) - smoothing * inv_k;
      if (j == target) v -= A(1) - smoothing;
      v *= gscale;
    }
    store(grad, j, v);
  }
}

}  // namespace mllm
