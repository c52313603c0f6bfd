// Tests of the CUDA backend's training ops (rt::Ops "Training" section) against the CPU backend,
// both through the rt::Ops interface: rt::make_cuda_ops() against rt::make_cpu_ops() (f32, the
// reference). Inputs are random (fixed seeds) with ragged sizes; the device gets them in its dtype
// (bf16 or f32) and the CPU reference the same values rounded through that dtype, in f32.
// "=" outputs are poisoned with NaN before each call; "+=" outputs are pre-filled with random
// values (the same on both sides) and both the total and the accumulated part (total - initial)
// are checked. Pass: relative Frobenius error < 1e-2 where bf16 is involved, < 1e-5 for f32 paths
// (attention gradients: < 2e-2 with an absolute floor, as test_attention_backward.cpp).
// Without a GPU every test skips.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <limits>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "cpu/cpu_ops.h"
#include "cuda/attention/attention.h"
#include "cuda/attention/attention_backward.h"
#include "cuda/cuda_ops.h"
#include "cuda/linear.h"
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
using Shape = std::vector<int64_t>;

const float kNaN = std::numeric_limits<float>::quiet_NaN();

int64_t numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

TensorView view_of(void* data, DType dt, Device dev, const Shape& s) {
  switch (s.size()) {
    case 1: return TensorView::contiguous(data, dt, dev, {s[0]});
    case 2: return TensorView::contiguous(data, dt, dev, {s[0], s[1]});
    case 3: return TensorView::contiguous(data, dt, dev, {s[0], s[1], s[2]});
    default: return TensorView::contiguous(data, dt, dev, {s[0], s[1], s[2], s[3]});
  }
}

Tensor alloc(rt::Ops& ops, DType dt, const Shape& s) {
  switch (s.size()) {
    case 1: return ops.alloc(dt, {s[0]});
    case 2: return ops.alloc(dt, {s[0], s[1]});
    case 3: return ops.alloc(dt, {s[0], s[1], s[2]});
    default: return ops.alloc(dt, {s[0], s[1], s[2], s[3]});
  }
}

Shape shape_of(const TensorView& v) { return Shape(v.shape.begin(), v.shape.begin() + v.ndim); }

using rt::test::rounded;

std::vector<float> randn(const Shape& s, uint64_t seed, float sigma = 1.f, float mean = 0.f) {
  return rt::test::randn(static_cast<size_t>(numel(s)), seed, sigma, mean);
}

double tol_for(std::initializer_list<DType> dts) {
  for (DType d : dts)
    if (d != DType::F32) return 1e-2;
  return 1e-5;
}

double norm(const std::vector<float>& v) {
  double s = 0;
  for (float x : v) s += static_cast<double>(x) * x;
  return std::sqrt(s);
}

// Relative Frobenius error of got against want below tol, every value finite.
void expect_close(const std::vector<float>& got, const std::vector<float>& want, double tol, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  size_t bad = 0;
  const double e = rt::test::rel_err(got, want, bad);
  EXPECT_EQ(bad, 0u) << what << ": non-finite values (unwritten or NaN)";
  EXPECT_LT(e, tol) << what << ": relative Frobenius error " << e << " (reference norm " << norm(want) << ")";
}

// A "+=" output: got = init + delta_gpu, want = init + delta_cpu. Checks the total, and the
// accumulated part (got - init against want - init) with an absolute floor for the rounding of the
// sums themselves (f32: 2^-24 relative per element; a bf16 output: 2^-9).
void expect_accumulated(const std::vector<float>& got, const std::vector<float>& init, const std::vector<float>& want,
                        double tol, DType out_dtype, const std::string& what) {
  expect_close(got, want, tol, what + " (total)");
  std::vector<float> dg(got.size()), dw(want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    dg[i] = got[i] - init[i];
    dw[i] = want[i] - init[i];
  }
  double err = 0;
  for (size_t i = 0; i < dg.size(); ++i) err += (static_cast<double>(dg[i]) - dw[i]) * (static_cast<double>(dg[i]) - dw[i]);
  err = std::sqrt(err);
  // Each side rounds its total once: at most half an ulp of it per element.
  const double ulp = out_dtype == DType::F32 ? 0x1p-22 : 0x1p-8;
  const double floor = ulp * (norm(init) + norm(want));
  EXPECT_LE(err, tol * norm(dw) + floor) << what << ": accumulated part off by " << err << " (its norm " << norm(dw)
                                         << ", rounding floor " << floor << ")";
}

struct TrainingOpsTest : ::testing::Test {
  std::unique_ptr<rt::Ops> cpu;
  std::unique_ptr<rt::Ops> gpu;

  void SetUp() override {
    SKIP_WITHOUT_GPU();
    cpu = rt::make_cpu_ops();
    gpu = rt::make_cuda_ops();
  }

  // Device tensor of dtype dt holding v (converted on the device from f32).
  Tensor dev(const std::vector<float>& v, DType dt, const Shape& s) {
    EXPECT_EQ(static_cast<int64_t>(v.size()), numel(s));
    Tensor t = alloc(*gpu, dt, s);
    gpu->copy(view_of(const_cast<float*>(v.data()), DType::F32, Device::CPU, s), t.view);
    return t;
  }
  Tensor poisoned(DType dt, const Shape& s) {
    Tensor t = alloc(*gpu, dt, s);
    gpu->fill(t, kNaN);
    return t;
  }
  // CPU f32 tensor holding v rounded through dt (the reference's view of the device's values).
  Tensor host(const std::vector<float>& v, const Shape& s, DType dt = DType::F32) {
    Tensor t = alloc(*cpu, DType::F32, s);
    const std::vector<float> r = rounded(v, dt);
    std::memcpy(t.view.data, r.data(), r.size() * sizeof(float));
    return t;
  }
  // Device view -> host f32 (converted on the device; synchronizes and reports device errors).
  std::vector<float> down(const TensorView& d) {
    std::vector<float> out(static_cast<size_t>(d.numel()));
    gpu->copy(d, view_of(out.data(), DType::F32, Device::CPU, shape_of(d)));
    return out;
  }
  static std::vector<float> vals(const Tensor& t) {
    const float* p = t.ptr<float>();
    return std::vector<float>(p, p + t.view.numel());
  }
  Tensor dev_ids(const std::vector<int32_t>& ids) {
    Tensor t = gpu->alloc(DType::I32, {static_cast<int64_t>(ids.size())});
    gpu->copy(TensorView::contiguous(const_cast<int32_t*>(ids.data()), DType::I32, Device::CPU,
                                     {static_cast<int64_t>(ids.size())}),
              t.view);
    return t;
  }
  static TensorView host_ids(std::vector<int32_t>& ids) {
    return TensorView::contiguous(ids.data(), DType::I32, Device::CPU, {static_cast<int64_t>(ids.size())});
  }
};

std::string dts(DType a) { return rt::dtype_name(a); }

// ---- linear_backward ---------------------------------------------------------------------------

struct LinearMode {
  DType x, w, dy, dx;
};

TEST_F(TrainingOpsTest, LinearBackward) {
  const LinearMode modes[] = {{DType::BF16, DType::BF16, DType::BF16, DType::BF16},
                              {DType::BF16, DType::BF16, DType::BF16, DType::F32},
                              {DType::F32, DType::F32, DType::F32, DType::F32},
                              // mixed: the f32 operand is rounded to bf16 for the GEMMs
                              {DType::F32, DType::BF16, DType::BF16, DType::F32},
                              {DType::BF16, DType::BF16, DType::F32, DType::F32}};
  const std::pair<int64_t, int64_t> dims[] = {{64, 96}, {96, 64}, {96, 333}};
  uint64_t seed = 100;
  for (const LinearMode& m : modes)
    for (auto [in, out] : dims)
      for (int64_t N : {1, 7, 129})
        for (bool acc : {false, true}) {
          std::ostringstream name;
          name << "x " << dts(m.x) << " w " << dts(m.w) << " dy " << dts(m.dy) << " dx " << dts(m.dx) << " N " << N
               << " in " << in << " out " << out << (acc ? " dx+=" : " dx=");
          SCOPED_TRACE(name.str());
          const double tol = tol_for({m.x, m.w, m.dy, m.dx});
          const std::vector<float> x = randn({N, in}, ++seed), w = randn({out, in}, ++seed, 0.2f),
                                   dy = randn({N, out}, ++seed);
          const std::vector<float> dx0 = rounded(randn({N, in}, ++seed), m.dx), dw0 = randn({out, in}, ++seed),
                                   db0 = randn({out}, ++seed);
          Tensor cx = host(x, {N, in}, m.x), cw = host(w, {out, in}, m.w), cdy = host(dy, {N, out}, m.dy);
          Tensor cdx = host(dx0, {N, in}), cdw = host(dw0, {out, in}), cdb = host(db0, {out});
          cpu->linear_backward(cx, cw, cdy, cdx, cdw, cdb, acc);

          Tensor gx = dev(x, m.x, {N, in}), gw = dev(w, m.w, {out, in}), gdy = dev(dy, m.dy, {N, out});
          Tensor gdx = acc ? dev(dx0, m.dx, {N, in}) : poisoned(m.dx, {N, in});
          Tensor gdw = dev(dw0, DType::F32, {out, in}), gdb = dev(db0, DType::F32, {out});
          gpu->linear_backward(gx, gw, gdy, gdx, gdw, gdb, acc);
          if (acc) expect_accumulated(down(gdx), dx0, vals(cdx), tol, m.dx, "dx");
          else expect_close(down(gdx), vals(cdx), tol, "dx");
          expect_accumulated(down(gdw), dw0, vals(cdw), tol, DType::F32, "dw");
          expect_accumulated(down(gdb), db0, vals(cdb), tol, DType::F32, "db");
        }
}

