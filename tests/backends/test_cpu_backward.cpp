// Gradient checks of the CPU backward ops (backends/cpu) by central finite differences in f64
// (rt::make_cpu_ops(DType::F64)): for a scalar loss L = sum(out * R) with random R (for the fused
// cross-entropy, L = grad_scale * sum(losses)), the analytic gradient of every input must match
// the finite differences of the op's own forward to a relative (Frobenius) error < 1e-6.
// Inputs are random normal (fixed seeds) of ragged sizes. "=" outputs are pre-filled with NaN,
// "+=" outputs with random values (the check is on the difference); empty output views must be
// skipped without changing the other outputs.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "cpu/cpu_ops.h"
#include "cpu/kernels.h"
#include "cpu_test_util.h"

namespace {

using namespace cpu_test;
using rt::AttentionSpec;

constexpr DType F64 = DType::F64;

struct Backward : ::testing::Test {
  std::unique_ptr<rt::Ops> ops = rt::make_cpu_ops(DType::F64);
};

// Sets the cross-entropy chunk size for one scope.
struct ChunkElems {
  int64_t old;
  explicit ChunkElems(int64_t elems) : old(rt::cpu::set_cross_entropy_chunk_elems(elems)) {}
  ~ChunkElems() { rt::cpu::set_cross_entropy_chunk_elems(old); }
};

// ---------------------------------------------------------------------------------------------
// linear

void check_linear(rt::Ops& ops, int64_t N, int64_t in, int64_t out, bool bias, uint64_t seed) {
  SCOPED_TRACE("linear N " + std::to_string(N) + " in " + std::to_string(in) + " out " + std::to_string(out) +
               (bias ? " bias" : ""));
  Buf x(F64, {N, in}), w(F64, {out, in}), b(F64, {out}), y(F64, {N, out});
  x.randn(seed);
  w.randn(seed + 1);
  b.randn(seed + 2);
  const std::vector<double> R = randn_f64(static_cast<size_t>(N * out), seed + 3);
  const TensorView bv = bias ? b.v : TensorView{};
  auto loss = [&] {
    y.nan();
    ops.linear(x, w, bv, y);
    return dot(y.values(), R);
  };
  Buf dy(F64, {N, out}), dx(F64, {N, in}), dw(F64, {out, in}), db(F64, {out});
  dy.set(R);
  dx.nan();
  dw.randn(seed + 4);
  db.randn(seed + 5);
  const std::vector<double> dw0 = dw.values(), db0 = db.values();
  ops.linear_backward(x, w, dy, dx, dw, bias ? db.v : TensorView{}, false);
  EXPECT_LT(rel_err(dx.values(), finite_diff(x, loss)), kFdTol) << "dx";
  EXPECT_LT(rel_err(minus(dw.values(), dw0), finite_diff(w, loss)), kFdTol) << "dw (+=)";
  if (bias) {
    EXPECT_LT(rel_err(minus(db.values(), db0), finite_diff(b, loss)), kFdTol) << "db (+=)";
  } else {
    EXPECT_EQ(db.values(), db0);
  }
  // accumulate_dx: dx += dy W.
  Buf dx2(F64, {N, in});
  dx2.randn(seed + 6);
  const std::vector<double> p = dx2.values();
  ops.linear_backward(x, w, dy, dx2, TensorView{}, TensorView{}, true);
  EXPECT_LT(rel_err(minus(dx2.values(), p), dx.values()), 1e-13) << "dx (+=)";
}

TEST_F(Backward, Linear) {
  check_linear(*ops, 7, 12, 9, true, 10);
  check_linear(*ops, 13, 12, 20, true, 20);
  check_linear(*ops, 13, 12, 5, false, 30);
  check_linear(*ops, 1, 7, 3, true, 40);
}

// Large enough for the threaded paths (rows split and columns split), against plain loops.
TEST_F(Backward, LinearThreadedMatchesLoops) {
  for (auto [N, in, out] : std::vector<std::array<int64_t, 3>>{{70, 80, 90}, {3, 200, 700}}) {
    SCOPED_TRACE("N " + std::to_string(N));
    Buf x(F64, {N, in}), w(F64, {out, in}), dy(F64, {N, out}), dx(F64, {N, in}), dw(F64, {out, in}), db(F64, {out});
    x.randn(1);
    w.randn(2);
    dy.randn(3);
    dx.nan();
    dw.randn(4);
    db.randn(5);
    const std::vector<double> X = x.values(), W = w.values(), DY = dy.values(), dw0 = dw.values(), db0 = db.values();
    ops->linear_backward(x, w, dy, dx, dw, db, false);
    std::vector<double> rx(static_cast<size_t>(N * in), 0.0), rw(static_cast<size_t>(out * in), 0.0),
        rb(static_cast<size_t>(out), 0.0);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t o = 0; o < out; ++o) {
        const double g = DY[n * out + o];
        rb[o] += g;
        for (int64_t i = 0; i < in; ++i) {
          rx[n * in + i] += g * W[o * in + i];
          rw[o * in + i] += g * X[n * in + i];
        }
      }
    EXPECT_LT(rel_err(dx.values(), rx), 1e-13);
    EXPECT_LT(rel_err(minus(dw.values(), dw0), rw), 1e-13);
    EXPECT_LT(rel_err(minus(db.values(), db0), rb), 1e-13);
  }
}

