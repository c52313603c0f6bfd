// Tests of the cuDNN SDPA backward (rt::cuda::cudnn_sdpa_backward, backends/cuda/cudnn_sdpa)
// against a double-precision reference backward written here:
//   P = softmax(scale q k^T + mask), O = P V, D = rowsum(dO * O),
//   dV = P^T dO, dP = dO V^T, dS = P * (dP - D), dQ = scale dS K, dK = scale dS^T Q,
// with GQA summing dK, dV over the query heads of a KV head, and rows that see no key adding
// nothing. Inputs are random normal (fixed seeds) rounded to bf16; the reference gets the same
// rounded values. o and lse come from cudnn_sdpa_forward (or, in one test, from our flash kernel);
// dq, dk, dv are poisoned with NaN before every call. Pass: every output finite, relative
// Frobenius error < 2e-2 for each of dq, dk, dv. Without a GPU every test skips; in a build
// without cuDNN SDPA there is a single test, which skips.
#include <gtest/gtest.h>

#include <cuda_runtime.h>

#include "cuda/cudnn_sdpa/cudnn_sdpa.h"

#if !defined(RT_HAVE_CUDNN_SDPA)

TEST(CudnnSdpaBackward, NotBuilt) {
  EXPECT_EQ(rt::cuda::cudnn_sdpa_version(), 0);
  GTEST_SKIP() << "built without cuDNN SDPA";
}

#else

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "cuda/attention/attention.h"
#include "rt/sdk/error.h"
#include "rt/sdk/half.h"

#include "cuda_test_util.h"

namespace {

using namespace rt::test::cuda;
using rt::AttentionSpec;
using rt::DType;
using rt::Device;
using rt::TensorView;

struct Grads {
  std::vector<double> dq, dk, dv;  // [Tq, Hq, D], [Tk, Hkv, D], [Tk, Hkv, D]
};

// The double-precision reference backward described at the top; one thread per query head.
Grads reference_backward(const Case& c, const std::vector<float>& q, const std::vector<float>& k,
                         const std::vector<float>& v, const std::vector<float>& dout) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.D));
  const int64_t g = c.Hq / c.Hkv, D = c.D;
  Grads r;
  r.dq.assign(static_cast<size_t>(c.Tq * c.Hq * D), 0.0);
  r.dk.assign(static_cast<size_t>(c.Tk * c.Hkv * D), 0.0);
  r.dv.assign(static_cast<size_t>(c.Tk * c.Hkv * D), 0.0);
  // Per query head dK, dV partials [Tk, D], summed over the group at the end.
  std::vector<std::vector<double>> dk_h(static_cast<size_t>(c.Hq)), dv_h(static_cast<size_t>(c.Hq));
  auto head = [&](int64_t h) {
    const int64_t j = h / g;
    std::vector<double>& dkp = dk_h[h];
    std::vector<double>& dvp = dv_h[h];
    dkp.assign(static_cast<size_t>(c.Tk * D), 0.0);
    dvp.assign(static_cast<size_t>(c.Tk * D), 0.0);
    std::vector<double> s, o(static_cast<size_t>(D));
    for (int64_t i = 0; i < c.Tq; ++i) {
      const int64_t qp = c.q_pos0 + i;
      // Visible keys: a contiguous range [lo, hi].
      int64_t lo = 0, hi = c.Tk - 1;
      if (c.causal) hi = std::min(hi, qp - c.k_pos0);
      if (c.window > 0) lo = std::max(lo, qp - c.window + 1 - c.k_pos0);
      if (lo > hi) continue;  // sees nothing: contributes nothing
      const float* qi = &q[(i * c.Hq + h) * D];
      const float* doi = &dout[(i * c.Hq + h) * D];
      s.assign(static_cast<size_t>(hi - lo + 1), 0.0);
      double m = -std::numeric_limits<double>::infinity();
      for (int64_t t = lo; t <= hi; ++t) {
        const float* kt = &k[(t * c.Hkv + j) * D];
        double d = 0;
        for (int64_t e = 0; e < D; ++e) d += static_cast<double>(qi[e]) * kt[e];
        s[t - lo] = d * scale;
        m = std::max(m, s[t - lo]);
      }
      double sum = 0;
      for (double& x : s) sum += (x = std::exp(x - m));
      for (double& x : s) x /= sum;  // s now holds P
      std::fill(o.begin(), o.end(), 0.0);
      for (int64_t t = lo; t <= hi; ++t) {
        const float* vt = &v[(t * c.Hkv + j) * D];
        for (int64_t e = 0; e < D; ++e) o[e] += s[t - lo] * vt[e];
      }
      double Di = 0;
      for (int64_t e = 0; e < D; ++e) Di += static_cast<double>(doi[e]) * o[e];
      double* dqi = &r.dq[(i * c.Hq + h) * D];
      for (int64_t t = lo; t <= hi; ++t) {
        const float* kt = &k[(t * c.Hkv + j) * D];
        const float* vt = &v[(t * c.Hkv + j) * D];
        const double p = s[t - lo];
        double dp = 0;
        for (int64_t e = 0; e < D; ++e) dp += static_cast<double>(doi[e]) * vt[e];
        const double ds = p * (dp - Di);
        double* dkt = &dkp[t * D];
        double* dvt = &dvp[t * D];
        for (int64_t e = 0; e < D; ++e) {
          dqi[e] += scale * ds * kt[e];
          dkt[e] += scale * ds * qi[e];
          dvt[e] += p * doi[e];
        }
      }
    }
  };
  std::vector<std::thread> threads;
  for (int64_t h = 0; h < c.Hq; ++h) threads.emplace_back(head, h);
  for (auto& t : threads) t.join();
  for (int64_t h = 0; h < c.Hq; ++h) {
    const int64_t j = h / g;
    for (int64_t t = 0; t < c.Tk; ++t)
      for (int64_t e = 0; e < D; ++e) {
        r.dk[(t * c.Hkv + j) * D + e] += dk_h[h][t * D + e];
        r.dv[(t * c.Hkv + j) * D + e] += dv_h[h][t * D + e];
      }
  }
  return r;
}

