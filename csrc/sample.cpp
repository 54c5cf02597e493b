// debias_sample / debias_probs on CPU: one fused streaming pass over each row's logits (debias, temperature,
// status flags, candidate buffer / online softmax / inline Gumbel-max), then an exact Hugging Face keep rule on
// the few candidates. Semantics: tsdi_kernels/kernels/sampling/reference.py (the oracle of the tests).
//
// Work is split into (row, vocabulary chunk) items of a FIXED size kChunk, run with at::parallel_for and merged
// per row in chunk order, so a row's result does not depend on the thread count, the batch size or the other rows.
//
// Bytes moved per row (B = 8, V = 128256, fp32): logits 513 KB + one bias row 513 KB (read once, nothing written
// for debias_sample; a [V] float32 row written for debias_probs). The HF pipeline reads/writes ~10 [B, V] tensors
// and sorts every row; here only top-k / nucleus candidates (typically < 4096) are ever sorted.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/broadcast_tensors.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <vector>

#include "philox.h"
#include "kernels.h"
#include "vec_util.h"

namespace tsdi {
namespace {

// Vocabulary slice of one work item: 16384 fp32 logits + bias = 128 KB, which stays in L2 for the merge.
constexpr int64_t kChunk = 16384;
// Candidate buffer capacity of top-k rows is max(2k, kCapTopK); after a compaction the buffer keeps its cap / 2
// largest values, so the k largest of the chunk are always inside. Small on purpose: a chunk of n random logits
// inserts about (cap / 2) * (1 + ln(n / cap)) candidates, each compaction is an O(cap) nth_element.
constexpr int64_t kCapTopK = 128;
// Capacity of top-p-only rows, small as for top-k: each chunk keeps its 64 best, so a row's merged candidates are
// about its 64 * chunks best, which carry top_p of the mass on peaked rows (a nucleus of a few hundred tokens). If
// they do not (a flat distribution), the row takes a bounded second pass: every token above the mass cutoff below
// (provably enough), selected by mass (select_by_mass: only the nucleus is sorted); and if even that fails on
// rounding, the exact path sorts every finite token. Measured (B8 V128256 fp32, T 0.7, p 0.9, 2 threads, idle
// machine, benchmarks/bench_cpu_ops.py): cap 1024 -> 1.9 ms, 128 -> 0.70 ms; flat rows (T 1) unchanged (~16 ms).
constexpr int64_t kCapTopP = 128;
// The candidates' mass must exceed top_p by this much before tokens outside them are known to be dropped; it
// covers the rounding differences between our sums and torch.softmax / torch.cumsum.
constexpr double kMassMargin = 1e-5;

// Top-p-only rows also drop tokens with z < (running max) - D, D = log(V / (1 - p - 2 * margin)): all such tokens
// together carry at most V * exp(-D) * exp(max) <= (1 - p - 2 margin) of the mass, so the nucleus never reaches
// them. Infinite (no such cutoff) when p is within 2 margins of 1.
inline float mass_cutoff_gap(float p, int64_t vocab) {
  const double rest = 1.0 - static_cast<double>(p) - 2 * kMassMargin;
  return rest > 0 ? static_cast<float>(std::log(static_cast<double>(vocab) / rest)) : kInf;
}

// Row status codes come from tsdi_kernels/kernels/status.py (setup.py passes them as -DTSDI_ERR_*).
#if !defined(TSDI_ERR_NAN) || !defined(TSDI_ERR_NO_FINITE) || !defined(TSDI_ERR_TOP_P)
#error "build with setup.py: it defines TSDI_ERR_* from tsdi_kernels/kernels/status.py"
#endif
// Top-p keeps a token iff the mass above it is < p * kTopPScale (tsdi_kernels/kernels/semantics.py: a mass equal
// to p drops the token whatever the rounding of exp and of the sums; 1 - 2**-18, exact in float).
constexpr float kTopPScale = TSDI_TOP_P_SCALE;
// Min-p keeps z - z_max >= float(log(min_p) * kMinPLogScale), the log and the product in double, rounded once
// (semantics.py: the same threshold bit for bit on every backend; 1 + 2**-18 keeps exact boundaries).
constexpr double kMinPLogScale = TSDI_MIN_P_LOG_SCALE;
constexpr int64_t ERR_NAN = TSDI_ERR_NAN;
constexpr int64_t ERR_NO_FINITE = TSDI_ERR_NO_FINITE;
constexpr int64_t ERR_POSITION = TSDI_ERR_POSITION;
constexpr int64_t ERR_TEMPERATURE = TSDI_ERR_TEMPERATURE;
constexpr int64_t ERR_TOP_K = TSDI_ERR_TOP_K;
constexpr int64_t ERR_TOP_P = TSDI_ERR_TOP_P;
constexpr int64_t ERR_MIN_P = TSDI_ERR_MIN_P;

enum class Mode { kGreedy, kFull, kFilter };

struct Cand {
  float z;
  int32_t idx;
};
// Hugging Face's rank order: z descending, equal z by index descending (ascending stable sort, then flipped).
struct HfBefore {
  bool operator()(const Cand& a, const Cand& b) const { return a.z > b.z || (a.z == b.z && a.idx > b.idx); }
};
constexpr HfBefore hf_before{};

struct RowPlan {
  Mode mode;
  const void* x;      // row of logits (dtype of the op)
  const float* bias;  // bias row or nullptr
  float strength, temp, top_p;
  int64_t top_k;  // 0 = off (also when k >= V, where top-k keeps everything)
  int64_t cap;    // candidate buffer capacity (kFilter)
  bool want_sum;  // online max / sum of exp over the whole row
  bool want_noise;  // inline Gumbel-max over the whole row (kFull rows of debias_sample)
  float gap;        // mass cutoff gap D of top-p-only rows (kInf: none)
  float min_thr;    // min-p: keep z - z_max >= min_thr (-inf: min-p off)
  float cut_gap;    // rows without top-k: tokens below (running max) - cut_gap are never kept (top-p or min-p)
  int64_t seed, position;
};

struct ChunkOut {
  bool nan = false, posinf = false, finite = false;
  float dmax = -kInf;  // max debiased (unscaled) logit of the chunk
  float best = -kInf;  // greedy: max debiased logit; kFull: max of z + g
  int64_t best_idx = -1;
  float m = kLowest, s = 0.f;  // sum over the chunk of exp(z - m)
  float cutoff = kLowest;      // candidates are exactly the chunk's tokens with z >= cutoff
  std::vector<Cand> cand;
};

struct RowResult {
  int64_t status = 0;
  bool overflow = false;  // T too small for this row's logits: decided as greedy
  int64_t token = 0;
  float m = kLowest, s = 0.f;  // kFull rows of debias_probs: softmax over all tokens
  std::vector<Cand> kept;      // kFilter rows: kept tokens, z replaced by their probability (debias_probs)
};

// Keeps the cap / 2 largest values (and their ties); returns the new cutoff, which only rises.
float compact(std::vector<Cand>& cand, int64_t cap) {
  const auto kth = cand.begin() + (cap / 2 - 1);
  std::nth_element(cand.begin(), kth, cand.end(), [](const Cand& a, const Cand& b) { return a.z > b.z; });
  const float cutoff = kth->z;
  cand.erase(std::remove_if(cand.begin(), cand.end(), [cutoff](const Cand& c) { return c.z < cutoff; }), cand.end());
  return cutoff;
}

// A value c_d with d < c_d  =>  fl(d / T) < cutoff (T > 0), as large as cheaply found: division is monotone, so
// it suffices that fl(c_d / T) < cutoff. -inf (no prefilter) when none is found in a few steps.
inline float unscaled_cutoff(float cutoff, float temp) {
  if (!(temp > 0.f) || cutoff == kLowest) return -kInf;
  float c = static_cast<float>(static_cast<double>(cutoff) * temp);
  for (int i = 0; i < 8 && std::isfinite(c); ++i) {
    if (c / temp < cutoff) return c;
    c = std::nextafter(c, -kInf);
  }
  return -kInf;
}

template <typename T>
void scan_chunk(const RowPlan& rp, int64_t v0, int64_t v1, ChunkOut& out) {
  const T* x = static_cast<const T*>(rp.x);
  const float* bias = rp.bias;
  const Vec vs(rp.strength), vt(rp.temp), vgmax(kGumbelMax);
  const bool greedy = rp.mode == Mode::kGreedy, filter = rp.mode == Mode::kFilter;
  Vec nan_acc(0.f), dmax(-kInf);
  const bool mass_cut = filter && rp.cut_gap < kInf;
  const Vec vgap(rp.cut_gap);
  Vec m(kLowest), s(0.f);
  float best = out.best;
  int64_t best_idx = out.best_idx;
  Vec best_v(best);
  int64_t cap = rp.cap;
  float cutoff = out.cutoff;
  Vec cut_v(cutoff);
  const bool prefilter = filter && !rp.want_sum;
  Vec cutd_v(unscaled_cutoff(cutoff, rp.temp));
  std::optional<PhiloxRow> philox;
  if (rp.want_noise) philox.emplace(rp.seed, rp.position);
  if (filter) out.cand.reserve(std::min(cap, v1 - v0 + 1));
  __at_align__ float zb[kW];

  auto block = [&](const Vec& d, int64_t v) __attribute__((always_inline)) {
    // status flags on the debiased, unscaled logits (reference._row_status): NaN anywhere, and the maximum
    // (+inf -> bad, -inf -> no finite value, otherwise some value is finite)
    nan_acc = nan_acc | (d != d);
    dmax = at::vec::maximum(dmax, d);
    if (greedy) {  // argmax of the debiased logits, first index among equals
      if (movemask(d > best_v)) {
        d.store(zb);
        for (int l = 0; l < kW; ++l) {
          if (zb[l] > best) best = zb[l], best_idx = v + l;
        }
        best_v = Vec(best);
      }
      return;
    }
    // top-k rows: reject on the unscaled value first, which saves the division for almost every token
    if (prefilter && !movemask(d >= cutd_v)) return;
    const Vec z = d / vt;  // division, as HF's TemperatureLogitsWarper (z * (1/T) would round differently)
    if (rp.want_sum) {  // online softmax statistics per lane; rescale only when a lane's max rises
      if (movemask(z > m)) {
        const Vec mn = at::vec::maximum(m, z);
        s = s * vexp(m - mn);
        m = mn;
      }
      s = s + vexp(z - m);
    }
    if (rp.want_noise && movemask((z + vgmax) > best_v)) {  // only tokens that can still win need noise
      // z + g > best needs u > 1 - exp(z - best), because g = -log(-log u) <= -log(1 - u) (-log u >= 1 - u).
      // The two logs are only taken when some lane passes; the 1% slack on exp(z - best) covers exp_u20's
      // error and the rounding of z + g.
      __at_align__ int32_t tok[kW];
      for (int l = 0; l < kW; ++l) tok[l] = static_cast<int32_t>(v + l);
      const Vec u = philox->uniform(tok);
      const Vec thr = Vec(1.f - 1.0f / (1 << 20)) - vexp(z - best_v) * Vec(1.01f);
      if (!movemask(u > thr)) return;
      const Vec val = z + u.log().neg().log().neg();
      if (movemask(val > best_v)) {
        val.store(zb);
        for (int l = 0; l < kW; ++l) {
          if (zb[l] > best) best = zb[l], best_idx = v + l;
        }
        best_v = Vec(best);
      }
    }
    if (filter) {
      // excludes NaN, and -inf (cutoff >= lowest finite float)
      const int bits = movemask(z >= (mass_cut ? at::vec::maximum(cut_v, m - vgap) : cut_v));
      if (bits) {
        z.store(zb);
        for (int l = 0; l < kW; ++l) {
          if (((bits >> l) & 1) && zb[l] >= cutoff) {
            out.cand.push_back({zb[l], static_cast<int32_t>(v + l)});
            if (static_cast<int64_t>(out.cand.size()) >= cap) {
              cutoff = compact(out.cand, cap);
              cut_v = Vec(cutoff);
              cutd_v = Vec(unscaled_cutoff(cutoff, rp.temp));
              // many ties with the cutoff: grow instead of compacting again at once
              if (static_cast<int64_t>(out.cand.size()) > cap * 3 / 4) cap *= 2;
            }
          }
        }
      }
    }
  };

  int64_t v = v0;
  for (; v + kW <= v1; v += kW) {
    const Vec xv = load_vec(x + v);
    block(bias ? xv - vs * Vec::loadu(bias + v) : xv, v);
  }
  if (v < v1) {  // tail: padding lanes are -inf, which changes no flag, sum, maximum or candidate set
    const int64_t n = v1 - v;
    const Vec xv = load_partial(x + v, n, -kInf);
    block(bias ? xv - vs * load_partial(bias + v, n, 0.f) : xv, v);
  }

  __at_align__ float dm[kW];
  dmax.store(dm);
  float dmx = -kInf;
  for (int l = 0; l < kW; ++l) dmx = std::max(dmx, dm[l]);
  out.nan = movemask(nan_acc) != 0;
  out.posinf = dmx == kInf;
  out.finite = dmx > -kInf && dmx < kInf;
  out.dmax = dmx;
  out.best = best;
  out.best_idx = best_idx;
  out.cutoff = cutoff;
  if (rp.want_sum) {  // lanes merged in a fixed order
    __at_align__ float ml[kW], sl[kW];
    m.store(ml);
    s.store(sl);
    float mm = kLowest;
    for (int l = 0; l < kW; ++l) mm = std::max(mm, ml[l]);
    float ss = 0.f;
    for (int l = 0; l < kW; ++l) ss += sl[l] * sexp(ml[l] - mm);
    out.m = mm;
    out.s = ss;
  }
}

// Exact keep rule on candidates sorted in HF order. `complete`: they are all finite tokens of the row; else
// `floor`: every token with z >= floor is among them. s_all: softmax denominator over the whole row (rows without
// top-k). Returns false when tokens outside the candidates might be kept (top-p rows whose candidates carry less
// than top_p of the mass; min-p-only rows whose floor lies above the min-p threshold).
bool keep_rule(const std::vector<Cand>& c, bool complete, int64_t k, float p, float min_thr, float floor,
               float s_all, std::vector<Cand>& kept, float& s_kept) {
  kept.clear();
  s_kept = 0.f;
  const int64_t n = static_cast<int64_t>(c.size());
  if (n == 0) return true;
  const float top = c[0].z;
  int64_t end = n;
  if (k > 0) {
    if (k <= n) {  // TopKLogitsWarper: keep z >= the k-th largest, ties included
      const float kth = c[k - 1].z;
      end = k;
      while (end < n && c[end].z >= kth) ++end;
    } else if (!complete) {
      return false;  // cannot happen (capacity >= 2k); be safe
    }
  }
  std::vector<char> keep(end, 1);
  // min-p drops every token below the floor (rounding is monotone: such a token has z - top <= (the float below
  // floor) - top): then nothing outside the candidates is kept, whatever top-p would say
  const bool min_p_covers = min_thr > -kInf && !complete && std::nextafter(floor, -kInf) - top < min_thr;
  // TopPLogitsWarper: keep iff the mass ranked strictly above is < p * kTopPScale; the top token always.
  if (p < 1.f) {
    float s = s_all;
    if (k > 0) {
      double acc = 0.0;
      for (int64_t i = 0; i < end; ++i) acc += sexp(c[i].z - top);
      s = static_cast<float>(acc);
    }
    double cum = 0.0;  // torch.cumsum accumulates float32 in double on CPU
    const float inv_s = 1.f / s;  // torch.softmax multiplies by the reciprocal of the sum
    const float p_cut = p * kTopPScale;
    for (int64_t i = 0; i < end; ++i) {
      const float pr = sexp(c[i].z - top) * inv_s;
      cum += pr;
      const float above = static_cast<float>(cum) - pr;
      keep[i] = i == 0 || above < p_cut;
    }
    if (k == 0 && !complete && !min_p_covers && cum < static_cast<double>(p) + kMassMargin) return false;
  } else if (k == 0 && !complete && min_thr > -kInf && !min_p_covers) {
    return false;
  }
  // MinPLogitsWarper after top-p: the top token (z - top = 0 >= min_thr) is always kept
  if (min_thr > -kInf) {
    for (int64_t i = 0; i < end; ++i) keep[i] = keep[i] && c[i].z - top >= min_thr;
  }
  double acc = 0.0;
  for (int64_t i = 0; i < end; ++i) {
    if (keep[i]) {
      kept.push_back(c[i]);
      acc += sexp(c[i].z - top);
    }
  }
  s_kept = static_cast<float>(acc);
  return true;
}

// Top-p rows without top-k: instead of sorting every candidate (tens of thousands on a flat row), moves to the
// front the smallest set of largest values whose mass exp(z - m) / s reaches p + 2 margins, found by selections of
// growing size j = 256, 1024, ... (each O(n)); ties with the j-th value join the set, so it is every token with
// z >= some threshold. Sorts that prefix in HF order and returns its length (n when no prefix is heavy enough:
// the caller's keep rule then reports it). Tokens outside carry mass ranked above them >= p: never kept.
int64_t select_by_mass(std::vector<Cand>& c, float m, float s, float p) {
  const int64_t n = static_cast<int64_t>(c.size());
  const double target = (static_cast<double>(p) + 2 * kMassMargin) * s;
  int64_t end = n;
  for (int64_t j = 256; j < n; j *= 4) {
    std::nth_element(c.begin(), c.begin() + (j - 1), c.end(), [](const Cand& a, const Cand& b) { return a.z > b.z; });
    const float kth = c[j - 1].z;
    const int64_t stop = std::partition(c.begin() + j, c.end(), [kth](const Cand& e) { return e.z >= kth; }) - c.begin();
    double mass = 0.0;
    for (int64_t i = 0; i < stop; ++i) mass += sexp(c[i].z - m);
    if (mass >= target) {
      end = stop;
      break;
    }
  }
  std::sort(c.begin(), c.begin() + end, hf_before);
  return end;
}

// Gumbel-max over the kept tokens: argmax z + g, ties to the lowest index; all -inf -> 0 like torch.argmax.
int64_t gumbel_max(const std::vector<Cand>& kept, const RowPlan& rp) {
  const PhiloxRow philox(rp.seed, rp.position);
  float best = -kInf;
  int64_t best_idx = 0;
  __at_align__ int32_t tok[kW];
  __at_align__ float g[kW];
  const int64_t n = static_cast<int64_t>(kept.size());
  for (int64_t i = 0; i < n; i += kW) {
    const int64_t cnt = std::min<int64_t>(kW, n - i);
    for (int l = 0; l < kW; ++l) tok[l] = kept[i + std::min<int64_t>(l, cnt - 1)].idx;
    philox.gumbel(tok).store(g);
    for (int64_t l = 0; l < cnt; ++l) {
      const float val = kept[i + l].z + g[l];
      if (val > best || (val == best && val > -kInf && tok[l] < best_idx)) best = val, best_idx = tok[l];
    }
  }
  return best_idx;
}

// First index of the largest debiased logit of a row (greedy decision of an overflowing temperature; rare).
template <typename T>
int64_t argmax_row(const RowPlan& rp, int64_t vocab) {
  const T* x = static_cast<const T*>(rp.x);
  float best = -kInf;
  int64_t idx = 0;
  for (int64_t v = 0; v < vocab; ++v) {
    const float d = rp.bias ? static_cast<float>(x[v]) - rp.strength * rp.bias[v] : static_cast<float>(x[v]);
    if (d > best) best = d, idx = v;
  }
  return idx;
}

// The exact path: every finite token of the row (all zeros for a bad row, as the reference does), sorted.
template <typename T>
std::vector<Cand> all_tokens(const RowPlan& rp, int64_t vocab, bool zero_row, float zmin, bool sorted = true) {
  std::vector<Cand> c;
  const T* x = static_cast<const T*>(rp.x);
  if (zero_row) {
    c.reserve(vocab);
    for (int64_t v = 0; v < vocab; ++v) c.push_back({0.f, static_cast<int32_t>(v)});
  } else {
    // vectorised: z = (x - strength * bias) / T as the scan computes it; only lanes >= zmin are pushed (a flat
    // row's second pass keeps a fraction of the vocabulary, so the scalar work is that fraction only)
    const Vec vs(rp.strength), vt(rp.temp), vmin(std::max(zmin, kLowest));
    __at_align__ float zb[kW];
    for (int64_t v = 0; v < vocab; v += kW) {
      const int64_t n = std::min<int64_t>(kW, vocab - v);
      Vec xv = n == kW ? load_vec(x + v) : load_partial(x + v, n, -kInf);
      if (rp.bias) xv = xv - vs * (n == kW ? Vec::loadu(rp.bias + v) : load_partial(rp.bias + v, n, 0.f));
      const Vec z = xv / vt;
      const int bits = movemask(z >= vmin);  // excludes NaN and -inf (vmin >= lowest finite float)
      if (!bits) continue;
      z.store(zb);
      for (int l = 0; l < kW; ++l) {
        if ((bits >> l) & 1) c.push_back({zb[l], static_cast<int32_t>(v + l)});
      }
    }
  }
  if (sorted) std::sort(c.begin(), c.end(), hf_before);
  return c;
}

struct Problem {
  at::Tensor logits;
  std::optional<at::Tensor> bias;
  at::Tensor positions, temperature, top_k, top_p, seed;
  double strength;
  std::optional<at::Tensor> min_p;  // None: 0 (off) on every row
};

// Memory-safety preconditions only: the user-facing validation (messages naming the argument) is done once, in
// tsdi_kernels/kernels/sampling/op.py, before these kernels are called.
void check_inputs(const Problem& pb, bool with_seed) {
  const auto& lg = pb.logits;
  const int64_t batch = lg.dim() == 2 ? lg.size(0) : -1, vocab = lg.dim() == 2 ? lg.size(1) : -1;
  auto row_ok = [&](const at::Tensor& t, at::ScalarType dt) {
    return t.device().is_cpu() && t.dim() == 1 && t.size(0) == batch && t.scalar_type() == dt;  // any stride
  };
  const bool ok =
      lg.device().is_cpu() && lg.dim() == 2 && vocab > 0 && vocab < (int64_t{1} << 31) &&
      (vocab == 1 || lg.stride(1) == 1) &&
      (lg.scalar_type() == at::kFloat || lg.scalar_type() == at::kBFloat16 || lg.scalar_type() == at::kHalf) &&
      (!pb.bias.has_value() || (pb.bias->device().is_cpu() && pb.bias->dim() == 2 &&
                                pb.bias->scalar_type() == at::kFloat && pb.bias->is_contiguous() &&
                                pb.bias->size(1) == vocab)) &&
      row_ok(pb.positions, at::kLong) && row_ok(pb.temperature, at::kFloat) && row_ok(pb.top_k, at::kLong) &&
      row_ok(pb.top_p, at::kFloat) && (!with_seed || row_ok(pb.seed, at::kLong)) &&
      (!pb.min_p.has_value() || row_ok(*pb.min_p, at::kFloat));
  TORCH_INTERNAL_ASSERT(ok, "tsdi_kernels._C: invalid arguments; call torch.ops.tsdi.*, which validates them");
}

// Runs both ops: tokens (debias_sample) or probabilities (debias_probs, out != nullptr).
template <typename T>
void run(const Problem& pb, bool probs_mode, int64_t* tokens, float* probs, int64_t* status) {
  const int64_t batch = pb.logits.size(0), vocab = pb.logits.size(1), row_stride = pb.logits.stride(0);
  const T* base = pb.logits.template data_ptr<T>();
  const float* bias = pb.bias.has_value() ? pb.bias->data_ptr<float>() : nullptr;
  const int64_t bias_rows = pb.bias.has_value() ? pb.bias->size(0) : 0;
  const auto positions = pb.positions.contiguous(), temperature = pb.temperature.contiguous(),
             top_k = pb.top_k.contiguous(), top_p = pb.top_p.contiguous();
  const auto seed = probs_mode ? at::Tensor() : pb.seed.contiguous();
  const float* min_p = pb.min_p.has_value() ? pb.min_p->data_ptr<float>() : nullptr;
  const int64_t min_p_stride = pb.min_p.has_value() ? pb.min_p->stride(0) : 0;

  std::vector<RowPlan> plans(batch);
  std::vector<int64_t> param_status(batch, 0);
  for (int64_t b = 0; b < batch; ++b) {
    RowPlan& rp = plans[b];
    const int64_t pos = positions.data_ptr<int64_t>()[b * positions.stride(0)];
    const float temp = temperature.data_ptr<float>()[b * temperature.stride(0)], p = top_p.data_ptr<float>()[b * top_p.stride(0)];
    const int64_t k_in = top_k.data_ptr<int64_t>()[b * top_k.stride(0)];
    // Per-row parameter ranges are checked here, inside the pass, not by the caller: a separate check would cost
    // four reductions and a host round-trip per call. A bad row is reported by its code and run as a cheap
    // greedy row without bias (its result is discarded).
    // positions >= 2^32 would reuse the noise of pos mod 2^32 (32-bit Philox counter word): rejected
    const float q = min_p ? min_p[b * min_p_stride] : 0.f;
    param_status[b] = (pos < 0 || (pos >> 32) != 0) ? ERR_POSITION : !(temp >= 0.f) ? ERR_TEMPERATURE : k_in < 0 ? ERR_TOP_K
                      : !(p > 0.f && p <= 1.f) ? ERR_TOP_P : !(q >= 0.f && q <= 1.f) ? ERR_MIN_P : 0;
    rp.x = base + b * row_stride;
    rp.bias = (param_status[b] == 0 && pos < bias_rows) ? bias + pos * vocab : nullptr;
    rp.strength = static_cast<float>(pb.strength);  // torch multiplies a float32 tensor by float(strength)
    rp.temp = temperature.data_ptr<float>()[b * temperature.stride(0)];
    rp.top_p = top_p.data_ptr<float>()[b * top_p.stride(0)];
    const int64_t k = top_k.data_ptr<int64_t>()[b * top_k.stride(0)];
    rp.top_k = (k > 0 && k < vocab) ? k : 0;
    rp.seed = probs_mode ? 0 : seed.data_ptr<int64_t>()[b * seed.stride(0)];
    rp.position = pos;
    rp.min_thr = (param_status[b] == 0 && q > 0.f)
                     ? static_cast<float>(std::log(static_cast<double>(q)) * kMinPLogScale) : -kInf;
    rp.mode = (rp.temp == 0.f || param_status[b] != 0) ? Mode::kGreedy
              : (rp.top_k == 0 && !(rp.top_p < 1.f) && rp.min_thr == -kInf) ? Mode::kFull : Mode::kFilter;
    rp.cap = rp.top_k > 0 ? std::max<int64_t>(2 * rp.top_k, kCapTopK) : kCapTopP;
    rp.want_sum = (rp.mode == Mode::kFilter && rp.top_k == 0) || (rp.mode == Mode::kFull && probs_mode);
    rp.want_noise = rp.mode == Mode::kFull && !probs_mode;
    rp.gap = (rp.mode == Mode::kFilter && rp.top_k == 0) ? mass_cutoff_gap(rp.top_p, vocab) : kInf;
    // min-p drops z < z_max + min_thr, and the running max only rises: z < m - (-min_thr) is never kept
    rp.cut_gap = (rp.mode == Mode::kFilter && rp.top_k == 0) ? std::min(rp.gap, -rp.min_thr) : kInf;
  }

  // Phase 1: fused pass over every (row, chunk).
  const int64_t nchunk = (vocab + kChunk - 1) / kChunk;
  std::vector<ChunkOut> chunks(batch * nchunk);
  // A thread gets consecutive items; the next chunk of the same row starts from the previous chunk's cutoff (and,
  // for top-p-only rows, its max - D). Any cutoff that some earlier chunk proved valid is valid for the row, and
  // the results do not depend on which candidates above it were collected (the keep rule and the sums only use
  // the exact kept set), so this saves the warm-up of every chunk without making results thread-dependent.
  // grain 4 chunks (64K tokens, ~50 us of work): smaller problems run on the calling thread, where a parallel
  // region would cost more than it saves.
  at::parallel_for(0, batch * nchunk, 4, [&](int64_t lo, int64_t hi) {
    float carried = kLowest;
    for (int64_t i = lo; i < hi; ++i) {
      const int64_t b = i / nchunk, v0 = (i % nchunk) * kChunk;
      if (i == lo || v0 == 0) carried = kLowest;
      chunks[i].cutoff = carried;
      scan_chunk<T>(plans[b], v0, std::min(vocab, v0 + kChunk), chunks[i]);
      carried = chunks[i].cutoff;
      if (plans[b].cut_gap < kInf && chunks[i].m > kLowest) carried = std::max(carried, chunks[i].m - plans[b].cut_gap);
    }
  });

  // Phase 2: per row, merge the chunks in order, apply the keep rule, draw.
  // Serial below 16 rows: the merge is cheap (a few hundred candidates per row) and every parallel region is a
  // barrier, which costs milliseconds when the threads share their cores with other processes.
  std::vector<RowResult> results(batch);
  at::parallel_for(0, batch, 16, [&](int64_t lo, int64_t hi) {
    for (int64_t b = lo; b < hi; ++b) {
      const RowPlan& rp = plans[b];
      RowResult& res = results[b];
      const ChunkOut* ch = &chunks[b * nchunk];
      bool nan = false, posinf = false, finite = false;
      float dmax = -kInf;
      float best = -kInf, m = kLowest, cutoff = kLowest;
      int64_t best_idx = 0;
      for (int64_t c = 0; c < nchunk; ++c) {
        nan |= ch[c].nan;
        posinf |= ch[c].posinf;
        finite |= ch[c].finite;
        dmax = std::max(dmax, ch[c].dmax);
        if (ch[c].best_idx >= 0 && ch[c].best > best) best = ch[c].best, best_idx = ch[c].best_idx;
        m = std::max(m, ch[c].m);
        cutoff = std::max(cutoff, ch[c].cutoff);
      }
      float s = 0.f;
      if (rp.want_sum) {
        for (int64_t c = 0; c < nchunk; ++c) s += ch[c].s * sexp(ch[c].m - m);
      }
      res.status = param_status[b] ? param_status[b] : nan ? ERR_NAN : (posinf || !finite) ? ERR_NO_FINITE : 0;
      const bool bad = res.status != 0;
      if (bad && !probs_mode) continue;
      if (rp.mode == Mode::kGreedy) {
        res.token = bad ? 0 : best_idx;
        continue;
      }
      // A temperature so small that the largest logit divided by it overflows float32 (e.g. 1e-40) leaves no
      // finite scaled logit to compare: such a row is the T -> 0 limit, greedy (status.py documents it).
      if (!bad && !std::isfinite(dmax / rp.temp)) {
        res.overflow = true;
        res.token = argmax_row<T>(rp, vocab);
        continue;
      }
      if (rp.mode == Mode::kFull && !bad) {
        res.token = best_idx;
        res.m = m;
        res.s = s;
        continue;
      }
      // kFilter (or a bad row of debias_probs, evaluated on zeros as the reference does)
      float s_kept = 0.f;
      bool done = false;
      if (!bad && rp.mode == Mode::kFilter) {
        std::vector<Cand> cand;
        if (rp.cut_gap < kInf) cutoff = std::max(cutoff, m - rp.cut_gap);  // see mass_cutoff_gap, min_thr
        for (int64_t c = 0; c < nchunk; ++c) {
          for (const Cand& e : ch[c].cand) {
            if (e.z >= cutoff) cand.push_back(e);
          }
        }
        const int64_t k = rp.top_k;
        if (k > 0 && static_cast<int64_t>(cand.size()) > k) {  // sort only the top k and their ties
          std::nth_element(cand.begin(), cand.begin() + (k - 1), cand.end(),
                           [](const Cand& a, const Cand& b) { return a.z > b.z; });
          const float kth = cand[k - 1].z;
          cand.erase(std::partition(cand.begin(), cand.end(), [kth](const Cand& e) { return e.z >= kth; }),
                     cand.end());
        }
        // no chunk ever compacted -> the candidates are all finite tokens
        bool complete = cutoff == kLowest;
        if (k == 0 && rp.top_p < 1.f) {
          const int64_t end = select_by_mass(cand, m, s, rp.top_p);
          complete &= end == static_cast<int64_t>(cand.size());
          cand.resize(end);
        } else {
          std::sort(cand.begin(), cand.end(), hf_before);
        }
        done = keep_rule(cand, complete, rp.top_k, rp.top_p, rp.min_thr, cutoff, s, res.kept, s_kept);
      }
      if (!done && !bad && rp.gap < kInf) {  // second pass: every token above the mass cutoff (a flat row)
        // With the row's sum s known, tokens below m - (gap - log s) carry at most V e^(gap_s - gap) / s
        // = 1 - p - 2 margins of the mass, so the cutoff tightens by log(s) >= 0 (s >= 1: the max counts 1).
        auto above = all_tokens<T>(rp, vocab, false, m - (rp.gap - std::log(std::max(s, 1.f))), false);
        above.resize(select_by_mass(above, m, s, rp.top_p));
        done = keep_rule(above, false, rp.top_k, rp.top_p, rp.min_thr, kInf, s, res.kept, s_kept);
      } else if (!done && !bad && rp.min_thr > -kInf && rp.top_k == 0) {  // min-p only: every token above
        // z_max + min_thr, less a few units in the last place (the rounding of that sum and of z - z_max)
        float zmin = m + rp.min_thr;
        for (int i = 0; i < 4; ++i) zmin = std::nextafter(zmin, -kInf);
        auto above = all_tokens<T>(rp, vocab, false, zmin);
        done = keep_rule(above, false, 0, 1.f, rp.min_thr, zmin, s, res.kept, s_kept);
      }
      if (!done) {  // exact path: every finite token, sorted
        const auto all = all_tokens<T>(rp, vocab, bad, -kInf);
        const float s_all = bad ? static_cast<float>(vocab) : s;
        keep_rule(all, true, rp.top_k, rp.mode == Mode::kFilter ? rp.top_p : 1.f,
                  rp.mode == Mode::kFilter ? rp.min_thr : -kInf, -kInf, s_all, res.kept, s_kept);
      }
      if (!probs_mode) {
        res.token = gumbel_max(res.kept, rp);
      } else if (!res.kept.empty()) {
        const float top = res.kept[0].z;
        const float inv = 1.f / s_kept;
        for (Cand& e : res.kept) e.z = sexp(e.z - top) * inv;
        std::sort(res.kept.begin(), res.kept.end(), [](const Cand& a, const Cand& b) { return a.idx < b.idx; });
      }
    }
  });

  if (!probs_mode) {
    for (int64_t b = 0; b < batch; ++b) tokens[b] = results[b].status ? results[b].status : results[b].token;
    return;
  }
  for (int64_t b = 0; b < batch; ++b) status[b] = results[b].status;

  // Phase 3 (debias_probs): write each [V] row once, chunk by chunk.
  at::parallel_for(0, batch * nchunk, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      const int64_t b = i / nchunk, v0 = (i % nchunk) * kChunk, v1 = std::min(vocab, v0 + kChunk);
      const RowPlan& rp = plans[b];
      const RowResult& res = results[b];
      float* out = probs + b * vocab;
      if (rp.mode == Mode::kFull && res.status == 0 && !res.overflow) {  // softmax of all tokens: exp(z - m) / s
        const T* x = static_cast<const T*>(rp.x);
        const Vec vs(rp.strength), vt(rp.temp), vm(res.m), vinv(1.f / res.s);
        for (int64_t v = v0; v < v1; v += kW) {
          const int64_t n = std::min<int64_t>(kW, v1 - v);
          Vec xv = n == kW ? load_vec(x + v) : load_partial(x + v, n, -kInf);
          if (rp.bias) xv = xv - vs * (n == kW ? Vec::loadu(rp.bias + v) : load_partial(rp.bias + v, n, 0.f));
          (vexp(xv / vt - vm) * vinv).store(out + v, static_cast<int>(n));
        }
        continue;
      }
      std::fill(out + v0, out + v1, 0.f);
      if (rp.mode == Mode::kGreedy || res.overflow) {
        if (res.token >= v0 && res.token < v1) out[res.token] = 1.f;
        continue;
      }
      auto it = std::lower_bound(res.kept.begin(), res.kept.end(), v0,
                                 [](const Cand& e, int64_t v) { return e.idx < v; });
      for (; it != res.kept.end() && it->idx < v1; ++it) out[it->idx] = it->z;
    }
  });
}

}  // namespace

