// Small helpers over at::vec::Vectorized<float>: widening loads of fp32 / bf16 / fp16 logits, lane masks.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>

#include <ATen/cpu/vec/vec.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#if defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

namespace tsdi {

using Vec = at::vec::Vectorized<float>;
constexpr int kW = Vec::size();
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kLowest = std::numeric_limits<float>::lowest();

// kW consecutive elements widened to float (bf16 -> fp32 is a 16-bit shift, fp16 uses F16C's vcvtph2ps).
template <typename T>
inline Vec load_vec(const T* p) {
  __at_align__ float buf[kW];
  for (int l = 0; l < kW; ++l) buf[l] = static_cast<float>(p[l]);
  return Vec::loadu(buf);
}
template <>
inline Vec load_vec<float>(const float* p) {
  return Vec::loadu(p);
}
#if defined(CPU_CAPABILITY_AVX2)
template <>
inline Vec load_vec<c10::BFloat16>(const c10::BFloat16* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return Vec(_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)));
}
template <>
inline Vec load_vec<c10::Half>(const c10::Half* p) {
  return Vec(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
#endif

// The first n < kW elements; the other lanes hold `fill`.
template <typename T>
inline Vec load_partial(const T* p, int64_t n, float fill) {
  __at_align__ float buf[kW];
  for (int l = 0; l < kW; ++l) buf[l] = l < n ? static_cast<float>(p[l]) : fill;
  return Vec::loadu(buf);
}

// exp as torch.softmax computes it on CPU (Vectorized::exp_u20, a degree-5 polynomial, <= 20 ulp; exp(-inf) = 0):
// using the same approximation keeps our probabilities within 1e-6 of torch's (exp() differs by up to ~3e-6).
inline Vec vexp(const Vec& x) { return x.exp_u20(); }
inline float sexp(float x) {
  __at_align__ float buf[kW];
  vexp(Vec(x)).store(buf);
  return buf[0];
}

// Bit l set iff lane l of the comparison mask m is set.
inline int movemask(const Vec& m) {
#if defined(CPU_CAPABILITY_AVX2)
  return _mm256_movemask_ps(m);
#else
  __at_align__ float buf[kW];
  m.store(buf);
  int bits = 0;
  for (int l = 0; l < kW; ++l) {
    uint32_t u;
    std::memcpy(&u, &buf[l], 4);
    bits |= (u >> 31) << l;
  }
  return bits;
#endif
}

// Calls f(T{}) with T the C++ type of a logits dtype (float32 / bfloat16 / float16): one instantiation each.
template <typename F>
void dispatch_logit_dtype(at::ScalarType dt, F&& f) {
  switch (dt) {
    case at::kFloat: f(float{}); break;
    case at::kBFloat16: f(c10::BFloat16{}); break;
    case at::kHalf: f(c10::Half{}); break;
    default: TORCH_CHECK(false, "tsdi: unsupported logits dtype ", dt);
  }
}

}  // namespace tsdi
