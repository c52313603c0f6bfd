// Tests of cuDNN SDPA (backends/cuda/cudnn_sdpa) against the CPU reference
// rt::cpu::attention_forward and, as a cross-check, against our flash kernels
// (rt::cuda::attention_forward) on the same inputs. Inputs are random (fixed seeds), rounded to
// bf16 (the CPU reference gets the same rounded values in f32); outputs are poisoned with NaN
// before every call. Pass: every output finite, relative Frobenius error < 1e-2 against the CPU
// reference and against the flash kernel. Without a GPU every test skips; in a build without
// cuDNN SDPA there is a single test, which skips.
#include <gtest/gtest.h>

#include <cuda_runtime.h>

#include "cuda/cudnn_sdpa/cudnn_sdpa.h"

#if !defined(RT_HAVE_CUDNN_SDPA)

TEST(CudnnSdpa, NotBuilt) {
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
#include <utility>
#include <vector>

#include "cpu/kernels.h"
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

struct Options {
  bool check_lse = false;
  bool fused_qkv = false;  // q, k, v as strided views into one [T, Hq + 2 Hkv, D] buffer (needs Tq == Tk)
};

// Runs one case through cuDNN SDPA and our flash kernel; compares both with the CPU reference
// and with each other.
void check_case(const Case& c, uint64_t seed, Options opt = {}) {
  SCOPED_TRACE(c.str() + (opt.fused_qkv ? " [fused qkv views]" : "") + (opt.check_lse ? " [lse]" : ""));
  const size_t nq = static_cast<size_t>(c.Tq * c.Hq * c.D), nk = static_cast<size_t>(c.Tk * c.Hkv * c.D);
  std::vector<float> q = randn(nq, seed), k = randn(nk, seed + 1), v = randn(nk, seed + 2);
  const std::vector<uint16_t> qb = round_bf16(q), kb = round_bf16(k), vb = round_bf16(v);
  std::vector<float> ref(nq, std::numeric_limits<float>::quiet_NaN());
  const AttentionSpec spec = c.spec();
  reference_forward(c, q, k, v, ref);

  // Device inputs: separate contiguous tensors, or views into a fused QKV buffer.
  std::unique_ptr<DeviceBuffer> dq, dk, dv, dqkv;
  TensorView tq, tk, tv;
  if (!opt.fused_qkv) {
    dq = std::make_unique<DeviceBuffer>(nq * 2);
    dk = std::make_unique<DeviceBuffer>(nk * 2);
    dv = std::make_unique<DeviceBuffer>(nk * 2);
    dq->upload(qb.data(), nq * 2);
    dk->upload(kb.data(), nk * 2);
    dv->upload(vb.data(), nk * 2);
    tq = TensorView::contiguous(dq->p, DType::BF16, Device::CUDA, {c.Tq, c.Hq, c.D});
    tk = TensorView::contiguous(dk->p, DType::BF16, Device::CUDA, {c.Tk, c.Hkv, c.D});
    tv = TensorView::contiguous(dv->p, DType::BF16, Device::CUDA, {c.Tk, c.Hkv, c.D});
  } else {
    const int64_t H = c.Hq + 2 * c.Hkv, T = c.Tq;
    std::vector<uint16_t> fused(static_cast<size_t>(T * H * c.D));
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t e = 0; e < c.D; ++e) {
          uint16_t x;
          if (h < c.Hq) x = qb[(t * c.Hq + h) * c.D + e];
          else if (h < c.Hq + c.Hkv) x = kb[(t * c.Hkv + h - c.Hq) * c.D + e];
          else x = vb[(t * c.Hkv + h - c.Hq - c.Hkv) * c.D + e];
          fused[(t * H + h) * c.D + e] = x;
        }
    dqkv = std::make_unique<DeviceBuffer>(fused.size() * 2);
    dqkv->upload(fused.data(), fused.size() * 2);
    const TensorView all = TensorView::contiguous(dqkv->p, DType::BF16, Device::CUDA, {T, H, c.D});
    auto heads = [&](int64_t h0, int64_t n) {
      TensorView x = all;
      x.data = static_cast<uint16_t*>(dqkv->p) + h0 * c.D;
      x.shape[1] = n;
      return x;
    };
    tq = heads(0, c.Hq);
    tk = heads(c.Hq, c.Hkv);
    tv = heads(c.Hq + c.Hkv, c.Hkv);
  }
  DeviceBuffer dout(nq * 2), dflash(nq * 2), dlse(static_cast<size_t>(c.Hq * c.Tq) * 4),
      dlse_flash(static_cast<size_t>(c.Hq * c.Tq) * 4);
  const TensorView to = TensorView::contiguous(dout.p, DType::BF16, Device::CUDA, {c.Tq, c.Hq, c.D});
  const TensorView tflash = TensorView::contiguous(dflash.p, DType::BF16, Device::CUDA, {c.Tq, c.Hq, c.D});
  const TensorView tlse =
      opt.check_lse ? TensorView::contiguous(dlse.p, DType::F32, Device::CUDA, {c.Hq, c.Tq}) : TensorView{};
  const TensorView tlse_flash =
      opt.check_lse ? TensorView::contiguous(dlse_flash.p, DType::F32, Device::CUDA, {c.Hq, c.Tq}) : TensorView{};

  if (!rt::cuda::cudnn_sdpa_supported(tq, tk, tv, spec, opt.check_lse)) {
    std::string why = "(no error from cudnn_sdpa_forward)";
    try {
      rt::cuda::cudnn_sdpa_forward(tq, tk, tv, to, spec, nullptr, tlse);
    } catch (const std::exception& e) {
      why = e.what();
    }
    FAIL() << "cuDNN SDPA reports unsupported: " << why;
  }
  dout.poison();
  dlse.poison();
  rt::cuda::cudnn_sdpa_forward(tq, tk, tv, to, spec, nullptr, tlse);
  cuda_ok(cudaDeviceSynchronize(), "cudnn sdpa");
  const std::vector<float> out = download_bf16(dout, nq);

  dflash.poison();
  dlse_flash.poison();
  rt::cuda::attention_forward_with(tq, tk, tv, tflash, tlse_flash, spec, rt::cuda::AttentionKernel::Auto, nullptr);
  cuda_ok(cudaDeviceSynchronize(), "flash attention");
  const std::vector<float> flash = download_bf16(dflash, nq);

  size_t bad = 0;
  const double e_ref = rel_err(out, ref, bad);
  ASSERT_EQ(bad, 0u) << "cuDNN SDPA: non-finite outputs (unwritten or NaN)";
  EXPECT_LT(e_ref, 1e-2) << "cuDNN SDPA vs CPU reference: relative Frobenius error";
  size_t bad_flash = 0;
  const double e_flash = rel_err(out, flash, bad_flash);
  EXPECT_LT(e_flash, 1e-2) << "cuDNN SDPA vs flash kernel: relative Frobenius error";
  if (e_ref > 1e-2 || e_flash > 1e-2)
    std::printf("  [%s] rel err vs cpu %.3g, vs flash %.3g\n", c.str().c_str(), e_ref, e_flash);

  if (opt.check_lse) {
    const std::vector<double> want = reference_lse(c, q, k);
    std::vector<float> got(want.size()), got_flash(want.size());
    dlse.download(got.data(), got.size() * 4);
    dlse_flash.download(got_flash.data(), got_flash.size() * 4);
    double worst = 0, worst_flash = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      ASSERT_FALSE(std::isinf(want[i])) << "supported cases have no empty rows";
      worst = std::max(worst, std::fabs(got[i] - want[i]));
      worst_flash = std::max(worst_flash, static_cast<double>(std::fabs(got[i] - got_flash[i])));
      if (!std::isfinite(got[i])) worst = std::numeric_limits<double>::infinity();
    }
    EXPECT_LT(worst, 2e-3) << "cuDNN SDPA log-sum-exp vs reference";
    EXPECT_LT(worst_flash, 2e-3) << "cuDNN SDPA log-sum-exp vs flash kernel";
  }
}