TEST_F(Backward, LinearEmptyViews) {
  const int64_t N = 9, in = 12, out = 10;
  Buf x(F64, {N, in}), w(F64, {out, in}), dy(F64, {N, out});
  x.randn(1);
  w.randn(2);
  dy.randn(3);
  Buf dx(F64, {N, in}), dw(F64, {out, in}), db(F64, {out});
  dx.nan();
  dw.randn(4);
  db.randn(5);
  ops->linear_backward(x, w, dy, dx, dw, db, false);
  for (int which = 0; which < 3; ++which) {
    Buf dx2(F64, {N, in}), dw2(F64, {out, in}), db2(F64, {out});
    dx2.nan();
    dw2.randn(4);
    db2.randn(5);
    const std::vector<double> dx0 = dx2.values(), dw0 = dw2.values(), db0 = db2.values();
    ops->linear_backward(x, w, dy, which == 0 ? dx2.v : TensorView{}, which == 1 ? dw2.v : TensorView{},
                         which == 2 ? db2.v : TensorView{}, false);
    if (which == 0) {
      EXPECT_EQ(dx2.values(), dx.values());
    }
    if (which == 1) {
      EXPECT_EQ(dw2.values(), dw.values());
    }
    if (which == 2) {
      EXPECT_EQ(db2.values(), db.values());
    }
    // The skipped outputs are untouched.
    for (size_t i = 0; which != 0 && i < dx0.size(); ++i) ASSERT_TRUE(std::isnan(dx2.values()[i]));
    if (which != 1) {
      EXPECT_EQ(dw2.values(), dw0);
    }
    if (which != 2) {
      EXPECT_EQ(db2.values(), db0);
    }
  }
  ops->linear_backward(x, w, dy, TensorView{}, TensorView{}, TensorView{}, false);  // nothing to do
}

// ---------------------------------------------------------------------------------------------
// rmsnorm