// Outputs passed as empty views are skipped; the others are still computed. Row-strided views.
TEST_F(TrainingOpsTest, LinearBackwardPartialOutputsAndStrides) {
  const int64_t N = 129, in = 96, out = 64;
  const std::vector<float> x = randn({N, in}, 1), w = randn({out, in}, 2, 0.2f), dy = randn({N, out}, 3);
  const std::vector<float> dw0 = randn({out, in}, 4), db0 = randn({out}, 5);
  Tensor cx = host(x, {N, in}, DType::BF16), cw = host(w, {out, in}, DType::BF16), cdy = host(dy, {N, out}, DType::BF16);
  Tensor cdx = host(randn({N, in}, 6), {N, in}), cdw = host(dw0, {out, in}), cdb = host(db0, {out});
  cpu->linear_backward(cx, cw, cdy, cdx, cdw, cdb, false);
  Tensor gx = dev(x, DType::BF16, {N, in}), gw = dev(w, DType::BF16, {out, in});
  // dy as the first `out` columns of a wider buffer (row stride out + 8).
  std::vector<float> wide(static_cast<size_t>(N * (out + 8)), 0.f);
  for (int64_t r = 0; r < N; ++r)
    for (int64_t c = 0; c < out; ++c) wide[static_cast<size_t>(r * (out + 8) + c)] = dy[static_cast<size_t>(r * out + c)];
  Tensor gwide = dev(wide, DType::BF16, {N, out + 8});
  TensorView gdy = gwide.view;
  gdy.shape[1] = out;
  {
    Tensor gdw = dev(dw0, DType::F32, {out, in});
    gpu->linear_backward(gx, gw, gdy, TensorView{}, gdw, TensorView{}, false);
    expect_accumulated(down(gdw), dw0, vals(cdw), 1e-2, DType::F32, "dw only");
  }
  {
    Tensor gdb = dev(db0, DType::F32, {out});
    gpu->linear_backward(gx, gw, gdy, TensorView{}, TensorView{}, gdb, false);
    expect_accumulated(down(gdb), db0, vals(cdb), 1e-2, DType::F32, "db only");
  }
  {
    Tensor gdx = poisoned(DType::BF16, {N, in});
    gpu->linear_backward(gx, gw, gdy, gdx, TensorView{}, TensorView{}, false);
    expect_close(down(gdx), vals(cdx), 1e-2, "dx only");
  }
}

// ---- GEMM tuning ---------------------------------------------------------------------------------

// A large shape's first call times cuBLASLt's candidates and keeps the fastest that gives the
// heuristic's first choice's bits (gemm_tune.h). So a tuning context and one without tuning give
// the same bits, on the first call (the tuning one) and the second (the kept algorithm), for
// linear with its bias fused, linear_accumulate into an f32 residual and matmul with a transposed
// operand (a weight gradient), each above the tuning threshold (a GFLOP).
TEST_F(TrainingOpsTest, TunedGemmsKeepTheFirstChoicesBits) {
  const int64_t N = 4096, in = 1024, out = 1280;  // 2 N in out = 10.7 GFLOP
  rt::cuda::GemmContext tuned(true), plain(false);
  const Shape sx{N, in}, sw{out, in}, sy{N, out};
  const std::vector<float> x = randn(sx, 31), w = randn(sw, 32, 0.05f), b = randn({out}, 33), r0 = randn(sy, 34);
  Tensor gx = dev(x, DType::BF16, sx), gw = dev(w, DType::BF16, sw), gb = dev(b, DType::BF16, {out});
  auto bits = [&](const Tensor& t) {
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    std::vector<unsigned char> h(t.view.nbytes());
    EXPECT_EQ(cudaMemcpy(h.data(), t.view.data, h.size(), cudaMemcpyDeviceToHost), cudaSuccess);
    return h;
  };
  std::vector<std::vector<unsigned char>> lin, acc, mm;
  for (rt::cuda::GemmContext* ctx : {&tuned, &plain})
    for (int call = 0; call < 2; ++call) {
      Tensor y = poisoned(DType::BF16, sy);
      ctx->linear(gx, gw, gb, y, nullptr);
      lin.push_back(bits(y));
      if (ctx == &tuned && call == 0) {  // and right: against the CPU
        Tensor cy = alloc(*cpu, DType::F32, sy);
        cpu->linear(host(x, sx, DType::BF16), host(w, sw, DType::BF16), host(b, {out}, DType::BF16), cy);
        expect_close(down(y), vals(cy), 1e-2, "tuned linear");
      }
      Tensor r = dev(r0, DType::F32, sy);
      rt::cuda::linear_accumulate(*ctx, gx, gw, r, nullptr);
      acc.push_back(bits(r));
      Tensor dw = poisoned(DType::F32, sw);
      Tensor gy = dev(r0, DType::BF16, sy);
      ctx->matmul(gy, true, gx, false, dw, false, nullptr);  // dW [out, in] = dy^T x, K = N
      mm.push_back(bits(dw));
    }
  for (size_t i = 1; i < lin.size(); ++i) {
    EXPECT_TRUE(lin[i] == lin[0]) << "linear, run " << i << " (tuned first, second; plain first, second)";
    EXPECT_TRUE(acc[i] == acc[0]) << "linear_accumulate, run " << i;
    EXPECT_TRUE(mm[i] == mm[0]) << "matmul, run " << i;
  }
}

// ---- attention ---------------------------------------------------------------------------------

struct AttnCase {
  int64_t T, Hq, Hkv, D;
  bool causal;
  int64_t window;
  DType dt;
};

void run_attention_case(TrainingOpsTest& t, const AttnCase& c, uint64_t seed, bool skip_dk = false) {
  std::ostringstream name;
  name << "T " << c.T << " Hq " << c.Hq << " Hkv " << c.Hkv << " D " << c.D << (c.causal ? " causal" : " full")
       << " window " << c.window << " " << dts(c.dt) << (skip_dk ? " (no dk)" : "");
  SCOPED_TRACE(name.str());
  rt::AttentionSpec spec;
  spec.causal = c.causal;
  spec.window = c.window;
  const Shape sq{c.T, c.Hq, c.D}, sk{c.T, c.Hkv, c.D}, sl{c.Hq, c.T};
  const std::vector<float> q = randn(sq, seed), k = randn(sk, seed + 1), v = randn(sk, seed + 2),
                           dout = randn(sq, seed + 3);
  Tensor cq = t.host(q, sq, c.dt), ck = t.host(k, sk, c.dt), cv = t.host(v, sk, c.dt), cdo = t.host(dout, sq, c.dt);
  Tensor co = t.host(std::vector<float>(q.size(), kNaN), sq), clse = t.host(std::vector<float>(c.Hq * c.T, kNaN), sl);
  Tensor cdq = t.host(std::vector<float>(q.size(), kNaN), sq), cdk = t.host(std::vector<float>(k.size(), kNaN), sk),
         cdv = t.host(std::vector<float>(k.size(), kNaN), sk);
  t.cpu->attention_forward_lse(cq, ck, cv, co, clse, spec);
  t.cpu->attention_backward(cq, ck, cv, co, clse, cdo, cdq, cdk, cdv, spec);

  Tensor gq = t.dev(q, c.dt, sq), gk = t.dev(k, c.dt, sk), gv = t.dev(v, c.dt, sk), gdo = t.dev(dout, c.dt, sq);
  Tensor go = t.poisoned(c.dt, sq), glse = t.poisoned(DType::F32, sl);
  t.gpu->attention_forward_lse(gq, gk, gv, go, glse, spec);
  const bool bf16 = c.dt != DType::F32;
  expect_close(t.down(go), TrainingOpsTest::vals(co), bf16 ? 1e-2 : 1e-5, "o");
  expect_close(t.down(glse), TrainingOpsTest::vals(clse), bf16 ? 1e-3 : 1e-5, "lse");
  Tensor gdq = t.poisoned(c.dt, sq), gdk = t.poisoned(c.dt, sk), gdv = t.poisoned(c.dt, sk);
  t.gpu->attention_backward(gq, gk, gv, go, glse, gdo, gdq, skip_dk ? TensorView{} : gdk.view, gdv, spec);
  const double tol = bf16 ? 2e-2 : 1e-4, atol = bf16 ? 1e-3 : 1e-6;
  expect_close_floor(t.down(gdq), TrainingOpsTest::vals(cdq), tol, atol, "dq");
  if (!skip_dk) expect_close_floor(t.down(gdk), TrainingOpsTest::vals(cdk), tol, atol, "dk");
  else EXPECT_TRUE(std::isnan(t.down(gdk)[0])) << "dk was not asked for but was written";
  expect_close_floor(t.down(gdv), TrainingOpsTest::vals(cdv), tol, atol, "dv");
}

