// Lightning attention: one block per (batch, head) problem (grid-strided), looping over the sequence blocks; the
// arithmetic from mllm/lightning_attention.h with the block's threads splitting the score entries, then the value
// columns, a barrier between. The scores and the [d, e] state live in the caller's global workspace.
#include "dispatch.cuh"
#include "mllm/launchers.h"
#include "mllm/lightning_attention.h"

namespace mllm {
namespace {

constexpr int kLaThreads = 128;

template <class T, class A>
__global__ void lightning_kernel(const T* q, const T* k, const T* v, T* o, const A* rates, A* ws, int64_t bh,
                                 int64_t heads, int64_t n, int64_t d, int64_t e, int64_t block, bool reverse) {
  const int64_t ws_size = block * block + d * e + e;
  for (int64_t p = blockIdx.x; p < bh; p += gridDim.x) {
    A* P = ws + p * ws_size;
    A* S = P + block * block;
    A* R = S + d * e;
    const A rate = rates[p % heads];
    la_zero<A>(S, d * e, threadIdx.x, blockDim.x);  // split by entries here, by columns below: hence the barrier
    __syncthreads();
    for (int64_t s0 = 0; s0 < n; s0 += block) {
      const int64_t m = n - s0 < block ? n - s0 : block;
      la_block_scores<T, A>(q + p * n * d, k + p * n * d, P, s0, m, n, d, rate, reverse, threadIdx.x, blockDim.x);
      __syncthreads();
      la_block_columns<T, A>(q + p * n * d, k + p * n * d, v + p * n * e, o + p * n * e, P, S, R, s0, m, n, d, e,
                             rate, reverse, threadIdx.x, blockDim.x);
      __syncthreads();  // P is rewritten by the next block's scores
    }
  }
}

}  // namespace

namespace cuda {

void lightning_attention(int dtype, const void* q, const void* k, const void* v, void* o, const void* rates,
                         void* workspace, int64_t bh, int64_t heads, int64_t n, int64_t d, int64_t e, int64_t block,
                         bool reverse, void* stream) {
  if (bh == 0 || n == 0) return;
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    lightning_kernel<T, A><<<row_blocks(bh), kLaThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), static_cast<T*>(o),
        static_cast<const A*>(rates), static_cast<A*>(workspace), bh, heads, n, d, e, block, reverse);
  });
  check_launch("lightning_attention");
}

}  // namespace cuda
}  // namespace mllm