struct Heads {
  int64_t Hq, Hkv, D;
};
// Qwen2.5-0.5B (GQA 7, D 64), Qwen2.5-1.5B (GQA 6, D 128), GQA 1 at both head dims.
const Heads kHeads[] = {{14, 2, 64}, {12, 2, 128}, {4, 4, 64}, {2, 2, 128}};

TEST(CudnnSdpa, CausalSizes) {
  SKIP_WITHOUT_GPU();
  std::printf("cuDNN %lld\n", static_cast<long long>(rt::cuda::cudnn_sdpa_version()));
  uint64_t seed = 1000;
  for (const Heads& hd : kHeads)
    for (int64_t T : {1, 7, 127, 128, 129, 4096 + 3}) {
      if (T > 129 && hd.Hq == hd.Hkv) continue;  // ratio 1 at the small sizes only (CPU reference time)
      check_case(Case{"causal", T, T, hd.Hq, hd.Hkv, hd.D}, seed += 3);
    }
}

TEST(CudnnSdpa, SlidingWindow) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 2000;
  for (const Heads& hd : {kHeads[0], kHeads[1]}) {
    // W = 1 (only the diagonal), 64, 2048, each with T = W and T > W, and T < W where there is one.
    for (auto [T, W] : std::vector<std::pair<int64_t, int64_t>>{
             {1, 1}, {7, 1}, {7, 64}, {64, 64}, {129, 64}, {129, 2048}, {2048, 2048}, {4096 + 3, 2048}}) {
      check_case(Case{"window", T, T, hd.Hq, hd.Hkv, hd.D, true, W}, seed += 3);
    }
  }
  check_case(Case{"window gqa1", 300, 300, 4, 4, 64, true, 100}, seed += 3);
}

