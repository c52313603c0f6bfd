// Tests of rt::cpu::attention_backward (fp32; lse from attention_forward_lse, or recomputed when
// the lse view is empty) against a double-precision reference written here:
//  - the analytic double backward (recomputing softmax per row) is checked against central finite
//    differences of a double forward, L = sum(dout * O(q, k, v)), on sampled coordinates;
//  - the fp32 CPU backward is compared with the analytic double backward: relative Frobenius error
//    < 1e-5 for dq, dk and dv;
//  - rows that see no key get dq exactly 0 and contribute nothing.
// Inputs are random normal (fixed seeds); outputs are poisoned with NaN before the call.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "cpu/attention_backward.h"
#include "cpu/kernels.h"
#include "rt/sdk/error.h"
#include "test_util.h"

namespace {

using rt::AttentionSpec;
using rt::DType;
using rt::Device;
using rt::TensorView;

struct Case {
  std::string name;
  int64_t Tq, Tk, Hq, Hkv, D;
  bool causal = true;
  int64_t window = 0, q_pos0 = 0, k_pos0 = 0;
  AttentionSpec spec() const {
    return ::rt::test::attention_spec(causal, window, q_pos0, k_pos0);
  }
  std::string str() const {
    std::ostringstream os;
    os << name << ": Tq " << Tq << " Tk " << Tk << " Hq " << Hq << " Hkv " << Hkv << " D " << D
       << (causal ? " causal" : " non-causal") << " window " << window << " q_pos0 " << q_pos0 << " k_pos0 "
       << k_pos0;
    return os.str();
  }
  bool visible(int64_t i, int64_t j) const {
    const int64_t qp = q_pos0 + i, kp = k_pos0 + j;
    if (causal && kp > qp) return false;
    if (window > 0 && kp <= qp - window) return false;
    return true;
  }
};

using rt::test::randn;

using VecD = std::vector<double>;

// Double forward: o [Tq, Hq, D].
VecD forward_d(const Case& c, const VecD& q, const VecD& k, const VecD& v) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.D));
  const int64_t g = c.Hq / c.Hkv;
  VecD o(static_cast<size_t>(c.Tq * c.Hq * c.D), 0.0);
  std::vector<double> s(static_cast<size_t>(c.Tk));
  for (int64_t h = 0; h < c.Hq; ++h)
    for (int64_t i = 0; i < c.Tq; ++i) {
      double m = -std::numeric_limits<double>::infinity();
      for (int64_t j = 0; j < c.Tk; ++j) {
        if (!c.visible(i, j)) continue;
        double d = 0;
        for (int64_t e = 0; e < c.D; ++e) d += q[(i * c.Hq + h) * c.D + e] * k[(j * c.Hkv + h / g) * c.D + e];
        s[j] = d * scale;
        m = std::max(m, s[j]);
      }
      if (m == -std::numeric_limits<double>::infinity()) continue;  // zeros
      double sum = 0;
      for (int64_t j = 0; j < c.Tk; ++j)
        if (c.visible(i, j)) sum += std::exp(s[j] - m);
      for (int64_t j = 0; j < c.Tk; ++j) {
        if (!c.visible(i, j)) continue;
        const double p = std::exp(s[j] - m) / sum;
        for (int64_t e = 0; e < c.D; ++e) o[(i * c.Hq + h) * c.D + e] += p * v[(j * c.Hkv + h / g) * c.D + e];
      }
    }
  return o;
}

