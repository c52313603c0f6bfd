// Tests of the CPU backend in f64 (rt::make_cpu_ops(DType::F64)) and of its training ops:
//  - the f64 backend: dtypes, copy/fill conversions, forward ops against double references;
//  - f32 vs f64 agreement (relative Frobenius error < 1e-5) of every op, forward and backward,
//    on the same inputs (random values rounded to f32), sizes that take the threaded and tiled paths;
//  - the small training ops (sigmoid, step, row_scale, row_dot, axpby, reduce_sum): semantics,
//    aliasing, "=" vs "+=";
//  - adamw_step against a hand-written reference over 3 steps (weight decay, bias correction,
//    grad_scale), master as the parameter or copied into an f32 / bf16 parameter;
//  - argument errors name the op and the argument.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "cpu/cpu_ops.h"
#include "cpu/kernels.h"
#include "cpu_test_util.h"

namespace {

using namespace cpu_test;
using rt::AttentionSpec;

constexpr DType F32 = DType::F32;
constexpr DType F64 = DType::F64;
constexpr DType BF16 = DType::BF16;
constexpr DType F16 = DType::F16;

struct ChunkElems {
  int64_t old;
  explicit ChunkElems(int64_t elems) : old(rt::cpu::set_cross_entropy_chunk_elems(elems)) {}
  ~ChunkElems() { rt::cpu::set_cross_entropy_chunk_elems(old); }
};

// ---------------------------------------------------------------------------------------------
// The f64 backend

TEST(CpuF64, MakeCpuOps) {
  auto o32 = rt::make_cpu_ops();
  auto o64 = rt::make_cpu_ops(F64);
  EXPECT_EQ(o32->activation_dtype(), F32);
  EXPECT_EQ(o32->accum_dtype(), F32);
  EXPECT_EQ(o64->activation_dtype(), F64);
  EXPECT_EQ(o64->accum_dtype(), F64);
  EXPECT_EQ(o64->device(), rt::Device::CPU);
  EXPECT_THROW_MSG(rt::make_cpu_ops(BF16), "make_cpu_ops", "bf16");
  // alloc of f64 tensors.
  rt::Tensor t = o64->alloc(F64, {3, 5});
  EXPECT_EQ(t.view.dtype, F64);
  EXPECT_EQ(t.view.nbytes(), 3u * 5u * 8u);
}

TEST(CpuF64, CopyConversions) {
  auto ops = rt::make_cpu_ops(F64);
  Buf src(F64, {9, 13});
  std::mt19937_64 rng(3);
  std::normal_distribution<double> nd(0.0, 3.0);
  for (int64_t i = 0; i < src.numel(); ++i) src.put(i, nd(rng));  // not representable in f32
  for (DType dt : {F64, F32, BF16, F16}) {
    SCOPED_TRACE(rt::dtype_name(dt));
    Buf dst(dt, {9, 13});
    dst.nan();
    ops->copy(src, dst);
    for (int64_t i = 0; i < src.numel(); ++i) {
      const double x = src.get(i);
      const double want = dt == F64 ? x : dt == F32 ? static_cast<double>(static_cast<float>(x))
                                      : dt == BF16 ? rt::bf16_to_f32(rt::f32_to_bf16(static_cast<float>(x)))
                                                   : rt::f16_to_f32(rt::f32_to_f16(static_cast<float>(x)));
      ASSERT_EQ(dst.get(i), want) << i;
    }
    // Back to f64: exact.
    Buf back(F64, {9, 13});
    back.nan();
    ops->copy(dst, back);
    EXPECT_EQ(back.values(), dst.values());
  }
  // Strided f64 source (every other column) into f32, and a strided f64 destination.
  TensorView cols = src.v;
  cols.shape = {9, 6, 0, 0};
  cols.stride = {13, 2, 0, 0};
  Buf d32(F32, {9, 6});
  ops->copy(cols, d32);
  for (int r = 0; r < 9; ++r)
    for (int c = 0; c < 6; ++c) ASSERT_EQ(d32.get(r * 6 + c), static_cast<float>(src.get(r * 13 + 2 * c)));
  Buf wide(F64, {9, 13});
  wide.randn(4);
  const std::vector<double> before = wide.values();
  TensorView odd = wide.v;
  odd.data = wide.f64() + 1;
  odd.shape = {9, 6, 0, 0};
  odd.stride = {13, 2, 0, 0};
  ops->copy(d32, odd);
  for (int r = 0; r < 9; ++r)
    for (int c = 0; c < 13; ++c)
      ASSERT_EQ(wide.get(r * 13 + c), c % 2 ? d32.get(r * 6 + c / 2) : before[static_cast<size_t>(r * 13 + c)]);
  EXPECT_THROW_MSG(ops->copy(Buf(DType::I32, {4}).v, Buf(F64, {4}).v), "copy", "i32", "f64");
}

TEST(CpuF64, Fill) {
  auto ops = rt::make_cpu_ops(F64);
  Buf t(F64, {130, 70});
  t.nan();
  ops->fill(t, -1.375f);
  for (double x : t.values()) ASSERT_EQ(x, -1.375);
  ops->fill(t, 0.1f);
  for (double x : t.values()) ASSERT_EQ(x, static_cast<double>(0.1f));
}

// Forward ops in f64 against plain double loops.
TEST(CpuF64, ForwardOpsMatchDoubleReferences) {
  auto ops = rt::make_cpu_ops(F64);
  const double tol = 1e-13;
  {  // linear, with f64 / f32 / bf16 weights and an f32 bias
    const int64_t N = 11, in = 24, out = 17;
    Buf x(F64, {N, in}), b(F32, {out}), y(F64, {N, out});
    x.randn(1);
    b.randn(2);
    for (DType wdt : {F64, F32, BF16}) {
      Buf w(wdt, {out, in});
      w.randn(3);
      y.nan();
      ops->linear(x, w, b, y);
      std::vector<double> ref(static_cast<size_t>(N * out));
      for (int64_t n = 0; n < N; ++n)
        for (int64_t o = 0; o < out; ++o) {
          double s = b.get(o);
          for (int64_t i = 0; i < in; ++i) s += x.get(n * in + i) * w.get(o * in + i);
          ref[static_cast<size_t>(n * out + o)] = s;
        }
      EXPECT_LT(rel_err(y.values(), ref), tol) << "linear w " << rt::dtype_name(wdt);
    }
  }
  {  // rmsnorm
    const int64_t R = 9, d = 20;
    Buf x(F64, {R, d}), w(F32, {d}), y(F64, {R, d});
    x.randn(4);
    w.randn(5, 0.3, 1.0);
    y.nan();
    ops->rmsnorm(x, w, 1e-6f, y);
    std::vector<double> ref(static_cast<size_t>(R * d));
    for (int64_t r = 0; r < R; ++r) {
      double ms = 0;
      for (int64_t i = 0; i < d; ++i) ms += x.get(r * d + i) * x.get(r * d + i);
      const double inv = 1.0 / std::sqrt(ms / d + static_cast<double>(1e-6f));
      for (int64_t i = 0; i < d; ++i) ref[static_cast<size_t>(r * d + i)] = x.get(r * d + i) * inv * w.get(i);
    }
    EXPECT_LT(rel_err(y.values(), ref), tol) << "rmsnorm";
  }
  {  // rope: fp32 angle (as HF), rotation in double
    const int64_t T = 6, H = 2, D = 10, pos0 = 20000;
    Buf x(F64, {T, H, D});
    x.randn(6);
    const std::vector<double> x0 = x.values();
    ops->rope(x, pos0, 1e6);
    std::vector<double> ref(x0.size());
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t i = 0; i < D / 2; ++i) {
          const float inv = 1.0f / static_cast<float>(std::pow(1e6, static_cast<double>(static_cast<float>(2 * i) /
                                                                                         static_cast<float>(D))));
          const float ang = static_cast<float>(pos0 + t) * inv;
          const double c = std::cos(static_cast<double>(ang)), s = std::sin(static_cast<double>(ang));
          const size_t b = static_cast<size_t>((t * H + h) * D);
          ref[b + i] = x0[b + i] * c - x0[b + i + D / 2] * s;
          ref[b + i + D / 2] = x0[b + i + D / 2] * c + x0[b + i] * s;
        }
    EXPECT_LT(rel_err(x.values(), ref), tol) << "rope";
  }
  {  // attention (GQA, causal window, offsets)
    const int64_t Tq = 9, Tk = 12, Hq = 4, Hkv = 2, D = 8;
    AttentionSpec spec;
    spec.window = 5;
    spec.q_pos0 = 3;
    Buf q(F64, {Tq, Hq, D}), k(F64, {Tk, Hkv, D}), v(F64, {Tk, Hkv, D}), o(F64, {Tq, Hq, D});
    q.randn(7);
    k.randn(8);
    v.randn(9);
    o.nan();
    ops->attention(q, k, v, o, spec);
    std::vector<double> ref(static_cast<size_t>(Tq * Hq * D), 0.0);
    for (int64_t h = 0; h < Hq; ++h)
      for (int64_t i = 0; i < Tq; ++i) {
        std::vector<double> p(static_cast<size_t>(Tk), 0.0);
        double sum = 0;
        for (int64_t j = 0; j < Tk; ++j) {
          const int64_t qp = 3 + i, kp = j;
          if (kp > qp || kp <= qp - 5) continue;
          double s = 0;
          for (int64_t e = 0; e < D; ++e) s += q.get((i * Hq + h) * D + e) * k.get((j * Hkv + h / 2) * D + e);
          p[static_cast<size_t>(j)] = std::exp(s / std::sqrt(8.0));
          sum += p[static_cast<size_t>(j)];
        }
        for (int64_t j = 0; j < Tk; ++j)
          for (int64_t e = 0; e < D; ++e)
            ref[static_cast<size_t>((i * Hq + h) * D + e)] += p[static_cast<size_t>(j)] / sum * v.get((j * Hkv + h / 2) * D + e);
      }
    EXPECT_LT(rel_err(o.values(), ref), tol) << "attention";
  }
  {  // add, swiglu
    Buf a(F64, {5, 33}), b(F64, {5, 33}), out(F64, {5, 33});
    a.randn(10);
    b.randn(11);
    out.nan();
    ops->add(a, b, out);
    std::vector<double> ra(165), rs(165);
    for (int64_t i = 0; i < 165; ++i) {
      ra[static_cast<size_t>(i)] = a.get(i) + b.get(i);
      rs[static_cast<size_t>(i)] = a.get(i) / (1 + std::exp(-a.get(i))) * b.get(i);
    }
    EXPECT_LT(rel_err(out.values(), ra), tol) << "add";
    out.nan();
    ops->swiglu(a, b, out);
    EXPECT_LT(rel_err(out.values(), rs), tol) << "swiglu";
  }
  {  // embedding: f64 table, and a bf16 table into f64 rows
    for (DType tdt : {F64, BF16}) {
      Buf table(tdt, {20, 7}), ids(DType::I32, {5}), out(F64, {5, 7});
      table.randn(12);
      const int32_t id[] = {19, 0, 4, 4, 11};
      for (int t = 0; t < 5; ++t) ids.put(t, id[t]);
      out.nan();
      ops->embedding(table, ids, out);
      for (int t = 0; t < 5; ++t)
        for (int c = 0; c < 7; ++c) ASSERT_EQ(out.get(t * 7 + c), table.get(id[t] * 7 + c));
    }
  }
  {  // argmax: f64 rows (last row; first index on ties), values that differ below f32 precision
    Buf x(F64, {2, 6});
    const double vals[] = {5, 1, 2, 3, 4, 0, 1.0, 1.0 + 1e-12, 0.5, 1.0 + 1e-12, -3, 1.0};
    x.set(std::vector<double>(vals, vals + 12));
    EXPECT_EQ(ops->argmax(x), 1);
    TensorView row = x.v.rows(0, 1);
    EXPECT_EQ(ops->argmax(row), 0);
  }
}

