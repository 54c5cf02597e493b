// logit_mean_update on CPU: running mean / M2 / count of d = log_softmax(aligned) - log_softmax(reference) over
// random prompts (Chan/Welford merge, fp32), see reference.logit_mean_update.
//
//   stage 1  batch statistics: for each position t and counted row b (in b order), Welford in fp32 into
//            temporaries bmean[t], bm2[t] ([L, V], never [B, L, V]); rows are checked for non-finite d on the way
//   stage 2  only if no counted row had a non-finite d: Chan merge of the batch statistics into (mean, m2, count)
//            (so the running statistics stay untouched on error)
//
// One pass over the inputs from memory: with enough positions (L >= 4 x threads), a thread owns a position t
// and, per row b, computes the two logsumexps (reading the rows from DRAM) and then accumulates d while the rows
// are still in L2/L3 (V = 128256 fp32: 2 x 513 KB). With few positions the logsumexps are computed first, in
// parallel over rows, then (t, V-tile) items accumulate, which reads the inputs twice but keeps both cores busy.
// Both paths call the same per-row and per-element functions in the same b order, so the result is bit-identical
// whatever the path or thread count.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels.h"
#include "vec_util.h"

namespace tsdi {
namespace {

constexpr int64_t kTile = 8192;  // V-tile of the few-positions path: 2 x 32 KB of statistics + inputs in L2

// log(sum(exp(x))) of one row, online: per-lane max and sum, rescaled only when a lane's max rises.
// All -inf -> -inf, any NaN / +inf -> NaN / inf (d is then non-finite and the row reported).
template <typename T>
float logsumexp(const T* x, int64_t n) {
  Vec m(kLowest), s(0.f);
  auto step = [&](const Vec& z) {
    if (movemask(z > m)) {
      const Vec mn = at::vec::maximum(m, z);
      s = s * vexp(m - mn);
      m = mn;
    }
    s = s + vexp(z - m);
  };
  int64_t v = 0;
  for (; v + kW <= n; v += kW) step(load_vec(x + v));
  if (v < n) step(load_partial(x + v, n - v, -kInf));
  __at_align__ float ml[kW], sl[kW];
  m.store(ml);
  s.store(sl);
  float mm = kLowest;
  for (int l = 0; l < kW; ++l) mm = std::max(mm, ml[l]);
  if (std::isnan(mm) || mm == kInf) return mm;
  float ss = 0.f;
  for (int l = 0; l < kW; ++l) ss += sl[l] * sexp(ml[l] - mm);
  return mm + std::log(ss);
}

// Welford step j (1-based) of d = (a - r) - c over [v0, v1) into (bmean, bm2); returns false if some d is not
// finite. r == nullptr: d = a - c. (normalize=False: c = 0.)
template <typename TA, typename TR>
bool accumulate(const TA* a, const TR* r, float c, int64_t j, float* bmean, float* bm2, int64_t v0, int64_t v1) {
  const Vec vc(c), vj(static_cast<float>(j)), zero(0.f);
  Vec bad(0.f);  // sum of (d - d): 0 if every d is finite, NaN otherwise
  for (int64_t v = v0; v < v1; v += kW) {
    const int64_t n = std::min<int64_t>(kW, v1 - v);
    const bool full = n == kW;
    const Vec av = full ? load_vec(a + v) : load_partial(a + v, n, 0.f);
    Vec d = av;
    if (r) d = d - (full ? load_vec(r + v) : load_partial(r + v, n, 0.f));
    d = d - vc;
    bad = bad + (d - d);
    if (j == 1) {
      d.store(bmean + v, static_cast<int>(n));
      zero.store(bm2 + v, static_cast<int>(n));
      continue;
    }
    Vec mean = full ? Vec::loadu(bmean + v) : Vec::loadu(bmean + v, static_cast<int>(n));
    Vec m2 = full ? Vec::loadu(bm2 + v) : Vec::loadu(bm2 + v, static_cast<int>(n));
    const Vec delta = d - mean;
    mean = mean + delta / vj;
    m2 = m2 + delta * (d - mean);
    mean.store(bmean + v, static_cast<int>(n));
    m2.store(bm2 + v, static_cast<int>(n));
  }
  return movemask(bad != zero) == 0;
}

template <typename TA, typename TR>
void run(at::Tensor& mean, at::Tensor& m2, at::Tensor& count, const at::Tensor& aligned, const at::Tensor* reference,
         const bool* mask, bool normalize, int64_t* where) {
  const int64_t batch = aligned.size(0), length = aligned.size(1), vocab = aligned.size(2);
  const TA* pa = aligned.data_ptr<TA>();
  const TR* pr = reference ? reference->data_ptr<TR>() : nullptr;
  auto row_a = [&](int64_t b, int64_t t) { return pa + (b * length + t) * vocab; };
  auto row_r = [&](int64_t b, int64_t t) { return pr ? pr + (b * length + t) * vocab : nullptr; };
  auto counted = [&](int64_t b, int64_t t) { return mask == nullptr || mask[b * length + t]; };

  // n_b[t] and, for each counted (b, t), its Welford step number j (rows in b order)
  std::vector<int64_t> nb(length, 0), step(batch * length, 0);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t t = 0; t < length; ++t) {
      if (counted(b, t)) step[b * length + t] = ++nb[t];
    }
  }
  auto bmean = at::empty({length, vocab}, mean.options());
  auto bm2 = at::empty({length, vocab}, mean.options());
  float* pm = bmean.data_ptr<float>();
  float* pq = bm2.data_ptr<float>();
  // c[b, t] = lse(aligned[b, t]) - lse(reference[b, t]) (normalize) or 0
  std::vector<float> cst(batch * length, 0.f);
  auto row_const = [&](int64_t b, int64_t t) {
    if (!normalize) return 0.f;
    const float la = logsumexp(row_a(b, t), vocab);
    return pr ? la - logsumexp(row_r(b, t), vocab) : la;
  };
  // first non-finite (b, t) in row-major order, as b * L + t; per work item, reduced after
  constexpr int64_t kNone = std::numeric_limits<int64_t>::max();
  const int64_t threads = at::get_num_threads();
  const bool fused = threads == 1 || length >= 4 * threads;

