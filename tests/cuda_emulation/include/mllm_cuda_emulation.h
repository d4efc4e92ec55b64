// A CPU emulation of the CUDA execution model, just enough for csrc/cuda/*.cu. Every thread of a block is a fiber
// on the calling thread: its own stack, entered once with setcontext, then switched with _setjmp/_longjmp
// (swapcontext makes a signal-mask system call at every switch, which made the emulation several times slower).
// A fiber runs until its next synchronisation point: __syncthreads holds it until every thread of its block is
// there; __shfl_xor_sync exchanges values between the 32 lanes of a warp, all of which must be at it. Warps are
// resumed in rounds, lanes in a random order, and each block draws how its warps advance (run_block), so warps
// drift apart as on a GPU. Blocks run one after another, last block first.
// What this catches without a GPU: wrong indexing and reductions across threads, warps and blocks; a missing
// barrier (a warp reading what another has not written yet, or has already overwritten); barriers or shuffles that
// not every thread reaches; shared memory read before it is written (each block's static and dynamic arrays start
// as 0xff bytes, a NaN); launch configurations a GPU refuses (block and grid sizes, dynamic shared memory over the
// default 48 KiB); with MLLM_EMULATION_GRID_CAP, the second pass of grid-stride loops. What it cannot: timing,
// coalescing, bank conflicts, races between blocks of one launch (they never overlap here). Test-only:
// tests/cuda_emulation/emulated_ext.py builds the csrc extension against it (tests/unit/ops_helpers.py, backend
// 'emulated-cuda'; tests/unit/test_cuda_emulation.py).
#pragma once

#include <setjmp.h>
#include <ucontext.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
  unsigned x, y, z;
};

typedef void* cudaStream_t;
enum cudaError_t : int { cudaSuccess = 0, cudaErrorInvalidConfiguration = 9, cudaErrorLaunchFailure = 719 };