// ---------------------------------------------------------------------------------------------
// f32 vs f64

using Outs = std::vector<std::vector<double>>;

struct Agree : ::testing::Test {
  std::unique_ptr<rt::Ops> o32 = rt::make_cpu_ops(F32);
  std::unique_ptr<rt::Ops> o64 = rt::make_cpu_ops(F64);
  // run(ops, dt) builds its inputs in dtype dt from fixed seeds (identical values: randn rounds
  // to f32) and returns its outputs.
  void expect_agree(const std::string& what, const std::function<Outs(rt::Ops&, DType)>& run) {
    SCOPED_TRACE(what);
    const Outs a = run(*o32, F32), b = run(*o64, F64);
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) EXPECT_LT(rel_err(a[i], b[i]), kF32Tol) << what << ": output " << i;
  }
};

TEST_F(Agree, Linear) {
  for (auto [N, in, out] : std::vector<std::array<int64_t, 3>>{{64, 96, 80}, {1, 300, 1000}, {7, 12, 9}})
    for (bool w16 : {false, true})
      expect_agree("linear N " + std::to_string(N) + (w16 ? " bf16 w" : ""), [&](rt::Ops& ops, DType dt) {
        Buf x(dt, {N, in}), w(w16 ? BF16 : dt, {out, in}), b(dt, {out}), y(dt, {N, out});
        x.randn(1);
        w.randn(2);
        b.randn(3);
        y.nan();
        ops.linear(x, w, b, y);
        return Outs{y.values()};
      });
}

