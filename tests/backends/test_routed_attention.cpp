// Routed queries (AttentionSpec::q_index / q_count, L2A's global attention over the tokens its
// router picked) on the CPU backend, f32 and f64:
//  - forward: routed attention of a compact q equals dense attention (same mask) of a full-length q
//    whose rows at the routed positions are those compact rows, picked at those rows (o and lse);
//    rows at or past the count get o = 0 and lse = +inf (outputs poisoned with NaN first); with
//    q_indexed (q holds every row, read through the index) the same rows to the bit, and with
//    inactive_unwritten the poison past the count left in place;
//  - backward: dq, dk, dv of routed attention equal the dense backward with dout = 0 on the
//    unrouted rows; inactive rows get dq = 0; f64 finite differences of sum(o * w) on a tiny case;
//  - bad q_index / q_count: rt::Error naming the op and the argument;
//  - the Ops defaults the CPU backend uses: compact_rows, gather_rows, scatter_add_rows, rope_rows.
// Inputs are random normal, fresh per case.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "cpu/attention_backward.h"
#include "cpu/cpu_ops.h"
#include "cpu/kernels.h"
#include "cpu_test_util.h"

namespace {

using cpu_test::Buf;
using cpu_test::kInf;
using cpu_test::rel_err;
using rt::AttentionSpec;
using rt::Device;
using rt::DType;
using rt::TensorView;

uint64_t next_seed() {
  static uint64_t s = 0x5eed'0000;
  return s += 7919;
}

double tol(DType dt) { return dt == DType::F64 ? 1e-12 : 1e-5; }

TensorView i32_view(std::vector<int32_t>& x, std::initializer_list<int64_t> shape) {
  return TensorView::contiguous(x.data(), DType::I32, Device::CPU, shape);
}

// One routed call: query positions q_pos0 + [0, T), of which `idx` (ascending) are routed; the
// compact q has cap = idx.size() + extra rows, the count is idx.size() + count_over (clamped by the
// op to cap); index entries past idx.size() are garbage the op must ignore.
struct Case {
  std::string name;
  int64_t T = 0;
  std::vector<int32_t> idx;
  int64_t Hq = 2, Hkv = 1, D = 8;
  bool causal = true;
  int64_t window = 0, q_pos0 = 0, k_pos0 = 0;
  int64_t Tk = -1;          // default: the keys up to the last query position, q_pos0 - k_pos0 + T
  int64_t extra = 0;        // inactive compact rows past the routed ones
  int64_t count_over = 0;   // count - idx.size() (> 0 with extra == 0: clamped to cap)
  int64_t index_extra = 0;  // index entries past cap

