// Tests of the materialized attention path (AttentionSpec::materialize, cuda/attention/
// dense_attention.h) through rt::Ops: rt::make_cuda_ops() against rt::make_cpu_ops() (f32 reference,
// which ignores the flag) on random inputs (fixed seeds), and against the same CudaOps's flash path
// (materialize = false). The device gets the inputs in its dtype (bf16 or f32), the CPU the same
// values rounded through that dtype, in f32. Every output is poisoned with NaN first.
// Workspace limits are forced small so that several query chunks run. Pass: relative Frobenius error
// < 2e-2 for bf16, < 1e-5 for f32 (gradients with an absolute RMS floor for entries that are
// analytically zero, e.g. a row that sees a single key). Without a GPU every test skips.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <iostream>
#include <limits>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "cpu/cpu_ops.h"
#include "cuda/attention/dense_attention.h"
#include "cuda/cuda_ops.h"
#include "rt/sdk/error.h"
#include "rt/sdk/half.h"
#include "rt/sdk/ops.h"

#include "cuda_test_util.h"

namespace {

using rt::test::cuda::expect_close_floor;

using rt::Device;
using rt::DType;
using rt::Tensor;
using rt::TensorView;

const float kNaN = std::numeric_limits<float>::quiet_NaN();

struct Case {
  std::string name;
  int64_t Tq, Tk, Hq, Hkv, D;
  bool causal = true;
  int64_t window = 0, q_pos0 = 0, k_pos0 = 0;
  DType dt = DType::BF16;
  bool fused_qkv = false;  // q, k, v as head slices of one [T, Hq + 2 Hkv, D] buffer (needs Tq == Tk)
  int64_t chunk = 0;       // > 0: workspace limit set so that the backward runs `chunk` query rows per chunk
  size_t limit = 0;        // > 0: this workspace limit in bytes instead (0 and chunk 0: the default)

  rt::AttentionSpec spec(bool materialize = true) const {
    rt::AttentionSpec s;
    s.causal = causal;
    s.window = window;
    s.q_pos0 = q_pos0;
    s.k_pos0 = k_pos0;
    s.materialize = materialize;
    return s;
  }
  std::string str() const {
    std::ostringstream os;
    os << name << ": Tq " << Tq << " Tk " << Tk << " Hq " << Hq << " Hkv " << Hkv << " D " << D
       << (causal ? " causal" : " non-causal") << " window " << window << " q_pos0 " << q_pos0 << " k_pos0 "
       << k_pos0 << " " << rt::dtype_name(dt) << (fused_qkv ? " fused-qkv" : "") << " chunk " << chunk
       << " limit " << limit;
    return os.str();
  }
  bool bf16() const { return dt == DType::BF16; }
};

using rt::test::rounded;

double norm(const std::vector<float>& v) {
  double s = 0;
  for (float x : v) s += static_cast<double>(x) * x;
  return std::sqrt(s);
}

void expect_close(const std::vector<float>& got, const std::vector<float>& want, double tol, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  size_t bad = 0;
  const double e = rt::test::rel_err(got, want, bad);
  EXPECT_EQ(bad, 0u) << what << ": non-finite values (unwritten or NaN)";
  EXPECT_LT(e, tol) << what << ": relative Frobenius error " << e << " (reference norm " << norm(want) << ")";
}

// lse: +inf exactly where the reference has +inf (rows that see no key), close elsewhere.
void expect_lse(const std::vector<float>& got, const std::vector<float>& want, double tol, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  size_t inf_mismatch = 0;
  std::vector<float> g, w;
  for (size_t i = 0; i < want.size(); ++i) {
    const bool want_inf = std::isinf(want[i]) && want[i] > 0, got_inf = std::isinf(got[i]) && got[i] > 0;
    if (want_inf || got_inf) {
      if (want_inf != got_inf) ++inf_mismatch;
      continue;
    }
    g.push_back(got[i]);
    w.push_back(want[i]);
  }
  EXPECT_EQ(inf_mismatch, 0u) << what << ": +inf (row sees no key) where the reference disagrees";
  expect_close(g, w, tol, what);
}

// Runs fn and expects an rt::Error whose message contains `needle`.
void expect_error(const std::function<void()>& fn, const std::string& needle, const std::string& what) {
  try {
    fn();
    ADD_FAILURE() << what << ": no rt::Error thrown (expected one mentioning \"" << needle << "\")";
  } catch (const rt::Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)
        << what << ": message \"" << e.what() << "\" does not mention \"" << needle << "\"";
  }
}