// Positions against a KV cache: decode and chunked prefill (q_pos0 - k_pos0 = Tk - Tq, bottom-right)
// and a common nonzero origin (q_pos0 = k_pos0, top-left).
TEST(CudnnSdpa, KvCachePositions) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 3000;
  for (const Heads& hd : {kHeads[0], kHeads[1]}) {
    check_case(Case{"decode", 1, 129, hd.Hq, hd.Hkv, hd.D, true, 0, 128, 0}, seed += 3);
    check_case(Case{"decode", 1, 4096 + 3, hd.Hq, hd.Hkv, hd.D, true, 0, 4096 + 2, 0}, seed += 3);
    check_case(Case{"decode window", 1, 4096 + 3, hd.Hq, hd.Hkv, hd.D, true, 2048, 4096 + 2, 0}, seed += 3);
    check_case(Case{"chunk", 64, 300, hd.Hq, hd.Hkv, hd.D, true, 0, 236, 0}, seed += 3);
    check_case(Case{"chunk window", 16, 1000, hd.Hq, hd.Hkv, hd.D, true, 129, 984, 0}, seed += 3);
    check_case(Case{"chunk shifted", 20, 120, hd.Hq, hd.Hkv, hd.D, true, 64, 1000, 900}, seed += 3);
    check_case(Case{"common origin", 129, 129, hd.Hq, hd.Hkv, hd.D, true, 64, 77, 77}, seed += 3);
    check_case(Case{"common origin causal", 127, 300, hd.Hq, hd.Hkv, hd.D, true, 0, 5, 5}, seed += 3);
  }
}

TEST(CudnnSdpa, LogSumExp) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 4000;
  for (const Heads& hd : {kHeads[0], kHeads[1]}) {
    check_case(Case{"causal", 129, 129, hd.Hq, hd.Hkv, hd.D}, seed += 3, {.check_lse = true});
    check_case(Case{"window", 300, 300, hd.Hq, hd.Hkv, hd.D, true, 64}, seed += 3, {.check_lse = true});
    check_case(Case{"decode", 1, 300, hd.Hq, hd.Hkv, hd.D, true, 0, 299, 0}, seed += 3, {.check_lse = true});
  }
}

