// SwiGLU forward/backward: a grid-stride loop over the [rows, f] outputs, element arithmetic from mllm/swiglu.h.
#include "dispatch.cuh"
#include "mllm/launchers.h"
#include "mllm/swiglu.h"

namespace mllm {
namespace {

template <class T, class A> __global__ void swiglu_fwd_kernel(const T* x, T* y, int64_t rows, int64_t f) {
  const int64_t total = rows * f;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = e / f, j = e - r * f;
    store(y, e, swiglu_value<A>(load<A>(x, r * 2 * f + j), load<A>(x, r * 2 * f + f + j)));
  }
}

template <class T, class A> __global__ void swiglu_bwd_kernel(const T* g, const T* x, T* dx, int64_t rows, int64_t f) {
  const int64_t total = rows * f;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = e / f, j = e - r * f;
    A da, db;
    swiglu_grad<A>(load<A>(x, r * 2 * f + j), load<A>(x, r * 2 * f + f + j), load<A>(g, e), da, db);
    store(dx, r * 2 * f + j, da);
    store(dx, r * 2 * f + f + j, db);
  }
}

int elementwise_blocks(int64_t n) {
  int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<int>(b < 65535 * 8 ? (b > 0 ? b : 1) : 65535 * 8);
}

}  // namespace

namespace cuda {

void swiglu_fwd(int dtype, const void* x, void* y, int64_t rows, int64_t f, void* stream) {
  if (rows * f == 0) return;
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    swiglu_fwd_kernel<T, A><<<elementwise_blocks(rows * f), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(x), static_cast<T*>(y), rows, f);
  });
  check_launch("swiglu_fwd");
}

void swiglu_bwd(int dtype, const void* g, const void* x, void* dx, int64_t rows, int64_t f, void* stream) {
  if (rows * f == 0) return;
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    swiglu_bwd_kernel<T, A><<<elementwise_blocks(rows * f), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(g), static_cast<const T*>(x), static_cast<T*>(dx), rows, f);
  });
  check_launch("swiglu_bwd");
}

}  // namespace cuda
}  // namespace mllm
