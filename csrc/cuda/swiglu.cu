// SwiGLU forward/backward over [rows, f] outputs, element arithmetic from mllm/swiglu.h. A 2-D grid: y strides
// over rows, x over a row's columns, so no thread divides a flat index by f (a 64-bit division costs about as much
// as the element's memory traffic at HBM speed).
#include "dispatch.cuh"
#include "mllm/launchers.h"
#include "mllm/swiglu.h"

namespace mllm {
namespace {

template <class T, class A> __global__ void swiglu_fwd_kernel(const T* x, T* y, int64_t rows, int64_t f) {
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const T* a = x + r * 2 * f;
    T* out = y + r * f;
    for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < f;
         j += static_cast<int64_t>(gridDim.x) * blockDim.x)
      store(out, j, swiglu_value<A>(load<A>(a, j), load<A>(a, f + j)));
  }
}

template <class T, class A> __global__ void swiglu_bwd_kernel(const T* g, const T* x, T* dx, int64_t rows, int64_t f) {
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const T* a = x + r * 2 * f;
    const T* gr = g + r * f;
    T* d = dx + r * 2 * f;
    for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < f;
         j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      A da, db;
      swiglu_grad<A>(load<A>(a, j), load<A>(a, f + j), load<A>(gr, j), da, db);
      store(d, j, da);
      store(d, f + j, db);
    }
  }
}

// x: about two columns per thread; y: one block row per row, up to the grid's y limit (then rows are strided)
dim3 swiglu_grid(int64_t rows, int64_t f) {
  const int64_t cols = (f + 2 * kThreads - 1) / (2 * kThreads);
  return dim3(static_cast<unsigned>(cols < 65535 ? cols : 65535), static_cast<unsigned>(rows < 65535 ? rows : 65535));
}

}  // namespace

namespace cuda {

void swiglu_fwd(int dtype, const void* x, void* y, int64_t rows, int64_t f, void* stream) {
  if (rows * f == 0) return;
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    swiglu_fwd_kernel<T, A><<<swiglu_grid(rows, f), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(x), static_cast<T*>(y), rows, f);
  });
  check_launch("swiglu_fwd");
}

void swiglu_bwd(int dtype, const void* g, const void* x, void* dx, int64_t rows, int64_t f, void* stream) {
  if (rows * f == 0) return;
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    swiglu_bwd_kernel<T, A><<<swiglu_grid(rows, f), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(g), static_cast<const T*>(x), static_cast<T*>(dx), rows, f);
  });
  check_launch("swiglu_bwd");
}

}  // namespace cuda
}  // namespace mllm