namespace mllm_emu {

enum class Wait { kRunnable, kBlock, kWarp, kDone, kError };

struct Fiber {
  ucontext_t context;  // its first entry
  jmp_buf resume;      // where it yielded
  bool started = false;
  uint3 index;
  unsigned linear = 0;
  Wait wait = Wait::kRunnable;
};

struct Launch {
  dim3 grid, block;
  uint3 block_index{0, 0, 0};
  std::vector<Fiber> fibers;
  Fiber* current = nullptr;
  jmp_buf scheduler;
  std::vector<long double> dynamic_shared;  // long double: 16-byte aligned, like CUDA's dynamic shared memory
  size_t dynamic_bytes = 0;
  std::map<int, std::vector<long double>> static_shared;  // the running block's __shared__ arrays, by declaration
  std::vector<uint64_t> slots;  // a shuffle's values, one per thread
  std::function<void()> body;   // the kernel applied to its arguments
  std::string error;
};

inline Launch* running = nullptr;
inline cudaError_t last_error = cudaSuccess;
inline std::string last_message;
inline std::mutex one_launch_at_a_time;

constexpr size_t kStackBytes = 128 * 1024;

inline std::vector<std::unique_ptr<unsigned char[]>>& stacks() {
  static std::vector<std::unique_ptr<unsigned char[]>> pool;  // kept between launches
  return pool;
}

inline std::mt19937& order_rng() {
  static std::mt19937 rng(20261204);
  return rng;
}

inline void yield(Wait w) {
  Fiber* f = running->current;
  f->wait = w;
  if (_setjmp(f->resume) == 0) _longjmp(running->scheduler, 1);
}

inline void fail(const std::string& why) {
  running->error = why;
  yield(Wait::kError);  // never resumed
}

inline void fiber_entry() {
  running->body();
  running->current->wait = Wait::kDone;
  _longjmp(running->scheduler, 1);  // never returns: its stack is abandoned
}

inline const ucontext_t& blank_context() {
  static ucontext_t blank = [] {
    ucontext_t c;
    getcontext(&c);  // once: makecontext needs an initialised context, copies of it do
    return c;
  }();
  return blank;
}

inline unsigned char* dynamic_shared() { return reinterpret_cast<unsigned char*>(running->dynamic_shared.data()); }

// `__shared__ T name[N];` becomes `auto& name = block_shared<T[N]>(site);`: one array per block and declaration,
// starting as 0xff bytes (a NaN) like the dynamic one, so a read before any write shows
template <class T> T& block_shared(int site) {
  std::vector<long double>& area = running->static_shared[site];
  if (area.empty()) {
    area.resize(sizeof(T) / sizeof(long double) + 1);
    std::memset(area.data(), 0xff, area.size() * sizeof(long double));
  }
  return *reinterpret_cast<T*>(area.data());
}

// runs one block to its end; false (with l.error) when a thread fails or the threads do not synchronise alike.
// Warps do not move in step, as on a GPU. A block is scheduled one of two ways, drawn per block: 'greedy' runs the
// first runnable warp of a random order until it blocks (at a barrier or the end), so it runs ahead of all the
// others and the last one lags behind them all; 'skewed' resumes every runnable warp each round at a speed of its
// own (every round, every other round on average, one round in 16). Either way a missing __syncthreads lets a warp
// read what another has not written yet, or has already overwritten: a wrong result.
inline bool run_block(Launch& l) {
  const unsigned n = static_cast<unsigned>(l.fibers.size()), warps = n / 32;
  for (unsigned i = 0; i < n; ++i) {
    Fiber& f = l.fibers[i];
    f.context = blank_context();
    f.context.uc_stack.ss_sp = stacks()[i].get();
    f.context.uc_stack.ss_size = kStackBytes;
    f.context.uc_link = nullptr;
    makecontext(&f.context, fiber_entry, 0);
    f.started = false;
    f.wait = Wait::kRunnable;
  }
  std::memset(l.dynamic_shared.data(), 0xff, l.dynamic_bytes);
  l.static_shared.clear();
  std::mt19937& rng = order_rng();
  std::vector<unsigned> priority(warps), speed(warps), order;
  std::vector<char> active(warps);
  std::iota(priority.begin(), priority.end(), 0u);
  std::shuffle(priority.begin(), priority.end(), rng);
  const bool greedy = rng() % 2 == 0;
  for (unsigned& s : speed) s = rng() % 3;
  const std::string where = "block (" + std::to_string(l.block_index.x) + "," + std::to_string(l.block_index.y) +
                            "," + std::to_string(l.block_index.z) + "): ";
  auto runnable = [&](unsigned w) { return l.fibers[w * 32].wait == Wait::kRunnable; };  // a warp's lanes alike
  for (;;) {
    std::fill(active.begin(), active.end(), 0);
    bool any = false;
    for (unsigned w : priority) {
      if (!runnable(w) || (greedy && any)) continue;
      const unsigned roll = rng() % 16;
      active[w] = greedy || speed[w] == 0 || (speed[w] == 1 && roll < 8) || roll == 0;
      any = any || active[w];
    }
    if (!any) {  // every runnable warp drew a skip: the first of them goes on
      for (unsigned w : priority)
        if (runnable(w)) {
          active[w] = 1;
          break;
        }
    }
    order.clear();
    for (unsigned w = 0; w < warps; ++w)
      for (unsigned i = w * 32; active[w] && i < w * 32 + 32; ++i) order.push_back(i);
    std::shuffle(order.begin(), order.end(), rng);
    for (unsigned i : order) {
      Fiber& f = l.fibers[i];
      l.current = &f;
      if (_setjmp(l.scheduler) == 0) {
        if (f.started) _longjmp(f.resume, 1);
        f.started = true;
        setcontext(&f.context);
      }
      if (f.wait == Wait::kError) {
        l.error = where + "thread " + std::to_string(i) + ": " + l.error;
        return false;
      }
    }
    // an active warp's lanes have all run to their next synchronisation point (or the end)
    unsigned at_barrier = 0, done = 0, waiting = 0;
    for (unsigned w = 0; w < warps; ++w) {
      if (!active[w]) continue;
      unsigned shuffling = 0;
      for (unsigned i = w * 32; i < w * 32 + 32; ++i) shuffling += l.fibers[i].wait == Wait::kWarp;
      if (shuffling != 0 && shuffling != 32) {
        l.error = where + "warp " + std::to_string(w) + ": " + std::to_string(shuffling) +
                  " of its 32 lanes are at a __shfl_xor_sync, the others are not (divergent shuffle)";
        return false;
      }
      for (unsigned i = w * 32; i < w * 32 + 32 && shuffling; ++i) l.fibers[i].wait = Wait::kRunnable;
    }
    for (const Fiber& f : l.fibers) {
      at_barrier += f.wait == Wait::kBlock;
      done += f.wait == Wait::kDone;
      waiting += f.wait == Wait::kRunnable;
    }
    if (done == n) return true;
    if (waiting != 0) continue;
    if (at_barrier == n) {
      for (Fiber& f : l.fibers) f.wait = Wait::kRunnable;
    } else {
      l.error = where + std::to_string(at_barrier) + " of " + std::to_string(n) +
                " threads wait at __syncthreads, the others have finished the kernel";
      return false;
    }
  }
}

struct Config {
  dim3 grid, block;
  size_t shared_bytes;
  Config(dim3 g, dim3 b, size_t s = 0, cudaStream_t = nullptr) : grid(g), block(b), shared_bytes(s) {}
};

inline void set_error(cudaError_t code, const std::string& message) {
  last_error = code;
  last_message = message;
}

inline std::string refused(const Config& c) {
  const uint64_t threads = uint64_t(c.block.x) * c.block.y * c.block.z;
  auto shape = [](dim3 d) {
    return "(" + std::to_string(d.x) + ", " + std::to_string(d.y) + ", " + std::to_string(d.z) + ")";
  };
  if (threads == 0 || threads > 1024 || c.block.x > 1024 || c.block.y > 1024 || c.block.z > 64)
    return "invalid configuration: block " + shape(c.block) + " (at most 1024 threads; x, y <= 1024, z <= 64)";
  if (c.grid.x == 0 || c.grid.y == 0 || c.grid.z == 0 || c.grid.x > 2147483647u || c.grid.y > 65535 ||
      c.grid.z > 65535)
    return "invalid configuration: grid " + shape(c.grid) + " (x < 2^31, y and z <= 65535, none 0)";
  if (c.shared_bytes > 48 * 1024)
    return "invalid configuration: " + std::to_string(c.shared_bytes) +
           " bytes of dynamic shared memory (over 48 KiB needs cudaFuncSetAttribute)";
  if (threads % 32 != 0) return "the emulation runs whole warps only: a block of " + std::to_string(threads);
  return "";
}

// MLLM_EMULATION_GRID_CAP=k runs at most k blocks along each grid dimension (after the launch was checked as
// asked): csrc's kernels are grid-strided, correct for any grid, and small test inputs otherwise never reach a
// second pass of their stride loops, which the GPU takes once rows outnumber the grid (65535 x 16 of them)
inline dim3 capped(dim3 g) {
  const char* env = std::getenv("MLLM_EMULATION_GRID_CAP");
  const unsigned k = env != nullptr ? static_cast<unsigned>(std::strtoul(env, nullptr, 10)) : 0;
  if (k == 0) return g;
  return dim3(g.x < k ? g.x : k, g.y < k ? g.y : k, g.z < k ? g.z : k);
}

// kernel<<<config>>>(args...) becomes launch(Config(config), kernel, args...) (emulated_ext.py rewrites the source)
template <class... P, class... Args>
void launch(const Config& c, void (*kernel)(P...), Args&&... args) {
  const std::string why = refused(c);
  if (!why.empty()) {
    set_error(cudaErrorInvalidConfiguration, why);
    return;
  }
  std::lock_guard<std::mutex> guard(one_launch_at_a_time);
  const dim3 grid = capped(c.grid);
  std::tuple<std::decay_t<P>...> params(std::forward<Args>(args)...);
  Launch l;
  l.grid = grid;
  l.block = c.block;
  l.body = [&]() { std::apply(kernel, params); };
  const unsigned n = c.block.x * c.block.y * c.block.z;
  l.fibers.resize(n);
  for (unsigned i = 0; i < n; ++i) {
    l.fibers[i].linear = i;
    l.fibers[i].index = {i % c.block.x, (i / c.block.x) % c.block.y, i / (c.block.x * c.block.y)};
  }
  while (stacks().size() < n) stacks().emplace_back(new unsigned char[kStackBytes]);
  l.dynamic_bytes = c.shared_bytes;
  l.dynamic_shared.resize(c.shared_bytes / sizeof(long double) + 1);
  l.slots.resize(n);
  running = &l;
  const uint64_t blocks = uint64_t(grid.x) * grid.y * grid.z;
  for (uint64_t b = blocks; b-- > 0;) {  // last block first: nothing may rely on the order blocks run in
    l.block_index = {static_cast<unsigned>(b % grid.x), static_cast<unsigned>((b / grid.x) % grid.y),
                     static_cast<unsigned>(b / (uint64_t(grid.x) * grid.y))};
    if (!run_block(l)) {
      set_error(cudaErrorLaunchFailure, l.error);
      break;
    }
  }
  running = nullptr;
}

}  // namespace mllm_emu