TEST(CudnnSdpa, NonCausal) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 5000;
  for (const Heads& hd : {kHeads[0], kHeads[1]}) {
    check_case(Case{"full", 129, 300, hd.Hq, hd.Hkv, hd.D, false}, seed += 3);
    check_case(Case{"full", 1, 7, hd.Hq, hd.Hkv, hd.D, false, 0, 123, 45}, seed += 3);  // offsets don't matter
    // Window without causal (left bound only): optional in cuDNN; when it claims support it must be right.
    const Case wo{"window only", 129, 129, hd.Hq, hd.Hkv, hd.D, false, 64};
    DeviceBuffer dummy(static_cast<size_t>(129 * hd.Hq * hd.D * 2));
    const TensorView t = TensorView::contiguous(dummy.p, DType::BF16, Device::CUDA, {129, hd.Hkv, hd.D});
    const TensorView tqv = TensorView::contiguous(dummy.p, DType::BF16, Device::CUDA, {129, hd.Hq, hd.D});
    if (rt::cuda::cudnn_sdpa_supported(tqv, t, t, wo.spec())) check_case(wo, seed += 3);
    else std::printf("  (cuDNN does not support a window without causal; the flash kernel covers it)\n");
  }
}

TEST(CudnnSdpa, FusedQkvViews) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 6000;
  for (const Heads& hd : {kHeads[0], kHeads[1]}) {
    check_case(Case{"causal", 129, 129, hd.Hq, hd.Hkv, hd.D}, seed += 3, {.fused_qkv = true});
    check_case(Case{"window", 300, 300, hd.Hq, hd.Hkv, hd.D, true, 64}, seed += 3, {.fused_qkv = true});
  }
}

// Unsupported cases are reported by cudnn_sdpa_supported (false) and cudnn_sdpa_forward (rt::Error);
// invalid arguments throw rt::Error naming the argument.
TEST(CudnnSdpa, UnsupportedAndInvalid) {
  SKIP_WITHOUT_GPU();
  const int64_t T = 64, Hq = 14, Hkv = 2, D = 64;
  DeviceBuffer bq(T * Hq * D * 4), bk(T * Hkv * D * 4), bv(T * Hkv * D * 4), bo(T * Hq * D * 4);
  const TensorView q = TensorView::contiguous(bq.p, DType::BF16, Device::CUDA, {T, Hq, D});
  const TensorView k = TensorView::contiguous(bk.p, DType::BF16, Device::CUDA, {T, Hkv, D});
  const TensorView v = TensorView::contiguous(bv.p, DType::BF16, Device::CUDA, {T, Hkv, D});
  const TensorView o = TensorView::contiguous(bo.p, DType::BF16, Device::CUDA, {T, Hq, D});
  AttentionSpec spec;
  spec.q_pos0 = 5;  // q_pos0 - k_pos0 = 5, neither 0 nor Tk - Tq = 0
  EXPECT_FALSE(rt::cuda::cudnn_sdpa_supported(q, k, v, spec));
  EXPECT_THROW(rt::cuda::cudnn_sdpa_forward(q, k, v, o, spec, nullptr), rt::Error);

  // Tq > Tk with a window.
  AttentionSpec w;
  w.window = 16;
  EXPECT_FALSE(rt::cuda::cudnn_sdpa_supported(q, k.rows(0, 32), v.rows(0, 32), w));

  // f32 is our kernel's reference path only.
  const TensorView qf = TensorView::contiguous(bq.p, DType::F32, Device::CUDA, {T, Hq, D});
  const TensorView kf = TensorView::contiguous(bk.p, DType::F32, Device::CUDA, {T, Hkv, D});
  const TensorView vf = TensorView::contiguous(bv.p, DType::F32, Device::CUDA, {T, Hkv, D});
  const TensorView of = TensorView::contiguous(bo.p, DType::F32, Device::CUDA, {T, Hq, D});
  EXPECT_FALSE(rt::cuda::cudnn_sdpa_supported(qf, kf, vf, AttentionSpec{}));
  EXPECT_THROW(rt::cuda::cudnn_sdpa_forward(qf, kf, vf, of, AttentionSpec{}, nullptr), rt::Error);

  // Bad shapes name the argument.
  try {
    rt::cuda::cudnn_sdpa_forward(q, k, v, TensorView::contiguous(bo.p, DType::BF16, Device::CUDA, {T, Hq, 32}),
                                 AttentionSpec{}, nullptr);
    ADD_FAILURE() << "no error for a wrong output shape";
  } catch (const rt::Error& e) {
    EXPECT_NE(std::string(e.what()).find("'o'"), std::string::npos) << e.what();
  }
  const TensorView k3 = TensorView::contiguous(bk.p, DType::BF16, Device::CUDA, {T, 3, D});
  EXPECT_FALSE(rt::cuda::cudnn_sdpa_supported(q, k3, k3, AttentionSpec{}));  // 14 % 3 != 0
  EXPECT_THROW(rt::cuda::cudnn_sdpa_forward(q, k3, k3, o, AttentionSpec{}, nullptr), rt::Error);

  // The output may not overlap the inputs.
  EXPECT_THROW(rt::cuda::cudnn_sdpa_forward(q, k, v, q, AttentionSpec{}, nullptr), rt::Error);

  // Nothing to do: no error, nothing written.
  EXPECT_TRUE(rt::cuda::cudnn_sdpa_supported(q.rows(0, 0), k, v, AttentionSpec{}));
  EXPECT_NO_THROW(rt::cuda::cudnn_sdpa_forward(q.rows(0, 0), k, v, o.rows(0, 0), AttentionSpec{}, nullptr));
}

