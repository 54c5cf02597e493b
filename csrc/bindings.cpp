// The Python module tsdi_kernels._C: the CPU kernels as plain functions. tsdi_kernels/kernels/*/op.py defines the
// public ops (schema, validation, fake kernel) and calls these directly from its CPU implementation, so a call
// goes through the dispatcher once; nothing here is registered in the `tsdi` operator library.
#include <torch/extension.h>

#include "kernels.h"

PYBIND11_MODULE(_C, m) {
  m.doc() = "tsdi_kernels CPU kernels (private: call torch.ops.tsdi.*, which validates the arguments)";
  // (int64 [B] tokens, first bad row or -1): a bad row gets its status code (kernels/status.py) in place of its
  // token; the row index saves the caller two tensor ops (min, nonzero) per call on the decode path.
  m.def("debias_sample", [](const at::Tensor& logits, const std::optional<at::Tensor>& bias, const at::Tensor& positions,
                            const at::Tensor& temperature, const at::Tensor& top_k, const at::Tensor& top_p,
                            const at::Tensor& seed, double strength, const std::optional<at::Tensor>& min_p) {
    at::Tensor tokens = tsdi::debias_sample_cpu(logits, bias, positions, temperature, top_k, top_p, seed, strength,
                                                min_p);
    const int64_t* t = tokens.data_ptr<int64_t>();
    int64_t bad = -1;
    for (int64_t b = 0; b < tokens.size(0) && bad < 0; ++b) bad = t[b] < 0 ? b : -1;
    return std::make_tuple(tokens, bad);
  }, py::arg("logits"), py::arg("bias"), py::arg("positions"), py::arg("temperature"), py::arg("top_k"),
     py::arg("top_p"), py::arg("seed"), py::arg("strength"), py::arg("min_p") = py::none());  // min_p None: off
  // (float32 [B, V] distribution debias_sample draws from, int64 [B] row status codes)
  m.def("debias_probs", &tsdi::debias_probs_cpu, py::arg("logits"), py::arg("bias"), py::arg("positions"),
        py::arg("temperature"), py::arg("top_k"), py::arg("top_p"), py::arg("strength"),
        py::arg("min_p") = py::none());
  // in-place Chan/Welford merge; int64 [2]: (b, t) of the first counted non-finite row or (-1, -1), state untouched
  m.def("logit_mean_update", &tsdi::logit_mean_update_cpu);
  // the kernels' Philox uniforms u(seed, position, token) of broadcast int64 tensors: for tests against Triton
  m.def("philox_uniform", &tsdi::philox_uniform_cpu);
}