void check_rmsnorm(rt::Ops& ops, Buf& x, int64_t d, float eps, uint64_t seed) {
  SCOPED_TRACE("rmsnorm " + x.v.shape_str());
  Buf w(F64, {d}), y(F64, {x.numel()});
  w.randn(seed, 0.5, 1.0);
  const TensorView yv = [&] {
    TensorView v = x.v;
    v.data = y.v.data;
    return v;
  }();
  const std::vector<double> R = randn_f64(static_cast<size_t>(x.numel()), seed + 1);
  auto loss = [&] {
    y.nan();
    ops.rmsnorm(x, w, eps, yv);
    return dot(y.values(), R);
  };
  Buf dyb(F64, {x.numel()}), dxb(F64, {x.numel()}), dw(F64, {d});
  dyb.set(R);
  dxb.randn(seed + 2);
  dw.randn(seed + 3);
  TensorView dy = x.v, dx = x.v;
  dy.data = dyb.v.data;
  dx.data = dxb.v.data;
  const std::vector<double> dx0 = dxb.values(), dw0 = dw.values();
  ops.rmsnorm_backward(x, w, eps, dy, dx, dw);
  EXPECT_LT(rel_err(minus(dxb.values(), dx0), finite_diff(x, loss)), kFdTol) << "dx (+=)";
  EXPECT_LT(rel_err(minus(dw.values(), dw0), finite_diff(w, loss)), kFdTol) << "dw (+=)";

  // Empty views: dx only, dw only.
  Buf dxb2(F64, {x.numel()}), dw2(F64, {d});
  dxb2.randn(seed + 2);
  dw2.randn(seed + 3);
  TensorView dx2 = x.v;
  dx2.data = dxb2.v.data;
  ops.rmsnorm_backward(x, w, eps, dy, dx2, TensorView{});
  EXPECT_EQ(dxb2.values(), dxb.values());
  EXPECT_EQ(dw2.values(), dw0);
  ops.rmsnorm_backward(x, w, eps, dy, TensorView{}, dw2);
  EXPECT_EQ(dw2.values(), dw.values());
}

TEST_F(Backward, RmsNorm) {
  {
    Buf x(F64, {7, 12});
    x.randn(1);
    check_rmsnorm(*ops, x, 12, 1e-5f, 10);
  }
  {
    Buf x(F64, {13, 12});
    x.randn(2, 0.1);  // small rows: eps matters
    check_rmsnorm(*ops, x, 12, 1e-2f, 20);
  }
  {
    Buf x(F64, {2, 3, 8});
    x.randn(3);
    check_rmsnorm(*ops, x, 8, 1e-6f, 30);
  }
  {
    Buf x(F64, {70, 12});  // several blocks of rows for dw
    x.randn(4);
    check_rmsnorm(*ops, x, 12, 1e-6f, 40);
  }
}

// ---------------------------------------------------------------------------------------------
// rope

TEST_F(Backward, Rope) {
  for (auto [T, H, D, pos0] : std::vector<std::array<int64_t, 4>>{{7, 3, 8, 0}, {13, 2, 12, 1000}, {5, 1, 2, 31}}) {
    SCOPED_TRACE("rope T " + std::to_string(T) + " pos0 " + std::to_string(pos0));
    const double theta = 10000.0;
    Buf x(F64, {T, H, D}), y(F64, {T, H, D});
    x.randn(static_cast<uint64_t>(T + pos0));
    const std::vector<double> R = randn_f64(static_cast<size_t>(T * H * D), 7);
    auto loss = [&] {
      y.set(x.values());
      ops->rope(y, pos0, theta);
      return dot(y.values(), R);
    };
    Buf dx(F64, {T, H, D});
    dx.set(R);
    ops->rope_backward(dx, pos0, theta);
    EXPECT_LT(rel_err(dx.values(), finite_diff(x, loss)), kFdTol);
    // rope_backward undoes rope (a rotation): the round trip is the identity.
    y.set(x.values());
    ops->rope(y, pos0, theta);
    ops->rope_backward(y, pos0, theta);
    EXPECT_LT(rel_err(y.values(), x.values()), 1e-14);
  }
}

// ---------------------------------------------------------------------------------------------
// swiglu

