// Binds tests/cuda_emulation/selftest.cu into the emulated extension (through csrc's binding registry).
#include <string>

#include "mllm/registry.h"

namespace mllm_selftest {

void run(const std::string& kernel, const float* in, float* out, int64_t blocks, bool flag, int launch_threads,
         size_t shared_bytes);

namespace {

at::Tensor selftest(const std::string& kernel, const at::Tensor& in_, bool flag, int64_t launch_threads,
                    int64_t shared_bytes) {
  at::Tensor in = in_.to(at::kFloat).contiguous();
  TORCH_CHECK(in.dim() == 1 && in.numel() % 256 == 0, "selftest: a 1-D float input of whole 256-thread blocks");
  at::Tensor out = at::full({in.numel() * (kernel == "two_sums" ? 2 : 1)}, 12345.0f, in.options());
  run(kernel, in.data_ptr<float>(), out.data_ptr<float>(), in.numel() / 256, flag, static_cast<int>(launch_threads),
      static_cast<size_t>(shared_bytes));
  return out;
}

void bind(pybind11::module_& m) {
  m.def("selftest", &selftest, "run a kernel of tests/cuda_emulation/selftest.cu on the CPU emulation",
        pybind11::arg("kernel"), pybind11::arg("input"), pybind11::arg("flag"), pybind11::arg("launch_threads") = 256,
        pybind11::arg("shared_bytes") = 0);
}

MLLM_REGISTER_BINDINGS(bind);

}  // namespace
}  // namespace mllm_selftest