// Sets the workspace limit for a scope (0: default), restoring the default after.
struct LimitGuard {
  explicit LimitGuard(size_t bytes) { rt::cuda::set_dense_attention_workspace_limit(bytes); }
  ~LimitGuard() { rt::cuda::set_dense_attention_workspace_limit(0); }
};

// Backward workspace bytes per query row: S and dP f32, P and dS in the input dtype.
size_t limit_for_chunk(const Case& c) {
  if (c.limit > 0) return c.limit;
  if (c.chunk <= 0) return 0;
  const size_t es = rt::dtype_size(c.dt);
  return static_cast<size_t>(c.chunk * c.Hq * c.Tk) * (8 + 2 * es);
}

struct DenseAttentionTest : ::testing::Test {
  std::unique_ptr<rt::Ops> cpu;
  std::unique_ptr<rt::Ops> gpu;

  void SetUp() override {
    SKIP_WITHOUT_GPU();
    cpu = rt::make_cpu_ops();
    gpu = rt::make_cuda_ops();
  }
  void TearDown() override { rt::cuda::set_dense_attention_workspace_limit(0); }

  // Device [a, b, c] tensor of dtype dt holding v (converted on the device from f32).
  Tensor dev(const std::vector<float>& v, DType dt, int64_t a, int64_t b, int64_t c) {
    Tensor t = gpu->alloc(dt, {a, b, c});
    gpu->copy(TensorView::contiguous(const_cast<float*>(v.data()), DType::F32, Device::CPU, {a, b, c}), t.view);
    return t;
  }
  Tensor poisoned3(DType dt, int64_t a, int64_t b, int64_t c) {
    Tensor t = gpu->alloc(dt, {a, b, c});
    gpu->fill(t, kNaN);
    return t;
  }
  Tensor poisoned2(DType dt, int64_t a, int64_t b) {
    Tensor t = gpu->alloc(dt, {a, b});
    gpu->fill(t, kNaN);
    return t;
  }
  std::vector<float> down(const TensorView& d) {
    std::vector<float> out(static_cast<size_t>(d.numel()));
    TensorView h = d;
    h.data = out.data();
    h.dtype = DType::F32;
    h.device = Device::CPU;
    int64_t s = 1;
    for (int j = h.ndim - 1; j >= 0; --j) {
      h.stride[j] = s;
      s *= h.shape[j];
    }
    gpu->copy(d, h);
    return out;
  }
  Tensor host3(std::vector<float>& v, int64_t a, int64_t b, int64_t c) {
    Tensor t = cpu->alloc(DType::F32, {a, b, c});
    std::memcpy(t.view.data, v.data(), v.size() * sizeof(float));
    return t;
  }
  static std::vector<float> vals(const Tensor& t) {
    const float* p = t.ptr<float>();
    return std::vector<float>(p, p + t.view.numel());
  }