TEST_F(Backward, Swiglu) {
  for (auto [R_, C] : std::vector<std::array<int64_t, 2>>{{7, 12}, {13, 5}}) {
    Buf gate(F64, {R_, C}), up(F64, {R_, C}), out(F64, {R_, C});
    gate.randn(static_cast<uint64_t>(R_), 2.0);
    up.randn(static_cast<uint64_t>(C));
    const std::vector<double> R = randn_f64(static_cast<size_t>(R_ * C), 3);
    auto loss = [&] {
      out.nan();
      ops->swiglu(gate, up, out);
      return dot(out.values(), R);
    };
    Buf dout(F64, {R_, C}), dgate(F64, {R_, C}), dup(F64, {R_, C});
    dout.set(R);
    dgate.nan();
    dup.nan();
    ops->swiglu_backward(gate, up, dout, dgate, dup);
    EXPECT_LT(rel_err(dgate.values(), finite_diff(gate, loss)), kFdTol) << "dgate";
    EXPECT_LT(rel_err(dup.values(), finite_diff(up, loss)), kFdTol) << "dup";

    // In place: dgate == gate, dup == up.
    Buf g2(F64, {R_, C}), u2(F64, {R_, C});
    g2.set(gate.values());
    u2.set(up.values());
    ops->swiglu_backward(g2, u2, dout, g2, u2);
    EXPECT_EQ(g2.values(), dgate.values());
    EXPECT_EQ(u2.values(), dup.values());
    // Empty views.
    Buf dg3(F64, {R_, C}), du3(F64, {R_, C});
    dg3.nan();
    du3.nan();
    ops->swiglu_backward(gate, up, dout, dg3, TensorView{});
    EXPECT_EQ(dg3.values(), dgate.values());
    ops->swiglu_backward(gate, up, dout, TensorView{}, du3);
    EXPECT_EQ(du3.values(), dup.values());
    ops->swiglu_backward(gate, up, dout, TensorView{}, TensorView{});
  }
}

// ---------------------------------------------------------------------------------------------
// embedding

TEST_F(Backward, Embedding) {
  const int64_t V = 10, d = 12;
  const std::vector<int32_t> id_list = {3, 1, 3, 0, 9, 3, 7, 1, 9, 2, 3, 8, 0};  // repeats
  const int64_t T = static_cast<int64_t>(id_list.size());
  Buf table(F64, {V, d}), ids(DType::I32, {T}), out(F64, {T, d});
  table.randn(1);
  for (int64_t t = 0; t < T; ++t) ids.put(t, id_list[static_cast<size_t>(t)]);
  const std::vector<double> R = randn_f64(static_cast<size_t>(T * d), 2);
  auto loss = [&] {
    out.nan();
    ops->embedding(table, ids, out);
    return dot(out.values(), R);
  };
  Buf dout(F64, {T, d}), dtable(F64, {V, d});
  dout.set(R);
  dtable.randn(3);
  const std::vector<double> d0 = dtable.values();
  ops->embedding_backward(ids, dout, dtable);
  EXPECT_LT(rel_err(minus(dtable.values(), d0), finite_diff(table, loss)), kFdTol);
  // Rows of unused ids (4, 5, 6) are untouched.
  for (int64_t r : {4, 5, 6})
    for (int64_t c = 0; c < d; ++c) EXPECT_EQ(dtable.get(r * d + c), d0[static_cast<size_t>(r * d + c)]);
  ops->embedding_backward(ids, dout, TensorView{});  // empty: nothing
}

// ---------------------------------------------------------------------------------------------
// sigmoid, row_scale / row_dot

TEST_F(Backward, Sigmoid) {
  for (float scale : {1.f, 1.7f, -0.6f}) {
    Buf x(F64, {7, 12}), y(F64, {7, 12}), y_fd(F64, {7, 12});
    x.randn(5, 2.0);
    const std::vector<double> R = randn_f64(84, 6);
    auto loss = [&] {
      y_fd.nan();
      ops->sigmoid(x, scale, y_fd);
      return dot(y_fd.values(), R);
    };
    y.nan();
    ops->sigmoid(x, scale, y);
    Buf dy(F64, {7, 12}), dx(F64, {7, 12});
    dy.set(R);
    dx.nan();
    ops->sigmoid_backward(y, dy, scale, dx);
    EXPECT_LT(rel_err(dx.values(), finite_diff(x, loss)), kFdTol) << "scale " << scale;
  }
}

