// CUDA-only scaffolding: half/bfloat16 conversions (torch builds with __CUDA_NO_HALF_CONVERSIONS__), the dtype
// switch, and block-wide reductions. The arithmetic itself lives in csrc/include/mllm/.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdexcept>

#include "mllm/common.h"

namespace mllm {

template <> struct Conv<__half> {
  template <class A> static MLLM_HD A load(__half v) { return static_cast<A>(__half2float(v)); }
  template <class A> static MLLM_HD __half store(A v) { return __float2half_rn(static_cast<float>(v)); }
};

template <> struct Conv<__nv_bfloat16> {
  template <class A> static MLLM_HD A load(__nv_bfloat16 v) { return static_cast<A>(__bfloat162float(v)); }
  template <class A> static MLLM_HD __nv_bfloat16 store(A v) { return __float2bfloat16_rn(static_cast<float>(v)); }
};

template <class F> void dispatch(int dtype, F&& f) {
  switch (dtype) {
    case kF32: f(float{}); break;
    case kF16: f(__half{}); break;
    case kBF16: f(__nv_bfloat16{}); break;
    case kF64: f(double{}); break;
    default: throw std::invalid_argument("mllm: unsupported dtype code");
  }
}

inline void check_launch(const char* what) {
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string("mllm CUDA kernel ") + what + ": " +
                                                   cudaGetErrorString(err));
}

constexpr int kThreads = 256;  // threads per block of the row kernels (a multiple of 32)

template <class A> __device__ __forceinline__ A warp_sum(A v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <class A> __device__ __forceinline__ A warp_max(A v) {
  for (int o = 16; o > 0; o >>= 1) {
    A u = __shfl_xor_sync(0xffffffffu, v, o);
    v = u > v ? u : v;
  }
  return v;
}

// sum over the block, returned to every thread; `shared` holds kThreads / 32 values
template <class A> __device__ A block_sum(A v, A* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // shared may still be read from a previous reduction
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < warps ? shared[lane] : A(0);
  return warp_sum(v);
}

template <class A> __device__ A block_max(A v, A* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < warps ? shared[lane] : neg_inf<A>();
  return warp_max(v);
}

inline int row_blocks(int64_t rows) { return static_cast<int>(rows < 65535 * 16 ? rows : 65535 * 16); }

}  // namespace mllm
