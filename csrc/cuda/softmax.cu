// Scaled (masked / causal) softmax forward and backward, apex's scaled_*softmax_cuda semantics: one block per row
// (grid-strided), per-row arithmetic from mllm/softmax.h.
#include "dispatch.cuh"
#include "mllm/launchers.h"
#include "mllm/softmax.h"

namespace mllm {
namespace {

template <class T, class A>
__global__ void softmax_fwd_kernel(const T* x, const uint8_t* mask, int64_t mask_batches, T* y, int64_t rows,
                                   int64_t heads, int64_t sq, int64_t sk, A scale, bool causal) {
  __shared__ A shared[kThreads / 32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const int64_t i = r % sq;
    const uint8_t* mrow = nullptr;
    if (mask != nullptr) mrow = mask + ((mask_batches == 1 ? 0 : r / (heads * sq)) * sq + i) * sk;
    const int64_t active = causal ? (i + 1 < sk ? i + 1 : sk) : sk;
    const T* xr = x + r * sk;
    A m = block_max(softmax_partial_max<T, A>(xr, mrow, active, scale, threadIdx.x, blockDim.x), shared);
    A s = block_sum(softmax_partial_sum<T, A>(xr, mrow, active, scale, m, threadIdx.x, blockDim.x), shared);
    softmax_partial_write<T, A>(xr, mrow, y + r * sk, active, sk, scale, m, A(1) / s, threadIdx.x, blockDim.x);
  }
}

template <class T, class A>
__global__ void softmax_bwd_kernel(const T* g, const T* y, T* dx, int64_t rows, int64_t sk, A scale) {
  __shared__ A shared[kThreads / 32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    A dot = block_sum(softmax_partial_dot<T, A>(g + r * sk, y + r * sk, sk, threadIdx.x, blockDim.x), shared);
    softmax_partial_backward<T, A>(g + r * sk, y + r * sk, dx + r * sk, sk, dot, scale, threadIdx.x, blockDim.x);
  }
}

}  // namespace

namespace cuda {

void softmax_fwd(int dtype, const void* x, const uint8_t* mask, int64_t mask_batches, void* y, int64_t rows,
                 int64_t heads, int64_t sq, int64_t sk, double scale, bool causal, void* stream) {
  if (rows == 0) return;
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    softmax_fwd_kernel<T, A><<<row_blocks(rows), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(x), mask, mask_batches, static_cast<T*>(y), rows, heads, sq, sk, static_cast<A>(scale),
        causal);
  });
  check_launch("softmax_fwd");
}

void softmax_bwd(int dtype, const void* g, const void* y, void* dx, int64_t rows, int64_t sk, double scale,
                 void* stream) {
  if (rows == 0) return;
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    softmax_bwd_kernel<T, A><<<row_blocks(rows), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(g), static_cast<const T*>(y), static_cast<T*>(dx), rows, sk, static_cast<A>(scale));
  });
  check_launch("softmax_bwd");
}

}  // namespace cuda
}  // namespace mllm