// out = row_scale(x, s): dL/dx = row_scale(R, s), dL/ds = row_dot(R, x).
TEST_F(Backward, RowScaleGradientsAreRowScaleAndRowDot) {
  const int64_t R_ = 7, C = 12;
  Buf x(F64, {R_, C}), s(F64, {R_}), out(F64, {R_, C});
  x.randn(1);
  s.randn(2);
  const std::vector<double> R = randn_f64(static_cast<size_t>(R_ * C), 3);
  auto loss = [&] {
    out.nan();
    ops->row_scale(x, s, out);
    return dot(out.values(), R);
  };
  Buf dout(F64, {R_, C}), dx(F64, {R_, C}), ds(F64, {R_});
  dout.set(R);
  dx.nan();
  ds.randn(4);
  const std::vector<double> ds0 = ds.values();
  ops->row_scale(dout, s, dx);
  ops->row_dot(dout, x, ds, /*accumulate=*/true);
  EXPECT_LT(rel_err(dx.values(), finite_diff(x, loss)), kFdTol);
  EXPECT_LT(rel_err(minus(ds.values(), ds0), finite_diff(s, loss)), kFdTol);
}

// ---------------------------------------------------------------------------------------------
// attention

struct AttnCase {
  std::string name;
  int64_t Tq, Tk, Hq, Hkv, D;
  bool causal = true;
  int64_t window = 0, q_pos0 = 0, k_pos0 = 0;
  float scale = 0.f;
  AttentionSpec spec() const {
    AttentionSpec s;
    s.causal = causal;
    s.window = window;
    s.q_pos0 = q_pos0;
    s.k_pos0 = k_pos0;
    s.scale = scale;
    return s;
  }
  bool visible(int64_t i, int64_t j) const {
    const int64_t qp = q_pos0 + i, kp = k_pos0 + j;
    if (causal && kp > qp) return false;
    if (window > 0 && kp <= qp - window) return false;
    return true;
  }
  std::string str() const {
    std::ostringstream os;
    os << name << ": Tq " << Tq << " Tk " << Tk << " Hq " << Hq << " Hkv " << Hkv << " D " << D
       << (causal ? " causal" : " non-causal") << " window " << window << " q_pos0 " << q_pos0 << " k_pos0 "
       << k_pos0 << " scale " << scale;
    return os.str();
  }
};