TEST_F(TrainingOpsTest, AttentionForwardLseAndBackward) {
  uint64_t seed = 1000;
  for (auto [Hq, Hkv] : {std::pair<int64_t, int64_t>{14, 2}, {4, 2}})  // GQA 7 and 2
    for (int64_t D : {64, 128})
      for (int64_t T : {1, 7, 129})
        for (int64_t window : {0, 5}) run_attention_case(*this, {T, Hq, Hkv, D, true, window, DType::BF16}, seed += 10);
}

// Training's forward takes a fixed implementation (a resumed run must pick what the first one did):
// our Hopper kernel wherever it runs, which is faster than cuDNN's, else cuDNN's for full causal
// attention. 1024 rows: the shortest the dispatch offers to cuDNN at all.
TEST_F(TrainingOpsTest, TrainingForwardTakesOurHopperKernelWhereItRuns) {
  if (!rt::cuda::attention_deterministic()) GTEST_SKIP() << "RT_ATTENTION_DETERMINISTIC=0: the dispatch times both";
  uint64_t seed = 1500;
  for (int64_t D : {64, 128}) {
    run_attention_case(*this, {1024, 14, 2, D, true, 0, DType::BF16}, seed += 10);
    const std::string ran = gpu->last_attention_impl();
    if (rt::cuda::hopper_forward_runs(D)) EXPECT_EQ(ran, "flash") << "D " << D;
    else EXPECT_TRUE(ran == "flash" || ran == "cudnn") << ran;
  }
}

// Head dims the tensor-core kernels do not take, f32 inputs and skipped outputs go through the
// f32 kernels (on f32 copies where needed).
TEST_F(TrainingOpsTest, AttentionFallbacksAndSkippedOutputs) {
  uint64_t seed = 2000;
  for (int64_t T : {1, 7, 129}) {
    run_attention_case(*this, {T, 4, 2, 40, true, 0, DType::BF16}, seed += 10);
    run_attention_case(*this, {T, 14, 2, 64, true, 5, DType::F32}, seed += 10);
  }
  run_attention_case(*this, {33, 4, 2, 64, false, 0, DType::F32}, seed += 10);
  run_attention_case(*this, {129, 14, 2, 64, true, 0, DType::BF16}, seed += 10, /*skip_dk=*/true);
}

// ---- rmsnorm_backward --------------------------------------------------------------------------

TEST_F(TrainingOpsTest, RmsnormBackward) {
  struct Mode {
    DType x, dy, dx;
  };
  const Mode modes[] = {{DType::F32, DType::BF16, DType::F32},
                        {DType::BF16, DType::BF16, DType::BF16},
                        {DType::F32, DType::F32, DType::F32}};
  uint64_t seed = 3000;
  // d: rows held in registers (64, 96, 896: a partial last chunk, 2048: the most; up to 1024 with
  // dw fused), the vector loop (2056: past the registers' 2048), scalar loads (100: not a multiple
  // of 8). N 5000: the fused dw's warps take 3 rows each, the last one fewer.
  for (const Mode& m : modes)
    for (int64_t N : {1, 7, 129, 5000})
      for (int64_t d : {64, 96, 100, 896, 2048, 2056}) {
        SCOPED_TRACE("x " + dts(m.x) + " dy " + dts(m.dy) + " dx " + dts(m.dx) + " N " + std::to_string(N) + " d " +
                     std::to_string(d));
        const double tol = tol_for({m.x, m.dy, m.dx});
        const float eps = 1e-6f;
        const std::vector<float> x = randn({N, d}, ++seed, 2.f), w = randn({d}, ++seed, 0.2f, 1.f),
                                 dy = randn({N, d}, ++seed);
        const std::vector<float> dx0 = rounded(randn({N, d}, ++seed), m.dx), dw0 = randn({d}, ++seed);
        Tensor cdx = host(dx0, {N, d}), cdw = host(dw0, {d});
        cpu->rmsnorm_backward(host(x, {N, d}, m.x), host(w, {d}, DType::BF16), eps, host(dy, {N, d}, m.dy), cdx, cdw);
        Tensor gdx = dev(dx0, m.dx, {N, d}), gdw = dev(dw0, DType::F32, {d});
        gpu->rmsnorm_backward(dev(x, m.x, {N, d}), dev(w, DType::BF16, {d}), eps, dev(dy, m.dy, {N, d}), gdx, gdw);
        expect_accumulated(down(gdx), dx0, vals(cdx), tol, m.dx, "dx");
        expect_accumulated(down(gdw), dw0, vals(cdw), tol, DType::F32, "dw");
        // Deterministic: a second run gives the same bits.
        Tensor gdx_again = dev(dx0, m.dx, {N, d}), gdw_again = dev(dw0, DType::F32, {d});
        gpu->rmsnorm_backward(dev(x, m.x, {N, d}), dev(w, DType::BF16, {d}), eps, dev(dy, m.dy, {N, d}), gdx_again,
                              gdw_again);
        EXPECT_EQ(down(gdw_again), down(gdw)) << "dw differs between two runs";
        EXPECT_EQ(down(gdx_again), down(gdx)) << "dx differs between two runs";
        // Each output on its own.
        Tensor gdx2 = dev(dx0, m.dx, {N, d}), gdw2 = dev(dw0, DType::F32, {d});
        gpu->rmsnorm_backward(dev(x, m.x, {N, d}), dev(w, DType::BF16, {d}), eps, dev(dy, m.dy, {N, d}), gdx2,
                              TensorView{});
        gpu->rmsnorm_backward(dev(x, m.x, {N, d}), dev(w, DType::BF16, {d}), eps, dev(dy, m.dy, {N, d}),
                              TensorView{}, gdw2);
        expect_accumulated(down(gdx2), dx0, vals(cdx), tol, m.dx, "dx alone");
        expect_accumulated(down(gdw2), dw0, vals(cdw), tol, DType::F32, "dw alone");
      }
}

// ---- rope_backward -----------------------------------------------------------------------------

TEST_F(TrainingOpsTest, RopeBackward) {
  uint64_t seed = 4000;
  for (DType dt : {DType::F32, DType::BF16})
    for (int64_t T : {1, 7, 129})
      for (int64_t D : {64, 96})
        for (int64_t pos0 : {0, 17}) {
          SCOPED_TRACE(dts(dt) + " T " + std::to_string(T) + " D " + std::to_string(D) + " pos0 " +
                       std::to_string(pos0));
          const double theta = D == 64 ? 1e4 : 1e6;
          const Shape s{T, 3, D};
          const std::vector<float> g = randn(s, ++seed);
          Tensor cg = host(g, s, dt);
          cpu->rope_backward(cg, pos0, theta);
          Tensor gg = dev(g, dt, s);
          gpu->rope_backward(gg, pos0, theta);
          expect_close(down(gg), vals(cg), tol_for({dt}), "dx");
          // rope_backward undoes rope (an orthogonal rotation): f32 round trip on the device.
          if (dt == DType::F32) {
            Tensor r = dev(g, dt, s);
            gpu->rope(r, pos0, theta);
            gpu->rope_backward(r, pos0, theta);
            expect_close(down(r), g, 1e-5, "rope_backward(rope(x))");
          }
        }
}

// ---- swiglu_backward ---------------------------------------------------------------------------

TEST_F(TrainingOpsTest, SwigluBackward) {
  uint64_t seed = 5000;
  // (96 columns: 16-byte vectors; 100: scalar loads; 5000 rows: a block loops over several)
  for (DType dt : {DType::F32, DType::BF16})
    for (int64_t N : {1, 7, 129, 5000})
      for (int64_t C : {96, 100}) {
      SCOPED_TRACE(dts(dt) + " N " + std::to_string(N) + " C " + std::to_string(C));
      const Shape s{N, C};
      const double tol = tol_for({dt});
      const std::vector<float> gate = randn(s, ++seed, 3.f), up = randn(s, ++seed), dout = randn(s, ++seed);
      Tensor cdg = host(std::vector<float>(gate.size(), kNaN), s), cdu = host(std::vector<float>(gate.size(), kNaN), s);
      cpu->swiglu_backward(host(gate, s, dt), host(up, s, dt), host(dout, s, dt), cdg, cdu);
      Tensor gg = dev(gate, dt, s), gu = dev(up, dt, s), gd = dev(dout, dt, s);
      {  // separate outputs
        Tensor dg = poisoned(dt, s), du = poisoned(dt, s);
        gpu->swiglu_backward(gg, gu, gd, dg, du);
        expect_close(down(dg), vals(cdg), tol, "dgate");
        expect_close(down(du), vals(cdu), tol, "dup");
      }
      {  // only dgate
        Tensor dg = poisoned(dt, s);
        gpu->swiglu_backward(gg, gu, gd, dg, TensorView{});
        expect_close(down(dg), vals(cdg), tol, "dgate alone");
      }
      {  // in place: dgate = gate, dup = up
        Tensor g2 = dev(gate, dt, s), u2 = dev(up, dt, s);
        gpu->swiglu_backward(g2, u2, gd, g2, u2);
        expect_close(down(g2), vals(cdg), tol, "dgate in place");
        expect_close(down(u2), vals(cdu), tol, "dup in place");
      }
    }
}