#define threadIdx (::mllm_emu::running->current->index)
#define blockIdx (::mllm_emu::running->block_index)
#define blockDim (::mllm_emu::running->block)
#define gridDim (::mllm_emu::running->grid)

inline void __syncthreads() { ::mllm_emu::yield(::mllm_emu::Wait::kBlock); }

template <class V> inline V __shfl_xor_sync(unsigned mask, V v, int lane_mask, int width = 32) {
  static_assert(sizeof(V) <= sizeof(uint64_t), "__shfl_xor_sync: at most 8-byte values");
  using namespace ::mllm_emu;
  if (mask != 0xffffffffu || width != 32) fail("__shfl_xor_sync: only full-warp shuffles (mask 0xffffffff, width 32)");
  const unsigned me = running->current->linear;
  std::memcpy(&running->slots[me], &v, sizeof(V));
  yield(Wait::kWarp);  // every lane has written
  const unsigned partner = (me & ~31u) | ((me ^ static_cast<unsigned>(lane_mask)) & 31u);
  V out;
  std::memcpy(&out, &running->slots[partner], sizeof(V));
  yield(Wait::kWarp);  // every lane has read, before any writes its next value
  return out;
}

inline cudaError_t cudaGetLastError() {
  cudaError_t e = ::mllm_emu::last_error;
  ::mllm_emu::last_error = cudaSuccess;
  return e;
}