// Analytic double backward (recomputes P per row).
void backward_d(const Case& c, const VecD& q, const VecD& k, const VecD& v, const VecD& dout, VecD& dq, VecD& dk,
                VecD& dv) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.D));
  const int64_t g = c.Hq / c.Hkv;
  const VecD o = forward_d(c, q, k, v);
  dq.assign(q.size(), 0.0);
  dk.assign(k.size(), 0.0);
  dv.assign(v.size(), 0.0);
  std::vector<double> s(static_cast<size_t>(c.Tk)), p(static_cast<size_t>(c.Tk));
  for (int64_t h = 0; h < c.Hq; ++h) {
    const int64_t hk = h / g;
    for (int64_t i = 0; i < c.Tq; ++i) {
      const double* qi = &q[(i * c.Hq + h) * c.D];
      const double* doi = &dout[(i * c.Hq + h) * c.D];
      const double* oi = &o[(i * c.Hq + h) * c.D];
      double m = -std::numeric_limits<double>::infinity();
      for (int64_t j = 0; j < c.Tk; ++j) {
        if (!c.visible(i, j)) continue;
        double d = 0;
        for (int64_t e = 0; e < c.D; ++e) d += qi[e] * k[(j * c.Hkv + hk) * c.D + e];
        s[j] = d * scale;
        m = std::max(m, s[j]);
      }
      if (m == -std::numeric_limits<double>::infinity()) continue;
      double sum = 0;
      for (int64_t j = 0; j < c.Tk; ++j)
        if (c.visible(i, j)) sum += std::exp(s[j] - m);
      double Di = 0;
      for (int64_t e = 0; e < c.D; ++e) Di += doi[e] * oi[e];
      for (int64_t j = 0; j < c.Tk; ++j) {
        if (!c.visible(i, j)) continue;
        const double pj = std::exp(s[j] - m) / sum;
        const double* kj = &k[(j * c.Hkv + hk) * c.D];
        const double* vj = &v[(j * c.Hkv + hk) * c.D];
        double dp = 0;
        for (int64_t e = 0; e < c.D; ++e) dp += doi[e] * vj[e];
        const double ds = pj * (dp - Di);
        for (int64_t e = 0; e < c.D; ++e) {
          dq[(i * c.Hq + h) * c.D + e] += scale * ds * kj[e];
          dk[(j * c.Hkv + hk) * c.D + e] += scale * ds * qi[e];
          dv[(j * c.Hkv + hk) * c.D + e] += pj * doi[e];
        }
      }
    }
  }
}

double loss_d(const Case& c, const VecD& q, const VecD& k, const VecD& v, const VecD& dout) {
  const VecD o = forward_d(c, q, k, v);
  double l = 0;
  for (size_t i = 0; i < o.size(); ++i) l += o[i] * dout[i];
  return l;
}

VecD to_d(const std::vector<float>& x) { return VecD(x.begin(), x.end()); }

double rel_frobenius(const std::vector<float>& got, const VecD& want) {
  double err = 0, norm = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double d = static_cast<double>(got[i]) - want[i];
    err += d * d;
    norm += want[i] * want[i];
  }
  return norm == 0 ? std::sqrt(err) : std::sqrt(err / norm);
}

struct Inputs {
  std::vector<float> q, k, v, dout;
};

Inputs make_inputs(const Case& c, uint64_t seed) {
  const size_t nq = static_cast<size_t>(c.Tq * c.Hq * c.D), nk = static_cast<size_t>(c.Tk * c.Hkv * c.D);
  return {randn(nq, seed), randn(nk, seed + 1), randn(nk, seed + 2), randn(nq, seed + 3)};
}

