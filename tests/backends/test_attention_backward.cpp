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
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "cpu/attention_backward.h"
#include "cpu/kernels.h"
#include "rt/sdk/error.h"

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
    AttentionSpec s;
    s.causal = causal;
    s.window = window;
    s.q_pos0 = q_pos0;
    s.k_pos0 = k_pos0;
    return s;
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

std::vector<float> randn(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.f, 1.f);
  std::vector<float> x(n);
  for (auto& v : x) v = dist(rng);
  return x;
}

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

}  // namespace