// [T, H, D] bf16 views into device memory, either separate contiguous buffers or heads of one
// fused [T, sum(H), D] buffer (like a fused QKV projection's output).
struct Views {
  std::vector<std::unique_ptr<DeviceBuffer>> bufs;
  std::vector<TensorView> t;
  std::vector<int64_t> T, H;
  int64_t D = 0;
  // fused: all views share one buffer (requires equal T).
  Views(const std::vector<std::pair<int64_t, int64_t>>& th, int64_t D_, bool fused) : D(D_) {
    for (auto [T_, H_] : th) {
      T.push_back(T_);
      H.push_back(H_);
    }
    if (!fused) {
      for (size_t i = 0; i < th.size(); ++i) {
        bufs.push_back(std::make_unique<DeviceBuffer>(static_cast<size_t>(T[i] * H[i] * D) * 2));
        t.push_back(TensorView::contiguous(bufs.back()->p, DType::BF16, Device::CUDA, {T[i], H[i], D}));
      }
      return;
    }
    int64_t Hall = 0;
    for (int64_t h : H) Hall += h;
    bufs.push_back(std::make_unique<DeviceBuffer>(static_cast<size_t>(T[0] * Hall * D) * 2));
    const TensorView all = TensorView::contiguous(bufs[0]->p, DType::BF16, Device::CUDA, {T[0], Hall, D});
    int64_t h0 = 0;
    for (size_t i = 0; i < th.size(); ++i) {
      TensorView x = all;
      x.data = static_cast<uint16_t*>(bufs[0]->p) + h0 * D;
      x.shape[1] = H[i];
      t.push_back(x);
      h0 += H[i];
    }
  }
  bool fused() const { return bufs.size() == 1 && t.size() > 1; }
  void upload(size_t i, const std::vector<uint16_t>& host) {
    if (!fused()) {
      bufs[i]->upload(host.data(), host.size() * 2);
      return;
    }
    const TensorView& x = t[i];
    for (int64_t r = 0; r < T[i]; ++r)
      cuda_ok(cudaMemcpy2D(static_cast<uint16_t*>(x.data) + r * x.stride[0], x.stride[1] * 2,
                           host.data() + r * H[i] * D, D * 2, D * 2, H[i], cudaMemcpyHostToDevice),
              "upload view");
  }
  std::vector<float> download(size_t i) const {
    std::vector<uint16_t> host(static_cast<size_t>(T[i] * H[i] * D));
    const TensorView& x = t[i];
    for (int64_t r = 0; r < T[i]; ++r)
      cuda_ok(cudaMemcpy2D(host.data() + r * H[i] * D, D * 2, static_cast<const uint16_t*>(x.data) + r * x.stride[0],
                           (H[i] > 1 ? x.stride[1] : D) * 2, D * 2, H[i], cudaMemcpyDeviceToHost),
              "download view");
    std::vector<float> out(host.size());
    for (size_t j = 0; j < host.size(); ++j) out[j] = rt::bf16_to_f32(host[j]);
    return out;
  }
  void poison() {
    for (auto& b : bufs) b->poison();
  }
};