TEST_F(Agree, LinearBackward) {
  for (auto [N, in, out] : std::vector<std::array<int64_t, 3>>{{70, 80, 90}, {3, 200, 700}, {7, 12, 9}})
    for (bool w16 : {false, true})
      expect_agree("linear_backward N " + std::to_string(N) + (w16 ? " bf16 w" : ""), [&](rt::Ops& ops, DType dt) {
        Buf x(dt, {N, in}), w(w16 ? BF16 : dt, {out, in}), dy(dt, {N, out});
        Buf dx(dt, {N, in}), dx2(dt, {N, in}), dw(dt, {out, in}), db(dt, {out});
        x.randn(1);
        w.randn(2);
        dy.randn(3);
        dx.nan();
        dx2.randn(4);
        dw.randn(5);
        db.randn(6);
        ops.linear_backward(x, w, dy, dx, dw, db, false);
        ops.linear_backward(x, w, dy, dx2, TensorView{}, TensorView{}, true);
        return Outs{dx.values(), dx2.values(), dw.values(), db.values()};
      });
}

TEST_F(Agree, RmsNorm) {
  expect_agree("rmsnorm", [&](rt::Ops& ops, DType dt) {
    const int64_t R = 300, d = 64;
    Buf x(dt, {R, d}), w(F32, {d}), y(dt, {R, d}), dy(dt, {R, d}), dx(dt, {R, d}), dw(dt, {d});
    x.randn(1);
    w.randn(2, 0.3, 1.0);
    y.nan();
    dy.randn(3);
    dx.randn(4);
    dw.randn(5);
    ops.rmsnorm(x, w, 1e-5f, y);
    ops.rmsnorm_backward(x, w, 1e-5f, dy, dx, dw);
    return Outs{y.values(), dx.values(), dw.values()};
  });
}

TEST_F(Agree, Rope) {
  expect_agree("rope", [&](rt::Ops& ops, DType dt) {
    Buf x(dt, {40, 4, 64}), g(dt, {40, 4, 64});
    x.randn(1);
    g.randn(2);
    ops.rope(x, 30000, 1e6);
    ops.rope_backward(g, 30000, 1e6);
    return Outs{x.values(), g.values()};
  });
}

