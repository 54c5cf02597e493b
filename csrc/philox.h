// Philox4x32-10 noise that reproduces Triton's tl.randint / tl.rand bit for bit, so the CPU and GPU kernels draw
// the same token for the same seed. The counter of token v at answer position t of a row with seed s is Triton's
// 64-bit offset v + (t << 32): (c0, c1, c2, c3) = (v, t_lo32, 0, 0), key (k0, k1) = (s_lo32, s_hi32); the first
// output word is turned into a float in [0, 1) by Triton's uint_to_uniform_float. See reference.philox_uniform.
#pragma once

#include <cstdint>

#include <ATen/cpu/vec/vec.h>

#if defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

namespace tsdi {

using Vec = at::vec::Vectorized<float>;

constexpr uint32_t kPhiloxKeyA = 0x9E3779B9u, kPhiloxKeyB = 0xBB67AE85u;
constexpr uint32_t kPhiloxRoundA = 0xD2511F53u, kPhiloxRoundB = 0xCD9E8D57u;
constexpr int kPhiloxRounds = 10;
// Triton's scale for 31-bit magnitudes: the largest float with (2^31 - 1) * scale < 1.
constexpr float kUniformScale = 4.6566127342e-10f;
// Upper bound of the Gumbel noise g = -log(-log(u)): the largest uniform is float((2^31 - 1)) * scale =
// 0.99999994 (1 - 2^-24), so g <= -log(5.96e-8) = 16.64. Tokens with z + kGumbelMax <= best so far cannot win
// and need no noise.
constexpr float kGumbelMax = 17.0f;

// Scalar Philox: first output word for counter (c0, c1, 0, 0) and key (seed_lo, seed_hi).
inline uint32_t philox_uint32(uint64_t seed, uint32_t c0, uint32_t c1) {
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  uint32_t c2 = 0, c3 = 0;
  for (int r = 0; r < kPhiloxRounds; ++r) {
    const uint64_t pb = static_cast<uint64_t>(kPhiloxRoundB) * c2;
    const uint64_t pa = static_cast<uint64_t>(kPhiloxRoundA) * c0;
    const uint32_t n0 = static_cast<uint32_t>(pb >> 32) ^ c1 ^ k0;
    const uint32_t n2 = static_cast<uint32_t>(pa >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(pb);
    c3 = static_cast<uint32_t>(pa);
    c0 = n0;
    c2 = n2;
    k0 += kPhiloxKeyA;
    k1 += kPhiloxKeyB;
  }
  return c0;
}

// Triton's uint_to_uniform_float: reinterpret as int32, fold negatives (-x - 1 == ~x), convert, scale.
inline float uint_to_uniform(uint32_t x) {
  int32_t i = static_cast<int32_t>(x);
  i = i < 0 ? ~i : i;
  return static_cast<float>(i) * kUniformScale;
}

// Noise stream of one row: Vec::size() uniforms / Gumbel draws at a time for arbitrary token ids.
// Under AVX2 the 32x32 -> 64-bit products run on 8 lanes with two vpmuludq (even and odd lanes); the round
// keys are precomputed once per row.
class PhiloxRow {
 public:
  static constexpr int kW = Vec::size();

  PhiloxRow(int64_t seed, int64_t position)
      : seed_(static_cast<uint64_t>(seed)), c1_(static_cast<uint32_t>(position)) {
#if defined(CPU_CAPABILITY_AVX2)
    uint32_t k0 = static_cast<uint32_t>(seed_), k1 = static_cast<uint32_t>(seed_ >> 32);
    for (int r = 0; r < kPhiloxRounds; ++r) {
      k0v_[r] = _mm256_set1_epi32(static_cast<int>(k0));
      k1v_[r] = _mm256_set1_epi32(static_cast<int>(k1));
      k0 += kPhiloxKeyA;
      k1 += kPhiloxKeyB;
    }
#endif
  }

  // Uniforms of tokens[0 .. kW).
  Vec uniform(const int32_t* tokens) const {
#if defined(CPU_CAPABILITY_AVX2)
    static_assert(kW == 8, "AVX2 path expects 8 float lanes");
    const __m256i ra = _mm256_set1_epi32(static_cast<int>(kPhiloxRoundA));
    const __m256i rb = _mm256_set1_epi32(static_cast<int>(kPhiloxRoundB));
    __m256i c0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tokens));
    __m256i c1 = _mm256_set1_epi32(static_cast<int>(c1_));
    __m256i c2 = _mm256_setzero_si256(), c3 = _mm256_setzero_si256();
    for (int r = 0; r < kPhiloxRounds; ++r) {
      __m256i hb, lb, ha, la;
      mulhilo(rb, c2, hb, lb);
      mulhilo(ra, c0, ha, la);
      c0 = _mm256_xor_si256(_mm256_xor_si256(hb, c1), k0v_[r]);
      c2 = _mm256_xor_si256(_mm256_xor_si256(ha, c3), k1v_[r]);
      c1 = lb;
      c3 = la;
    }
    // x ^ (x >> 31) == (x < 0 ? ~x : x); int32 -> float rounds to nearest like Triton's conversion.
    const __m256i folded = _mm256_xor_si256(c0, _mm256_srai_epi32(c0, 31));
    return Vec(_mm256_mul_ps(_mm256_cvtepi32_ps(folded), _mm256_set1_ps(kUniformScale)));
#else
    __at_align__ float u[kW];
    for (int l = 0; l < kW; ++l) {
      u[l] = uint_to_uniform(philox_uint32(seed_, static_cast<uint32_t>(tokens[l]), c1_));
    }
    return Vec::loadu(u);
#endif
  }

  // Gumbel(0, 1) noise g = -log(-log(u)), with the same vectorised (Sleef u10) log that torch.log uses.
  Vec gumbel(const int32_t* tokens) const { return uniform(tokens).log().neg().log().neg(); }

  // Noise of the kW consecutive tokens v0 .. v0 + kW - 1.
  Vec gumbel_from(int64_t v0) const {
    __at_align__ int32_t t[kW];
    for (int l = 0; l < kW; ++l) t[l] = static_cast<int32_t>(v0 + l);
    return gumbel(t);
  }

 private:
#if defined(CPU_CAPABILITY_AVX2)
  // 32x32 -> 64-bit products of a (broadcast) and the 8 lanes of x, split into high and low words.
  static inline void mulhilo(__m256i a, __m256i x, __m256i& hi, __m256i& lo) {
    const __m256i even = _mm256_mul_epu32(a, x);                        // lanes 0, 2, 4, 6
    const __m256i odd = _mm256_mul_epu32(a, _mm256_srli_epi64(x, 32));  // lanes 1, 3, 5, 7
    lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
    hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  }
  __m256i k0v_[kPhiloxRounds], k1v_[kPhiloxRounds];
#endif
  uint64_t seed_;
  uint32_t c1_;
};

}  // namespace tsdi