// Runs the CPU (fp32) forward + backward: with lse from attention_forward_lse, or (use_lse false)
// with an empty lse view, which the backward recomputes.
void run_cpu(const Case& c, const Inputs& in, std::vector<float>& dq, std::vector<float>& dk, std::vector<float>& dv,
             bool use_lse = true) {
  const size_t nq = in.q.size(), nk = in.k.size();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> o(nq, nan), lse(static_cast<size_t>(c.Hq * c.Tq), nan);
  dq.assign(nq, nan);
  dk.assign(nk, nan);
  dv.assign(nk, nan);
  auto view = [](const std::vector<float>& x, std::initializer_list<int64_t> shape) {
    return TensorView::contiguous(const_cast<float*>(x.data()), DType::F32, Device::CPU, shape);
  };
  const AttentionSpec spec = c.spec();
  rt::cpu::attention_forward_lse(view(in.q, {c.Tq, c.Hq, c.D}), view(in.k, {c.Tk, c.Hkv, c.D}),
                                 view(in.v, {c.Tk, c.Hkv, c.D}), view(o, {c.Tq, c.Hq, c.D}),
                                 view(lse, {c.Hq, c.Tq}), spec);
  rt::cpu::attention_backward(view(in.q, {c.Tq, c.Hq, c.D}), view(in.k, {c.Tk, c.Hkv, c.D}),
                              view(in.v, {c.Tk, c.Hkv, c.D}), view(o, {c.Tq, c.Hq, c.D}),
                              use_lse ? view(lse, {c.Hq, c.Tq}) : TensorView{}, view(in.dout, {c.Tq, c.Hq, c.D}),
                              view(dq, {c.Tq, c.Hq, c.D}), view(dk, {c.Tk, c.Hkv, c.D}),
                              view(dv, {c.Tk, c.Hkv, c.D}), spec);
}

// fp32 CPU backward vs the analytic double backward; empty rows exactly zero.
void check_case(const Case& c, uint64_t seed, bool use_lse = true) {
  SCOPED_TRACE(c.str() + (use_lse ? " [lse given]" : " [lse recomputed]"));
  const Inputs in = make_inputs(c, seed);
  std::vector<float> dq, dk, dv;
  run_cpu(c, in, dq, dk, dv, use_lse);
  VecD rq, rk, rv;
  backward_d(c, to_d(in.q), to_d(in.k), to_d(in.v), to_d(in.dout), rq, rk, rv);
  for (const auto* x : {&dq, &dk, &dv})
    for (float f : *x) ASSERT_TRUE(std::isfinite(f)) << "non-finite gradient (unwritten or NaN)";
  EXPECT_LT(rel_frobenius(dq, rq), 1e-5) << "dq";
  EXPECT_LT(rel_frobenius(dk, rk), 1e-5) << "dk";
  EXPECT_LT(rel_frobenius(dv, rv), 1e-5) << "dv";
  // Rows that see no key: dq exactly zero.
  for (int64_t i = 0; i < c.Tq; ++i) {
    bool any = false;
    for (int64_t j = 0; j < c.Tk && !any; ++j) any = c.visible(i, j);
    if (any) continue;
    for (int64_t h = 0; h < c.Hq; ++h)
      for (int64_t e = 0; e < c.D; ++e) ASSERT_EQ(dq[(i * c.Hq + h) * c.D + e], 0.f) << "row " << i << " sees no key";
  }
}

// The analytic double backward against central differences of the double forward (sampled
// coordinates of q, k and v).
void check_finite_differences(const Case& c, uint64_t seed, int samples = 10) {
  SCOPED_TRACE(c.str() + " [finite differences]");
  const Inputs in = make_inputs(c, seed);
  VecD q = to_d(in.q), k = to_d(in.k), v = to_d(in.v), dout = to_d(in.dout);
  VecD gq, gk, gv;
  backward_d(c, q, k, v, dout, gq, gk, gv);
  double gmax = 0;
  for (const VecD* gr : {&gq, &gk, &gv})
    for (double x : *gr) gmax = std::max(gmax, std::fabs(x));
  std::mt19937_64 rng(seed + 99);
  const double h = 1e-5;
  VecD* xs[] = {&q, &k, &v};
  const VecD* gs[] = {&gq, &gk, &gv};
  const char* names[] = {"q", "k", "v"};
  for (int t = 0; t < 3; ++t) {
    VecD& x = *xs[t];
    for (int s = 0; s < samples; ++s) {
      const size_t idx = std::uniform_int_distribution<size_t>(0, x.size() - 1)(rng);
      const double x0 = x[idx];
      x[idx] = x0 + h;
      const double lp = loss_d(c, q, k, v, dout);
      x[idx] = x0 - h;
      const double lm = loss_d(c, q, k, v, dout);
      x[idx] = x0;
      const double fd = (lp - lm) / (2 * h);
      EXPECT_NEAR(fd, (*gs[t])[idx], 1e-6 * (1 + gmax)) << "d" << names[t] << "[" << idx << "]";
    }
  }
}