  // Device q, k, v of case c (values already rounded to c.dt): separate tensors, or head slices of
  // one fused buffer.
  struct Qkv {
    std::vector<Tensor> keep;
    TensorView q, k, v;
  };
  Qkv upload(const Case& c, const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v) {
    Qkv r;
    if (!c.fused_qkv) {
      r.keep = {dev(q, c.dt, c.Tq, c.Hq, c.D), dev(k, c.dt, c.Tk, c.Hkv, c.D), dev(v, c.dt, c.Tk, c.Hkv, c.D)};
      r.q = r.keep[0].view, r.k = r.keep[1].view, r.v = r.keep[2].view;
      return r;
    }
    EXPECT_EQ(c.Tq, c.Tk);
    const int64_t T = c.Tq, H = c.Hq + 2 * c.Hkv, D = c.D;
    std::vector<float> all(static_cast<size_t>(T * H * D));
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t d = 0; d < D; ++d) {
          float x;
          if (h < c.Hq) x = q[static_cast<size_t>((t * c.Hq + h) * D + d)];
          else if (h < c.Hq + c.Hkv) x = k[static_cast<size_t>((t * c.Hkv + h - c.Hq) * D + d)];
          else x = v[static_cast<size_t>((t * c.Hkv + h - c.Hq - c.Hkv) * D + d)];
          all[static_cast<size_t>((t * H + h) * D + d)] = x;
        }
    r.keep = {dev(all, c.dt, T, H, D)};
    auto slice = [&](int64_t h0, int64_t nh) {
      TensorView s = r.keep[0].view;
      s.data = static_cast<char*>(s.data) + h0 * D * static_cast<int64_t>(rt::dtype_size(c.dt));
      s.shape[1] = nh;
      return s;
    };
    r.q = slice(0, c.Hq), r.k = slice(c.Hq, c.Hkv), r.v = slice(c.Hq + c.Hkv, c.Hkv);
    return r;
  }

  // Forward (attention_forward_lse and attention) and backward of case c, materialized, against the CPU.
  void run_vs_cpu(const Case& c, uint64_t seed) {
    SCOPED_TRACE(c.str());
    LimitGuard limit(limit_for_chunk(c));
    const rt::AttentionSpec spec = c.spec(true);
    std::vector<float> q = rounded(rt::test::randn(static_cast<size_t>(c.Tq * c.Hq * c.D), seed), c.dt);
    std::vector<float> k = rounded(rt::test::randn(static_cast<size_t>(c.Tk * c.Hkv * c.D), seed + 1), c.dt);
    std::vector<float> v = rounded(rt::test::randn(static_cast<size_t>(c.Tk * c.Hkv * c.D), seed + 2), c.dt);
    std::vector<float> dout = rounded(rt::test::randn(static_cast<size_t>(c.Tq * c.Hq * c.D), seed + 3), c.dt);

    Tensor cq = host3(q, c.Tq, c.Hq, c.D), ck = host3(k, c.Tk, c.Hkv, c.D), cv = host3(v, c.Tk, c.Hkv, c.D);
    Tensor cdo = host3(dout, c.Tq, c.Hq, c.D);
    Tensor co = cpu->alloc(DType::F32, {c.Tq, c.Hq, c.D}), clse = cpu->alloc(DType::F32, {c.Hq, c.Tq});
    Tensor cdq = cpu->alloc(DType::F32, {c.Tq, c.Hq, c.D}), cdk = cpu->alloc(DType::F32, {c.Tk, c.Hkv, c.D}),
           cdv = cpu->alloc(DType::F32, {c.Tk, c.Hkv, c.D});
    cpu->attention_forward_lse(cq, ck, cv, co, clse, spec);
    cpu->attention_backward(cq, ck, cv, co, clse, cdo, cdq, cdk, cdv, spec);

    const double tol = c.bf16() ? 2e-2 : 1e-5, lse_tol = c.bf16() ? 1e-3 : 1e-5, atol = c.bf16() ? 1e-3 : 1e-6;
    Qkv in = upload(c, q, k, v);
    Tensor go = poisoned3(c.dt, c.Tq, c.Hq, c.D), glse = poisoned2(DType::F32, c.Hq, c.Tq);
    gpu->attention_forward_lse(in.q, in.k, in.v, go, glse, spec);
    expect_close(down(go), vals(co), tol, "o");
    expect_lse(down(glse), vals(clse), lse_tol, "lse");
    {
      Tensor go2 = poisoned3(c.dt, c.Tq, c.Hq, c.D);
      gpu->attention(in.q, in.k, in.v, go2, spec);
      expect_close(down(go2), vals(co), tol, "o (attention)");
    }
    Tensor gdo = dev(dout, c.dt, c.Tq, c.Hq, c.D);
    Tensor gdq = poisoned3(c.dt, c.Tq, c.Hq, c.D), gdk = poisoned3(c.dt, c.Tk, c.Hkv, c.D),
           gdv = poisoned3(c.dt, c.Tk, c.Hkv, c.D);
    gpu->attention_backward(in.q, in.k, in.v, go, glse, gdo, gdq, gdk, gdv, spec);
    expect_close_floor(down(gdq), vals(cdq), tol, atol, "dq");
    expect_close_floor(down(gdk), vals(cdk), tol, atol, "dk");
    expect_close_floor(down(gdv), vals(cdv), tol, atol, "dv");
  }
};