// A repeated call with the same shape builds nothing.
TEST(CudnnSdpa, GraphCache) {
  SKIP_WITHOUT_GPU();
  const int64_t T = 257, Hq = 14, Hkv = 2, D = 64;
  DeviceBuffer bq(T * Hq * D * 2), bk(T * Hkv * D * 2), bv(T * Hkv * D * 2), bo(T * Hq * D * 2);
  cuda_ok(cudaMemset(bq.p, 0, bq.bytes), "memset");
  cuda_ok(cudaMemset(bk.p, 0, bk.bytes), "memset");
  cuda_ok(cudaMemset(bv.p, 0, bv.bytes), "memset");
  const TensorView q = TensorView::contiguous(bq.p, DType::BF16, Device::CUDA, {T, Hq, D});
  const TensorView k = TensorView::contiguous(bk.p, DType::BF16, Device::CUDA, {T, Hkv, D});
  const TensorView v = TensorView::contiguous(bv.p, DType::BF16, Device::CUDA, {T, Hkv, D});
  const TensorView o = TensorView::contiguous(bo.p, DType::BF16, Device::CUDA, {T, Hq, D});
  AttentionSpec spec;
  spec.window = 100;
  rt::cuda::cudnn_sdpa_forward(q, k, v, o, spec, nullptr);
  const rt::cuda::CudnnSdpaStats a = rt::cuda::cudnn_sdpa_stats();
  for (int i = 0; i < 5; ++i) rt::cuda::cudnn_sdpa_forward(q, k, v, o, spec, nullptr);
  EXPECT_TRUE(rt::cuda::cudnn_sdpa_supported(q, k, v, spec));
  cuda_ok(cudaDeviceSynchronize(), "sync");
  const rt::cuda::CudnnSdpaStats b = rt::cuda::cudnn_sdpa_stats();
  EXPECT_EQ(b.graphs_built, a.graphs_built);
  EXPECT_EQ(b.build_failures, a.build_failures);
  EXPECT_GE(b.cache_hits, a.cache_hits + 6);
}

}  // namespace

#endif  // RT_HAVE_CUDNN_SDPA