// ---- embedding_backward ------------------------------------------------------------------------

TEST_F(TrainingOpsTest, EmbeddingBackward) {
  uint64_t seed = 6000;
  for (DType dt : {DType::F32, DType::BF16})
    for (int64_t V : {1000, 1237})
      for (int64_t d : {64, 96})
        for (int64_t T : {1, 7, 129}) {
          SCOPED_TRACE("dout " + dts(dt) + " V " + std::to_string(V) + " d " + std::to_string(d) + " T " +
                       std::to_string(T));
          std::mt19937_64 rng(++seed);
          std::vector<int32_t> ids(static_cast<size_t>(T));
          // Many repeats: half the ids from a small set, the rest anywhere (V - 1 included).
          for (size_t i = 0; i < ids.size(); ++i)
            ids[i] = static_cast<int32_t>(i % 2 ? rng() % 5 : rng() % static_cast<uint64_t>(V));
          if (T > 3) ids[3] = static_cast<int32_t>(V - 1);
          const std::vector<float> dout = randn({T, d}, ++seed), t0 = randn({V, d}, ++seed, 0.5f);
          Tensor ct = host(t0, {V, d});
          cpu->embedding_backward(host_ids(ids), host(dout, {T, d}, dt), ct);
          const std::vector<float> want = vals(ct);
          Tensor gdout = dev(dout, dt, {T, d});
          {  // ids on the device
            Tensor gt = dev(t0, DType::F32, {V, d});
            gpu->embedding_backward(dev_ids(ids), gdout, gt);
            expect_accumulated(down(gt), t0, want, 1e-5, DType::F32, "dtable (device ids)");
          }
          {  // ids on the host
            Tensor gt = dev(t0, DType::F32, {V, d});
            gpu->embedding_backward(host_ids(ids), gdout, gt);
            expect_accumulated(down(gt), t0, want, 1e-5, DType::F32, "dtable (host ids)");
          }
        }
}

TEST_F(TrainingOpsTest, EmbeddingBackwardBadIds) {
  const int64_t V = 100, d = 64;
  std::vector<int32_t> ids = {3, 100, 5};
  Tensor gdout = dev(randn({3, d}, 1), DType::BF16, {3, d});
  Tensor gt = dev(std::vector<float>(V * d, 0.f), DType::F32, {V, d});
  EXPECT_THROW(gpu->embedding_backward(host_ids(ids), gdout, gt), rt::Error);  // checked before any work
  gpu->embedding_backward(dev_ids(ids), gdout, gt);
  try {
    gpu->synchronize();
    ADD_FAILURE() << "a bad device id was not reported";
  } catch (const rt::Error& e) {
    EXPECT_NE(std::string(e.what()).find("embedding_backward"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("token id 100"), std::string::npos) << e.what();
  }
  gpu->synchronize();  // reported once
  // The good rows were still added.
  const std::vector<float> got = down(gt);
  EXPECT_NE(got[3 * d], 0.f);
  EXPECT_NE(got[5 * d], 0.f);
}

// The deterministic embedding backward (sorted ids, runs summed in position order, chunk-crossing
// runs combined in chunk order) against the CPU backend. fp32 sums in another order: each element
// within 1e-6 of the sum of the magnitudes that went into it (|initial| + sum |dout|), far below
// one dout row (a dropped or doubled row is off by ~1) and above the rounding of a few thousand
// fp32 additions. Repeats from a vocabulary of 7 (runs of hundreds of rows, crossing many chunks),
// every id equal, distinct ids (a run of one: the result is exactly initial + dout), lengths around
// the chunk size (32) and a large one; ids on the device and on the host.
std::vector<float> embedding_magnitudes(const std::vector<int32_t>& ids, const std::vector<float>& dout,
                                        const std::vector<float>& t0, int64_t d) {
  std::vector<double> m(t0.size());
  for (size_t i = 0; i < t0.size(); ++i) m[i] = std::fabs(t0[i]);
  for (size_t t = 0; t < ids.size(); ++t)
    for (int64_t c = 0; c < d; ++c)
      m[static_cast<size_t>(ids[t] * d + c)] += std::fabs(dout[t * static_cast<size_t>(d) + static_cast<size_t>(c)]);
  return std::vector<float>(m.begin(), m.end());
}

void expect_embedding_close(const std::vector<float>& got, const std::vector<float>& want,
                            const std::vector<float>& mag, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  size_t bad = 0, first = 0;
  double worst = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double e = std::fabs(static_cast<double>(got[i]) - want[i]);
    if (!(e <= 1e-6 * mag[i])) {  // NaN fails too
      if (bad++ == 0) first = i;
    }
    if (mag[i] > 0) worst = std::max(worst, e / mag[i]);
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " elements off; first at " << first << ": got " << got[first]
                     << ", want " << want[first] << " (magnitude " << mag[first] << ")";
  EXPECT_LT(worst, 1e-6) << what;
}

TEST_F(TrainingOpsTest, EmbeddingBackwardRepeatsAndDistinct) {
  enum class Ids { Vocab7, AllEqual, Distinct };
  const int64_t V = 5000;
  uint64_t seed = 7000;
  for (Ids kind : {Ids::Vocab7, Ids::AllEqual, Ids::Distinct})
    for (int64_t T : {1, 31, 32, 33, 64, 100, 1000, 4096})
      for (DType dt : {DType::F32, DType::BF16})
        for (int64_t d : {64, 896}) {
          if (d == 896 && T < 1000) continue;
          const char* name = kind == Ids::Vocab7 ? "vocab 7" : kind == Ids::AllEqual ? "all equal" : "distinct";
          SCOPED_TRACE(std::string(name) + " dout " + dts(dt) + " T " + std::to_string(T) + " d " + std::to_string(d));
          std::mt19937_64 rng(++seed);
          std::vector<int32_t> ids(static_cast<size_t>(T));
          if (kind == Ids::Distinct) {
            std::vector<int32_t> perm(static_cast<size_t>(V));
            for (size_t i = 0; i < perm.size(); ++i) perm[i] = static_cast<int32_t>(i);
            std::shuffle(perm.begin(), perm.end(), rng);
            std::copy(perm.begin(), perm.begin() + T, ids.begin());
          } else {
            // Vocabulary of 7 spread over the table (its last row included); all equal: row 1234.
            const int32_t seven[] = {0, 3, 17, 1234, 2500, 4000, static_cast<int32_t>(V - 1)};
            for (int32_t& id : ids) id = kind == Ids::AllEqual ? 1234 : seven[rng() % 7];
          }
          const std::vector<float> dout = randn({T, d}, ++seed), t0 = randn({V, d}, ++seed, 0.5f);
          Tensor ct = host(t0, {V, d});
          cpu->embedding_backward(host_ids(ids), host(dout, {T, d}, dt), ct);
          const std::vector<float> want = vals(ct);
          const std::vector<float> mag = embedding_magnitudes(ids, rounded(dout, dt), t0, d);
          Tensor gdout = dev(dout, dt, {T, d});
          {
            Tensor gt = dev(t0, DType::F32, {V, d});
            gpu->embedding_backward(dev_ids(ids), gdout, gt);
            const std::vector<float> got = down(gt);
            expect_embedding_close(got, want, mag, "dtable (device ids)");
            if (kind == Ids::Distinct)  // one addition per element on both sides: the same bits
              EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0);
          }
          {
            Tensor gt = dev(t0, DType::F32, {V, d});
            gpu->embedding_backward(host_ids(ids), gdout, gt);
            expect_embedding_close(down(gt), want, mag, "dtable (host ids)");
          }
        }
}

// A training-sized call: T = 32768 tokens of width 896 (Qwen2.5-0.5B), ids with a text-like skew
// (a few very frequent ids, runs of thousands of rows, and a long tail), against the CPU. Prints
// the call's time (after a warm-up call) for reference.
TEST_F(TrainingOpsTest, EmbeddingBackwardLarge) {
  const int64_t V = 8192, d = 896, T = 32768;
  std::mt19937_64 rng(77);
  std::vector<int32_t> ids(static_cast<size_t>(T));
  for (int32_t& id : ids) {
    const uint64_t r = rng() % 100;  // 30%: 4 ids; 30%: 64 ids; 40%: anywhere
    id = static_cast<int32_t>(r < 30 ? rng() % 4 : r < 60 ? 100 + rng() % 64 : rng() % static_cast<uint64_t>(V));
  }
  const std::vector<float> dout = randn({T, d}, 78), t0 = randn({V, d}, 79, 0.5f);
  Tensor ct = host(t0, {V, d});
  cpu->embedding_backward(host_ids(ids), host(dout, {T, d}, DType::BF16), ct);
  Tensor gdout = dev(dout, DType::BF16, {T, d});
  Tensor gids = dev_ids(ids);
  Tensor gt = dev(t0, DType::F32, {V, d});
  gpu->embedding_backward(gids, gdout, gt);
  expect_embedding_close(down(gt), vals(ct), embedding_magnitudes(ids, rounded(dout, DType::BF16), t0, d),
                         "dtable");
  rt::test::Stopwatch watch;
  gpu->embedding_backward(gids, gdout, gt);
  gpu->synchronize();
  const double ms = watch.ms();
  std::cout << "embedding_backward T " << T << " d " << d << " (bf16 dout): " << ms << " ms\n";
}

