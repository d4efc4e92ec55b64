// Kernels with the faults the emulation is there to catch, each beside its correct twin (tests/unit/
// test_cuda_emulation.py): built only into the emulated extension, through the same source rewriting as csrc/cuda.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "dispatch.cuh"

namespace mllm_selftest {
namespace {

constexpr int kBlock = 256;

// out[t] = in[t] + in[t + 32] of the block, through shared memory; without the barrier the reads race the writes
__global__ void neighbour_kernel(const float* in, float* out, bool barrier) {
  __shared__ float tile[kBlock];
  const int t = threadIdx.x;
  const int64_t base = static_cast<int64_t>(blockIdx.x) * kBlock;
  tile[t] = in[base + t];
  if (barrier) __syncthreads();
  out[base + t] = tile[t] + tile[(t + 32) % kBlock];
}

// mllm::block_sum without its leading barrier: a warp that leaves one reduction early may overwrite `shared` for
// the next while slower warps still read the first's partial sums
__device__ float block_sum_unguarded(float v, float* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = mllm::warp_sum(v);
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < warps ? shared[lane] : 0.0f;
  return mllm::warp_sum(v);
}

// every thread writes the block's sum of in and of in^2, two reductions through one shared array
__global__ void two_sums_kernel(const float* in, float* out, bool guarded) {
  __shared__ float shared[kBlock / 32];
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x;
  const float a = in[i];
  const float s1 = guarded ? mllm::block_sum(a, shared) : block_sum_unguarded(a, shared);
  const float s2 = guarded ? mllm::block_sum(a * a, shared) : block_sum_unguarded(a * a, shared);
  out[2 * i] = s1;
  out[2 * i + 1] = s2;
}

// out[t] = in[t ^ 1] by a shuffle every lane takes (all) or only the odd lanes take
__global__ void shuffle_kernel(const float* in, float* out, bool all) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x;
  float v = in[i];
  if (all || (threadIdx.x & 1)) v = __shfl_xor_sync(0xffffffffu, v, 1);
  out[i] = v;
}

// a barrier every thread reaches, or only the first warp
__global__ void barrier_kernel(const float* in, float* out, bool all) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x;
  if (all || threadIdx.x < 32) __syncthreads();
  out[i] = in[i];
}

// shared memory read where it was written (init) or never written
__global__ void uninitialised_kernel(const float* in, float* out, bool init) {
  __shared__ float tile[kBlock];
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x;
  if (init) tile[threadIdx.x] = in[i];
  out[i] = tile[threadIdx.x];
}

// out = in, one element a thread with no grid stride (flag false) or grid-strided (flag true)
__global__ void copy_kernel(const float* in, float* out, int64_t n, bool strided) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += strided ? static_cast<int64_t>(gridDim.x) * blockDim.x : n)
    out[i] = in[i];
}

}  // namespace

// `blocks` blocks of 256 threads over in/out (out: twice as long for two_sums); launch_threads and shared_bytes
// override the launch configuration of the `copy` kernel, to check the emulation refuses what a GPU refuses
void run(const std::string& kernel, const float* in, float* out, int64_t blocks, bool flag, int launch_threads,
         size_t shared_bytes) {
  const int g = static_cast<int>(blocks);
  if (kernel == "neighbour") neighbour_kernel<<<g, kBlock>>>(in, out, flag);
  else if (kernel == "two_sums") two_sums_kernel<<<g, kBlock>>>(in, out, flag);
  else if (kernel == "shuffle") shuffle_kernel<<<g, kBlock>>>(in, out, flag);
  else if (kernel == "barrier") barrier_kernel<<<g, kBlock>>>(in, out, flag);
  else if (kernel == "uninitialised") uninitialised_kernel<<<g, kBlock>>>(in, out, flag);
  else if (kernel == "copy")
    copy_kernel<<<g, launch_threads, shared_bytes>>>(in, out, blocks * kBlock, flag);
  else throw std::invalid_argument("selftest: no kernel " + kernel);
  mllm::check_launch(kernel.c_str());
}

}  // namespace mllm_selftest
