// Registers the CPU kernels as private ops tsdi::_cpu_* (ops.py validates the public ops and routes here) and
// defines the Python module tsdi_kernels._C, which has no Python members: importing it runs these static
// registrations (the py_limited_api pattern of pytorch/extension-cpp, no pybind11).
#include <Python.h>
#include <torch/library.h>

#include "kernels.h"

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr, nullptr, nullptr, nullptr, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY_FRAGMENT(tsdi, m) {
  // fused debias + temperature + top-k + top-p + Gumbel-max per row; a bad row gets -1 (NaN) or -2 (no finite / +inf)
  m.def("_cpu_debias_sample(Tensor logits, Tensor? bias, Tensor positions, Tensor temperature, Tensor top_k, "
        "Tensor top_p, Tensor seed, float strength) -> Tensor");
  // (float32 [B, V] distribution debias_sample draws from, int64 [B] row status 0 / -1 / -2)
  m.def("_cpu_debias_probs(Tensor logits, Tensor? bias, Tensor positions, Tensor temperature, Tensor top_k, "
        "Tensor top_p, float strength) -> (Tensor, Tensor)");
  // in-place Chan/Welford merge; returns (b, t) of the first counted non-finite row or (-1, -1), state untouched then
  m.def("_cpu_logit_mean_update(Tensor(a!) mean, Tensor(b!) m2, Tensor(c!) count, Tensor aligned, "
        "Tensor? reference, Tensor? mask, bool normalize) -> Tensor");
  // test hook: Philox uniforms u(seed, position, token) of broadcast int64 tensors (Triton's tl.rand numbers)
  m.def("_cpu_philox_uniform(Tensor seed, Tensor positions, Tensor tokens) -> Tensor");
}

TORCH_LIBRARY_IMPL(tsdi, CPU, m) {
  m.impl("_cpu_debias_sample", &tsdi::debias_sample_cpu);
  m.impl("_cpu_debias_probs", &tsdi::debias_probs_cpu);
  m.impl("_cpu_logit_mean_update", &tsdi::logit_mean_update_cpu);
  m.impl("_cpu_philox_uniform", &tsdi::philox_uniform_cpu);
}