// Masks x GQA 7, 6, 1 x head dims 64, 128, 40 x T = 1, 7, 129, 300, bf16, ~40 query rows per chunk
// (several chunks for T = 129, 300).
TEST_F(DenseAttentionTest, MasksGqaHeadDimsBf16) {
  uint64_t seed = 1000;
  struct Heads {
    int64_t Hq, Hkv;
  };
  struct MaskCase {
    bool causal;
    int64_t window;
  };
  for (Heads h : {Heads{14, 2}, Heads{12, 2}, Heads{4, 4}})
    for (int64_t D : {64, 128, 40})
      for (int64_t T : {1, 7, 129, 300})
        for (MaskCase m : {MaskCase{true, 0}, MaskCase{true, 5}, MaskCase{false, 0}}) {
          Case c{"bf16", T, T, h.Hq, h.Hkv, D};
          c.causal = m.causal;
          c.window = m.window;
          c.chunk = 40;
          run_vs_cpu(c, seed += 10);
        }
}

TEST_F(DenseAttentionTest, MasksF32) {
  uint64_t seed = 2000;
  struct Shape {
    int64_t Hq, Hkv, D;
  };
  for (Shape s : {Shape{14, 2, 64}, Shape{12, 2, 40}, Shape{4, 4, 128}})
    for (int64_t T : {1, 7, 129, 300})
      for (int m = 0; m < 3; ++m) {
        Case c{"f32", T, T, s.Hq, s.Hkv, s.D};
        c.causal = m != 2;
        c.window = m == 1 ? 5 : 0;
        c.dt = DType::F32;
        c.chunk = 40;
        run_vs_cpu(c, seed += 10);
      }
}

// Position offsets: decode (one query against a cache), a prefill chunk against a cache, rows that
// see no key at all, a window without the causal mask.
TEST_F(DenseAttentionTest, OffsetsDecodeAndEmptyRows) {
  uint64_t seed = 3000;
  for (DType dt : {DType::BF16, DType::F32}) {
    std::vector<Case> cases;
    Case decode{"decode", 1, 37, 14, 2, 64};
    decode.q_pos0 = 36;
    cases.push_back(decode);
    Case decode_w = decode;
    decode_w.name = "decode, window 5";
    decode_w.window = 5;
    cases.push_back(decode_w);
    Case decode_d = decode;
    decode_d.name = "decode, head dim 40";
    decode_d.D = 40;
    decode_d.Hq = 12;
    cases.push_back(decode_d);
    Case chunk{"prefill chunk after a cache", 5, 37, 14, 2, 128};
    chunk.q_pos0 = 32;
    cases.push_back(chunk);
    Case chunk_w = chunk;
    chunk_w.name = "prefill chunk after a cache, window 5";
    chunk_w.window = 5;
    cases.push_back(chunk_w);
    Case empty{"first rows see no key (k_pos0 3)", 7, 7, 4, 2, 64};
    empty.k_pos0 = 3;
    cases.push_back(empty);
    Case empty_big{"first rows see no key, chunked", 129, 129, 14, 2, 64};
    empty_big.k_pos0 = 50;
    empty_big.window = 5;
    empty_big.chunk = 16;
    cases.push_back(empty_big);
    Case none{"no row sees a key (window, non-causal)", 7, 20, 4, 2, 64};
    none.causal = false;
    none.window = 5;
    none.q_pos0 = 40;
    cases.push_back(none);
    Case window_only{"window without causal", 129, 129, 12, 2, 40};
    window_only.causal = false;
    window_only.window = 5;
    window_only.chunk = 40;
    cases.push_back(window_only);
    Case offset_nc{"non-causal with offsets", 33, 45, 4, 1, 64};
    offset_nc.causal = false;
    offset_nc.q_pos0 = 7;
    offset_nc.k_pos0 = 2;
    cases.push_back(offset_nc);
    for (Case c : cases) {
      c.dt = dt;
      run_vs_cpu(c, seed += 10);
    }
  }
}