TEST(AttentionBackwardCpu, FiniteDifferences) {
  uint64_t seed = 10;
  check_finite_differences({"causal", 9, 9, 2, 2, 8}, seed += 5);
  check_finite_differences({"causal gqa 3", 12, 12, 3, 1, 8}, seed += 5);
  check_finite_differences({"window 4", 13, 13, 2, 1, 8, true, 4}, seed += 5);
  check_finite_differences({"offsets", 6, 14, 2, 2, 8, true, 0, 8, 0}, seed += 5);
  check_finite_differences({"masked rows", 10, 12, 2, 1, 8, true, 0, 0, 4}, seed += 5);
  check_finite_differences({"non-causal", 7, 11, 2, 2, 8, false, 0}, seed += 5);
  check_finite_differences({"window only", 11, 11, 2, 2, 8, false, 3}, seed += 5);
}

TEST(AttentionBackwardCpu, Causal) {
  uint64_t seed = 100;
  for (int64_t T : {1, 7, 63, 64, 65, 130, 300}) {
    check_case({"causal", T, T, 2, 2, 32}, seed += 5);
    check_case({"causal gqa 3", T, T, 6, 2, 16}, seed += 5);
    check_case({"causal gqa 3", T, T, 6, 2, 16}, seed, /*use_lse=*/false);
  }
  check_case({"causal d64 gqa 7", 129, 129, 14, 2, 64}, seed += 5);
}

TEST(AttentionBackwardCpu, Window) {
  uint64_t seed = 200;
  // T < W, T = W, T > W (crossing the 64-row blocks and 256-key tiles), W = 1.
  for (auto [T, W] : std::vector<std::pair<int64_t, int64_t>>{
           {50, 64}, {64, 64}, {65, 64}, {300, 37}, {300, 257}, {129, 1}, {7, 1}}) {
    check_case({"window", T, T, 2, 2, 32, true, W}, seed += 5);
    check_case({"window gqa 3", T, T, 3, 1, 16, true, W}, seed += 5);
  }
}

TEST(AttentionBackwardCpu, NonCausal) {
  uint64_t seed = 300;
  check_case({"full", 70, 75, 2, 1, 16, false, 0}, seed += 5);
  check_case({"window only", 70, 75, 3, 3, 16, false, 20}, seed += 5);
}

TEST(AttentionBackwardCpu, Offsets) {
  uint64_t seed = 400;
  // A chunk of queries continuing after cached keys.
  check_case({"chunk", 20, 90, 3, 1, 16, true, 0, 70, 0}, seed += 5);
  check_case({"chunk window", 20, 90, 3, 1, 16, true, 30, 70, 0}, seed += 5);
  // Keys start after the first queries: rows 0..9 see nothing (dq = 0, no contribution).
  check_case({"masked rows", 80, 90, 2, 2, 16, true, 0, 0, 10}, seed += 5);
  check_case({"masked rows window", 80, 90, 6, 2, 16, true, 5, 0, 10}, seed += 5);
  check_case({"masked rows window", 80, 90, 6, 2, 16, true, 5, 0, 10}, seed, /*use_lse=*/false);
  // Every row masked: all gradients zero.
  check_case({"all masked", 10, 20, 2, 1, 16, true, 0, 0, 100}, seed += 5);
}

TEST(AttentionBackwardCpu, AllMaskedGivesZeros) {
  Case c{"all masked", 10, 20, 2, 1, 16, true, 0, 0, 100};
  const Inputs in = make_inputs(c, 7);
  std::vector<float> dq, dk, dv;
  run_cpu(c, in, dq, dk, dv);
  for (const auto* x : {&dq, &dk, &dv})
    for (float f : *x) ASSERT_EQ(f, 0.f);
}