TEST_F(Agree, Attention) {
  struct C {
    int64_t Tq, Tk, Hq, Hkv, D;
    bool causal;
    int64_t window, q_pos0, k_pos0;
  };
  for (const C& c : std::vector<C>{{300, 300, 6, 2, 16, true, 0, 0, 0},
                                   {300, 300, 3, 3, 16, true, 37, 0, 0},
                                   {70, 300, 4, 1, 16, false, 0, 0, 0},
                                   {70, 290, 4, 2, 16, true, 0, 200, 10}})
    expect_agree("attention Tq " + std::to_string(c.Tq) + " window " + std::to_string(c.window),
                 [&](rt::Ops& ops, DType dt) {
                   AttentionSpec spec;
                   spec.causal = c.causal;
                   spec.window = c.window;
                   spec.q_pos0 = c.q_pos0;
                   spec.k_pos0 = c.k_pos0;
                   Buf q(dt, {c.Tq, c.Hq, c.D}), k(dt, {c.Tk, c.Hkv, c.D}), v(dt, {c.Tk, c.Hkv, c.D});
                   Buf o(dt, {c.Tq, c.Hq, c.D}), lse(dt, {c.Hq, c.Tq}), dout(dt, {c.Tq, c.Hq, c.D});
                   Buf dq(dt, {c.Tq, c.Hq, c.D}), dk(dt, {c.Tk, c.Hkv, c.D}), dv(dt, {c.Tk, c.Hkv, c.D});
                   q.randn(1);
                   k.randn(2);
                   v.randn(3);
                   dout.randn(4);
                   o.nan();
                   lse.nan();
                   dq.nan();
                   dk.nan();
                   dv.nan();
                   ops.attention_forward_lse(q, k, v, o, lse, spec);
                   ops.attention_backward(q, k, v, o, lse, dout, dq, dk, dv, spec);
                   return Outs{o.values(), lse.values(), dq.values(), dk.values(), dv.values()};
                 });
}

TEST_F(Agree, SwigluEmbedding) {
  expect_agree("swiglu", [&](rt::Ops& ops, DType dt) {
    Buf g(dt, {50, 70}), u(dt, {50, 70}), out(dt, {50, 70}), dout(dt, {50, 70}), dg(dt, {50, 70}), du(dt, {50, 70});
    g.randn(1, 2.0);
    u.randn(2);
    dout.randn(3);
    out.nan();
    dg.nan();
    du.nan();
    ops.swiglu(g, u, out);
    ops.swiglu_backward(g, u, dout, dg, du);
    return Outs{out.values(), dg.values(), du.values()};
  });
  expect_agree("embedding", [&](rt::Ops& ops, DType dt) {
    Buf table(dt, {50, 24}), ids(DType::I32, {40}), out(dt, {40, 24}), dtable(dt, {50, 24});
    table.randn(1);
    for (int64_t t = 0; t < 40; ++t) ids.put(t, static_cast<int32_t>((t * 7) % 13));
    out.nan();
    dtable.randn(2);
    ops.embedding(table, ids, out);
    ops.embedding_backward(ids, out, dtable);
    return Outs{out.values(), dtable.values()};
  });
}

TEST_F(Agree, CrossEntropy) {
  for (bool w16 : {false, true})
    for (int64_t chunk : {int64_t{2 * 1100}, int64_t{1} << 22})
      expect_agree(std::string("lm_head_cross_entropy") + (w16 ? " bf16 w" : "") + " chunk " + std::to_string(chunk),
                   [&](rt::Ops& ops, DType dt) {
                     ChunkElems ce(chunk);
                     const int64_t N = 13, H = 24, V = 1100;
                     Buf h(dt, {N, H}), w(w16 ? BF16 : dt, {V, H}), t(DType::I32, {N}), losses(dt, {N});
                     Buf dh(dt, {N, H}), dw(dt, {V, H});
                     h.randn(1);
                     w.randn(2, 0.5);
                     const int32_t tg[] = {1099, -100, 511, 512, 0, 700, 512, 3, -100, 1023, 1024, 5, 6};
                     for (int64_t n = 0; n < N; ++n) t.put(n, tg[n]);
                     losses.nan();
                     dh.nan();
                     dw.randn(3, 0.01);
                     ops.lm_head_cross_entropy(h, w, t, 0.25f, losses, dh, dw);
                     return Outs{losses.values(), dh.values(), dw.values()};
                   });
}

TEST_F(Agree, SmallOps) {
  expect_agree("sigmoid, step, row_scale, row_dot, axpby, reduce_sum, add", [&](rt::Ops& ops, DType dt) {
    Buf x(dt, {30, 41}), y(dt, {30, 41}), dy(dt, {30, 41}), dx(dt, {30, 41}), st(dt, {30, 41});
    Buf s(dt, {30}), rs(dt, {30, 41}), rd(dt, {30}), ax(dt, {30, 41}), sum(dt, {1}), sq(dt, {1}), ad(dt, {30, 41});
    x.randn(1, 2.0);
    dy.randn(2);
    s.randn(3);
    rd.randn(4);
    sum.randn(5);
    sq.randn(6);
    ops.sigmoid(x, 1.3f, y);
    ops.sigmoid_backward(y, dy, 1.3f, dx);
    ops.step(x, 0.25f, st);
    ops.row_scale(x, s, rs);
    ops.row_dot(x, dy, rd, true);
    ops.axpby(0.7f, x, -1.9f, dy, ax);
    ops.reduce_sum(x, 1, sum);
    ops.reduce_sum(x, 2, sq);
    ops.add(x, dy, ad);
    return Outs{y.values(),  dx.values(),  st.values(),  rs.values(), rd.values(),
                ax.values(), sum.values(), sq.values(), ad.values()};
  });
}