// One query row per chunk (backward), a limit below a single row's workspace, and the default limit.
TEST_F(DenseAttentionTest, ChunkLimits) {
  uint64_t seed = 4000;
  for (DType dt : {DType::BF16, DType::F32}) {
    Case c{"one row per chunk", 37, 37, 14, 2, 64};
    c.window = 5;
    c.dt = dt;
    c.chunk = 1;
    run_vs_cpu(c, seed += 10);
    Case tiny = c;
    tiny.name = "limit of 1 byte";
    tiny.chunk = 0;
    tiny.limit = 1;
    run_vs_cpu(tiny, seed += 10);
    Case d = c;
    d.name = "default limit (one chunk)";
    d.chunk = 0;
    run_vs_cpu(d, seed += 10);
  }
  rt::cuda::set_dense_attention_workspace_limit(12345);
  EXPECT_EQ(rt::cuda::dense_attention_workspace_limit(), 12345u);
  rt::cuda::set_dense_attention_workspace_limit(0);
  EXPECT_EQ(rt::cuda::dense_attention_workspace_limit(), size_t{1} << 30);
}

// q, k, v as head slices of one fused [T, Hq + 2 Hkv, D] buffer (row stride (Hq + 2 Hkv) D).
TEST_F(DenseAttentionTest, FusedQkvStridedViews) {
  uint64_t seed = 5000;
  for (DType dt : {DType::BF16, DType::F32})
    for (int64_t D : {64, 40})
      for (int64_t T : {7, 129}) {
        Case c{"fused qkv", T, T, 14, 2, D};
        c.dt = dt;
        c.fused_qkv = true;
        c.chunk = 40;
        run_vs_cpu(c, seed += 10);
      }
}

// Backward outputs given as empty views are not written; an empty lse is recomputed.
TEST_F(DenseAttentionTest, SkippedOutputsAndRecomputedLse) {
  const Case c{"partial", 129, 129, 14, 2, 64};
  SCOPED_TRACE(c.str());
  LimitGuard limit(static_cast<size_t>(40 * c.Hq * c.Tk * 12));
  const rt::AttentionSpec spec = c.spec(true);
  std::vector<float> q = rounded(rt::test::randn(static_cast<size_t>(c.Tq * c.Hq * c.D), 11), c.dt);
  std::vector<float> k = rounded(rt::test::randn(static_cast<size_t>(c.Tk * c.Hkv * c.D), 12), c.dt);
  std::vector<float> v = rounded(rt::test::randn(static_cast<size_t>(c.Tk * c.Hkv * c.D), 13), c.dt);
  std::vector<float> dout = rounded(rt::test::randn(static_cast<size_t>(c.Tq * c.Hq * c.D), 14), c.dt);
  Tensor cq = host3(q, c.Tq, c.Hq, c.D), ck = host3(k, c.Tk, c.Hkv, c.D), cv = host3(v, c.Tk, c.Hkv, c.D);
  Tensor cdo = host3(dout, c.Tq, c.Hq, c.D);
  Tensor co = cpu->alloc(DType::F32, {c.Tq, c.Hq, c.D}), clse = cpu->alloc(DType::F32, {c.Hq, c.Tq});
  Tensor cdq = cpu->alloc(DType::F32, {c.Tq, c.Hq, c.D}), cdk = cpu->alloc(DType::F32, {c.Tk, c.Hkv, c.D}),
         cdv = cpu->alloc(DType::F32, {c.Tk, c.Hkv, c.D});
  cpu->attention_forward_lse(cq, ck, cv, co, clse, spec);
  cpu->attention_backward(cq, ck, cv, co, clse, cdo, cdq, cdk, cdv, spec);

  Tensor gq = dev(q, c.dt, c.Tq, c.Hq, c.D), gk = dev(k, c.dt, c.Tk, c.Hkv, c.D), gv = dev(v, c.dt, c.Tk, c.Hkv, c.D);
  Tensor gdo = dev(dout, c.dt, c.Tq, c.Hq, c.D);
  Tensor go = poisoned3(c.dt, c.Tq, c.Hq, c.D), glse = poisoned2(DType::F32, c.Hq, c.Tq);
  gpu->attention_forward_lse(gq, gk, gv, go, glse, spec);
  {
    SCOPED_TRACE("dq only");
    Tensor gdq = poisoned3(c.dt, c.Tq, c.Hq, c.D), gdk = poisoned3(c.dt, c.Tk, c.Hkv, c.D);
    gpu->attention_backward(gq, gk, gv, go, glse, gdo, gdq, TensorView{}, TensorView{}, spec);
    expect_close_floor(down(gdq), vals(cdq), 2e-2, 1e-3, "dq");
  }
  {
    SCOPED_TRACE("dk, dv, no dq");
    Tensor gdk = poisoned3(c.dt, c.Tk, c.Hkv, c.D), gdv = poisoned3(c.dt, c.Tk, c.Hkv, c.D);
    gpu->attention_backward(gq, gk, gv, go, glse, gdo, TensorView{}, gdk, gdv, spec);
    expect_close_floor(down(gdk), vals(cdk), 2e-2, 1e-3, "dk");
    expect_close_floor(down(gdv), vals(cdv), 2e-2, 1e-3, "dv");
  }
  {
    SCOPED_TRACE("dv only, dk not written");
    Tensor gdk = poisoned3(c.dt, c.Tk, c.Hkv, c.D), gdv = poisoned3(c.dt, c.Tk, c.Hkv, c.D);
    gpu->attention_backward(gq, gk, gv, go, glse, gdo, TensorView{}, TensorView{}, gdv, spec);
    expect_close_floor(down(gdv), vals(cdv), 2e-2, 1e-3, "dv");
    const std::vector<float> dk_after = down(gdk);
    for (float x : dk_after) ASSERT_TRUE(std::isnan(x)) << "dk was not asked for but was written";
  }
  {
    SCOPED_TRACE("empty lse: recomputed");
    Tensor gdq = poisoned3(c.dt, c.Tq, c.Hq, c.D), gdk = poisoned3(c.dt, c.Tk, c.Hkv, c.D),
           gdv = poisoned3(c.dt, c.Tk, c.Hkv, c.D);
    gpu->attention_backward(gq, gk, gv, go, TensorView{}, gdo, gdq, gdk, gdv, spec);
    expect_close_floor(down(gdq), vals(cdq), 2e-2, 1e-3, "dq");
    expect_close_floor(down(gdk), vals(cdk), 2e-2, 1e-3, "dk");
    expect_close_floor(down(gdv), vals(cdv), 2e-2, 1e-3, "dv");
  }
  // Workspaces are returned: the pool's use is back where it was.
  gpu->synchronize();
  const size_t before = gpu->memory_stats().in_use;
  {
    Tensor gdq = poisoned3(c.dt, c.Tq, c.Hq, c.D), gdk = poisoned3(c.dt, c.Tk, c.Hkv, c.D),
           gdv = poisoned3(c.dt, c.Tk, c.Hkv, c.D);
    gpu->attention_forward_lse(gq, gk, gv, go, glse, spec);
    gpu->attention_backward(gq, gk, gv, go, glse, gdo, gdq, gdk, gdv, spec);
  }
  gpu->synchronize();
  EXPECT_EQ(gpu->memory_stats().in_use, before) << "the materialized path leaked device memory";
}