struct Options {
  bool fused = false;       // q, k, v in one fused buffer and dq, dk, dv in another (needs Tq == Tk)
  bool flash_fwd = false;   // o and lse from our flash kernel instead of cuDNN's forward
};

void check_case(const Case& c, uint64_t seed, Options opt = {}) {
  SCOPED_TRACE(c.str() + (opt.fused ? " [fused views]" : "") + (opt.flash_fwd ? " [o, lse from flash]" : ""));
  const size_t nq = static_cast<size_t>(c.Tq * c.Hq * c.D), nk = static_cast<size_t>(c.Tk * c.Hkv * c.D);
  std::vector<float> q = randn(nq, seed), k = randn(nk, seed + 1), v = randn(nk, seed + 2), dout = randn(nq, seed + 3);
  const std::vector<uint16_t> qb = round_bf16(q), kb = round_bf16(k), vb = round_bf16(v), db = round_bf16(dout);
  const AttentionSpec spec = c.spec();

  Views in({{c.Tq, c.Hq}, {c.Tk, c.Hkv}, {c.Tk, c.Hkv}}, c.D, opt.fused);
  Views grads({{c.Tq, c.Hq}, {c.Tk, c.Hkv}, {c.Tk, c.Hkv}}, c.D, opt.fused);
  in.upload(0, qb);
  in.upload(1, kb);
  in.upload(2, vb);
  DeviceBuffer bo(nq * 2), bdo(nq * 2), blse(static_cast<size_t>(c.Hq * c.Tq) * 4);
  bdo.upload(db.data(), nq * 2);
  const TensorView tq = in.t[0], tk = in.t[1], tv = in.t[2];
  const TensorView to = TensorView::contiguous(bo.p, DType::BF16, Device::CUDA, {c.Tq, c.Hq, c.D});
  const TensorView tdo = TensorView::contiguous(bdo.p, DType::BF16, Device::CUDA, {c.Tq, c.Hq, c.D});
  const TensorView tlse = TensorView::contiguous(blse.p, DType::F32, Device::CUDA, {c.Hq, c.Tq});

  if (!rt::cuda::cudnn_sdpa_backward_supported(tq, tk, tv, spec)) {
    std::string why = "(no error from cudnn_sdpa_backward)";
    try {
      rt::cuda::cudnn_sdpa_backward(tq, tk, tv, to, tlse, tdo, grads.t[0], grads.t[1], grads.t[2], spec, nullptr);
    } catch (const std::exception& e) {
      why = e.what();
    }
    FAIL() << "cuDNN SDPA backward reports unsupported: " << why;
  }

  if (opt.flash_fwd)
    rt::cuda::attention_forward_with(tq, tk, tv, to, tlse, spec, rt::cuda::AttentionKernel::Auto, nullptr);
  else rt::cuda::cudnn_sdpa_forward(tq, tk, tv, to, spec, nullptr, tlse);
  grads.poison();
  rt::cuda::cudnn_sdpa_backward(tq, tk, tv, to, tlse, tdo, grads.t[0], grads.t[1], grads.t[2], spec, nullptr);
  cuda_ok(cudaDeviceSynchronize(), "cudnn sdpa forward + backward");

  const Grads want = reference_backward(c, q, k, v, dout);
  const char* names[3] = {"dq", "dk", "dv"};
  const std::vector<double>* refs[3] = {&want.dq, &want.dk, &want.dv};
  for (int i = 0; i < 3; ++i) {
    const std::vector<float> got = grads.download(static_cast<size_t>(i));
    size_t bad = 0;
    const double e = rel_err(got, *refs[i], bad);
    EXPECT_EQ(bad, 0u) << names[i] << ": non-finite outputs (unwritten or NaN)";
    EXPECT_LT(e, 2e-2) << names[i] << " vs double reference: relative Frobenius error";
    if (e > 2e-2 || bad) std::printf("  [%s] %s rel err %.3g, %zu non-finite\n", c.str().c_str(), names[i], e, bad);
  }
}