  std::vector<int64_t> first_bad;
  if (fused) {
    first_bad.assign(length, kNone);
    at::parallel_for(0, length, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t t = lo; t < hi; ++t) {
        for (int64_t b = 0; b < batch; ++b) {
          if (!counted(b, t)) continue;
          const float c = row_const(b, t);
          const bool ok = accumulate(row_a(b, t), row_r(b, t), c, step[b * length + t], pm + t * vocab,
                                     pq + t * vocab, 0, vocab);
          if (!ok) first_bad[t] = std::min(first_bad[t], b * length + t);
        }
      }
    });
  } else {
    at::parallel_for(0, batch * length, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        if (counted(i / length, i % length)) cst[i] = row_const(i / length, i % length);
      }
    });
    const int64_t ntile = (vocab + kTile - 1) / kTile;
    first_bad.assign(length * ntile, kNone);
    at::parallel_for(0, length * ntile, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        const int64_t t = i / ntile, v0 = (i % ntile) * kTile, v1 = std::min(vocab, v0 + kTile);
        for (int64_t b = 0; b < batch; ++b) {
          if (!counted(b, t)) continue;
          const bool ok = accumulate(row_a(b, t), row_r(b, t), cst[b * length + t], step[b * length + t],
                                     pm + t * vocab, pq + t * vocab, v0, v1);
          if (!ok) first_bad[i] = std::min(first_bad[i], b * length + t);
        }
      }
    });
  }
  const int64_t bad = *std::min_element(first_bad.begin(), first_bad.end());
  if (bad != kNone) {
    where[0] = bad / length;
    where[1] = bad % length;
    return;
  }

  // Chan merge, elementwise (same formulas and float32 order as the reference):
  //   n = n_a + n_b, delta = mean_b - mean_a, mean += delta * (n_b / n), m2 += m2_b + delta^2 * (n_a * n_b / n)
  float* mp = mean.data_ptr<float>();
  float* qp = m2.data_ptr<float>();
  int64_t* cp = count.data_ptr<int64_t>();
  at::parallel_for(0, length, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t t = lo; t < hi; ++t) {
      if (nb[t] == 0) continue;
      const float na = static_cast<float>(cp[t]), nbf = static_cast<float>(nb[t]);
      const float n = na + nbf;
      const Vec w1(nbf / n), w2(na * nbf / n);
      float *mr = mp + t * vocab, *qr = qp + t * vocab;
      const float *bmr = pm + t * vocab, *bqr = pq + t * vocab;
      for (int64_t v = 0; v < vocab; v += kW) {
        const int n_ = static_cast<int>(std::min<int64_t>(kW, vocab - v));
        const Vec ma = Vec::loadu(mr + v, n_), qa = Vec::loadu(qr + v, n_);
        const Vec mb = Vec::loadu(bmr + v, n_), qb = Vec::loadu(bqr + v, n_);
        const Vec delta = mb - ma;
        (ma + delta * w1).store(mr + v, n_);
        (qa + (qb + delta * delta * w2)).store(qr + v, n_);
      }
      cp[t] += nb[t];
    }
  });
}

}  // namespace