TEST_F(Agree, AdamW) {
  expect_agree("adamw_step", [&](rt::Ops& ops, DType dt) {
    Buf w(dt, {17, 9}), g(dt, {17, 9}), m(dt, {17, 9}), v(dt, {17, 9});
    w.randn(1);
    m.randn(2, 0.1);
    v.randn(3, 0.1);
    for (int64_t i = 0; i < v.numel(); ++i) v.put(i, std::fabs(v.get(i)));
    rt::Ops::AdamW hp;
    hp.lr = 1e-2f;
    hp.weight_decay = 0.1f;
    hp.grad_scale = 0.5f;
    for (int64_t t = 1; t <= 3; ++t) {
      g.randn(static_cast<uint64_t>(10 + t));
      hp.step = t;
      ops.adamw_step(w, g, m, v, TensorView{}, hp);
    }
    return Outs{w.values(), m.values(), v.values()};
  });
}

// ---------------------------------------------------------------------------------------------
// Small training ops: semantics

TEST(CpuTrainOps, ElementwiseSemantics) {
  for (DType dt : {F32, F64}) {
    SCOPED_TRACE(rt::dtype_name(dt));
    auto ops = rt::make_cpu_ops(dt);
    const double tol = dt == F64 ? 1e-15 : 1e-6;
    const int64_t R = 6, C = 11;
    Buf x(dt, {R, C}), y(dt, {R, C}), out(dt, {R, C}), s(dt, {R});
    x.randn(1, 2.0);
    y.randn(2);
    s.randn(3);
    const std::vector<double> X = x.values(), Y = y.values(), S = s.values();
    // sigmoid / sigmoid_backward.
    out.nan();
    ops->sigmoid(x, -0.8f, out);
    std::vector<double> ref(X.size());
    const double sc = -0.8f;  // the op's scale, exactly
    for (size_t i = 0; i < X.size(); ++i) ref[i] = 1 / (1 + std::exp(-sc * X[i]));
    EXPECT_LT(rel_err(out.values(), ref), tol) << "sigmoid";
    Buf dx(dt, {R, C});
    dx.nan();
    ops->sigmoid_backward(out, y, -0.8f, dx);
    for (size_t i = 0; i < X.size(); ++i) ref[i] = Y[i] * sc * ref[i] * (1 - ref[i]);
    EXPECT_LT(rel_err(dx.values(), ref), tol) << "sigmoid_backward";
    // step, with elements exactly at the threshold.
    x.put(0, 0.5);
    x.put(5, std::nextafter(0.5f, 0.f));
    out.nan();
    ops->step(x, 0.5f, out);
    for (int64_t i = 0; i < x.numel(); ++i) ASSERT_EQ(out.get(i), x.get(i) >= 0.5 ? 1.0 : 0.0) << i;
    EXPECT_EQ(out.get(0), 1.0);
    EXPECT_EQ(out.get(5), 0.0);
    x.set(X);
    // row_scale, out aliasing x.
    ops->row_scale(x, s, x);
    for (int64_t r = 0; r < R; ++r)
      for (int64_t c = 0; c < C; ++c) ref[static_cast<size_t>(r * C + c)] = S[static_cast<size_t>(r)] * X[static_cast<size_t>(r * C + c)];
    EXPECT_LT(rel_err(x.values(), ref), tol) << "row_scale in place";
    x.set(X);
    // row_dot, = and +=.
    Buf d(dt, {R});
    d.nan();
    ops->row_dot(x, y, d, false);
    std::vector<double> rd(static_cast<size_t>(R), 0.0);
    for (int64_t r = 0; r < R; ++r)
      for (int64_t c = 0; c < C; ++c) rd[static_cast<size_t>(r)] += X[static_cast<size_t>(r * C + c)] * Y[static_cast<size_t>(r * C + c)];
    EXPECT_LT(rel_err(d.values(), rd), tol) << "row_dot =";
    d.set(S);
    ops->row_dot(x, y, d, true);
    for (int64_t r = 0; r < R; ++r) rd[static_cast<size_t>(r)] += S[static_cast<size_t>(r)];
    EXPECT_LT(rel_err(d.values(), rd), tol) << "row_dot +=";
    // axpby into x and into y (aliasing).
    ops->axpby(0.3f, x, -2.f, y, x);
    for (size_t i = 0; i < X.size(); ++i) ref[i] = static_cast<double>(0.3f) * X[i] - 2 * Y[i];
    EXPECT_LT(rel_err(x.values(), ref), tol) << "axpby out = x";
    x.set(X);
    ops->axpby(0.3f, x, -2.f, y, y);
    EXPECT_LT(rel_err(y.values(), ref), tol) << "axpby out = y";
    y.set(Y);
    // reduce_sum: out[0] += sum / sum of squares, over a strided (column-slice) view too.
    Buf acc(dt, {1});
    acc.put(0, 0.75);
    ops->reduce_sum(x, 1, acc);
    double s1 = 0.75, s2 = -1.5;
    for (double v : X) s1 += v;
    EXPECT_NEAR(acc.get(0), s1, 10 * tol * std::max(1.0, std::fabs(s1)));
    acc.put(0, -1.5);
    ops->reduce_sum(x, 2, acc);
    for (double v : X) s2 += v * v;
    EXPECT_NEAR(acc.get(0), s2, 10 * tol * std::max(1.0, std::fabs(s2)));
    TensorView cols = x.v;
    cols.shape = {R, 4, 0, 0};
    acc.put(0, 0.0);
    ops->reduce_sum(cols, 2, acc);
    double s3 = 0;
    for (int64_t r = 0; r < R; ++r)
      for (int64_t c = 0; c < 4; ++c) s3 += X[static_cast<size_t>(r * C + c)] * X[static_cast<size_t>(r * C + c)];
    EXPECT_NEAR(acc.get(0), s3, 10 * tol * std::max(1.0, std::fabs(s3)));
  }
}