void check_attention(rt::Ops& ops, const AttnCase& c, uint64_t seed) {
  SCOPED_TRACE(c.str());
  const AttentionSpec spec = c.spec();
  Buf q(F64, {c.Tq, c.Hq, c.D}), k(F64, {c.Tk, c.Hkv, c.D}), v(F64, {c.Tk, c.Hkv, c.D});
  Buf o(F64, {c.Tq, c.Hq, c.D}), lse(F64, {c.Hq, c.Tq}), o_fd(F64, {c.Tq, c.Hq, c.D});
  q.randn(seed);
  k.randn(seed + 1);
  v.randn(seed + 2);
  const std::vector<double> R = randn_f64(static_cast<size_t>(c.Tq * c.Hq * c.D), seed + 3);
  auto loss = [&] {
    o_fd.nan();
    ops.attention(q, k, v, o_fd, spec);
    return dot(o_fd.values(), R);
  };
  loss();
  const std::vector<double> o_plain = o_fd.values();
  o.nan();
  lse.nan();
  ops.attention_forward_lse(q, k, v, o, lse, spec);
  EXPECT_EQ(o.values(), o_plain) << "attention_forward_lse and attention differ";

  // lse against a direct log-sum-exp; +inf for rows that see no key.
  const double scale = c.scale != 0.f ? c.scale : 1.0 / std::sqrt(static_cast<double>(c.D));
  const int64_t g = c.Hq / c.Hkv;
  std::vector<double> lse_ref(static_cast<size_t>(c.Hq * c.Tq));
  std::vector<bool> no_key(static_cast<size_t>(c.Tq), true);
  for (int64_t h = 0; h < c.Hq; ++h)
    for (int64_t i = 0; i < c.Tq; ++i) {
      double sum = 0;
      for (int64_t j = 0; j < c.Tk; ++j) {
        if (!c.visible(i, j)) continue;
        no_key[static_cast<size_t>(i)] = false;
        double s = 0;
        for (int64_t e = 0; e < c.D; ++e) s += q.get((i * c.Hq + h) * c.D + e) * k.get((j * c.Hkv + h / g) * c.D + e);
        sum += std::exp(s * scale);
      }
      lse_ref[static_cast<size_t>(h * c.Tq + i)] = sum > 0 ? std::log(sum) : kInf;
    }
  EXPECT_LT(rel_err(lse.values(), lse_ref), 1e-13) << "lse";
  for (int64_t h = 0; h < c.Hq; ++h)
    for (int64_t i = 0; i < c.Tq; ++i)
      if (no_key[static_cast<size_t>(i)]) {
        EXPECT_EQ(lse.get(h * c.Tq + i), kInf) << "row " << i;
      }

  Buf dout(F64, {c.Tq, c.Hq, c.D}), dq(F64, {c.Tq, c.Hq, c.D}), dk(F64, {c.Tk, c.Hkv, c.D}),
      dv(F64, {c.Tk, c.Hkv, c.D});
  dout.set(R);
  dq.nan();
  dk.nan();
  dv.nan();
  ops.attention_backward(q, k, v, o, lse, dout, dq, dk, dv, spec);
  EXPECT_LT(rel_err(dq.values(), finite_diff(q, loss)), kFdTol) << "dq";
  EXPECT_LT(rel_err(dk.values(), finite_diff(k, loss)), kFdTol) << "dk";
  EXPECT_LT(rel_err(dv.values(), finite_diff(v, loss)), kFdTol) << "dv";
  for (int64_t i = 0; i < c.Tq; ++i) {
    if (!no_key[static_cast<size_t>(i)]) continue;
    for (int64_t e = 0; e < c.Hq * c.D; ++e) ASSERT_EQ(dq.get(i * c.Hq * c.D + e), 0.0) << "row " << i;
  }

  // An empty lse (recomputed) gives the same gradients; empty outputs are skipped.
  Buf dq2(F64, {c.Tq, c.Hq, c.D}), dk2(F64, {c.Tk, c.Hkv, c.D}), dv2(F64, {c.Tk, c.Hkv, c.D});
  dq2.nan();
  dk2.nan();
  dv2.nan();
  ops.attention_backward(q, k, v, o, TensorView{}, dout, dq2, dk2, dv2, spec);
  EXPECT_LT(rel_err(dq2.values(), dq.values()), 1e-13);
  EXPECT_LT(rel_err(dk2.values(), dk.values()), 1e-13);
  EXPECT_LT(rel_err(dv2.values(), dv.values()), 1e-13);
  for (int which = 0; which < 3; ++which) {
    Buf a(F64, {c.Tq, c.Hq, c.D}), b(F64, {c.Tk, c.Hkv, c.D}), cc(F64, {c.Tk, c.Hkv, c.D});
    a.nan();
    b.nan();
    cc.nan();
    ops.attention_backward(q, k, v, o, lse, dout, which == 0 ? a.v : TensorView{}, which == 1 ? b.v : TensorView{},
                           which == 2 ? cc.v : TensorView{}, spec);
    if (which == 0) {
      EXPECT_EQ(a.values(), dq.values());
    }
    if (which == 1) {
      EXPECT_EQ(b.values(), dk.values());
    }
    if (which == 2) {
      EXPECT_EQ(cc.values(), dv.values());
    }
    if (which != 0) {
      EXPECT_TRUE(std::isnan(a.get(0)));
    }
    if (which != 1) {
      EXPECT_TRUE(std::isnan(b.get(0)));
    }
    if (which != 2) {
      EXPECT_TRUE(std::isnan(cc.get(0)));
    }
  }
}