at::Tensor debias_sample_cpu(const at::Tensor& logits, const std::optional<at::Tensor>& bias,
                             const at::Tensor& positions, const at::Tensor& temperature, const at::Tensor& top_k,
                             const at::Tensor& top_p, const at::Tensor& seed, double strength,
                             const std::optional<at::Tensor>& min_p) {
  const Problem pb{logits, bias, positions, temperature, top_k, top_p, seed, strength, min_p};
  check_inputs(pb, true);
  auto tokens = at::empty({logits.size(0)}, logits.options().dtype(at::kLong));
  dispatch_logit_dtype(logits.scalar_type(), [&](auto tag) {
    run<decltype(tag)>(pb, false, tokens.data_ptr<int64_t>(), nullptr, nullptr);
  });
  return tokens;
}

std::tuple<at::Tensor, at::Tensor> debias_probs_cpu(const at::Tensor& logits, const std::optional<at::Tensor>& bias,
                                                    const at::Tensor& positions, const at::Tensor& temperature,
                                                    const at::Tensor& top_k, const at::Tensor& top_p,
                                                    double strength, const std::optional<at::Tensor>& min_p) {
  const Problem pb{logits, bias, positions, temperature, top_k, top_p, at::Tensor(), strength, min_p};
  check_inputs(pb, false);
  auto probs = at::empty({logits.size(0), logits.size(1)}, logits.options().dtype(at::kFloat));
  auto status = at::zeros({logits.size(0)}, logits.options().dtype(at::kLong));
  dispatch_logit_dtype(logits.scalar_type(), [&](auto tag) {
    run<decltype(tag)>(pb, true, nullptr, probs.data_ptr<float>(), status.data_ptr<int64_t>());
  });
  return {probs, status};
}