// Large enough for the threaded reduction (fixed blocks, so the result does not depend on the
// thread count) and for row_scale / row_dot over many rows.
TEST(CpuTrainOps, ReduceSumLarge) {
  auto ops = rt::make_cpu_ops(F64);
  Buf x(F64, {700, 333}), acc(F64, {1});
  x.randn(9);
  acc.put(0, 0.0);
  ops->reduce_sum(x, 2, acc);
  double s = 0;
  for (double v : x.values()) s += v * v;
  EXPECT_NEAR(acc.get(0), s, 1e-9 * s);
}

// ---------------------------------------------------------------------------------------------
// AdamW

// The spec's formula, in double.
void adamw_reference(std::vector<double>& w, std::vector<double>& m, std::vector<double>& v,
                     const std::vector<double>& g, const rt::Ops::AdamW& hp) {
  const double b1 = hp.beta1, b2 = hp.beta2, lr = hp.lr, wd = hp.weight_decay, eps = hp.eps;
  const double t = static_cast<double>(hp.step);
  for (size_t i = 0; i < w.size(); ++i) {
    const double gi = g[i] * static_cast<double>(hp.grad_scale);
    m[i] = b1 * m[i] + (1 - b1) * gi;
    v[i] = b2 * v[i] + (1 - b2) * gi * gi;
    const double mhat = m[i] / (1 - std::pow(b1, t)), vhat = v[i] / (1 - std::pow(b2, t));
    w[i] = w[i] * (1 - lr * wd) - lr * mhat / (std::sqrt(vhat) + eps);
  }
}

void check_adamw(DType compute, DType param_dt, bool with_param) {
  SCOPED_TRACE(std::string("compute ") + rt::dtype_name(compute) +
               (with_param ? std::string(" param ") + rt::dtype_name(param_dt) : std::string(" no param")));
  auto ops = rt::make_cpu_ops(compute);
  const double tol = compute == F64 ? 1e-13 : 2e-6;
  const int64_t R = 5, C = 7;
  Buf w(compute, {R, C}), g(compute, {R, C}), m(compute, {R, C}), v(compute, {R, C}), p(param_dt, {R, C});
  w.randn(1);
  m.randn(2, 0.1);  // a run already under way: state not zero
  v.randn(3, 0.1);
  for (int64_t i = 0; i < v.numel(); ++i) v.put(i, std::fabs(v.get(i)));
  p.nan();
  std::vector<double> W = w.values(), M = m.values(), V = v.values();
  rt::Ops::AdamW hp;
  hp.lr = 3e-2f;
  hp.beta1 = 0.9f;
  hp.beta2 = 0.95f;
  hp.eps = 1e-6f;
  hp.weight_decay = 0.1f;
  hp.grad_scale = 0.5f;
  for (int64_t t = 1; t <= 3; ++t) {
    g.randn(static_cast<uint64_t>(10 + t));
    const std::vector<double> G = g.values();
    hp.step = t;
    ops->adamw_step(w, g, m, v, with_param ? p.v : TensorView{}, hp);
    adamw_reference(W, M, V, G, hp);
    EXPECT_LT(rel_err(w.values(), W), tol) << "master, step " << t;
    EXPECT_LT(rel_err(m.values(), M), tol) << "m, step " << t;
    EXPECT_LT(rel_err(v.values(), V), tol) << "v, step " << t;
    EXPECT_EQ(g.values(), G) << "grad is an input";
    for (int64_t i = 0; i < p.numel(); ++i) {
      if (!with_param) {
        ASSERT_TRUE(std::isnan(p.get(i)));
        continue;
      }
      Buf one(param_dt, {1});
      one.put(0, w.get(i));  // master rounded to the parameter's dtype (round to nearest even)
      if (compute == F64 && param_dt != F64) one.put(0, static_cast<float>(w.get(i)));
      ASSERT_EQ(p.get(i), one.get(0)) << "param element " << i << ", step " << t;
    }
  }
}

TEST(CpuTrainOps, AdamW) {
  check_adamw(F64, F64, false);
  check_adamw(F32, F32, false);
  check_adamw(F32, F32, true);
  check_adamw(F32, BF16, true);
  check_adamw(F32, F16, true);
  check_adamw(F64, F32, true);
  check_adamw(F64, BF16, true);
}

