// The CPU kernels (csrc/sample.cpp, csrc/accumulate.cpp), exposed to Python by csrc/bindings.cpp.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace tsdi {

at::Tensor debias_sample_cpu(const at::Tensor& logits, const std::optional<at::Tensor>& bias,
                             const at::Tensor& positions, const at::Tensor& temperature, const at::Tensor& top_k,
                             const at::Tensor& top_p, const at::Tensor& seed, double strength,
                             const std::optional<at::Tensor>& min_p);

std::tuple<at::Tensor, at::Tensor> debias_probs_cpu(const at::Tensor& logits, const std::optional<at::Tensor>& bias,
                                                    const at::Tensor& positions, const at::Tensor& temperature,
                                                    const at::Tensor& top_k, const at::Tensor& top_p,
                                                    double strength, const std::optional<at::Tensor>& min_p);

// Uniforms u(seed, position, token) of broadcast int64 tensors, from the kernels' Philox.
at::Tensor philox_uniform_cpu(const at::Tensor& seed, const at::Tensor& positions, const at::Tensor& tokens);

at::Tensor logit_mean_update_cpu(at::Tensor mean, at::Tensor m2, at::Tensor count, const at::Tensor& aligned,
                                 const std::optional<at::Tensor>& reference, const std::optional<at::Tensor>& mask,
                                 bool normalize);

}  // namespace tsdi