struct Heads {
  int64_t Hq, Hkv, D;
};
// Qwen2.5-0.5B (GQA 7, D 64), Qwen2.5-1.5B (GQA 6, D 128), GQA 1 at both head dims.
const Heads kHeads[] = {{14, 2, 64}, {12, 2, 128}, {4, 4, 64}, {2, 2, 128}};

TEST(CudnnSdpaBackward, CausalSizes) {
  SKIP_WITHOUT_GPU();
  std::printf("cuDNN %lld\n", static_cast<long long>(rt::cuda::cudnn_sdpa_version()));
  uint64_t seed = 11000;
  for (const Heads& hd : kHeads)
    for (int64_t T : {1, 7, 127, 128, 129, 1027}) check_case(Case{"causal", T, T, hd.Hq, hd.Hkv, hd.D}, seed += 4);
}

TEST(CudnnSdpaBackward, SlidingWindow) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 12000;
  for (const Heads& hd : {kHeads[0], kHeads[1]}) {
    // W = 1 (only the diagonal), 64, 2048, each with T < W (where there is one), T = W, T > W.
    for (auto [T, W] : std::vector<std::pair<int64_t, int64_t>>{{1, 1},
                                                                 {7, 1},
                                                                 {128, 1},
                                                                 {7, 64},
                                                                 {64, 64},
                                                                 {129, 64},
                                                                 {1027, 64},
                                                                 {1027, 2048},
                                                                 {2048, 2048},
                                                                 {2048 + 3, 2048}})
      check_case(Case{"window", T, T, hd.Hq, hd.Hkv, hd.D, true, W}, seed += 4);
  }
  check_case(Case{"window gqa1", 300, 300, 4, 4, 64, true, 100}, seed += 4);
  check_case(Case{"window gqa1", 300, 300, 2, 2, 128, true, 64}, seed += 4);
}

// Positions against a KV cache (q_pos0 - k_pos0 = Tk - Tq: bottom-right) and a common nonzero
// origin (top-left).
TEST(CudnnSdpaBackward, KvCachePositions) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 13000;
  for (const Heads& hd : {kHeads[0], kHeads[1]}) {
    check_case(Case{"decode", 1, 129, hd.Hq, hd.Hkv, hd.D, true, 0, 128, 0}, seed += 4);
    check_case(Case{"chunk", 64, 300, hd.Hq, hd.Hkv, hd.D, true, 0, 236, 0}, seed += 4);
    check_case(Case{"chunk window", 16, 1000, hd.Hq, hd.Hkv, hd.D, true, 129, 984, 0}, seed += 4);
    check_case(Case{"common origin", 129, 129, hd.Hq, hd.Hkv, hd.D, true, 64, 77, 77}, seed += 4);
  }
}

TEST(CudnnSdpaBackward, NonCausal) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 14000;
  for (const Heads& hd : {kHeads[0], kHeads[1]}) {
    check_case(Case{"full", 129, 300, hd.Hq, hd.Hkv, hd.D, false}, seed += 4);
    check_case(Case{"full", 1, 7, hd.Hq, hd.Hkv, hd.D, false, 0, 123, 45}, seed += 4);
    check_case(Case{"full 1x1", 1, 1, hd.Hq, hd.Hkv, hd.D, false}, seed += 4);  // the padded path
  }
}

// q, k, v as heads of one fused buffer and dq, dk, dv as heads of another.
TEST(CudnnSdpaBackward, FusedViews) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 15000;
  for (const Heads& hd : {kHeads[0], kHeads[1]}) {
    check_case(Case{"causal", 129, 129, hd.Hq, hd.Hkv, hd.D}, seed += 4, {.fused = true});
    check_case(Case{"window", 300, 300, hd.Hq, hd.Hkv, hd.D, true, 64}, seed += 4, {.fused = true});
    check_case(Case{"causal 1x1", 1, 1, hd.Hq, hd.Hkv, hd.D}, seed += 4, {.fused = true});  // padded, strided dk/dv
  }
}

