// The Python module tsdi_kernels._C: the CPU kernels as plain functions. tsdi_kernels/kernels/*/op.py defines the
// public ops (schema, validation, fake kernel) and calls these directly from its CPU implementation, so a call
// goes through the dispatcher once; nothing here is registered in the `tsdi` operator library.
#include <torch/extension.h>

#include "kernels.h"

PYBIND11_MODULE(_C, m) {
  m.doc() = "tsdi_kernels CPU kernels (private: call torch.ops.tsdi.*, which validates the arguments)";
  // int64 [B]: tokens; a bad row gets its status code (kernels/status.py)
  m.def("debias_sample", &tsdi::debias_sample_cpu);
  // (float32 [B, V] distribution debias_sample draws from, int64 [B] row status codes)
  m.def("debias_probs", &tsdi::debias_probs_cpu);
  // in-place Chan/Welford merge; int64 [2]: (b, t) of the first counted non-finite row or (-1, -1), state untouched
  m.def("logit_mean_update", &tsdi::logit_mean_update_cpu);
  // the kernels' Philox uniforms u(seed, position, token) of broadcast int64 tensors: for tests against Triton
  m.def("philox_uniform", &tsdi::philox_uniform_cpu);
}