  int64_t n() const { return static_cast<int64_t>(idx.size()); }
  int64_t cap() const { return n() + extra; }
  int64_t tk() const { return Tk >= 0 ? Tk : q_pos0 - k_pos0 + T; }
  AttentionSpec dense_spec() const {
    return ::rt::test::attention_spec(causal, window, q_pos0, k_pos0);
  }
  std::string str() const {
    std::ostringstream os;
    os << name << ": T " << T << " routed " << n() << " cap " << cap() << " Tk " << tk() << " Hq " << Hq << " Hkv "
       << Hkv << " D " << D << (causal ? " causal" : " non-causal") << " window " << window << " q_pos0 " << q_pos0
       << " k_pos0 " << k_pos0;
    return os.str();
  }
};

// The index list and count of a case (garbage past the routed entries).
struct Routing {
  std::vector<int32_t> index;
  std::vector<int32_t> count;
  explicit Routing(const Case& c) {
    index.assign(static_cast<size_t>(c.cap() + c.index_extra), 0);
    for (int64_t i = 0; i < c.n(); ++i) index[static_cast<size_t>(i)] = c.idx[static_cast<size_t>(i)];
    for (int64_t i = c.n(); i < c.cap() + c.index_extra; ++i)  // descending, negative: must be ignored
      index[static_cast<size_t>(i)] = static_cast<int32_t>(i % 2 ? -3 - i : 1000000 - i);
    count = {static_cast<int32_t>(c.n() + c.count_over)};
  }
  AttentionSpec spec(const Case& c) {
    AttentionSpec s = c.dense_spec();
    s.q_index = i32_view(index, {static_cast<int64_t>(index.size())});
    s.q_count = i32_view(count, {1});
    return s;
  }
};

// Row r of a [rows, H, D] buffer, all heads.
std::vector<double> rows_of(const Buf& b, const std::vector<int64_t>& rows) {
  const int64_t w = b.v.shape[1] * b.v.shape[2];
  std::vector<double> r;
  for (int64_t t : rows)
    for (int64_t e = 0; e < w; ++e) r.push_back(b.get(t * w + e));
  return r;
}
// Columns `cols` of lse [H, T].
std::vector<double> lse_cols(const Buf& b, const std::vector<int64_t>& cols) {
  const int64_t H = b.v.shape[0], T = b.v.shape[1];
  std::vector<double> r;
  for (int64_t h = 0; h < H; ++h)
    for (int64_t t : cols) r.push_back(b.get(h * T + t));
  return r;
}

std::vector<int64_t> iota(int64_t a, int64_t b) {
  std::vector<int64_t> r;
  for (int64_t i = a; i < b; ++i) r.push_back(i);
  return r;
}
std::vector<int64_t> to64(const std::vector<int32_t>& x) { return {x.begin(), x.end()}; }

// Full-length q [T, Hq, D]: random, with compact row i copied to row idx[i].
Buf full_q(const Case& c, DType dt, const Buf& qc, uint64_t seed) {
  Buf qf(dt, {c.T, c.Hq, c.D});
  qf.randn(seed);
  const int64_t w = c.Hq * c.D;
  for (int64_t i = 0; i < c.n(); ++i)
    for (int64_t e = 0; e < w; ++e) qf.put(c.idx[static_cast<size_t>(i)] * w + e, qc.get(i * w + e));
  return qf;
}

void check_forward(const Case& c, DType dt) {
  SCOPED_TRACE(c.str() + (dt == DType::F64 ? " [f64]" : " [f32]"));
  const int64_t cap = c.cap(), Tk = c.tk();
  Buf qc(dt, {cap, c.Hq, c.D}), k(dt, {Tk, c.Hkv, c.D}), v(dt, {Tk, c.Hkv, c.D});
  qc.randn(next_seed());
  k.randn(next_seed());
  v.randn(next_seed());
  const Buf qf = full_q(c, dt, qc, next_seed());
  Routing rt_(c);
  const AttentionSpec rspec = rt_.spec(c);

  Buf oc(dt, {cap, c.Hq, c.D}), lc(dt, {c.Hq, cap});
  oc.nan();
  lc.nan();
  rt::cpu::attention_forward_lse(qc, k, v, oc, lc, rspec);
  Buf of(dt, {c.T, c.Hq, c.D}), lf(dt, {c.Hq, c.T});
  of.nan();
  lf.nan();
  rt::cpu::attention_forward_lse(qf, k, v, of, lf, c.dense_spec());

  const std::vector<int64_t> routed = to64(c.idx), active = iota(0, c.n()), inactive = iota(c.n(), cap);
  if (c.n() > 0) {
    EXPECT_LT(rel_err(rows_of(oc, active), rows_of(of, routed)), tol(dt));
    EXPECT_LT(rel_err(lse_cols(lc, active), lse_cols(lf, routed)), tol(dt));
  }
  for (double x : rows_of(oc, inactive)) ASSERT_EQ(x, 0.0) << "inactive row: o must be 0";
  for (double x : lse_cols(lc, inactive)) ASSERT_EQ(x, kInf) << "inactive row: lse must be +inf";

  // attention_forward (no lse) writes the same o.
  Buf o2(dt, {cap, c.Hq, c.D});
  o2.nan();
  rt::cpu::attention_forward(qc, k, v, o2, rspec);
  EXPECT_EQ(rel_err(o2.values(), oc.values()), 0.0);

  // q_indexed: q holds every row (qf, the compact rows at their positions), routed row i reads q
  // row idx[i]: the same rows to the bit; past the count zeros and +inf, or (inactive_unwritten)
  // the poison left in place.
  if (c.T == 0) return;
  std::vector<int32_t> index_t(static_cast<size_t>(c.T), 1 << 30), count_n = {static_cast<int32_t>(c.n())};
  std::copy(c.idx.begin(), c.idx.end(), index_t.begin());
  for (const bool unwritten : {false, true}) {
    SCOPED_TRACE(unwritten ? "q_indexed, inactive_unwritten" : "q_indexed");
    AttentionSpec ispec = c.dense_spec();
    ispec.q_index = i32_view(index_t, {c.T});
    ispec.q_count = i32_view(count_n, {1});
    ispec.q_indexed = true;
    ispec.inactive_unwritten = unwritten;
    Buf oi(dt, {c.T, c.Hq, c.D}), li(dt, {c.Hq, c.T});
    oi.nan();
    li.nan();
    rt::cpu::attention_forward_lse(qf, k, v, oi, li, ispec);
    if (c.n() > 0) {
      EXPECT_EQ(rel_err(rows_of(oi, active), rows_of(oc, active)), 0.0);
      EXPECT_EQ(rel_err(lse_cols(li, active), lse_cols(lc, active)), 0.0);
    }
    const std::vector<int64_t> past = iota(c.n(), c.T);
    for (double x : rows_of(oi, past)) ASSERT_TRUE(unwritten ? std::isnan(x) : x == 0.0) << "o past the count: " << x;
    for (double x : lse_cols(li, past)) ASSERT_TRUE(unwritten ? std::isnan(x) : x == kInf) << "lse past the count: " << x;
  }
}

void check_backward(const Case& c, DType dt) {
  SCOPED_TRACE(c.str() + (dt == DType::F64 ? " [f64 backward]" : " [f32 backward]"));
  const int64_t cap = c.cap(), Tk = c.tk(), w = c.Hq * c.D;
  Buf qc(dt, {cap, c.Hq, c.D}), k(dt, {Tk, c.Hkv, c.D}), v(dt, {Tk, c.Hkv, c.D}), doc(dt, {cap, c.Hq, c.D});
  qc.randn(next_seed());
  k.randn(next_seed());
  v.randn(next_seed());
  doc.randn(next_seed());
  const Buf qf = full_q(c, dt, qc, next_seed());
  Buf dof(dt, {c.T, c.Hq, c.D});  // dout: the routed rows' dout, 0 on the unrouted rows
  dof.fill(0.0);
  for (int64_t i = 0; i < c.n(); ++i)
    for (int64_t e = 0; e < w; ++e) dof.put(c.idx[static_cast<size_t>(i)] * w + e, doc.get(i * w + e));
  Routing rt_(c);
  const AttentionSpec rspec = rt_.spec(c), dspec = c.dense_spec();

  Buf oc(dt, {cap, c.Hq, c.D}), lc(dt, {c.Hq, cap}), of(dt, {c.T, c.Hq, c.D}), lf(dt, {c.Hq, c.T});
  rt::cpu::attention_forward_lse(qc, k, v, oc, lc, rspec);
  rt::cpu::attention_forward_lse(qf, k, v, of, lf, dspec);
  Buf dqf(dt, {c.T, c.Hq, c.D}), dkf(dt, {Tk, c.Hkv, c.D}), dvf(dt, {Tk, c.Hkv, c.D});
  rt::cpu::attention_backward(qf, k, v, of, lf, dof, dqf, dkf, dvf, dspec);

  const std::vector<int64_t> active = iota(0, c.n()), inactive = iota(c.n(), cap);
  for (bool use_lse : {true, false}) {
    SCOPED_TRACE(use_lse ? "lse given" : "lse recomputed");
    Buf dqc(dt, {cap, c.Hq, c.D}), dkc(dt, {Tk, c.Hkv, c.D}), dvc(dt, {Tk, c.Hkv, c.D});
    dqc.nan();
    dkc.nan();
    dvc.nan();
    rt::cpu::attention_backward(qc, k, v, oc, use_lse ? TensorView(lc) : TensorView{}, doc, dqc, dkc, dvc, rspec);
    EXPECT_LT(rel_err(dvc.values(), dvf.values()), tol(dt)) << "dv";
    if (c.window == 1) {
      // Each row sees only its own key: P = 1, dS = P (dP - D) = 0, so dq and dk are 0 up to
      // rounding (a relative error would compare rounding noise).
      const double bound = dt == DType::F64 ? 1e-12 : 1e-4;
      for (double x : dkc.values()) ASSERT_LT(std::abs(x), bound) << "dk";
      for (double x : dqc.values()) ASSERT_LT(std::abs(x), bound) << "dq";
    } else {
      EXPECT_LT(rel_err(dkc.values(), dkf.values()), tol(dt)) << "dk";
      if (c.n() > 0) EXPECT_LT(rel_err(rows_of(dqc, active), rows_of(dqf, to64(c.idx))), tol(dt)) << "dq";
    }
    for (double x : rows_of(dqc, inactive)) ASSERT_EQ(x, 0.0) << "inactive row: dq must be 0";
    if (c.n() == 0) {
      for (double x : dkc.values()) ASSERT_EQ(x, 0.0);
      for (double x : dvc.values()) ASSERT_EQ(x, 0.0);
    }
  }
}

// A random ascending subset of [0, T), each position kept with probability p.
std::vector<int32_t> random_rows(int64_t T, double p, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::bernoulli_distribution keep(p);
  std::vector<int32_t> r;
  for (int64_t t = 0; t < T; ++t)
    if (keep(rng)) r.push_back(static_cast<int32_t>(t));
  return r;
}
std::vector<int32_t> range32(int64_t a, int64_t b) {
  std::vector<int32_t> r;
  for (int64_t t = a; t < b; ++t) r.push_back(static_cast<int32_t>(t));
  return r;
}

std::vector<Case> cases() {
  std::vector<Case> cs;
  const struct {
    int64_t Hq, Hkv, D;
  } shapes[] = {{7, 1, 64}, {12, 2, 128}, {2, 2, 24}};
  // Ragged lengths, random routing, every shape.
  for (int64_t T : {1, 7, 37, 130, 300})
    for (const auto& s : shapes) {
      Case c{"ragged"};
      c.T = T;
      c.idx = random_rows(T, 0.5, next_seed());
      if (c.idx.empty()) c.idx = {static_cast<int32_t>(T - 1)};
      c.Hq = s.Hq, c.Hkv = s.Hkv, c.D = s.D;
      cs.push_back(c);
    }
  auto add = [&](Case c) { cs.push_back(std::move(c)); };
  {
    Case c{"none routed"};
    c.T = 37, c.Hq = 7, c.Hkv = 1, c.D = 24, c.extra = 5;
    add(c);
  }
  {
    Case c{"none routed, empty compact q"};
    c.T = 37, c.Hq = 12, c.Hkv = 2, c.D = 64;
    add(c);
  }
  for (int32_t p : {0, 17, 129}) {
    Case c{"one routed"};
    c.T = 130, c.idx = {p}, c.Hq = 7, c.Hkv = 1, c.D = 64;
    add(c);
  }
  for (const auto& s : shapes) {
    Case c{"all routed"};
    c.T = 300, c.idx = range32(0, 300), c.Hq = s.Hq, c.Hkv = s.Hkv, c.D = s.D;
    add(c);
  }
  {
    Case c{"clustered at the start"};
    c.T = 300, c.idx = range32(0, 40), c.Hq = 12, c.Hkv = 2, c.D = 128;
    add(c);
  }
  {
    Case c{"clustered at the end"};
    c.T = 300, c.idx = range32(260, 300), c.Hq = 7, c.Hkv = 1, c.D = 64;
    add(c);
  }
  {
    Case c{"clustered at both ends"};
    c.T = 300, c.idx = range32(0, 20), c.Hq = 2, c.Hkv = 2, c.D = 24;
    for (int32_t t : range32(281, 300)) c.idx.push_back(t);
    add(c);
  }
  {
    Case c{"key prefix (q_pos0 > 0)"};
    c.T = 130, c.idx = random_rows(130, 0.3, next_seed()), c.Hq = 12, c.Hkv = 2, c.D = 64;
    c.q_pos0 = 70;  // keys: 70 earlier positions, then the queries' own
    add(c);
  }
  {
    Case c{"q_pos0 and k_pos0 non-zero"};
    c.T = 300, c.idx = random_rows(300, 0.4, next_seed()), c.Hq = 7, c.Hkv = 1, c.D = 24;
    c.q_pos0 = 1000, c.k_pos0 = 650;
    add(c);
  }
  {
    Case c{"queries before the first key (rows see nothing)"};
    c.T = 37, c.idx = random_rows(37, 0.5, next_seed()), c.Hq = 2, c.Hkv = 2, c.D = 24;
    c.q_pos0 = 5, c.k_pos0 = 20, c.Tk = 22;
    add(c);
  }
  for (int64_t W : {1, 16, 100}) {
    Case c{"sliding window"};
    c.T = 300, c.idx = random_rows(300, 0.5, next_seed()), c.Hq = 12, c.Hkv = 2, c.D = 64, c.window = W;
    add(c);
  }
  {
    Case c{"sliding window, key prefix"};
    c.T = 130, c.idx = random_rows(130, 0.6, next_seed()), c.Hq = 7, c.Hkv = 1, c.D = 128, c.window = 40;
    c.q_pos0 = 200, c.k_pos0 = 10;
    add(c);
  }
  {
    Case c{"window, not causal"};
    c.T = 130, c.idx = random_rows(130, 0.5, next_seed()), c.Hq = 2, c.Hkv = 2, c.D = 24, c.window = 30;
    c.causal = false;
    add(c);
  }
  {
    Case c{"not causal"};
    c.T = 37, c.idx = random_rows(37, 0.5, next_seed()), c.Hq = 7, c.Hkv = 1, c.D = 24;
    c.causal = false;
    add(c);
  }
  {
    Case c{"count smaller than the index length"};
    c.T = 130, c.idx = random_rows(130, 0.3, next_seed()), c.Hq = 12, c.Hkv = 2, c.D = 64, c.extra = 23;
    c.index_extra = 4;
    add(c);
  }
  {
    Case c{"count smaller than the index length, window"};
    c.T = 300, c.idx = random_rows(300, 0.2, next_seed()), c.Hq = 7, c.Hkv = 1, c.D = 24, c.extra = 1;
    c.window = 50;
    add(c);
  }
  {
    Case c{"count larger than the rows (clamped)"};
    c.T = 37, c.idx = random_rows(37, 0.5, next_seed()), c.Hq = 2, c.Hkv = 2, c.D = 24, c.count_over = 9;
    c.index_extra = 9;
    add(c);
  }
  {
    Case c{"negative count (no row active)"};
    c.T = 37, c.Hq = 2, c.Hkv = 2, c.D = 24, c.extra = 6, c.count_over = -4;
    add(c);
  }
  return cs;
}

TEST(RoutedAttention, ForwardMatchesDenseF32) {
  for (const Case& c : cases()) check_forward(c, DType::F32);
}
TEST(RoutedAttention, ForwardMatchesDenseF64) {
  for (const Case& c : cases()) check_forward(c, DType::F64);
}
TEST(RoutedAttention, BackwardMatchesDenseF64) {
  for (const Case& c : cases()) check_backward(c, DType::F64);
}
TEST(RoutedAttention, BackwardMatchesDenseF32) {
  for (const Case& c : cases()) check_backward(c, DType::F32);
}

// D = 0: o is empty, lse = log(number of visible keys) on active rows, +inf on inactive ones.
TEST(RoutedAttention, ZeroHeadDim) {
  for (DType dt : {DType::F32, DType::F64}) {
    Case c{"D = 0"};
    c.T = 37, c.idx = random_rows(37, 0.5, next_seed()), c.Hq = 4, c.Hkv = 2, c.D = 0, c.extra = 3, c.window = 9;
    c.q_pos0 = 3;
    SCOPED_TRACE(c.str());
    Routing rt_(c);
    Buf qc(dt, {c.cap(), c.Hq, 0}), k(dt, {c.tk(), c.Hkv, 0}), v(dt, {c.tk(), c.Hkv, 0});
    Buf oc(dt, {c.cap(), c.Hq, 0}), lc(dt, {c.Hq, c.cap()});
    lc.nan();
    rt::cpu::attention_forward_lse(qc, k, v, oc, lc, rt_.spec(c));
    Buf qf(dt, {c.T, c.Hq, 0}), of(dt, {c.T, c.Hq, 0}), lf(dt, {c.Hq, c.T});
    rt::cpu::attention_forward_lse(qf, k, v, of, lf, c.dense_spec());
    EXPECT_LT(rel_err(lse_cols(lc, iota(0, c.n())), lse_cols(lf, to64(c.idx))), tol(dt));
    for (double x : lse_cols(lc, iota(c.n(), c.cap()))) EXPECT_EQ(x, kInf);
  }
}

// Finite differences (f64) of L = sum(o * w) with respect to q (compact), k and v on a tiny case
// with a window, a key prefix and an inactive row.
TEST(RoutedAttention, FiniteDifferencesF64) {
  const DType dt = DType::F64;
  for (int64_t window : {0, 4}) {
    Case c{"finite differences"};
    c.T = 9, c.idx = {1, 4, 5, 8}, c.Hq = 4, c.Hkv = 2, c.D = 5, c.extra = 1, c.window = window;
    c.q_pos0 = 2;
    SCOPED_TRACE(c.str());
    const int64_t cap = c.cap(), Tk = c.tk();
    Buf q(dt, {cap, c.Hq, c.D}), k(dt, {Tk, c.Hkv, c.D}), v(dt, {Tk, c.Hkv, c.D}), w(dt, {cap, c.Hq, c.D});
    q.randn(next_seed());
    k.randn(next_seed());
    v.randn(next_seed());
    w.randn(next_seed());
    Routing rt_(c);
    const AttentionSpec spec = rt_.spec(c);
    Buf o(dt, {cap, c.Hq, c.D}), lse(dt, {c.Hq, cap});
    auto loss = [&] {
      rt::cpu::attention_forward_lse(q, k, v, o, lse, spec);
      return cpu_test::dot(o.values(), w.values());
    };
    loss();
    Buf dq(dt, {cap, c.Hq, c.D}), dk(dt, {Tk, c.Hkv, c.D}), dv(dt, {Tk, c.Hkv, c.D});
    dq.nan();
    dk.nan();
    dv.nan();
    rt::cpu::attention_backward(q, k, v, o, lse, w, dq, dk, dv, spec);
    const std::vector<double> fq = cpu_test::finite_diff(q, loss), fk = cpu_test::finite_diff(k, loss),
                              fv = cpu_test::finite_diff(v, loss);
    EXPECT_LT(rel_err(dq.values(), fq), cpu_test::kFdTol) << "dq";
    EXPECT_LT(rel_err(dk.values(), fk), cpu_test::kFdTol) << "dk";
    EXPECT_LT(rel_err(dv.values(), fv), cpu_test::kFdTol) << "dv";
    // The inactive row does not move the loss.
    for (double x : rows_of(dq, iota(c.n(), cap))) EXPECT_EQ(x, 0.0);
  }
}

// Bad q_index / q_count: rt::Error naming the op and the argument.
TEST(RoutedAttention, Errors) {
  const DType dt = DType::F32;
  const int64_t Tq = 4, Tk = 10, H = 2, D = 8;
  Buf q(dt, {Tq, H, D}), k(dt, {Tk, H, D}), v(dt, {Tk, H, D}), o(dt, {Tq, H, D}), lse(dt, {H, Tq});
  q.randn(next_seed());
  k.randn(next_seed());
  v.randn(next_seed());
  Buf dout(dt, {Tq, H, D}), dq(dt, {Tq, H, D}), dk(dt, {Tk, H, D}), dv(dt, {Tk, H, D});
  dout.randn(next_seed());
  std::vector<int32_t> index = {1, 3, 6, 9}, count = {4};
  std::vector<float> fcount = {4.f};
  auto spec_with = [&](TensorView idx, TensorView cnt) {
    AttentionSpec s;
    s.q_index = idx;
    s.q_count = cnt;
    return s;
  };
  const AttentionSpec good = spec_with(i32_view(index, {4}), i32_view(count, {1}));
  EXPECT_NO_THROW(rt::cpu::attention_forward_lse(q, k, v, o, lse, good));
  EXPECT_NO_THROW(rt::cpu::attention_backward(q, k, v, o, lse, dout, dq, dk, dv, good));

  auto expect_both = [&](const AttentionSpec& s, const char* what, const char* arg) {
    SCOPED_TRACE(what);
    EXPECT_THROW_MSG(rt::cpu::attention_forward_lse(q, k, v, o, lse, s), "attention_forward_lse", arg);
    EXPECT_THROW_MSG(rt::cpu::attention_forward(q, k, v, o, s), "attention", arg);
    EXPECT_THROW_MSG(rt::cpu::attention_backward(q, k, v, o, lse, dout, dq, dk, dv, s), "attention_backward", arg);
  };
  {
    std::vector<int32_t> desc = {1, 5, 3, 9};
    expect_both(spec_with(i32_view(desc, {4}), i32_view(count, {1})), "descending", "'q_index'");
    EXPECT_THROW_MSG(rt::cpu::attention_forward(q, k, v, o, spec_with(i32_view(desc, {4}), i32_view(count, {1}))),
                     "ascending", "entry 1 = 5", "entry 2 = 3");
    std::vector<int32_t> dup = {1, 3, 3, 9};
    expect_both(spec_with(i32_view(dup, {4}), i32_view(count, {1})), "repeated", "ascending");
    // ... but only the active entries count.
    std::vector<int32_t> two = {2};
    EXPECT_NO_THROW(rt::cpu::attention_forward_lse(q, k, v, o, lse, spec_with(i32_view(desc, {4}), i32_view(two, {1}))));
  }
  {
    std::vector<int32_t> neg = {-1, 3, 6, 9};
    expect_both(spec_with(i32_view(neg, {4}), i32_view(count, {1})), "negative", "'q_index'");
  }
  expect_both(spec_with(i32_view(index, {3}), i32_view(count, {1})), "too short", "'q_index' has 3 entries");
  expect_both(spec_with(i32_view(index, {2, 2}), i32_view(count, {1})), "2-D index", "'q_index'");
  {
    std::vector<float> findex = {1, 3, 6, 9};
    expect_both(spec_with(TensorView::contiguous(findex.data(), DType::F32, Device::CPU, {4}), i32_view(count, {1})),
                "f32 index", "'q_index' must have dtype i32");
  }
  expect_both(spec_with(i32_view(index, {4}), TensorView::contiguous(fcount.data(), DType::F32, Device::CPU, {1})),
              "f32 count", "'q_count' must have dtype i32");
  expect_both(spec_with(i32_view(index, {4}), i32_view(index, {2})), "count of 2 elements", "'q_count'");
  expect_both(spec_with(i32_view(index, {4}), TensorView{}), "no count", "'q_count'");
  {
    TensorView dev = i32_view(index, {4});
    dev.device = Device::CUDA;
    expect_both(spec_with(dev, i32_view(count, {1})), "index on a GPU", "'q_index' must be on device cpu");
  }
  // The forward-only routed options: not without routed queries, not in a backward, and an indexed
  // q row must exist.
  std::vector<int32_t> rows_of_q = {0, 1, 2, 3};
  for (const bool indexed : {true, false}) {
    AttentionSpec dense;
    dense.q_indexed = indexed;
    dense.inactive_unwritten = !indexed;
    expect_both(dense, "routed options without q_index", "apply to routed queries only");
    AttentionSpec routed = spec_with(i32_view(rows_of_q, {4}), i32_view(count, {1}));
    routed.q_indexed = indexed;
    routed.inactive_unwritten = !indexed;
    EXPECT_NO_THROW(rt::cpu::attention_forward_lse(q, k, v, o, lse, routed));
    EXPECT_THROW_MSG(rt::cpu::attention_backward(q, k, v, o, lse, dout, dq, dk, dv, routed), "attention_backward",
                     "forward-only");
  }
  {
    AttentionSpec past = good;  // entries 6 and 9 name rows of a 4-row q
    past.q_indexed = true;
    EXPECT_THROW_MSG(rt::cpu::attention_forward(q, k, v, o, past), "attention", "entry 2 is 6", "which has 4 rows");
  }
}

// ---- The Ops defaults (host read-back) on the CPU backend. ----

// T random 0/1 flags (about p ones) in the accum dtype of ops.
Buf random_flags(DType dt, int64_t T, double p, uint64_t seed) {
  Buf f(dt, {T});
  std::mt19937_64 rng(seed);
  std::bernoulli_distribution one(p);
  for (int64_t t = 0; t < T; ++t) f.put(t, one(rng) ? 1.0 : 0.0);
  return f;
}

TEST(RoutedRowsOps, CompactRows) {
  for (DType dt : {DType::F32, DType::F64}) {
    const auto ops = rt::make_cpu_ops(dt);
    for (int64_t T : {0, 1, 7, 130})
      for (double p : {0.0, 0.3, 1.0}) {
        SCOPED_TRACE("T " + std::to_string(T) + " p " + std::to_string(p));
        const Buf flags = random_flags(dt, T, p, next_seed());
        std::vector<int32_t> index(static_cast<size_t>(T), -77), count = {-77};
        ops->compact_rows(flags, i32_view(index, {T}), i32_view(count, {1}));
        std::vector<int32_t> want;
        for (int64_t t = 0; t < T; ++t)
          if (flags.get(t) != 0) want.push_back(static_cast<int32_t>(t));
        ASSERT_EQ(count[0], static_cast<int32_t>(want.size()));
        for (size_t i = 0; i < index.size(); ++i) EXPECT_EQ(index[i], i < want.size() ? want[i] : 0) << "entry " << i;
      }
  }
}

TEST(RoutedRowsOps, GatherAndScatterAddRows) {
  for (DType dt : {DType::F32, DType::F64}) {
    const auto ops = rt::make_cpu_ops(dt);
    const int64_t T = 57, C = 24;
    const Buf flags = random_flags(dt, T, 0.4, next_seed());
    std::vector<int32_t> index(static_cast<size_t>(T)), count(1);
    ops->compact_rows(flags, i32_view(index, {T}), i32_view(count, {1}));
    const int64_t n = count[0];
    ASSERT_GT(n, 0);
    ASSERT_LT(n, T);
    Buf x(dt, {T, C}), out(dt, {T, C});
    x.randn(next_seed());
    out.nan();
    ops->gather_rows(x, i32_view(index, {T}), i32_view(count, {1}), out);
    for (int64_t i = 0; i < T; ++i)
      for (int64_t c = 0; c < C; ++c)
        ASSERT_EQ(out.get(i * C + c), i < n ? x.get(index[static_cast<size_t>(i)] * C + c) : 0.0)
            << "row " << i << " col " << c;

    Buf src(dt, {T, C}), dst(dt, {T, C});
    src.randn(next_seed());
    dst.randn(next_seed());
    const std::vector<double> before = dst.values();
    ops->scatter_add_rows(src, i32_view(index, {T}), i32_view(count, {1}), dst);
    std::vector<double> want = before;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t c = 0; c < C; ++c) {
        double& d = want[static_cast<size_t>(index[static_cast<size_t>(i)] * C + c)];
        d = dt == DType::F32 ? static_cast<double>(static_cast<float>(d) + static_cast<float>(src.get(i * C + c)))
                             : d + src.get(i * C + c);
      }
    const std::vector<double> got = dst.values();
    for (size_t e = 0; e < got.size(); ++e) ASSERT_EQ(got[e], want[e]) << "element " << e;

    // Fewer rows than the count: the count is clamped to the rows (as on CUDA).
    Buf small(dt, {n / 2, C});
    small.nan();
    ops->gather_rows(x, i32_view(index, {T}), i32_view(count, {1}), small);
    for (int64_t i = 0; i < n / 2; ++i)
      for (int64_t c = 0; c < C; ++c) ASSERT_EQ(small.get(i * C + c), x.get(index[static_cast<size_t>(i)] * C + c));
    Buf dst2(dt, {T, C});
    dst2.randn(next_seed());
    const std::vector<double> before2 = dst2.values();
    ops->scatter_add_rows(small, i32_view(index, {T}), i32_view(count, {1}), dst2);
    int64_t changed = 0;
    for (int64_t e = 0; e < T * C; ++e) changed += dst2.get(e) != before2[static_cast<size_t>(e)];
    EXPECT_LE(changed, n / 2 * C);
  }
}