TEST_F(Backward, AttentionCausal) {
  check_attention(*ops, {"causal gqa 3", 7, 7, 6, 2, 8}, 100);
  check_attention(*ops, {"causal", 13, 13, 3, 3, 8}, 110);
  check_attention(*ops, {"causal gqa 6, scale", 13, 13, 6, 1, 8, true, 0, 0, 0, 0.3f}, 120);
}

TEST_F(Backward, AttentionWindow) {
  check_attention(*ops, {"window T < W", 7, 7, 6, 2, 8, true, 9}, 200);
  check_attention(*ops, {"window T = W", 7, 7, 3, 3, 8, true, 7}, 210);
  check_attention(*ops, {"window T > W", 13, 13, 6, 2, 8, true, 4}, 220);
  check_attention(*ops, {"window 1", 7, 7, 3, 3, 8, true, 1}, 230);
}

TEST_F(Backward, AttentionNonCausal) {
  check_attention(*ops, {"non-causal", 7, 13, 6, 2, 8, false}, 300);
  check_attention(*ops, {"non-causal window", 13, 13, 3, 3, 8, false, 5}, 310);
}

TEST_F(Backward, AttentionOffsets) {
  // Queries continuing after cached keys (q_pos0), with and without a window.
  check_attention(*ops, {"q_pos0", 5, 13, 6, 2, 8, true, 0, 8, 0}, 400);
  check_attention(*ops, {"q_pos0 window", 5, 13, 3, 3, 8, true, 6, 8, 0}, 410);
  // Keys start after the first queries (k_pos0): rows 0..2 see no key.
  check_attention(*ops, {"k_pos0 rows without keys", 7, 9, 6, 2, 8, true, 0, 0, 3}, 420);
  check_attention(*ops, {"both offsets window", 7, 13, 3, 3, 8, true, 4, 10, 5}, 430);
}

// ---------------------------------------------------------------------------------------------
// lm_head_cross_entropy

struct CeCase {
  std::string name;
  int64_t hidden, V;
  std::vector<int32_t> targets;
  float grad_scale;
  int64_t chunk_elems;      // 0: the default
  int64_t w_fd_samples = 0;  // 0: every coordinate of w
};