// The materialized path against the flash path of the same CudaOps (bf16, head dims 64 and 128).
TEST_F(DenseAttentionTest, MatchesFlashPathBf16) {
  uint64_t seed = 6000;
  for (int64_t D : {64, 128})
    for (int64_t T : {129, 300})
      for (int m = 0; m < 3; ++m) {
        Case c{"vs flash", T, T, 14, 2, D};
        c.causal = m != 2;
        c.window = m == 1 ? 5 : 0;
        c.chunk = 64;
        SCOPED_TRACE(c.str());
        LimitGuard limit(limit_for_chunk(c));
        std::vector<float> q = rounded(rt::test::randn(static_cast<size_t>(T * c.Hq * D), seed += 10), c.dt);
        std::vector<float> k = rounded(rt::test::randn(static_cast<size_t>(T * c.Hkv * D), seed + 1), c.dt);
        std::vector<float> v = rounded(rt::test::randn(static_cast<size_t>(T * c.Hkv * D), seed + 2), c.dt);
        std::vector<float> dout = rounded(rt::test::randn(static_cast<size_t>(T * c.Hq * D), seed + 3), c.dt);
        Tensor gq = dev(q, c.dt, T, c.Hq, D), gk = dev(k, c.dt, T, c.Hkv, D), gv = dev(v, c.dt, T, c.Hkv, D);
        Tensor gdo = dev(dout, c.dt, T, c.Hq, D);
        std::vector<float> res[2][5];  // [flash, dense][o, lse, dq, dk, dv]
        for (int dense = 0; dense < 2; ++dense) {
          const rt::AttentionSpec spec = c.spec(dense == 1);
          Tensor go = poisoned3(c.dt, T, c.Hq, D), glse = poisoned2(DType::F32, c.Hq, T);
          gpu->attention_forward_lse(gq, gk, gv, go, glse, spec);
          Tensor gdq = poisoned3(c.dt, T, c.Hq, D), gdk = poisoned3(c.dt, T, c.Hkv, D),
                 gdv = poisoned3(c.dt, T, c.Hkv, D);
          gpu->attention_backward(gq, gk, gv, go, glse, gdo, gdq, gdk, gdv, spec);
          res[dense][0] = down(go);
          res[dense][1] = down(glse);
          res[dense][2] = down(gdq);
          res[dense][3] = down(gdk);
          res[dense][4] = down(gdv);
        }
        expect_close(res[1][0], res[0][0], 2e-2, "o");
        expect_lse(res[1][1], res[0][1], 1e-3, "lse");
        const char* names[] = {"o", "lse", "dq", "dk", "dv"};
        for (int i = 2; i < 5; ++i) expect_close_floor(res[1][i], res[0][i], 2e-2, 1e-3, names[i]);
      }
}