TEST(AttentionBackwardCpu, RejectsBadArguments) {
  std::vector<float> a(2 * 2 * 8, 1.f), b(2 * 2 * 8, 1.f), l(2 * 2, 0.f);
  std::vector<uint16_t> h(2 * 2 * 8);
  const TensorView f = TensorView::contiguous(a.data(), DType::F32, Device::CPU, {2, 2, 8});
  const TensorView out = TensorView::contiguous(b.data(), DType::F32, Device::CPU, {2, 2, 8});
  const TensorView bf = TensorView::contiguous(h.data(), DType::BF16, Device::CPU, {2, 2, 8});
  const TensorView lse = TensorView::contiguous(l.data(), DType::F32, Device::CPU, {2, 2});
  AttentionSpec spec;
  EXPECT_THROW(rt::cpu::attention_backward(bf, f, f, f, lse, f, out, out, out, spec), rt::Error);
  const TensorView bad_d = TensorView::contiguous(a.data(), DType::F32, Device::CPU, {2, 2, 4});
  EXPECT_THROW(rt::cpu::attention_backward(f, bad_d, bad_d, f, lse, f, out, out, out, spec), rt::Error);
  EXPECT_THROW(rt::cpu::attention_backward(f, f, f, f, lse, f, f, out, out, spec), rt::Error);  // dq overlaps q
  const TensorView bad_lse = TensorView::contiguous(l.data(), DType::F32, Device::CPU, {4});
  EXPECT_THROW(rt::cpu::attention_backward(f, f, f, f, bad_lse, f, out, TensorView{}, TensorView{}, spec), rt::Error);
}

// ---- Non-finite inputs (issue 11): NaN / inf must reach o and lse, never turn into zeros. Only a
// row that sees no key at all gets zeros (lse +inf).

void forward_cpu(const Case& c, const Inputs& in, std::vector<float>& o, std::vector<float>& lse) {
  const float poison = 12345.f;  // neither zero nor non-finite: every element must be written
  o.assign(in.q.size(), poison);
  lse.assign(static_cast<size_t>(c.Hq * c.Tq), poison);
  auto view = [](const std::vector<float>& x, std::initializer_list<int64_t> shape) {
    return TensorView::contiguous(const_cast<float*>(x.data()), DType::F32, Device::CPU, shape);
  };
  rt::cpu::attention_forward_lse(view(in.q, {c.Tq, c.Hq, c.D}), view(in.k, {c.Tk, c.Hkv, c.D}),
                                 view(in.v, {c.Tk, c.Hkv, c.D}), view(o, {c.Tq, c.Hq, c.D}),
                                 view(lse, {c.Hq, c.Tq}), c.spec());
}

struct NonFinite {
  bool any_nonfinite = false;  // hit rows: some non-finite o and a non-finite lse (else: all NaN)
  bool others_unchanged = true;
  std::function<void(Inputs&)> prep;  // applied to both runs
  bool lse_nonfinite = true;           // false: a NaN value, not a score (lse stays finite)
};

