// RoPE forward/backward on [s, b*h, d]: one block per position computes its cos/sin once into shared memory
// (mllm/rope.h), then rotates the b*h rows of that position.
#include "dispatch.cuh"
#include "mllm/launchers.h"
#include "mllm/rope.h"

namespace mllm {
namespace {

template <class T, class A>
__global__ void rope_kernel(const T* in, T* out, const A* angles, int64_t s, int64_t bh, int64_t d, int64_t d_rot,
                            bool backward) {
  extern __shared__ unsigned char smem[];
  A* c = reinterpret_cast<A*>(smem);
  A* sn = c + d_rot;
  for (int64_t p = blockIdx.x; p < s; p += gridDim.x) {
    __syncthreads();  // the previous position's table is no longer read
    rope_angles<A>(angles + p * d_rot, c, sn, d_rot, threadIdx.x, blockDim.x);
    __syncthreads();
    // each warp takes rows, its 32 lanes the channels of a row
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (int64_t r = warp; r < bh; r += warps) {
      const int64_t off = (p * bh + r) * d;
      rope_row<T, A>(in + off, out + off, c, sn, d, d_rot, backward, lane, 32);
    }
  }
}

}  // namespace

namespace cuda {

void rope(int dtype, const void* in, void* out, const void* angles, int64_t s, int64_t bh, int64_t d, int64_t d_rot,
          bool backward, void* stream) {
  if (s == 0 || bh == 0) return;
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    const size_t smem = 2 * static_cast<size_t>(d_rot) * sizeof(A);
    rope_kernel<T, A><<<row_blocks(s), kThreads, smem, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(in), static_cast<T*>(out), static_cast<const A*>(angles), s, bh, d, d_rot, backward);
  });
  check_launch("rope");
}

}  // namespace cuda
}  // namespace mllm