// No ids: nothing is added (and nothing is launched on an empty sort).
TEST_F(TrainingOpsTest, EmbeddingBackwardNoIds) {
  const int64_t V = 10, d = 64;
  const std::vector<float> t0 = randn({V, d}, 1);
  std::vector<int32_t> ids;
  Tensor gdout = alloc(*gpu, DType::BF16, {0, d});
  Tensor gt = dev(t0, DType::F32, {V, d});
  gpu->embedding_backward(dev_ids(ids), gdout, gt);
  gpu->embedding_backward(host_ids(ids), gdout, gt);
  const std::vector<float> got = down(gt);
  EXPECT_EQ(std::memcmp(got.data(), t0.data(), got.size() * sizeof(float)), 0);
}

// Bit-reproducible: the same call twice on freshly zeroed gradients gives the same bits, with
// heavy repeats (every run crosses many chunks) and T = 4096 (an atomicAdd scatter differs here
// from run to run).
TEST_F(TrainingOpsTest, EmbeddingBackwardDeterministic) {
  const int64_t V = 1000, T = 4096;
  uint64_t seed = 8000;
  for (DType dt : {DType::F32, DType::BF16})
    for (int64_t d : {64, 896})
      for (int64_t distinct : {1, 7, 300}) {
        SCOPED_TRACE("dout " + dts(dt) + " d " + std::to_string(d) + " distinct ids " + std::to_string(distinct));
        std::mt19937_64 rng(++seed);
        std::vector<int32_t> ids(static_cast<size_t>(T));
        for (int32_t& id : ids) id = static_cast<int32_t>((rng() % static_cast<uint64_t>(distinct)) * 3 % V);
        Tensor gdout = dev(randn({T, d}, ++seed), dt, {T, d});
        Tensor gids = dev_ids(ids);
        std::vector<float> first;
        for (int run = 0; run < 3; ++run) {
          Tensor gt = alloc(*gpu, DType::F32, {V, d});
          gpu->fill(gt, 0.f);
          gpu->embedding_backward(gids, gdout, gt);
          const std::vector<float> got = down(gt);
          if (run == 0) {
            first = got;
            continue;
          }
          size_t diff = 0;
          for (size_t i = 0; i < got.size(); ++i) diff += std::memcmp(&got[i], &first[i], sizeof(float)) != 0;
          EXPECT_EQ(diff, 0u) << "run " << run << ": " << diff << " of " << got.size() << " elements differ in bits";
        }
      }
}

// Bad device ids among heavy repeats: reported once with the op's message, their rows dropped,
// every good row still summed as the CPU sums the good ids alone.
TEST_F(TrainingOpsTest, EmbeddingBackwardBadIdsAmongRepeats) {
  const int64_t V = 50, d = 64, T = 300;
  std::mt19937_64 rng(9);
  std::vector<int32_t> ids(static_cast<size_t>(T));
  for (int32_t& id : ids) id = static_cast<int32_t>(rng() % 7);
  for (size_t p : {0, 31, 32, 100, 299}) ids[p] = p % 2 ? -1 : static_cast<int32_t>(V);
  const std::vector<float> dout = randn({T, d}, 10), t0 = randn({V, d}, 11, 0.5f);
  std::vector<int32_t> good_ids;
  std::vector<float> good_dout;
  for (int64_t t = 0; t < T; ++t) {
    const int32_t id = ids[static_cast<size_t>(t)];
    if (id < 0 || id >= V) continue;
    good_ids.push_back(id);
    good_dout.insert(good_dout.end(), dout.begin() + t * d, dout.begin() + (t + 1) * d);
  }
  const int64_t G = static_cast<int64_t>(good_ids.size());
  Tensor ct = host(t0, {V, d});
  cpu->embedding_backward(host_ids(good_ids), host(good_dout, {G, d}), ct);

  Tensor gt = dev(t0, DType::F32, {V, d});
  Tensor gdout = dev(dout, DType::F32, {T, d});
  EXPECT_THROW(gpu->embedding_backward(host_ids(ids), gdout, gt), rt::Error);  // checked before any work
  try {
    gpu->embedding_backward(dev_ids(ids), gdout, gt);
    gpu->synchronize();
    ADD_FAILURE() << "bad device ids were not reported";
  } catch (const rt::Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("embedding_backward: token id "), std::string::npos) << m;
    EXPECT_NE(m.find("out of range for a vocabulary of size 50"), std::string::npos) << m;
    EXPECT_NE(m.find("that row's gradient was dropped"), std::string::npos) << m;
  }
  gpu->synchronize();  // reported once
  expect_embedding_close(down(gt), vals(ct), embedding_magnitudes(good_ids, good_dout, t0, d), "dtable");
}

// ---- lm_head_cross_entropy ---------------------------------------------------------------------

struct ChunkRows {  // forces lm_head_cross_entropy's chunk size for one scope
  explicit ChunkRows(int64_t n) { rt::cuda::set_lm_head_chunk_rows(n); }
  ~ChunkRows() { rt::cuda::set_lm_head_chunk_rows(0); }
};

struct CeCase {
  int64_t N, hidden, V;
  DType h_dt, w_dt, dh_dt;
  bool want_dh, want_dw;
  int64_t chunk;  // 0: automatic
};

void run_ce_case(TrainingOpsTest& t, const CeCase& c, uint64_t seed) {
  std::ostringstream name;
  name << "N " << c.N << " hidden " << c.hidden << " V " << c.V << " h " << dts(c.h_dt) << " w " << dts(c.w_dt) << " dh "
       << (c.want_dh ? dts(c.dh_dt) : "-") << " dw " << (c.want_dw ? "yes" : "-") << " chunk " << c.chunk;
  SCOPED_TRACE(name.str());
  ChunkRows chunk(c.chunk);
  const double tol = tol_for({c.h_dt, c.w_dt, c.dh_dt});
  std::mt19937_64 rng(seed);
  std::vector<int32_t> targets(static_cast<size_t>(c.N));
  for (size_t i = 0; i < targets.size(); ++i)
    targets[i] = (i % 5 == 3) ? -100 : static_cast<int32_t>(rng() % static_cast<uint64_t>(c.V));
  if (c.N > 1) targets[1] = static_cast<int32_t>(c.V - 1);
  const float grad_scale = 0.37f;
  const std::vector<float> h = randn({c.N, c.hidden}, seed + 1), w = randn({c.V, c.hidden}, seed + 2, 0.1f);
  const std::vector<float> dw0 = randn({c.V, c.hidden}, seed + 3, 0.05f);
  Tensor closs = t.host(std::vector<float>(c.N, kNaN), {c.N});
  Tensor cdh = t.host(std::vector<float>(h.size(), kNaN), {c.N, c.hidden});
  Tensor cdw = t.host(dw0, {c.V, c.hidden});
  // h f32 with bf16 w: the device converts h to bf16 for the GEMMs, so the reference sees bf16 h.
  const DType h_seen = c.w_dt == DType::F32 ? c.h_dt : c.w_dt;
  t.cpu->lm_head_cross_entropy(t.host(h, {c.N, c.hidden}, h_seen), t.host(w, {c.V, c.hidden}, c.w_dt),
                               TrainingOpsTest::host_ids(targets), grad_scale, closs, c.want_dh ? cdh.view : TensorView{},
                               c.want_dw ? cdw.view : TensorView{});

  Tensor gh = t.dev(h, c.h_dt, {c.N, c.hidden}), gw = t.dev(w, c.w_dt, {c.V, c.hidden});
  Tensor gloss = t.poisoned(DType::F32, {c.N}), gdh = t.poisoned(c.dh_dt, {c.N, c.hidden});
  Tensor gdw = t.dev(dw0, DType::F32, {c.V, c.hidden});
  t.gpu->lm_head_cross_entropy(gh, gw, t.dev_ids(targets), grad_scale, gloss, c.want_dh ? gdh.view : TensorView{},
                               c.want_dw ? gdw.view : TensorView{});
  const std::vector<float> loss = t.down(gloss);
  expect_close(loss, TrainingOpsTest::vals(closs), c.w_dt == DType::F32 ? 1e-5 : 1e-4, "losses");
  for (size_t i = 0; i < targets.size(); ++i)
    if (targets[i] == -100) EXPECT_EQ(loss[i], 0.f) << "ignored row " << i;
  if (c.want_dh) {
    const std::vector<float> dh = t.down(gdh);
    expect_close(dh, TrainingOpsTest::vals(cdh), tol, "dh");
    for (size_t i = 0; i < targets.size(); ++i)
      if (targets[i] == -100)
        for (int64_t j = 0; j < c.hidden; ++j) ASSERT_EQ(dh[i * c.hidden + j], 0.f) << "ignored row " << i;
  } else {
    EXPECT_TRUE(std::isnan(t.down(gdh)[0])) << "dh was written though not asked for";
  }
  if (c.want_dw) expect_accumulated(t.down(gdw), dw0, TrainingOpsTest::vals(cdw), tol, DType::F32, "dw");
  else EXPECT_EQ(t.down(gdw), dw0) << "dw was changed though not asked for";
}