// Forward with `edit` applied to the inputs vs the forward without it: rows (i, h) where `hit` is
// true must be all NaN (o and lse), the others bitwise unchanged (see NonFinite for variants).
void check_nonfinite(const Case& c, const std::function<void(Inputs&)>& edit,
                     const std::function<bool(int64_t, int64_t)>& hit, const NonFinite& how = {}) {
  SCOPED_TRACE(c.str());
  const bool any_nonfinite = how.any_nonfinite;
  Inputs in = make_inputs(c, 11);
  if (how.prep) how.prep(in);
  std::vector<float> o0, l0, o1, l1;
  forward_cpu(c, in, o0, l0);
  edit(in);
  forward_cpu(c, in, o1, l1);
  int64_t hits = 0;
  for (int64_t i = 0; i < c.Tq; ++i)
    for (int64_t h = 0; h < c.Hq; ++h) {
      const float* a = &o0[static_cast<size_t>((i * c.Hq + h) * c.D)];
      const float* b = &o1[static_cast<size_t>((i * c.Hq + h) * c.D)];
      const float la = l0[static_cast<size_t>(h * c.Tq + i)], lb = l1[static_cast<size_t>(h * c.Tq + i)];
      if (hit(i, h)) {
        ++hits;
        if (any_nonfinite) {
          bool bad = false;
          for (int64_t e = 0; e < c.D; ++e) bad |= !std::isfinite(b[e]);
          ASSERT_TRUE(bad) << "row " << i << " head " << h << ": finite output";
          if (how.lse_nonfinite) ASSERT_FALSE(std::isfinite(lb)) << "row " << i << " head " << h << ": lse " << lb;
          else ASSERT_EQ(la, lb) << "row " << i << " head " << h << ": lse changed by a value";
        } else {
          for (int64_t e = 0; e < c.D; ++e) ASSERT_TRUE(std::isnan(b[e])) << "row " << i << " head " << h << " o " << b[e];
          ASSERT_TRUE(std::isnan(lb)) << "row " << i << " head " << h << ": lse " << lb;
        }
      } else if (how.others_unchanged) {
        for (int64_t e = 0; e < c.D; ++e) ASSERT_EQ(a[e], b[e]) << "row " << i << " head " << h << " changed";
        ASSERT_EQ(la, lb) << "row " << i << " head " << h << ": lse changed";
      }
    }
  EXPECT_GT(hits, 0) << "the case hits no row";
}

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

// Cases: decode-like (few stacked rows: the dot-product path), prefill (GEMM path), several key
// tiles, a window, and keys starting after some queries (rows that see nothing).
std::vector<Case> nonfinite_cases() {
  return {{"decode", 1, 300, 4, 2, 16, true, 0, 299, 0},
          {"prefill", 40, 40, 4, 2, 16},
          {"tiles", 600, 600, 2, 1, 8},
          {"window", 50, 50, 4, 4, 8, true, 7},
          {"late keys", 30, 30, 6, 2, 8, true, 0, 0, 10}};
}

TEST(AttentionNonFiniteCpu, NanInOneQueryRow) {
  for (const Case& c : nonfinite_cases()) {
    const int64_t i0 = c.Tq - 1, h0 = 1;  // sees at least one key in every case
    check_nonfinite(
        c, [&](Inputs& in) { in.q[static_cast<size_t>((i0 * c.Hq + h0) * c.D + 3)] = kNaN; },
        [&](int64_t i, int64_t h) { return i == i0 && h == h0; });
  }
}

TEST(AttentionNonFiniteCpu, NanInOneKeyRow) {
  for (const Case& c : nonfinite_cases()) {
    const int64_t j0 = c.Tk / 2, hk = c.Hkv - 1, g = c.Hq / c.Hkv;
    check_nonfinite(
        c, [&](Inputs& in) { in.k[static_cast<size_t>((j0 * c.Hkv + hk) * c.D + 2)] = kNaN; },
        [&](int64_t i, int64_t h) { return h / g == hk && c.visible(i, j0); });
  }
}

TEST(AttentionNonFiniteCpu, NanInOneValueRow) {
  for (const Case& c : nonfinite_cases()) {
    const int64_t j0 = c.Tk / 3, hk = 0, g = c.Hq / c.Hkv;
    check_nonfinite(
        c, [&](Inputs& in) { for (int64_t e = 0; e < c.D; ++e) in.v[static_cast<size_t>((j0 * c.Hkv + hk) * c.D + e)] = kNaN; },
        [&](int64_t i, int64_t h) { return h / g == hk && c.visible(i, j0); },
        // Not checked: rows that do not see key j0 (masked P = 0 times a NaN value is NaN in the
        // P V product of their block).
        NonFinite{true, false, {}, false});
  }
}

