// RMSNorm (optionally fused with the residual add) forward and backward: one block per row (grid-strided), the
// per-row arithmetic from mllm/rms_norm.h, block reductions in between.
#include "dispatch.cuh"
#include "mllm/launchers.h"
#include "mllm/rms_norm.h"

namespace mllm {
namespace {

template <class T, class A>
__global__ void rms_fwd_kernel(const T* x, const T* res, T* total, const A* w, T* y, A* rstd, int64_t rows,
                               int64_t n, A eps) {
  __shared__ A shared[kThreads / 32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* src = x + r * n;
    A ss;
    if (res != nullptr) {
      ss = rms_partial_add_sumsq<T, A>(src, res + r * n, total + r * n, n, threadIdx.x, blockDim.x);
      src = total + r * n;  // each thread re-reads only the columns it wrote
    } else {
      ss = rms_partial_sumsq<T, A>(src, n, threadIdx.x, blockDim.x);
    }
    ss = block_sum(ss, shared);
    A rs = rms_rstd<A>(ss, n, eps);
    if (threadIdx.x == 0) rstd[r] = rs;
    rms_partial_apply<T, A>(src, w, y + r * n, rs, n, threadIdx.x, blockDim.x);
  }
}

// block b owns rows b, b + gridDim.x, ...; its weight-gradient partial is row b of dw_partial, accumulated in
// shared memory when the row fits (each thread its own columns: no atomics, no synchronisation), else in place
template <class T, class A>
__global__ void rms_bwd_kernel(const T* g, const T* x, const A* w, const A* rstd, T* dx, A* dw_partial, int64_t rows,
                               int64_t n, bool dw_in_shared) {
  __shared__ A shared[kThreads / 32];
  extern __shared__ unsigned char dw_smem[];
  A* out = dw_partial + static_cast<int64_t>(blockIdx.x) * n;
  A* dw = dw_in_shared ? reinterpret_cast<A*>(dw_smem) : out;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) dw[j] = A(0);
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    A dot = rms_partial_dot<T, A>(g + r * n, x + r * n, w, n, threadIdx.x, blockDim.x);
    dot = block_sum(dot, shared);
    rms_partial_backward<T, A>(g + r * n, x + r * n, w, dx + r * n, dw, rstd[r], dot, n, threadIdx.x, blockDim.x);
  }
  if (dw_in_shared)
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) out[j] = dw[j];
}

}  // namespace

namespace cuda {

void rms_norm_fwd(int dtype, const void* x, const void* residual, void* total, const void* w, void* y, void* rstd,
                  int64_t rows, int64_t n, double eps, void* stream) {
  if (rows == 0) return;
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    rms_fwd_kernel<T, A><<<row_blocks(rows), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(x), static_cast<const T*>(residual), static_cast<T*>(total), static_cast<const A*>(w),
        static_cast<T*>(y), static_cast<A*>(rstd), rows, n, static_cast<A>(eps));
  });
  check_launch("rms_norm_fwd");
}

void rms_norm_bwd(int dtype, const void* g, const void* x, const void* w, const void* rstd, void* dx,
                  void* dw_partial, int64_t parts, int64_t rows, int64_t n, void* stream) {
  if (rows == 0) return;
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    const size_t bytes = static_cast<size_t>(n) * sizeof(A);
    const bool in_shared = bytes <= 40 * 1024;  // under the 48 KB default dynamic shared-memory limit
    rms_bwd_kernel<T, A><<<static_cast<int>(parts), kThreads, in_shared ? bytes : 0,
                           static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(g), static_cast<const T*>(x), static_cast<const A*>(w), static_cast<const A*>(rstd),
        static_cast<T*>(dx), static_cast<A*>(dw_partial), rows, n, in_shared);
  });
  check_launch("rms_norm_bwd");
}

}  // namespace cuda
}  // namespace mllm