TEST_F(TrainingOpsTest, LmHeadCrossEntropy) {
  uint64_t seed = 7000;
  for (int64_t N : {1, 7, 129})
    for (int64_t hidden : {64, 96})
      for (int64_t V : {1000, 1237})
        run_ce_case(*this, {N, hidden, V, DType::BF16, DType::BF16, DType::BF16, true, true, 0}, seed += 10);
}

TEST_F(TrainingOpsTest, LmHeadCrossEntropyVariants) {
  uint64_t seed = 8000;
  // Several chunks (the last one short), one row per chunk.
  const DType B = DType::BF16, F = DType::F32;
  run_ce_case(*this, {129, 96, 1237, B, B, B, true, true, 5}, seed += 10);
  run_ce_case(*this, {7, 64, 1000, B, B, B, true, true, 1}, seed += 10);
  // Optional outputs, an f32 dh from bf16 inputs, f32 h with bf16 w (converted per chunk), the
  // all-f32 path (f32 gradient GEMMs), with and without chunks.
  run_ce_case(*this, {129, 64, 1237, B, B, B, true, false, 0}, seed += 10);
  run_ce_case(*this, {129, 64, 1237, B, B, B, false, true, 0}, seed += 10);
  run_ce_case(*this, {129, 64, 1237, B, B, B, false, false, 0}, seed += 10);
  run_ce_case(*this, {129, 96, 1000, B, B, F, true, true, 0}, seed += 10);
  run_ce_case(*this, {129, 96, 1000, F, B, F, true, true, 6}, seed += 10);
  run_ce_case(*this, {129, 96, 1237, F, F, F, true, true, 0}, seed += 10);
  run_ce_case(*this, {129, 96, 1237, F, F, F, true, true, 7}, seed += 10);
  // A real vocabulary, automatic chunking (one chunk of up to 441 rows at V = 151936).
  run_ce_case(*this, {33, 64, 151936, B, B, B, true, true, 0}, seed += 10);
  EXPECT_EQ(rt::cuda::lm_head_chunk_rows(100000, 151936), 441);
  EXPECT_EQ(rt::cuda::lm_head_chunk_rows(7, 151936), 7);
}

// lm_head_cross_entropy's is_greedy on the device against the CPU's: targets that are the CPU's
// argmax on even rows, others on odd rows, ignored rows; one and several chunks, a real vocabulary,
// alone and beside the gradient (which overwrites the logits of an f32 head). Rows whose top two
// logits are within rounding are not compared.
TEST_F(TrainingOpsTest, LmHeadIsGreedy) {
  uint64_t seed = 9000;
  for (const auto& [N, hidden, V, chunk, wdt] : std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t, DType>>{
           {1, 64, 1000, 0, DType::BF16},
           {37, 96, 1237, 0, DType::BF16},
           {37, 96, 1237, 5, DType::BF16},
           {37, 96, 1237, 5, DType::F32},
           {9, 64, 151936, 0, DType::BF16}}) {
    SCOPED_TRACE("N " + std::to_string(N) + " hidden " + std::to_string(hidden) + " V " + std::to_string(V) +
                 " chunk " + std::to_string(chunk) + " w " + dts(wdt));
    ChunkRows rows(chunk);
    const std::vector<float> h = randn({N, hidden}, seed += 10), w = randn({V, hidden}, seed + 1, 0.1f);
    Tensor ch = host(h, {N, hidden}, wdt), cw = host(w, {V, hidden}, wdt);
    Tensor logits = cpu->alloc(DType::F32, {N, V});
    cpu->linear(ch, cw, TensorView{}, logits);
    const float* lg = logits.ptr<float>();
    std::vector<int32_t> targets(static_cast<size_t>(N));
    std::vector<bool> clear(static_cast<size_t>(N));
    for (int64_t r = 0; r < N; ++r) {
      const float* row = lg + r * V;
      const int64_t best = std::max_element(row, row + V) - row;
      float second = -INFINITY;
      for (int64_t j = 0; j < V; ++j)
        if (j != best) second = std::max(second, row[j]);
      clear[static_cast<size_t>(r)] = row[best] - second > 1e-2f * std::max(1.f, std::fabs(row[best]));
      targets[static_cast<size_t>(r)] = r % 7 == 5 ? -100 : r % 2 == 0 ? static_cast<int32_t>(best)
                                                                     : static_cast<int32_t>((best + 1 + r) % V);
    }
    std::vector<int32_t> want(static_cast<size_t>(N)), got(static_cast<size_t>(N));
    Tensor cgreedy = cpu->alloc(DType::I32, {N});
    cpu->lm_head_cross_entropy(ch, cw, host_ids(targets), 1.f, TensorView{}, TensorView{}, TensorView{}, cgreedy);
    std::memcpy(want.data(), cgreedy.view.data, want.size() * sizeof(int32_t));
    for (int64_t r = 0; r < N; ++r)
      EXPECT_EQ(want[static_cast<size_t>(r)], targets[static_cast<size_t>(r)] >= 0 && r % 2 == 0 ? 1 : 0)
          << "CPU row " << r;
    Tensor gh = dev(h, wdt, {N, hidden}), gw = dev(w, wdt, {V, hidden});
    for (bool with_grad : {false, true}) {
      SCOPED_TRACE(with_grad ? "with losses and dh" : "is_greedy alone");
      Tensor ggreedy = gpu->alloc(DType::I32, {N});
      gpu->fill(ggreedy, -7.f);  // poisoned: every row must be written
      Tensor gloss = poisoned(DType::F32, {N}), gdh = poisoned(wdt, {N, hidden});
      gpu->lm_head_cross_entropy(gh, gw, dev_ids(targets), 1.f, with_grad ? gloss.view : TensorView{},
                                 with_grad ? gdh.view : TensorView{}, TensorView{}, ggreedy);
      gpu->copy(ggreedy, host_ids(got));
      for (int64_t r = 0; r < N; ++r) {
        const size_t i = static_cast<size_t>(r);
        ASSERT_TRUE(got[i] == 0 || got[i] == 1) << "row " << r << " unwritten: " << got[i];
        if (clear[i]) EXPECT_EQ(got[i], want[i]) << "row " << r;
      }
    }
  }
  Tensor bad = gpu->alloc(DType::I32, {3});
  EXPECT_THROW(gpu->lm_head_cross_entropy(dev(randn({2, 64}, 1), DType::BF16, {2, 64}),
                                          dev(randn({10, 64}, 2), DType::BF16, {10, 64}), dev_ids({1, 2}), 1.f,
                                          TensorView{}, TensorView{}, TensorView{}, bad),
               rt::Error);
}

TEST_F(TrainingOpsTest, LmHeadCrossEntropyBadTargets) {
  const int64_t N = 4, hidden = 64, V = 100;
  Tensor gh = dev(randn({N, hidden}, 1), DType::BF16, {N, hidden}), gw = dev(randn({V, hidden}, 2), DType::BF16, {V, hidden});
  Tensor gloss = poisoned(DType::F32, {N});
  std::vector<int32_t> targets = {1, -100, 100, 2};
  EXPECT_THROW(gpu->lm_head_cross_entropy(gh, gw, host_ids(targets), 1.f, gloss, TensorView{}, TensorView{}),
               rt::Error);
  gpu->lm_head_cross_entropy(gh, gw, dev_ids(targets), 1.f, gloss, TensorView{}, TensorView{});
  try {
    gpu->synchronize();
    ADD_FAILURE() << "a bad device target was not reported";
  } catch (const rt::Error& e) {
    EXPECT_NE(std::string(e.what()).find("lm_head_cross_entropy"), std::string::npos) << e.what();
  }
  const std::vector<float> loss = down(gloss);
  EXPECT_TRUE(std::isfinite(loss[0]) && loss[1] == 0.f && std::isnan(loss[2]) && std::isfinite(loss[3]));
  // Shape errors.
  Tensor bad_w = gpu->alloc(DType::BF16, {V, hidden + 1});
  EXPECT_THROW(gpu->lm_head_cross_entropy(gh, bad_w, dev_ids(targets), 1.f, gloss, TensorView{}, TensorView{}),
               rt::Error);
  Tensor bad_dw = gpu->alloc(DType::BF16, {V, hidden});
  std::vector<int32_t> ok = {1, 2, 3, 4};
  EXPECT_THROW(gpu->lm_head_cross_entropy(gh, gw, dev_ids(ok), 1.f, gloss, TensorView{}, bad_dw), rt::Error);
}