// Our flash kernel's o and lse feed cuDNN's backward unchanged (same natural-log lse).
TEST(CudnnSdpaBackward, LseFromFlashKernel) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 16000;
  for (const Heads& hd : {kHeads[0], kHeads[1]}) {
    check_case(Case{"causal", 1027, 1027, hd.Hq, hd.Hkv, hd.D}, seed += 4, {.flash_fwd = true});
    check_case(Case{"window", 300, 300, hd.Hq, hd.Hkv, hd.D, true, 64}, seed += 4, {.flash_fwd = true});
  }
}

TEST(CudnnSdpaBackward, UnsupportedAndInvalid) {
  SKIP_WITHOUT_GPU();
  const int64_t T = 64, Hq = 14, Hkv = 2, D = 64;
  DeviceBuffer bq(T * Hq * D * 4), bk(T * Hkv * D * 4), bv(T * Hkv * D * 4), bo(T * Hq * D * 4), bdo(T * Hq * D * 4),
      bdq(T * Hq * D * 4), bdk(T * Hkv * D * 4), bdv(T * Hkv * D * 4), blse(Hq * T * 4);
  auto qs = [&](void* p) { return TensorView::contiguous(p, DType::BF16, Device::CUDA, {T, Hq, D}); };
  auto ks = [&](void* p) { return TensorView::contiguous(p, DType::BF16, Device::CUDA, {T, Hkv, D}); };
  const TensorView q = qs(bq.p), k = ks(bk.p), v = ks(bv.p), o = qs(bo.p), dout = qs(bdo.p), dq = qs(bdq.p),
                   dk = ks(bdk.p), dv = ks(bdv.p);
  const TensorView lse = TensorView::contiguous(blse.p, DType::F32, Device::CUDA, {Hq, T});
  auto expect_names = [](const char* arg, auto&& fn) {
    try {
      fn();
      ADD_FAILURE() << "no error, expected one naming '" << arg << "'";
    } catch (const rt::Error& e) {
      EXPECT_NE(std::string(e.what()).find(std::string("'") + arg + "'"), std::string::npos) << e.what();
    }
  };

  // Positions not expressible: q_pos0 - k_pos0 = 5, neither 0 nor Tk - Tq = 0.
  AttentionSpec spec;
  spec.q_pos0 = 5;
  EXPECT_FALSE(rt::cuda::cudnn_sdpa_backward_supported(q, k, v, spec));
  EXPECT_THROW(rt::cuda::cudnn_sdpa_backward(q, k, v, o, lse, dout, dq, dk, dv, spec, nullptr), rt::Error);

  // f32 inputs.
  const TensorView qf = TensorView::contiguous(bq.p, DType::F32, Device::CUDA, {T, Hq, D});
  const TensorView kf = TensorView::contiguous(bk.p, DType::F32, Device::CUDA, {T, Hkv, D});
  EXPECT_FALSE(rt::cuda::cudnn_sdpa_backward_supported(qf, kf, kf, AttentionSpec{}));

  // Wrong shapes name the argument.
  const AttentionSpec causal;
  expect_names("dq", [&] {
    rt::cuda::cudnn_sdpa_backward(q, k, v, o, lse, dout, TensorView::contiguous(bdq.p, DType::BF16, Device::CUDA,
                                                                                 {T, Hq, 32}),
                                  dk, dv, causal, nullptr);
  });
  expect_names("dk", [&] { rt::cuda::cudnn_sdpa_backward(q, k, v, o, lse, dout, dq, dk.rows(0, 32), dv, causal, nullptr); });
  expect_names("lse", [&] {
    rt::cuda::cudnn_sdpa_backward(q, k, v, o, TensorView::contiguous(blse.p, DType::F32, Device::CUDA, {T, Hq}), dout,
                                  dq, dk, dv, causal, nullptr);
  });
  expect_names("dout", [&] {
    rt::cuda::cudnn_sdpa_backward(q, k, v, o, lse, TensorView::contiguous(bdo.p, DType::F32, Device::CUDA, {T, Hq, D}),
                                  dq, dk, dv, causal, nullptr);
  });
  // Outputs may not overlap inputs or each other.
  expect_names("dq", [&] { rt::cuda::cudnn_sdpa_backward(q, k, v, o, lse, dout, q, dk, dv, causal, nullptr); });
  expect_names("dv", [&] { rt::cuda::cudnn_sdpa_backward(q, k, v, o, lse, dout, dq, dk, dk, causal, nullptr); });

  // No queries: dk, dv are zero.
  cuda_ok(cudaMemset(bdk.p, 0xff, bdk.bytes), "poison");
  cuda_ok(cudaMemset(bdv.p, 0xff, bdv.bytes), "poison");
  const TensorView lse0 = TensorView::contiguous(blse.p, DType::F32, Device::CUDA, {Hq, 0});
  EXPECT_TRUE(rt::cuda::cudnn_sdpa_backward_supported(q.rows(0, 0), k, v, causal));
  ASSERT_NO_THROW(rt::cuda::cudnn_sdpa_backward(q.rows(0, 0), k, v, o.rows(0, 0), lse0, dout.rows(0, 0),
                                                dq.rows(0, 0), dk, dv, causal, nullptr));
  cuda_ok(cudaDeviceSynchronize(), "sync");
  std::vector<uint16_t> host(static_cast<size_t>(T * Hkv * D));
  cuda_ok(cudaMemcpy(host.data(), bdk.p, host.size() * 2, cudaMemcpyDeviceToHost), "download");
  EXPECT_TRUE(std::all_of(host.begin(), host.end(), [](uint16_t x) { return x == 0; })) << "dk not zeroed";
  cuda_ok(cudaMemcpy(host.data(), bdv.p, host.size() * 2, cudaMemcpyDeviceToHost), "download");
  EXPECT_TRUE(std::all_of(host.begin(), host.end(), [](uint16_t x) { return x == 0; })) << "dv not zeroed";
}