// Large logits: the log-sum-exp subtracts the row max (no overflow in f32).
TEST(CpuTrainOps, CrossEntropyLargeLogits) {
  auto o32 = rt::make_cpu_ops(F32), o64 = rt::make_cpu_ops(F64);
  std::vector<double> l32, l64, d32, d64;
  for (DType dt : {F32, F64}) {
    rt::Ops& ops = dt == F32 ? *o32 : *o64;
    Buf h(dt, {4, 16}), w(dt, {30, 16}), t(DType::I32, {4}), losses(dt, {4}), dh(dt, {4, 16});
    h.randn(1, 30.0);  // logits of order 100s
    w.randn(2, 3.0);
    const int32_t tg[] = {3, 29, 0, 3};
    for (int n = 0; n < 4; ++n) t.put(n, tg[n]);
    losses.nan();
    dh.nan();
    ops.lm_head_cross_entropy(h, w, t, 1.f, losses, dh, TensorView{});
    (dt == F32 ? l32 : l64) = losses.values();
    (dt == F32 ? d32 : d64) = dh.values();
  }
  for (double l : l32) ASSERT_TRUE(std::isfinite(l));
  EXPECT_LT(rel_err(l32, l64), 1e-5);
  EXPECT_LT(rel_err(d32, d64), 1e-5);
}

// ---------------------------------------------------------------------------------------------
// Errors: the message names the op and the argument.