at::Tensor philox_uniform_cpu(const at::Tensor& seed, const at::Tensor& positions, const at::Tensor& tokens) {
  TORCH_CHECK(seed.scalar_type() == at::kLong && positions.scalar_type() == at::kLong &&
                  tokens.scalar_type() == at::kLong,
              "tsdi_kernels._C.philox_uniform takes int64 tensors");
  auto bt = at::broadcast_tensors({seed, positions, tokens});
  const auto s = bt[0].contiguous(), p = bt[1].contiguous(), t = bt[2].contiguous();
  auto out = at::empty(s.sizes(), s.options().dtype(at::kFloat));
  const int64_t n = s.numel();
  const int64_t *sp = s.data_ptr<int64_t>(), *pp = p.data_ptr<int64_t>(), *tp = t.data_ptr<int64_t>();
  float* op = out.data_ptr<float>();
  // Element i goes through lane i % kW of the vectorised generator the kernels use (every lane gets tested).
  __at_align__ int32_t tok[kW];
  __at_align__ float u[kW];
  for (int64_t i = 0; i < n; ++i) {
    const int lane = static_cast<int>(i % kW);
    for (int l = 0; l < kW; ++l) tok[l] = static_cast<int32_t>(tp[i] + (l - lane));
    PhiloxRow(sp[i], pp[i]).uniform(tok).store(u);
    op[i] = u[lane];
  }
  return out;
}

}  // namespace tsdi