inline const char* cudaGetErrorString(cudaError_t e) {
  return e == cudaSuccess ? "no error" : ::mllm_emu::last_message.c_str();
}

// half and bfloat16: bit patterns with round-to-nearest-even conversions, as cuda_fp16.h / cuda_bf16.h
struct __half {
  uint16_t bits;
};
struct __nv_bfloat16 {
  uint16_t bits;
};

inline float mllm_emu_bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint32_t mllm_emu_float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

inline float __bfloat162float(__nv_bfloat16 h) { return mllm_emu_bits_float(uint32_t(h.bits) << 16); }

inline __nv_bfloat16 __float2bfloat16_rn(float v) {
  uint32_t u = mllm_emu_float_bits(v);
  if ((u & 0x7fffffffu) > 0x7f800000u) return {static_cast<uint16_t>((u >> 16) | 0x40)};  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return {static_cast<uint16_t>(u >> 16)};
}

inline float __half2float(__half h) {
  const uint32_t sign = uint32_t(h.bits & 0x8000u) << 16, e = (h.bits >> 10) & 0x1fu, m = h.bits & 0x3ffu;
  if (e == 0) {  // zero or subnormal: m * 2^-24
    const float v = static_cast<float>(m) * 5.9604644775390625e-8f;
    return sign ? -v : v;
  }
  if (e == 31) return mllm_emu_bits_float(sign | 0x7f800000u | (m << 13));
  return mllm_emu_bits_float(sign | ((e + 112u) << 23) | (m << 13));
}

inline __half __float2half_rn(float v) {
  const uint32_t u = mllm_emu_float_bits(v);
  const uint32_t sign = (u >> 16) & 0x8000u, exp = (u >> 23) & 0xffu, mant = u & 0x7fffffu;
  if (exp == 0xff) return {static_cast<uint16_t>(sign | 0x7c00u | (mant ? 0x200u : 0u))};
  const int e = static_cast<int>(exp) - 127 + 15;
  if (e >= 31) return {static_cast<uint16_t>(sign | 0x7c00u)};
  if (e <= 0) {  // a half subnormal (or zero): units of 2^-24
    if (e < -10) return {static_cast<uint16_t>(sign)};
    const uint32_t full = mant | 0x800000u;
    const int shift = 14 - e;
    uint32_t m = full >> shift;
    const uint32_t rest = full & ((1u << shift) - 1u), half = 1u << (shift - 1);
    if (rest > half || (rest == half && (m & 1u))) ++m;
    return {static_cast<uint16_t>(sign | m)};
  }
  uint32_t h = sign | (uint32_t(e) << 10) | (mant >> 13);
  const uint32_t rest = mant & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // a carry moves into the exponent (up to inf)
  return {static_cast<uint16_t>(h)};
}