// A repeated call with the same shape builds nothing.
TEST(CudnnSdpaBackward, GraphCache) {
  SKIP_WITHOUT_GPU();
  const int64_t T = 257, Hq = 14, Hkv = 2, D = 64;
  std::vector<float> hq = randn(T * Hq * D, 1), hk = randn(T * Hkv * D, 2), hv = randn(T * Hkv * D, 3),
                     hd = randn(T * Hq * D, 4);
  const std::vector<uint16_t> bq_h = round_bf16(hq), bk_h = round_bf16(hk), bv_h = round_bf16(hv), bd_h = round_bf16(hd);
  DeviceBuffer bq(T * Hq * D * 2), bk(T * Hkv * D * 2), bv(T * Hkv * D * 2), bo(T * Hq * D * 2), bdo(T * Hq * D * 2),
      bdq(T * Hq * D * 2), bdk(T * Hkv * D * 2), bdv(T * Hkv * D * 2), blse(Hq * T * 4);
  bq.upload(bq_h.data(), bq.bytes);
  bk.upload(bk_h.data(), bk.bytes);
  bv.upload(bv_h.data(), bv.bytes);
  bdo.upload(bd_h.data(), bdo.bytes);
  auto qs = [&](void* p) { return TensorView::contiguous(p, DType::BF16, Device::CUDA, {T, Hq, D}); };
  auto ks = [&](void* p) { return TensorView::contiguous(p, DType::BF16, Device::CUDA, {T, Hkv, D}); };
  const TensorView lse = TensorView::contiguous(blse.p, DType::F32, Device::CUDA, {Hq, T});
  AttentionSpec spec;
  spec.window = 100;
  rt::cuda::cudnn_sdpa_forward(qs(bq.p), ks(bk.p), ks(bv.p), qs(bo.p), spec, nullptr, lse);
  auto bwd = [&] {
    rt::cuda::cudnn_sdpa_backward(qs(bq.p), ks(bk.p), ks(bv.p), qs(bo.p), lse, qs(bdo.p), qs(bdq.p), ks(bdk.p),
                                  ks(bdv.p), spec, nullptr);
  };
  bwd();
  const rt::cuda::CudnnSdpaStats a = rt::cuda::cudnn_sdpa_stats();
  for (int i = 0; i < 5; ++i) bwd();
  EXPECT_TRUE(rt::cuda::cudnn_sdpa_backward_supported(qs(bq.p), ks(bk.p), ks(bv.p), spec));
  cuda_ok(cudaDeviceSynchronize(), "sync");
  const rt::cuda::CudnnSdpaStats b = rt::cuda::cudnn_sdpa_stats();
  EXPECT_EQ(b.graphs_built, a.graphs_built);
  EXPECT_EQ(b.build_failures, a.build_failures);
  EXPECT_GE(b.cache_hits, a.cache_hits + 6);
}

}  // namespace

#endif  // RT_HAVE_CUDNN_SDPA