void check_cross_entropy(rt::Ops& ops, const CeCase& c, uint64_t seed) {
  SCOPED_TRACE(c.name);
  std::unique_ptr<ChunkElems> chunk;
  if (c.chunk_elems) chunk = std::make_unique<ChunkElems>(c.chunk_elems);
  const int64_t N = static_cast<int64_t>(c.targets.size()), H = c.hidden, V = c.V;
  Buf h(F64, {N, H}), w(F64, {V, H}), t(DType::I32, {N}), losses(F64, {N}), losses_fd(F64, {N});
  h.randn(seed);
  w.randn(seed + 1, 0.7);
  for (int64_t n = 0; n < N; ++n) t.put(n, c.targets[static_cast<size_t>(n)]);
  auto loss = [&] {
    losses_fd.nan();
    ops.lm_head_cross_entropy(h, w, t, c.grad_scale, losses_fd, TensorView{}, TensorView{});
    double s = 0;
    for (double l : losses_fd.values()) s += l;
    return c.grad_scale * s;
  };
  loss();
  losses.set(losses_fd.values());
  // Losses against a direct computation.
  std::vector<double> ref(static_cast<size_t>(N), 0.0);
  for (int64_t n = 0; n < N; ++n) {
    if (c.targets[static_cast<size_t>(n)] == -100) continue;
    std::vector<double> z(static_cast<size_t>(V));
    double m = -kInf;
    for (int64_t v = 0; v < V; ++v) {
      double s = 0;
      for (int64_t e = 0; e < H; ++e) s += h.get(n * H + e) * w.get(v * H + e);
      z[static_cast<size_t>(v)] = s;
      m = std::max(m, s);
    }
    double sum = 0;
    for (double zz : z) sum += std::exp(zz - m);
    ref[static_cast<size_t>(n)] = m + std::log(sum) - z[static_cast<size_t>(c.targets[static_cast<size_t>(n)])];
  }
  EXPECT_LT(rel_err(losses.values(), ref), 1e-13) << "losses";
  for (int64_t n = 0; n < N; ++n)
    if (c.targets[static_cast<size_t>(n)] == -100) {
      EXPECT_EQ(losses.get(n), 0.0) << "ignored row " << n;
    }

  Buf dh(F64, {N, H}), dw(F64, {V, H});
  dh.nan();
  dw.randn(seed + 2);
  const std::vector<double> dw0 = dw.values();
  losses.nan();
  ops.lm_head_cross_entropy(h, w, t, c.grad_scale, losses, dh, dw);
  EXPECT_LT(rel_err(losses.values(), ref), 1e-13) << "losses with gradients";
  EXPECT_LT(rel_err(dh.values(), finite_diff(h, loss)), kFdTol) << "dh";
  std::vector<int64_t> coords;
  if (c.w_fd_samples) {
    std::mt19937_64 rng(seed + 3);
    std::uniform_int_distribution<int64_t> ud(0, V * H - 1);
    for (int64_t i = 0; i < c.w_fd_samples; ++i) coords.push_back(ud(rng));
    for (int64_t n = 0; n < N; ++n)  // the target rows, where the one-hot term lands
      if (c.targets[static_cast<size_t>(n)] >= 0) coords.push_back(c.targets[static_cast<size_t>(n)] * H);
  }
  EXPECT_LT(rel_err(pick(minus(dw.values(), dw0), coords), finite_diff(w, loss, coords)), kFdTol) << "dw (+=)";
  for (int64_t n = 0; n < N; ++n) {
    if (c.targets[static_cast<size_t>(n)] != -100) continue;
    for (int64_t e = 0; e < H; ++e) ASSERT_EQ(dh.get(n * H + e), 0.0) << "ignored row " << n;
  }

  // Empty views: each output alone gives the same values.
  Buf l2(F64, {N}), dh2(F64, {N, H}), dw2(F64, {V, H});
  l2.nan();
  dh2.nan();
  dw2.set(dw0);
  ops.lm_head_cross_entropy(h, w, t, c.grad_scale, TensorView{}, dh2, TensorView{});
  EXPECT_EQ(dh2.values(), dh.values());
  ops.lm_head_cross_entropy(h, w, t, c.grad_scale, TensorView{}, TensorView{}, dw2);
  EXPECT_EQ(dw2.values(), dw.values());
  ops.lm_head_cross_entropy(h, w, t, c.grad_scale, l2, TensorView{}, TensorView{});
  EXPECT_EQ(l2.values(), losses.values());
}

TEST_F(Backward, CrossEntropy) {
  const std::vector<int32_t> t7 = {5, -100, 5, 36, 0, -100, 5};  // ignored rows, repeated targets
  check_cross_entropy(*ops, {"one chunk", 12, 37, t7, 0.37f, 0}, 10);
  check_cross_entropy(*ops, {"chunks of 3 rows (ragged)", 12, 37, t7, 0.37f, 3 * 37}, 20);
  check_cross_entropy(*ops, {"V larger than a chunk", 12, 37, t7, 1.f, 10}, 30);
  check_cross_entropy(*ops, {"grad_scale 2.5, no ignored rows", 8, 23, {1, 22, 4, 4, 0}, 2.5f, 0}, 40);
  check_cross_entropy(*ops, {"all rows ignored", 8, 23, {-100, -100, -100}, 1.f, 0}, 50);
  // Several vocabulary tiles (512 rows of w each), 2-row chunks; w checked on sampled coordinates.
  check_cross_entropy(*ops,
                      {"V 1100 (3 tiles)", 12, 1100, {1099, -100, 511, 512, 0, 700, 512, 3, -100, 1023, 1024, 5, 6},
                       0.5f, 2 * 1100, 300},
                      60);
}

}  // namespace
