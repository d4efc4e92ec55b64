// Binding registration: every .cpp under csrc/ can add functions to the one extension module. A kernel family
// (say csrc/linear_attention/) ships a .cpp with
//     static void bind(pybind11::module_& m) { m.def("my_op_fwd", &my_op_fwd); }
//     MLLM_REGISTER_BINDINGS(bind);
// and is picked up by the build (ops/build.py and setup.py compile every csrc/**/*.cpp and, with CUDA, *.cu).
#pragma once

// ATen and pybind11 with torch's type casters: what a binding needs. torch/extension.h (the whole C++ frontend
// besides) takes ~15 s longer to parse, in every build of the extension.
#include <ATen/ATen.h>
#include <torch/csrc/utils/pybind.h>

#include <vector>

namespace mllm {

using Binder = void (*)(pybind11::module_&);

inline std::vector<Binder>& binders() {
  static std::vector<Binder> all;
  return all;
}

struct RegisterBindings {
  explicit RegisterBindings(Binder b) { binders().push_back(b); }
};

}  // namespace mllm

#define MLLM_CONCAT_(a, b) a##b
#define MLLM_CONCAT(a, b) MLLM_CONCAT_(a, b)
#define MLLM_REGISTER_BINDINGS(fn) static ::mllm::RegisterBindings MLLM_CONCAT(mllm_binder_, __LINE__)(fn)