// ---- small elementwise ops ---------------------------------------------------------------------

TEST_F(TrainingOpsTest, SigmoidAndBackward) {
  uint64_t seed = 9000;
  // (96 columns: 16-byte vectors; 100: scalar loads; 5000 rows: a block loops over several)
  for (DType dt : {DType::F32, DType::BF16})
    for (int64_t N : {1, 7, 129, 5000})
      for (int64_t C : {96, 100}) {
      SCOPED_TRACE(dts(dt) + " N " + std::to_string(N) + " C " + std::to_string(C));
      const Shape s{N, C};
      const double tol = tol_for({dt});
      const float scale = 1.3f;
      const std::vector<float> x = randn(s, ++seed, 3.f), dy = randn(s, ++seed);
      Tensor cy = host(std::vector<float>(x.size(), kNaN), s);
      cpu->sigmoid(host(x, s, dt), scale, cy);
      Tensor gy = poisoned(dt, s);
      gpu->sigmoid(dev(x, dt, s), scale, gy);
      expect_close(down(gy), vals(cy), tol, "sigmoid");
      Tensor gx = dev(x, dt, s);  // in place
      gpu->sigmoid(gx, scale, gx);
      expect_close(down(gx), vals(cy), tol, "sigmoid in place");
      // Backward from the device's y (rounded to dt) on both sides.
      const std::vector<float> y = down(gy);
      Tensor cdx = host(std::vector<float>(x.size(), kNaN), s);
      cpu->sigmoid_backward(host(y, s), host(dy, s, dt), scale, cdx);
      Tensor gdx = poisoned(dt, s);
      gpu->sigmoid_backward(gy, dev(dy, dt, s), scale, gdx);
      expect_close(down(gdx), vals(cdx), tol, "sigmoid_backward");
    }
}

TEST_F(TrainingOpsTest, Step) {
  uint64_t seed = 9100;
  // (96 columns: 16-byte vectors; 100: scalar loads; 5000 rows: a block loops over several)
  for (DType dt : {DType::F32, DType::BF16})
    for (int64_t N : {1, 7, 129, 5000})
      for (int64_t C : {96, 100}) {
      SCOPED_TRACE(dts(dt) + " N " + std::to_string(N) + " C " + std::to_string(C));
      const Shape s{N, C};
      const float threshold = 0.25f;
      std::vector<float> x = randn(s, ++seed);
      for (size_t i = 0; i < x.size(); i += 7) x[i] = threshold;  // ties count as >=
      Tensor cy = host(std::vector<float>(x.size(), kNaN), s);
      cpu->step(host(x, s, dt), threshold, cy);
      Tensor gy = poisoned(DType::F32, s);
      gpu->step(dev(x, dt, s), threshold, gy);
      EXPECT_EQ(down(gy), vals(cy));
      Tensor gyb = poisoned(DType::BF16, s);
      gpu->step(dev(x, dt, s), threshold, gyb);
      EXPECT_EQ(down(gyb), vals(cy)) << "bf16 output";
    }
}

TEST_F(TrainingOpsTest, RowScale) {
  uint64_t seed = 9200;
  // (96 columns: 16-byte vectors; 100: scalar loads; 5000 rows: a block loops over several)
  for (DType dt : {DType::F32, DType::BF16})
    for (int64_t N : {1, 7, 129, 5000})
      for (int64_t C : {96, 100}) {
        SCOPED_TRACE(dts(dt) + " N " + std::to_string(N) + " C " + std::to_string(C));
        const Shape s{N, C};
        const double tol = tol_for({dt});
        const std::vector<float> x = randn(s, ++seed), sc = randn({N}, ++seed);
        Tensor cout_ = host(std::vector<float>(x.size(), kNaN), s);
        cpu->row_scale(host(x, s, dt), host(sc, {N}), cout_);
        Tensor gs = dev(sc, DType::F32, {N});
        Tensor gout = poisoned(dt, s);
        gpu->row_scale(dev(x, dt, s), gs, gout);
        expect_close(down(gout), vals(cout_), tol, "row_scale");
        Tensor gx = dev(x, dt, s);
        gpu->row_scale(gx, gs, gx);
        expect_close(down(gx), vals(cout_), tol, "row_scale in place");
      }
}

TEST_F(TrainingOpsTest, RowDot) {
  uint64_t seed = 9300;
  for (auto [da, db] : {std::pair{DType::F32, DType::F32}, std::pair{DType::BF16, DType::F32},
                        std::pair{DType::BF16, DType::BF16}})
    for (int64_t N : {1, 7, 129})
      for (int64_t C : {64, 96, 100, 1000})  // (100: not whole 16-byte vectors, the scalar kernel)
        for (bool acc : {false, true}) {
          SCOPED_TRACE(dts(da) + " x " + dts(db) + " N " + std::to_string(N) + " C " + std::to_string(C) +
                       (acc ? " +=" : " ="));
          const std::vector<float> a = randn({N, C}, ++seed), b = randn({N, C}, ++seed), o0 = randn({N}, ++seed);
          Tensor co = host(acc ? o0 : std::vector<float>(N, kNaN), {N});
          cpu->row_dot(host(a, {N, C}, da), host(b, {N, C}, db), co, acc);
          Tensor go = acc ? dev(o0, DType::F32, {N}) : poisoned(DType::F32, {N});
          gpu->row_dot(dev(a, da, {N, C}), dev(b, db, {N, C}), go, acc);
          // Inputs are identical on both sides (rounded), so even bf16 inputs match to f32 rounding.
          if (acc) expect_accumulated(down(go), o0, vals(co), 1e-5, DType::F32, "row_dot");
          else expect_close(down(go), vals(co), 1e-5, "row_dot");
        }
}

// row_dot_rows: the routed rows' dot products added at their positions, against the CPU; the rows
// past the device-side count hold NaN and must not be read, and the unrouted positions keep their
// values. Both kernels: 896 bf16 columns (16-byte vectors) and a column-strided view (scalar).
TEST_F(TrainingOpsTest, RowDotRows) {
  uint64_t seed = 9350;
  const int64_t T = 300, cap = 300;
  std::vector<int32_t> index(static_cast<size_t>(cap), 0);
  int32_t n = 0;
  for (int64_t t = 0; t < T; ++t)
    if ((t * 7919 + 3) % 5 < 2) index[static_cast<size_t>(n++)] = static_cast<int32_t>(t);
  Tensor gi = dev_ids(index), gc = dev_ids({n});
  const TensorView ci = TensorView::contiguous(index.data(), DType::I32, Device::CPU, {cap});
  const TensorView cc = TensorView::contiguous(&n, DType::I32, Device::CPU, {1});
  for (bool strided : {false, true}) {
    SCOPED_TRACE(strided ? "strided" : "vector");
    const int64_t C = 896, W = strided ? 2 * C : C;
    std::vector<float> a = randn({cap, W}, ++seed), b = randn({cap, W}, ++seed), o0 = randn({T}, ++seed);
    for (int64_t e = n * W; e < cap * W; ++e) a[static_cast<size_t>(e)] = kNaN;
    Tensor ga = dev(a, DType::BF16, {cap, W}), gb = dev(b, DType::BF16, {cap, W}), go = dev(o0, DType::F32, {T});
    auto cols = [&](TensorView v) {  // every other column when strided
      if (!strided) return v;
      v.shape[1] = C;
      v.stride[1] = 2;
      return v;
    };
    // The reference reads the same columns, copied contiguous (the CPU takes unit-stride rows only).
    auto picked = [&](const std::vector<float>& v) {
      std::vector<float> r(static_cast<size_t>(cap * C));
      for (int64_t i = 0; i < cap; ++i)
        for (int64_t c = 0; c < C; ++c)
          r[static_cast<size_t>(i * C + c)] = v[static_cast<size_t>(i * W + (strided ? 2 * c : c))];
      return r;
    };
    Tensor co = host(o0, {T});
    cpu->row_dot_rows(host(picked(a), {cap, C}, DType::BF16), host(picked(b), {cap, C}, DType::BF16), ci, cc, co);
    gpu->row_dot_rows(cols(ga), cols(gb), gi, gc, go);
    const std::vector<float> got = down(go), want = vals(co);
    for (int64_t t = 0; t < T; ++t) {
      const bool routed = std::find(index.begin(), index.begin() + n, static_cast<int32_t>(t)) != index.begin() + n;
      if (routed) EXPECT_NEAR(got[static_cast<size_t>(t)], want[static_cast<size_t>(t)], 1e-3f) << "row " << t;
      else EXPECT_EQ(got[static_cast<size_t>(t)], o0[static_cast<size_t>(t)]) << "unrouted row " << t;
    }
  }
}