// A long sequence (16K x 16K scores, 14 heads: 15 GB of f32 scores if materialized at once) runs in
// query chunks within the default 1 GiB workspace bound, and matches the flash path.
TEST_F(DenseAttentionTest, LongSequenceStaysWithinWorkspaceBound) {
  const int64_t T = 16384, Hq = 14, Hkv = 2, D = 64;
  std::vector<float> q = rt::test::randn(static_cast<size_t>(T * Hq * D), 71);
  std::vector<float> k = rt::test::randn(static_cast<size_t>(T * Hkv * D), 72);
  std::vector<float> v = rt::test::randn(static_cast<size_t>(T * Hkv * D), 73);
  std::vector<float> dout = rt::test::randn(static_cast<size_t>(T * Hq * D), 74);
  Tensor gq = dev(q, DType::BF16, T, Hq, D), gk = dev(k, DType::BF16, T, Hkv, D), gv = dev(v, DType::BF16, T, Hkv, D);
  Tensor gdo = dev(dout, DType::BF16, T, Hq, D);
  std::vector<float> res[2][5];  // [flash, dense][o, lse, dq, dk, dv]
  for (int dense = 0; dense < 2; ++dense) {
    rt::AttentionSpec spec;
    spec.materialize = dense == 1;
    Tensor go = poisoned3(DType::BF16, T, Hq, D), glse = poisoned2(DType::F32, Hq, T);
    Tensor gdq = poisoned3(DType::BF16, T, Hq, D), gdk = poisoned3(DType::BF16, T, Hkv, D),
           gdv = poisoned3(DType::BF16, T, Hkv, D);
    gpu->synchronize();
    const size_t before = gpu->memory_stats().in_use;
    gpu->reset_peak_memory();
    rt::test::Stopwatch watch;
    gpu->attention_forward_lse(gq, gk, gv, go, glse, spec);
    gpu->synchronize();
    const double fwd_ms = watch.ms();
    watch.reset();
    gpu->attention_backward(gq, gk, gv, go, glse, gdo, gdq, gdk, gdv, spec);
    gpu->synchronize();
    const double bwd_ms = watch.ms();
    const size_t extra = gpu->memory_stats().peak - before;
    std::cout << "[ info     ] T " << T << " Hq " << Hq << " Hkv " << Hkv << " D " << D << " causal bf16, "
              << (dense ? "materialized" : "flash") << " (first call, untuned): forward "
              << fwd_ms << " ms, backward " << bwd_ms << " ms, peak extra memory "
              << static_cast<double>(extra) / (1 << 20) << " MiB\n";
    if (dense == 1) {
      // The score workspaces (1 GiB), cuBLAS's 32 MiB, the f32 dk / dv accumulators (16 MiB) and slack.
      EXPECT_LT(extra, (size_t{1} << 30) + (size_t{128} << 20)) << "materialized path: peak extra device memory";
    }
    res[dense][0] = down(go);
    res[dense][1] = down(glse);
    res[dense][2] = down(gdq);
    res[dense][3] = down(gdk);
    res[dense][4] = down(gdv);
  }
  expect_close(res[1][0], res[0][0], 2e-2, "o");
  expect_lse(res[1][1], res[0][1], 1e-3, "lse");
  const char* names[] = {"o", "lse", "dq", "dk", "dv"};
  for (int i = 2; i < 5; ++i) expect_close_floor(res[1][i], res[0][i], 2e-2, 1e-3, names[i]);
}

