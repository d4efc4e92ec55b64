// Vocab-parallel cross entropy on a logits shard [rows, n]: per-row online (max, sum exp) and logit sum in one
// read (mllm/cross_entropy.h), merged across the block; the backward recomputes softmax from the logits. No fp32
// copy of the logits is ever made.
#include "dispatch.cuh"
#include "mllm/cross_entropy.h"
#include "mllm/launchers.h"

namespace mllm {
namespace {

constexpr int kCeThreads = 1024;  // vocabulary rows are long (32k-256k / tp): a wide block per row

template <class T, class A>
__global__ void ce_stats_kernel(const T* x, const int64_t* target, A* stats, int64_t rows, int64_t n,
                                int64_t n_valid) {
  __shared__ A shared[kCeThreads / 32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    A m = neg_inf<A>(), s = 0, sum = 0;
    ce_partial_stats<T, A>(x + r * n, n_valid, m, s, sum, threadIdx.x, blockDim.x);
    A big = block_max(m, shared);
    A rescaled = m == neg_inf<A>() ? A(0) : s * exp(m - big);
    A total = block_sum(rescaled, shared);
    A logit_sum = block_sum(sum, shared);
    if (threadIdx.x == 0) {
      stats[r * 4 + 0] = big;
      stats[r * 4 + 1] = total;
      stats[r * 4 + 2] = target[r] >= 0 ? load<A>(x, r * n + target[r]) : A(0);
      stats[r * 4 + 3] = logit_sum;
    }
  }
}

template <class T, class A>
__global__ void ce_grad_kernel(const T* x, const int64_t* target, const A* lse, const A* gscale, T* grad,
                               int64_t rows, int64_t n, int64_t n_valid, A smoothing, A inv_k) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x)
    ce_partial_grad<T, A>(x + r * n, grad + r * n, n_valid, n, target[r], lse[r], gscale[r], smoothing, inv_k,
                          threadIdx.x, blockDim.x);
}

}  // namespace

namespace cuda {

void ce_stats(int dtype, const void* x, const int64_t* target, void* stats, int64_t rows, int64_t n, int64_t n_valid,
              void* stream) {
  if (rows == 0) return;
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    ce_stats_kernel<T, A><<<row_blocks(rows), kCeThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(x), target, static_cast<A*>(stats), rows, n, n_valid);
  });
  check_launch("ce_stats");
}

void ce_grad(int dtype, const void* x, const int64_t* target, const void* lse, const void* gscale, void* grad,
             int64_t rows, int64_t n, int64_t n_valid, double smoothing, double inv_k, void* stream) {
  if (rows == 0) return;
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    ce_grad_kernel<T, A><<<row_blocks(rows), kCeThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(x), target, static_cast<const A*>(lse), static_cast<const A*>(gscale),
        static_cast<T*>(grad), rows, n, n_valid, static_cast<A>(smoothing), static_cast<A>(inv_k));
  });
  check_launch("ce_grad");
}

}  // namespace cuda
}  // namespace mllm