TEST_F(TrainingOpsTest, Axpby) {
  uint64_t seed = 9400;
  const float alpha = 0.3f, beta = -1.7f;
  // (96 columns: 16-byte vectors; 100: scalar loads; 5000 rows: a block loops over several)
  for (DType dt : {DType::F32, DType::BF16})
    for (int64_t N : {1, 7, 129, 5000})
      for (int64_t C : {96, 100}) {
      SCOPED_TRACE(dts(dt) + " N " + std::to_string(N) + " C " + std::to_string(C));
      const Shape s{N, C};
      const double tol = tol_for({dt});
      const std::vector<float> x = randn(s, ++seed), y = randn(s, ++seed);
      Tensor co = host(std::vector<float>(x.size(), kNaN), s);
      cpu->axpby(alpha, host(x, s, dt), beta, host(y, s, dt), co);
      Tensor gx = dev(x, dt, s), gy = dev(y, dt, s), go = poisoned(dt, s);
      gpu->axpby(alpha, gx, beta, gy, go);
      expect_close(down(go), vals(co), tol, "axpby");
      gpu->axpby(alpha, gx, beta, gy, gx);  // out = x
      expect_close(down(gx), vals(co), tol, "axpby into x");
      Tensor gx2 = dev(x, dt, s);
      gpu->axpby(alpha, gx2, beta, gy, gy);  // out = y
      expect_close(down(gy), vals(co), tol, "axpby into y");
    }
}

TEST_F(TrainingOpsTest, ReduceSum) {
  uint64_t seed = 9500;
  for (DType dt : {DType::F32, DType::BF16})
    for (int64_t n : {int64_t{1}, int64_t{7 * 64}, int64_t{129 * 96}, (int64_t{1} << 20) + 3})
      for (int power : {1, 2}) {
        SCOPED_TRACE(dts(dt) + " n " + std::to_string(n) + " power " + std::to_string(power));
        const std::vector<float> x = randn({n}, ++seed);
        Tensor co = host({0.5f}, {1});
        cpu->reduce_sum(host(x, {n}, dt), power, co);
        Tensor go = dev({0.5f}, DType::F32, {1});
        Tensor gx = dev(x, dt, {n});
        gpu->reduce_sum(gx, power, go);
        const float got = down(go)[0], want = vals(co)[0];
        double scale = 0.5;  // what the sum's rounding is relative to: sum of |terms|
        for (float v : rounded(x, dt)) scale += power == 2 ? static_cast<double>(v) * v : std::fabs(v);
        EXPECT_LE(std::fabs(static_cast<double>(got) - want), 1e-5 * scale) << "got " << got << " want " << want;
        // Deterministic: the same call adds the same amount again.
        gpu->reduce_sum(gx, power, go);
        const float twice = down(go)[0];
        Tensor go2 = dev({got}, DType::F32, {1});
        gpu->reduce_sum(gx, power, go2);
        EXPECT_EQ(down(go2)[0], twice);
      }
  // A strided view: the first 64 columns of a [129, 96] matrix, shape [129, 64].
  const std::vector<float> m = randn({129, 96}, 9599);
  Tensor cm = host(m, {129, 96});
  TensorView cv = cm.view;
  cv.shape[1] = 64;
  Tensor co = host({0.f}, {1});
  cpu->reduce_sum(cv, 2, co);
  Tensor gm = dev(m, DType::F32, {129, 96});
  TensorView gv = gm.view;
  gv.shape[1] = 64;
  Tensor go = dev({0.f}, DType::F32, {1});
  gpu->reduce_sum(gv, 2, go);
  EXPECT_NEAR(down(go)[0], vals(co)[0], 1e-5 * vals(co)[0]);
}

// ---- adamw_step --------------------------------------------------------------------------------

TEST_F(TrainingOpsTest, AdamWThreeSteps) {
  for (int64_t n : {1, 1000, 4099})
    for (bool with_param : {true, false}) {
      SCOPED_TRACE("n " + std::to_string(n) + (with_param ? " with bf16 param" : " master only"));
      const Shape s{n};
      const std::vector<float> master0 = randn(s, 11 + n);
      Tensor cmaster = host(master0, s), cm = host(std::vector<float>(n, 0.f), s), cv = host(std::vector<float>(n, 0.f), s);
      Tensor gmaster = dev(master0, DType::F32, s), gm = dev(std::vector<float>(n, 0.f), DType::F32, s),
             gv = dev(std::vector<float>(n, 0.f), DType::F32, s);
      Tensor gparam = poisoned(DType::BF16, s);
      rt::Ops::AdamW hp;
      hp.lr = 1e-2f;
      hp.weight_decay = 0.1f;
      hp.grad_scale = 0.5f;
      for (int64_t t = 1; t <= 3; ++t) {
        hp.step = t;
        const std::vector<float> grad = randn(s, 100 * t + n);
        cpu->adamw_step(cmaster, host(grad, s), cm, cv, TensorView{}, hp);
        gpu->adamw_step(gmaster, dev(grad, DType::F32, s), gm, gv, with_param ? gparam.view : TensorView{}, hp);
      }
      const std::vector<float> master = down(gmaster);
      expect_close(master, vals(cmaster), 1e-5, "master");
      expect_close(down(gm), vals(cm), 1e-5, "m");
      expect_close(down(gv), vals(cv), 1e-5, "v");
      if (with_param) EXPECT_EQ(down(gparam), rounded(master, DType::BF16)) << "param = bf16(master), nearest even";
      else EXPECT_TRUE(std::isnan(down(gparam)[0])) << "param written though empty";
    }
}

// ---- dtypes and argument checks ----------------------------------------------------------------

TEST_F(TrainingOpsTest, F64IsRejected) {
  EXPECT_EQ(gpu->accum_dtype(), DType::F32);
  EXPECT_EQ(gpu->activation_dtype(), DType::BF16);
  try {
    gpu->alloc(DType::F64, {4});
    ADD_FAILURE() << "alloc(F64) did not throw";
  } catch (const rt::Error& e) {
    EXPECT_NE(std::string(e.what()).find("f64"), std::string::npos) << e.what();
  }
  Tensor buf = gpu->alloc(DType::F32, {8});
  TensorView f64 = TensorView::contiguous(buf.view.data, DType::F64, Device::CUDA, {4});
  TensorView f32 = TensorView::contiguous(buf.view.data, DType::F32, Device::CUDA, {4});
  try {
    gpu->sigmoid(f64, 1.f, f32);
    ADD_FAILURE() << "sigmoid on f64 did not throw";
  } catch (const rt::Error& e) {
    EXPECT_NE(std::string(e.what()).find("f64"), std::string::npos) << e.what();
  }
  Tensor out = gpu->alloc(DType::F32, {1});
  EXPECT_THROW(gpu->reduce_sum(f64, 1, out), rt::Error);
  EXPECT_THROW(gpu->copy(f64, f64), rt::Error);
}

TEST_F(TrainingOpsTest, RejectsBadArguments) {
  Tensor x = gpu->alloc(DType::BF16, {7, 64}), w = gpu->alloc(DType::BF16, {96, 64}), dy = gpu->alloc(DType::BF16, {7, 96});
  Tensor dw_bf16 = gpu->alloc(DType::BF16, {96, 64}), dw = gpu->alloc(DType::F32, {96, 64});
  Tensor db_bad = gpu->alloc(DType::F32, {95});
  EXPECT_THROW(gpu->linear_backward(x, w, dy, TensorView{}, dw_bf16, TensorView{}, false), rt::Error);
  EXPECT_THROW(gpu->linear_backward(x, w, dy, TensorView{}, TensorView{}, db_bad, false), rt::Error);
  EXPECT_THROW(gpu->linear_backward(x, w, x, TensorView{}, dw, TensorView{}, false), rt::Error);  // dy shape
  Tensor s_bad = gpu->alloc(DType::F32, {6});
  EXPECT_THROW(gpu->row_scale(x, s_bad, x), rt::Error);
  Tensor o_bad = gpu->alloc(DType::F32, {8});
  EXPECT_THROW(gpu->row_dot(x, x, o_bad, false), rt::Error);
  Tensor out2 = gpu->alloc(DType::F32, {2});
  EXPECT_THROW(gpu->reduce_sum(x, 3, out2), rt::Error);
  Tensor one = gpu->alloc(DType::F32, {1});
  EXPECT_THROW(gpu->reduce_sum(x, 3, one), rt::Error);
  Tensor m = gpu->alloc(DType::F32, {10}), v = gpu->alloc(DType::F32, {11});
  rt::Ops::AdamW hp;
  EXPECT_THROW(gpu->adamw_step(m, m, m, m, TensorView{}, hp), rt::Error);  // aliasing state
  Tensor a = gpu->alloc(DType::F32, {10}), g = gpu->alloc(DType::F32, {10}), mm = gpu->alloc(DType::F32, {10});
  EXPECT_THROW(gpu->adamw_step(a, g, mm, v, TensorView{}, hp), rt::Error);  // v size
  hp.step = 0;
  Tensor v10 = gpu->alloc(DType::F32, {10});
  EXPECT_THROW(gpu->adamw_step(a, g, mm, v10, TensorView{}, hp), rt::Error);
  Tensor rope_odd = gpu->alloc(DType::BF16, {3, 2, 7});
  EXPECT_THROW(gpu->rope_backward(rope_odd, 0, 1e4), rt::Error);
}

}  // namespace