TEST(RoutedRowsOps, RowDotRows) {
  for (DType dt : {DType::F32, DType::F64}) {
    const auto ops = rt::make_cpu_ops(dt);
    const int64_t T = 61, C = 20, extra = 3;  // (61: the error message below)
    const Buf flags = random_flags(dt, T, 0.4, next_seed());
    std::vector<int32_t> index(static_cast<size_t>(T), 0), count(1);
    ops->compact_rows(flags, i32_view(index, {T}), i32_view(count, {1}));
    const int64_t n = count[0];
    ASSERT_GT(n, 0);
    // The rows past the count hold NaN: they must not be read, and out's other entries stay.
    Buf a(dt, {n + extra, C}), b(dt, {n + extra, C}), out(dt, {T});
    a.randn(next_seed());
    b.randn(next_seed());
    for (int64_t e = n * C; e < (n + extra) * C; ++e) a.put(e, std::nan(""));
    out.randn(next_seed());
    const std::vector<double> before = out.values();
    ops->row_dot_rows(a, b, i32_view(index, {n + extra}), i32_view(count, {1}), out);
    std::vector<double> want = before;
    for (int64_t i = 0; i < n; ++i) {
      double dot = 0;
      for (int64_t c = 0; c < C; ++c) dot += a.get(i * C + c) * b.get(i * C + c);
      want[static_cast<size_t>(index[static_cast<size_t>(i)])] += dot;
    }
    EXPECT_LT(rel_err(out.values(), want), dt == DType::F64 ? 1e-14 : 1e-6);
    for (int64_t t = 0; t < T; ++t)
      if (flags.get(t) == 0) ASSERT_EQ(out.get(t), before[static_cast<size_t>(t)]) << "unrouted row " << t;
    // A count past the index entries is clamped to them; an entry out of [0, T) is refused.
    std::vector<int32_t> bad = index;
    bad[0] = static_cast<int32_t>(T);
    EXPECT_THROW_MSG(ops->row_dot_rows(a, b, i32_view(bad, {n + extra}), i32_view(count, {1}), out), "row_dot_rows",
                     "routed index 0 is 61", "expected ascending values in [0, 61)");
  }
}

