// Block-wise lightning attention (causal linear attention with decay lambda = exp(-rate)) for one (batch, head):
//     o_i = sum_{t <= i} lambda^(i - t) (q_i . k_t) v_t,      q, k [n, d], v, o [n, e], fp32 (fp64) accumulation.
// Per block of m rows starting at s0: scores P = (Q K^T) * decay (intra-block, causal), then per value column j
// o_ij = sum_t P_it v_tj + lambda^(i+1) sum_c q_ic S_cj and S_cj <- lambda^m S_cj + sum_t lambda^(m-1-t) k_tc v_tj.
// Column j of the [d, e] state depends on column j of v only, so workers split the columns (and the score entries);
// the CPU kernel calls these with (start 0, stride 1), the CUDA kernel with (threadIdx.x, blockDim.x) and a block
// barrier between the two phases. With `reverse` row i means row n-1-i (anti-causal): the backward pass is three
// such calls, dq = LA(do, v, k), dk = rev LA(v, do, q), dv = rev LA(k, q, do).
#pragma once

#include "mllm/common.h"

namespace mllm {

template <class P> MLLM_HD P la_row(P base, int64_t i, int64_t n, int64_t dim, bool reverse) {
  return base + (reverse ? n - 1 - i : i) * dim;
}

// P[i * m + t] = lambda^(i - t) (q_i . k_t) for t <= i, else 0 (rows s0 .. s0 + m - 1)
template <class T, class A>
MLLM_HD void la_block_scores(const T* q, const T* k, A* P, int64_t s0, int64_t m, int64_t n, int64_t d, A rate,
                             bool reverse, int64_t start, int64_t stride) {
  for (int64_t idx = start; idx < m * m; idx += stride) {
    const int64_t i = idx / m, t = idx % m;
    A acc = 0;
    if (t <= i) {
      const T* qi = la_row(q, s0 + i, n, d, reverse);
      const T* kt = la_row(k, s0 + t, n, d, reverse);
      for (int64_t c = 0; c < d; ++c) acc += load<A>(qi, c) * load<A>(kt, c);
      acc *= exp(-rate * static_cast<A>(i - t));
    }
    P[idx] = acc;
  }
}

// the block's output columns (intra + inter through the state S [d, e]), then the state update of those columns.
// R [e] is scratch for the output row (entry j used by column j's worker only). The columns are the innermost
// loop everywhere: contiguous (vectorised) on the CPU, coalesced on the GPU.
template <class T, class A>
MLLM_HD void la_block_columns(const T* q, const T* k, const T* v, T* o, const A* P, A* S, A* R, int64_t s0, int64_t m,
                              int64_t n, int64_t d, int64_t e, A rate, bool reverse, int64_t start, int64_t stride) {
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = start; j < e; j += stride) R[j] = A(0);
    for (int64_t t = 0; t <= i; ++t) {
      const A w = P[i * m + t];
      const T* vt = la_row(v, s0 + t, n, e, reverse);
      for (int64_t j = start; j < e; j += stride) R[j] += w * load<A>(vt, j);
    }
    const A decay_i = exp(-rate * static_cast<A>(i + 1));
    const T* qi = la_row(q, s0 + i, n, d, reverse);
    for (int64_t c = 0; c < d; ++c) {
      const A w = decay_i * load<A>(qi, c);
      const A* Sc = S + c * e;
      for (int64_t j = start; j < e; j += stride) R[j] += w * Sc[j];
    }
    T* oi = la_row(o, s0 + i, n, e, reverse);
    for (int64_t j = start; j < e; j += stride) store(oi, j, R[j]);
  }
  const A decay_m = exp(-rate * static_cast<A>(m));
  for (int64_t c = 0; c < d; ++c)
    for (int64_t j = start; j < e; j += stride) S[c * e + j] *= decay_m;
  for (int64_t t = 0; t < m; ++t) {
    const A wt = exp(-rate * static_cast<A>(m - 1 - t));
    const T* kt = la_row(k, s0 + t, n, d, reverse);
    const T* vt = la_row(v, s0 + t, n, e, reverse);
    for (int64_t c = 0; c < d; ++c) {
      const A w = wt * load<A>(kt, c);
      A* Sc = S + c * e;
      for (int64_t j = start; j < e; j += stride) Sc[j] += w * load<A>(vt, j);
    }
  }
}

template <class A> MLLM_HD void la_zero(A* S, int64_t size, int64_t start, int64_t stride) {
  for (int64_t i = start; i < size; i += stride) S[i] = A(0);
}

}  // namespace mllm