TEST(CpuTrainOps, ArgumentErrors) {
  auto ops = rt::make_cpu_ops(F64);
  Buf x(F64, {4, 6}), w(F64, {5, 6}), dy(F64, {4, 5}), dx(F64, {4, 6}), dw(F64, {5, 6}), db(F64, {5});
  x.randn(1);
  w.randn(2);
  dy.randn(3);
  // linear_backward
  EXPECT_THROW_MSG(ops->linear_backward(x, w, Buf(F64, {4, 6}).v, dx, dw, db, false), "linear_backward", "'dy'",
                   "5");
  EXPECT_THROW_MSG(ops->linear_backward(x, w, dy, dx, Buf(F32, {5, 6}).v, db, false), "linear_backward", "'dw'",
                   "f64", "f32");
  EXPECT_THROW_MSG(ops->linear_backward(x, w, dy, dx, dw, Buf(F64, {6}).v, false), "linear_backward", "'db'", "[5]");
  EXPECT_THROW_MSG(ops->linear_backward(x, w, dy, x, dw, db, false), "linear_backward", "'dx'", "overlaps");
  EXPECT_THROW_MSG(ops->linear_backward(Buf(DType::BF16, {4, 6}).v, w, dy, dx, dw, db, false), "linear_backward",
                   "'x'");
  // rmsnorm_backward
  EXPECT_THROW_MSG(ops->rmsnorm_backward(x, Buf(F64, {5}).v, 1e-6f, x, dx, Buf(F64, {6}).v), "rmsnorm_backward",
                   "'w'", "[6]");
  EXPECT_THROW_MSG(ops->rmsnorm_backward(x, Buf(F64, {6}).v, 1e-6f, Buf(F64, {4, 6}).v, dx, Buf(F64, {7}).v),
                   "rmsnorm_backward", "'dw'", "[6]");
  EXPECT_THROW_MSG(ops->rmsnorm_backward(x, Buf(F64, {6}).v, 1e-6f, Buf(F64, {4, 5}).v, dx, TensorView{}),
                   "rmsnorm_backward", "'dy'");
  // rope_backward
  EXPECT_THROW_MSG(ops->rope_backward(Buf(F64, {2, 3, 7}).v, 0, 1e4), "rope_backward", "even");
  EXPECT_THROW_MSG(ops->rope_backward(Buf(DType::BF16, {2, 3, 8}).v, 0, 1e4), "rope_backward", "'dx'", "bf16");
  // swiglu_backward
  EXPECT_THROW_MSG(ops->swiglu_backward(x, dx, x, dw, TensorView{}), "swiglu_backward", "'dgate'");
  EXPECT_THROW_MSG(ops->swiglu_backward(x, dx, x, TensorView{}, Buf(F32, {4, 6}).v), "swiglu_backward", "'dup'",
                   "f32");
  // embedding_backward
  Buf ids(DType::I32, {3});
  ids.put(0, 1);
  ids.put(1, 7);
  ids.put(2, 2);
  Buf dtable(F64, {5, 6}), dout(F64, {3, 6});
  EXPECT_THROW_MSG(ops->embedding_backward(ids, dout, dtable), "embedding_backward", "'ids'", "7", "5");
  ids.put(1, 4);
  EXPECT_THROW_MSG(ops->embedding_backward(ids, Buf(F64, {3, 5}).v, dtable), "embedding_backward", "'dout'");
  EXPECT_THROW_MSG(ops->embedding_backward(ids, dout, Buf(F32, {5, 6}).v), "embedding_backward", "'dtable'");
  // lm_head_cross_entropy
  Buf h(F64, {3, 6}), tg(DType::I32, {3}), losses(F64, {3});
  tg.put(0, 1);
  tg.put(1, -100);
  tg.put(2, 5);
  EXPECT_THROW_MSG(ops->lm_head_cross_entropy(h, w, tg, 1.f, losses, TensorView{}, TensorView{}),
                   "lm_head_cross_entropy", "'targets'", "5");
  tg.put(2, -1);
  EXPECT_THROW_MSG(ops->lm_head_cross_entropy(h, w, tg, 1.f, losses, TensorView{}, TensorView{}),
                   "lm_head_cross_entropy", "'targets'", "-1");
  tg.put(2, 4);
  EXPECT_THROW_MSG(ops->lm_head_cross_entropy(h, w, tg, 1.f, losses, TensorView{}, Buf(F64, {5, 7}).v),
                   "lm_head_cross_entropy", "'dw'");
  EXPECT_THROW_MSG(ops->lm_head_cross_entropy(h, w, tg, 1.f, Buf(F64, {4}).v, TensorView{}, TensorView{}),
                   "lm_head_cross_entropy", "'losses'");
  EXPECT_THROW_MSG(ops->lm_head_cross_entropy(Buf(DType::I32, {3, 6}).v, w, tg, 1.f, losses, TensorView{}, TensorView{}),
                   "lm_head_cross_entropy", "'h'");
  EXPECT_THROW_MSG(ops->lm_head_cross_entropy(h, w, Buf(F64, {3}).v, 1.f, losses, TensorView{}, TensorView{}),
                   "lm_head_cross_entropy", "'targets'", "i32");
  EXPECT_THROW_MSG(ops->lm_head_cross_entropy(h, w, tg, 1.f, losses, Buf(F64, {3, 5}).v, TensorView{}),
                   "lm_head_cross_entropy", "'dh'");
  // attention_forward_lse / attention_backward
  Buf q(F64, {4, 2, 8}), k(F64, {4, 1, 8}), v(F64, {4, 1, 8}), o(F64, {4, 2, 8}), lse(F64, {2, 4});
  q.randn(1);
  k.randn(2);
  v.randn(3);
  EXPECT_THROW_MSG(ops->attention_forward_lse(q, k, v, o, Buf(F64, {4, 2}).v, {}), "attention_forward_lse", "'lse'",
                   "[2, 4]");
  EXPECT_THROW_MSG(ops->attention_forward_lse(q, k, v, o, Buf(F32, {2, 4}).v, {}), "attention_forward_lse", "'lse'",
                   "f32");
  EXPECT_THROW_MSG(ops->attention_forward_lse(q, Buf(F32, {4, 1, 8}).v, v, o, lse, {}), "attention_forward_lse",
                   "'k'", "f64");
  ops->attention_forward_lse(q, k, v, o, lse, {});
  Buf dq(F64, {4, 2, 8}), dk(F64, {4, 1, 8}), dv(F64, {4, 1, 8});
  EXPECT_THROW_MSG(ops->attention_backward(q, k, v, o, lse, o, dq, Buf(F64, {4, 2, 8}).v, dv, {}),
                   "attention_backward", "'dk'");
  EXPECT_THROW_MSG(ops->attention_backward(q, k, v, o, lse, o, dq, dk, Buf(F32, {4, 1, 8}).v, {}),
                   "attention_backward", "'dv'", "f32");
  EXPECT_THROW_MSG(ops->attention_backward(q, k, v, o, Buf(F64, {2, 3}).v, o, dq, dk, dv, {}), "attention_backward",
                   "'lse'");
  EXPECT_THROW_MSG(ops->attention_backward(q, k, v, o, lse, o, dq, dk, dk, {}), "attention_backward", "'dk'",
                   "'dv'", "overlap");
  // sigmoid, step, row ops, axpby, reduce_sum
  EXPECT_THROW_MSG(ops->sigmoid(x, 1.f, Buf(F64, {4, 5}).v), "sigmoid", "'y'");
  EXPECT_THROW_MSG(ops->sigmoid_backward(x, x, 1.f, Buf(F32, {4, 6}).v), "sigmoid_backward", "'dx'", "f32");
  EXPECT_THROW_MSG(ops->step(x, 0.f, Buf(DType::I32, {4, 6}).v), "step", "'y'");
  EXPECT_THROW_MSG(ops->row_scale(x, Buf(F64, {5}).v, dx), "row_scale", "'s'", "[4]");
  EXPECT_THROW_MSG(ops->row_dot(x, dx, Buf(F64, {4, 1}).v, false), "row_dot", "'out'");
  EXPECT_THROW_MSG(ops->row_dot(x, Buf(F64, {4, 5}).v, Buf(F64, {4}).v, false), "row_dot", "'b'");
  EXPECT_THROW_MSG(ops->axpby(1.f, x, 1.f, Buf(F64, {6, 4}).v, dx), "axpby", "'y'");
  EXPECT_THROW_MSG(ops->reduce_sum(x, 1, Buf(F64, {2}).v), "reduce_sum", "'out'", "[1]");
  EXPECT_THROW_MSG(ops->reduce_sum(x, 3, Buf(F64, {1}).v), "reduce_sum", "power");
  // adamw_step
  rt::Ops::AdamW hp;
  hp.lr = 1e-3f;
  Buf m(F64, {4, 6}), vv(F64, {4, 6});
  EXPECT_THROW_MSG(ops->adamw_step(x, dx, Buf(F64, {4, 5}).v, vv, TensorView{}, hp), "adamw_step", "'m'");
  EXPECT_THROW_MSG(ops->adamw_step(x, dx, m, Buf(F32, {4, 6}).v, TensorView{}, hp), "adamw_step", "'v'", "f32");
  EXPECT_THROW_MSG(ops->adamw_step(x, dx, m, vv, Buf(F32, {6, 4}).v, hp), "adamw_step", "'param'");
  EXPECT_THROW_MSG(ops->adamw_step(x, x, m, vv, TensorView{}, hp), "adamw_step", "'grad'", "overlap");
  hp.step = 0;
  EXPECT_THROW_MSG(ops->adamw_step(x, dx, m, vv, TensorView{}, hp), "adamw_step", "step");
}

}  // namespace