// +inf in q: its scores become +-inf. Row 0 of a causal prefill sees only key 0; with q . k =
// -inf there, the naive online softmax keeps m = -inf and reports "no key" (zeros). The row
// (i0, h0) must come out non-finite however the signs fall.
TEST(AttentionNonFiniteCpu, InfInQueryRow) {
  for (const bool negative_score : {true, false})
    for (const Case& c : nonfinite_cases()) {
      for (const int64_t i0 : {int64_t{0}, c.Tq - 1}) {
        bool sees = false;
        for (int64_t j = 0; j < c.Tk; ++j) sees |= c.visible(i0, j);
        if (!sees) continue;
        const int64_t h0 = c.Hq - 1, hk = h0 / (c.Hq / c.Hkv);
        // Every key gets the same sign in dimension 0, so all the row's scores are -inf (or +inf).
        auto prep = [&](Inputs& in) {
          for (int64_t j = 0; j < c.Tk; ++j) {
            float& x = in.k[static_cast<size_t>((j * c.Hkv + hk) * c.D)];
            x = negative_score ? -std::fabs(x) - 0.1f : std::fabs(x) + 0.1f;
          }
        };
        check_nonfinite(
            c, [&](Inputs& in) { in.q[static_cast<size_t>((i0 * c.Hq + h0) * c.D)] = kInf; },
            [&](int64_t i, int64_t h) { return i == i0 && h == h0; }, NonFinite{true, true, prep});
      }
    }
}

// Rows that see no key stay zeros / lse +inf even with NaN queries (softmax over an empty set).
TEST(AttentionNonFiniteCpu, RowWithoutKeysStaysZero) {
  const Case c{"late keys", 30, 30, 6, 2, 8, true, 0, 0, 10};  // rows 0..9 see nothing
  Inputs in = make_inputs(c, 3);
  for (float& x : in.q) x = kNaN;
  std::vector<float> o, lse;
  forward_cpu(c, in, o, lse);
  for (int64_t i = 0; i < c.Tq; ++i)
    for (int64_t h = 0; h < c.Hq; ++h) {
      const float l = lse[static_cast<size_t>(h * c.Tq + i)];
      if (i < 10) {
        ASSERT_EQ(l, kInf) << i;
        for (int64_t e = 0; e < c.D; ++e) ASSERT_EQ(o[static_cast<size_t>((i * c.Hq + h) * c.D + e)], 0.f) << i;
      } else {
        ASSERT_TRUE(std::isnan(l)) << i;
      }
    }
}

// Backward: a non-finite score reaches the gradients (with lse given and recomputed), including
// the all-(-inf) row that the naive recomputed lse (+inf) turned into zero gradients.
TEST(AttentionNonFiniteCpu, BackwardPropagates) {
  for (const bool use_lse : {true, false}) {
    SCOPED_TRACE(use_lse ? "lse given" : "lse recomputed");
    const Case c{"prefill", 20, 20, 2, 1, 8};
    {  // NaN query row 7, head 0
      Inputs in = make_inputs(c, 5);
      in.q[static_cast<size_t>((7 * c.Hq + 0) * c.D + 1)] = kNaN;
      std::vector<float> dq, dk, dv;
      run_cpu(c, in, dq, dk, dv, use_lse);
      for (int64_t e = 0; e < c.D; ++e) ASSERT_TRUE(std::isnan(dq[static_cast<size_t>((7 * c.Hq) * c.D + e)])) << e;
      for (int64_t e = 0; e < c.D; ++e) ASSERT_TRUE(std::isfinite(dq[static_cast<size_t>((6 * c.Hq) * c.D + e)])) << e;
    }
    {  // row 0 sees only key 0, with score -inf
      Inputs in = make_inputs(c, 6);
      in.k[0] = -std::fabs(in.k[0]) - 0.1f;
      in.q[0] = kInf;
      std::vector<float> dq, dk, dv;
      run_cpu(c, in, dq, dk, dv, use_lse);
      bool bad = false;
      for (int64_t e = 0; e < c.D; ++e) bad |= !std::isfinite(dq[static_cast<size_t>(e)]);
      ASSERT_TRUE(bad) << "finite dq for a row with an infinite query";
    }
  }
}

}  // namespace