TEST(RoutedRowsOps, RopeRows) {
  for (DType dt : {DType::F32, DType::F64}) {
    const auto ops = rt::make_cpu_ops(dt);
    const int64_t T = 130, H = 3, D = 24, extra = 5, pos0 = 17;
    const double theta = 10000.0;
    const Buf flags = random_flags(dt, T, 0.5, next_seed());
    std::vector<int32_t> index(static_cast<size_t>(T + extra), 0), count(1);
    ops->compact_rows(flags, i32_view(index, {T}), i32_view(count, {1}));
    const int64_t n = count[0];
    // A full [T, H, D] tensor roped at pos0.., and its routed rows (plus `extra` rows past the count).
    Buf full(dt, {T, H, D}), roped(dt, {T, H, D}), rows(dt, {n + extra, H, D});
    full.randn(next_seed());
    roped.set(full.values());
    ops->rope(roped, pos0, theta);
    rows.randn(next_seed());
    for (int64_t i = 0; i < n; ++i)
      for (int64_t e = 0; e < H * D; ++e) rows.put(i * H * D + e, full.get(index[static_cast<size_t>(i)] * H * D + e));
    const std::vector<double> orig = rows.values();
    const TensorView iv = i32_view(index, {n + extra}), cv = i32_view(count, {1});
    ops->rope_rows(rows, iv, cv, pos0, theta, false);
    for (int64_t i = 0; i < n + extra; ++i)
      for (int64_t e = 0; e < H * D; ++e) {
        const double want = i < n ? roped.get(index[static_cast<size_t>(i)] * H * D + e) : orig[static_cast<size_t>(i * H * D + e)];
        ASSERT_EQ(rows.get(i * H * D + e), want) << "row " << i << " elem " << e;
      }
    ops->rope_rows(rows, iv, cv, pos0, theta, true);  // the inverse rotation
    EXPECT_LT(rel_err(rows.values(), orig), dt == DType::F64 ? 1e-14 : 1e-6);
  }
}

}  // namespace