at::Tensor logit_mean_update_cpu(at::Tensor mean, at::Tensor m2, at::Tensor count, const at::Tensor& aligned,
                                 const std::optional<at::Tensor>& reference, const std::optional<at::Tensor>& mask,
                                 bool normalize) {
  // Memory-safety preconditions only: tsdi_kernels/kernels/accumulate/op.py validates the arguments (once).
  const bool shape_ok = aligned.device().is_cpu() && aligned.dim() == 3 && aligned.is_contiguous();
  const int64_t batch = shape_ok ? aligned.size(0) : 0, length = shape_ok ? aligned.size(1) : 0,
                vocab = shape_ok ? aligned.size(2) : 0;
  auto stats_ok = [&](const at::Tensor& s) {
    return s.device().is_cpu() && s.scalar_type() == at::kFloat && s.is_contiguous() && s.dim() == 2 &&
           s.size(0) == length && s.size(1) == vocab;
  };
  const bool ok =
      shape_ok && stats_ok(mean) && stats_ok(m2) && count.device().is_cpu() && count.scalar_type() == at::kLong &&
      count.is_contiguous() && count.dim() == 1 && count.size(0) == length &&
      (!reference.has_value() ||
       (reference->device().is_cpu() && reference->is_contiguous() && reference->sizes() == aligned.sizes())) &&
      (!mask.has_value() || (mask->device().is_cpu() && mask->scalar_type() == at::kBool && mask->is_contiguous() &&
                             mask->dim() == 2 && mask->size(0) == batch && mask->size(1) == length));
  TORCH_INTERNAL_ASSERT(ok, "tsdi_kernels._C: invalid arguments; call torch.ops.tsdi.*, which validates them");
  auto where = at::full({2}, -1, aligned.options().dtype(at::kLong));
  if (batch == 0 || length == 0 || vocab == 0) return where;
  const bool* pmask = mask.has_value() ? mask->data_ptr<bool>() : nullptr;
  const at::Tensor* pref = reference.has_value() ? &*reference : nullptr;
  const auto rdt = pref ? pref->scalar_type() : aligned.scalar_type();
  dispatch_logit_dtype(aligned.scalar_type(), [&](auto ta) {
    dispatch_logit_dtype(rdt, [&](auto tr) {
      run<decltype(ta), decltype(tr)>(mean, m2, count, aligned, pref, pmask, normalize, where.data_ptr<int64_t>());
    });
  });
  return where;
}

}  // namespace tsdi