// Bad arguments: rt::Error naming the argument.
TEST_F(DenseAttentionTest, ArgumentErrors) {
  rt::AttentionSpec spec;
  spec.materialize = true;
  const int64_t T = 9, Hq = 4, Hkv = 2, D = 64;
  Tensor q = poisoned3(DType::BF16, T, Hq, D), k = poisoned3(DType::BF16, T, Hkv, D),
         v = poisoned3(DType::BF16, T, Hkv, D), o = poisoned3(DType::BF16, T, Hq, D);
  Tensor lse = poisoned2(DType::F32, Hq, T);
  Tensor o32 = poisoned3(DType::F32, T, Hq, D);
  expect_error([&] { gpu->attention_forward_lse(q, k, v, o32, lse, spec); }, "'o'", "o f32 with bf16 q");
  expect_error([&] { gpu->attention(q, k, v, o32, spec); }, "'o'", "attention: o f32 with bf16 q");
  Tensor bad_lse = poisoned2(DType::F32, Hq, T + 1);
  expect_error([&] { gpu->attention_forward_lse(q, k, v, o, bad_lse, spec); }, "'lse'", "lse shape");
  Tensor q16 = gpu->alloc(DType::F16, {T, Hq, D}), k16 = gpu->alloc(DType::F16, {T, Hkv, D}),
         v16 = gpu->alloc(DType::F16, {T, Hkv, D}), o16 = gpu->alloc(DType::F16, {T, Hq, D});
  expect_error([&] { gpu->attention_forward_lse(q16, k16, v16, o16, lse, spec); }, "bf16 or f32", "f16 inputs");
  Tensor k3 = poisoned3(DType::BF16, T, 3, D), v3 = poisoned3(DType::BF16, T, 3, D);
  expect_error([&] { gpu->attention(q, k3, v3, o, spec); }, "multiple", "Hq not a multiple of Hkv");
  Tensor kd = poisoned3(DType::BF16, T, Hkv, 32);
  expect_error([&] { gpu->attention(q, kd, kd, o, spec); }, "'k'", "head dim mismatch");
  expect_error([&] { gpu->attention(q, k, v, q, spec); }, "overlaps", "o aliasing q");
  Tensor dq = poisoned3(DType::BF16, T, Hq, D), dk = poisoned3(DType::BF16, T, Hkv, D),
         dv = poisoned3(DType::BF16, T, Hkv, D), dout = poisoned3(DType::BF16, T, Hq, D);
  Tensor dk32 = poisoned3(DType::F32, T, Hkv, D);
  expect_error([&] { gpu->attention_backward(q, k, v, o, lse, dout, dq, dk32, dv, spec); }, "'dk'", "dk f32");
  expect_error([&] { gpu->attention_backward(q, k, v, o, bad_lse, dout, dq, dk, dv, spec); }, "'lse'",
               "backward lse shape");
  // A strided view whose rows overlap (row stride < head dim).
  TensorView qs = q.view;
  qs.stride[0] = D / 2;
  qs.shape[1] = 1;
  TensorView os = o.view;
  os.shape[1] = 1;
  TensorView k1 = k.view, v1 = v.view;
  k1.shape[1] = v1.shape[1] = 1;
  expect_error([&] { gpu->attention(qs, k1, v1, os, spec); }, "'q'", "overlapping rows");
  // Nothing was corrupted: a valid call still works afterwards.
  Tensor ok_o = poisoned3(DType::BF16, T, Hq, D);
  std::vector<float> zeros(static_cast<size_t>(T * Hq * D), 0.f), kz(static_cast<size_t>(T * Hkv * D), 0.5f);
  Tensor zq = dev(zeros, DType::BF16, T, Hq, D), zk = dev(kz, DType::BF16, T, Hkv, D), zv = dev(kz, DType::BF16, T, Hkv, D);
  gpu->attention(zq, zk, zv, ok_o, spec);
  for (float x : down(ok_o)) ASSERT_FLOAT_EQ(x, 0.5f);
}

}  // namespace
