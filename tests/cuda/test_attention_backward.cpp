// Tests of the CUDA attention backward (backends/cuda/attention/attention_backward.h) against the CPU
// reference rt::cpu::attention_backward. Inputs q, k, v, dout are random normal (fixed seeds); for
// the bf16 kernels they are rounded to bf16 first and the CPU reference gets the same rounded values
// in f32. The GPU runs attention_forward_lse (o, lse) then the backward; the CPU runs its own
// forward then its backward. Gradients are poisoned with NaN before every call. Pass: relative
// Frobenius error < 2e-2 for dq, dk, dv (bf16) or < 1e-4 (f32 path), every value finite, with an
// absolute floor of 1e-3 (bf16) / 1e-6 (f32) RMS per element for gradients that are analytically
// zero (see expect_close); an all-zero reference needs exact zeros. bf16 cases run with the automatic GQA group split and, where
// it differs, with the group unsplit (dk / dv written directly) and fully split. Without a GPU every
// test skips.
#include <gtest/gtest.h>

#include <cuda_runtime.h>

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
#include "cuda/attention/attention.h"
#include "cuda/attention/attention_backward.h"
#include "rt/sdk/error.h"
#include "rt/sdk/half.h"

#include "cuda_test_util.h"

namespace {

using namespace rt::test::cuda;
using rt::AttentionSpec;
using rt::DType;
using rt::Device;
using rt::TensorView;

// group_splits: values of attention_backward_with's group_splits to run (bf16 only).
void check_case(const Case& c, DType dtype, uint64_t seed, std::vector<int> group_splits = {0}) {
  SCOPED_TRACE(c.str() + (dtype == DType::BF16 ? " [bf16]" : " [f32]"));
  const size_t nq = static_cast<size_t>(c.Tq * c.Hq * c.D), nk = static_cast<size_t>(c.Tk * c.Hkv * c.D);
  std::vector<float> q = randn(nq, seed), k = randn(nk, seed + 1), v = randn(nk, seed + 2), dout = randn(nq, seed + 3);
  std::vector<uint16_t> qb, kb, vb, dob;
  if (dtype == DType::BF16) {
    qb = round_bf16(q);
    kb = round_bf16(k);
    vb = round_bf16(v);
    dob = round_bf16(dout);
  }
  const AttentionSpec spec = c.spec();
  // CPU reference.
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> o_ref(nq, nan), dq_ref(nq, nan), dk_ref(nk, nan), dv_ref(nk, nan);
  reference_forward(c, q, k, v, o_ref);
  rt::cpu::attention_backward(cpu_view(q, {c.Tq, c.Hq, c.D}), cpu_view(k, {c.Tk, c.Hkv, c.D}),
                              cpu_view(v, {c.Tk, c.Hkv, c.D}), cpu_view(o_ref, {c.Tq, c.Hq, c.D}),
                              cpu_view(dout, {c.Tq, c.Hq, c.D}), cpu_view(dq_ref, {c.Tq, c.Hq, c.D}),
                              cpu_view(dk_ref, {c.Tk, c.Hkv, c.D}), cpu_view(dv_ref, {c.Tk, c.Hkv, c.D}), spec);

  const size_t es = rt::dtype_size(dtype);
  DeviceBuffer bq(nq * es), bk(nk * es), bv(nk * es), bo(nq * es), bdo(nq * es), bdq(nq * es), bdk(nk * es),
      bdv(nk * es), blse(static_cast<size_t>(c.Hq * c.Tq) * 4);
  if (dtype == DType::BF16) {
    bq.upload(qb.data(), nq * 2);
    bk.upload(kb.data(), nk * 2);
    bv.upload(vb.data(), nk * 2);
    bdo.upload(dob.data(), nq * 2);
  } else {
    bq.upload(q.data(), nq * 4);
    bk.upload(k.data(), nk * 4);
    bv.upload(v.data(), nk * 4);
    bdo.upload(dout.data(), nq * 4);
  }
  auto dview = [&](DeviceBuffer& b, int64_t T, int64_t H) {
    return TensorView::contiguous(b.p, dtype, Device::CUDA, {T, H, c.D});
  };
  const TensorView tq = dview(bq, c.Tq, c.Hq), tk = dview(bk, c.Tk, c.Hkv), tv = dview(bv, c.Tk, c.Hkv);
  const TensorView to = dview(bo, c.Tq, c.Hq), tdo = dview(bdo, c.Tq, c.Hq), tdq = dview(bdq, c.Tq, c.Hq);
  const TensorView tdk = dview(bdk, c.Tk, c.Hkv), tdv = dview(bdv, c.Tk, c.Hkv);
  const TensorView tlse = TensorView::contiguous(blse.p, DType::F32, Device::CUDA, {c.Hq, c.Tq});
  bo.poison();
  blse.poison();
  rt::cuda::attention_forward_lse(tq, tk, tv, to, tlse, spec, nullptr);

  const double tol = dtype == DType::BF16 ? 2e-2 : 1e-4;
  const double atol = dtype == DType::BF16 ? 1e-3 : 1e-6;
  auto download = [&](const DeviceBuffer& b, size_t n) {
    std::vector<float> out(n);
    if (dtype == DType::BF16) {
      std::vector<uint16_t> h(n);
      b.download(h.data(), n * 2);
      for (size_t i = 0; i < n; ++i) out[i] = rt::bf16_to_f32(h[i]);
    } else {
      b.download(out.data(), n * 4);
    }
    return out;
  };
  if (dtype == DType::F32) group_splits = {0};
  for (int splits : group_splits) {
    SCOPED_TRACE("group_splits " + std::to_string(splits));
    bdq.poison();
    bdk.poison();
    bdv.poison();
    rt::cuda::attention_backward_with(tq, tk, tv, to, tlse, tdo, tdq, tdk, tdv, spec, splits, nullptr);
    cuda_ok(cudaDeviceSynchronize(), "attention_backward");
    expect_close_floor(download(bdq, nq), dq_ref, tol, atol, "dq");
    expect_close_floor(download(bdk, nk), dk_ref, tol, atol, "dk");
    expect_close_floor(download(bdv, nk), dv_ref, tol, atol, "dv");
  }
}

struct Heads {
  int64_t Hq, Hkv, D;
};
// Qwen2.5-0.5B (GQA 7), 1.5B (GQA 6), and GQA ratio 1 at both head dims.
const Heads kHeads[] = {{14, 2, 64}, {12, 2, 128}, {2, 2, 64}, {3, 3, 128}};
const std::vector<int> kSplits = {0, 1, 1000};  // auto, unsplit, one head per CTA

TEST(AttentionBackward, CausalSizes) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 1000;
  for (const Heads& hd : kHeads)
    for (int64_t T : {1, 7, 127, 128, 129}) check_case({"causal", T, T, hd.Hq, hd.Hkv, hd.D}, DType::BF16, seed += 5, kSplits);
}

TEST(AttentionBackward, CausalLong) {
  SKIP_WITHOUT_GPU();
  check_case({"causal", 4096 + 3, 4096 + 3, 14, 2, 64}, DType::BF16, 1100, {0, 1});
}

TEST(AttentionBackward, SlidingWindow) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 2000;
  for (const Heads& hd : {kHeads[0], kHeads[1], kHeads[2]}) {
    // T < W, T = W, T > W, W = 1 (the diagonal only), windows crossing tile boundaries.
    for (auto [T, W] : std::vector<std::pair<int64_t, int64_t>>{
             {129, 2048}, {129, 129}, {129, 64}, {129, 1}, {7, 1}, {300, 64}, {1000, 129}, {700, 1}}) {
      check_case({"window", T, T, hd.Hq, hd.Hkv, hd.D, true, W}, DType::BF16, seed += 5, kSplits);
    }
  }
  check_case({"window 2048", 2600, 2600, 14, 2, 64, true, 2048}, DType::BF16, seed += 5, {0, 1});
}

TEST(AttentionBackward, NonCausal) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 3000;
  for (const Heads& hd : {kHeads[0], kHeads[1]})
    for (int64_t T : {1, 7, 129, 300}) {
      check_case({"full", T, T + 5, hd.Hq, hd.Hkv, hd.D, false, 0}, DType::BF16, seed += 5, kSplits);
      check_case({"window, not causal", T, T + 5, hd.Hq, hd.Hkv, hd.D, false, 50}, DType::BF16, seed += 5, kSplits);
    }
}

TEST(AttentionBackward, Offsets) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 4000;
  for (const Heads& hd : {kHeads[0], kHeads[1]}) {
    // A chunk of queries continuing after cached keys.
    check_case({"chunk", 70, 370, hd.Hq, hd.Hkv, hd.D, true, 0, 300, 0}, DType::BF16, seed += 5, kSplits);
    check_case({"chunk, window 64", 70, 370, hd.Hq, hd.Hkv, hd.D, true, 64, 300, 0}, DType::BF16, seed += 5, kSplits);
    // Keys start after the first queries: rows 0..99 see no key (dq = 0, no contribution).
    check_case({"masked rows", 200, 210, hd.Hq, hd.Hkv, hd.D, true, 0, 0, 100}, DType::BF16, seed += 5, kSplits);
    check_case({"masked rows, window 30", 200, 210, hd.Hq, hd.Hkv, hd.D, true, 30, 0, 100}, DType::BF16, seed += 5,
               kSplits);
    // Rows 0..199 see no key: the first 128-row query tile gets no key block's dQ at all (the
    // Hopper fused dQ never writes its accumulator, and the convert must still give zeros).
    check_case({"masked tile", 300, 310, hd.Hq, hd.Hkv, hd.D, true, 0, 0, 200}, DType::BF16, seed += 5, kSplits);
    // Nothing visible at all: every gradient zero.
    check_case({"all masked", 20, 30, hd.Hq, hd.Hkv, hd.D, true, 0, 0, 1000}, DType::BF16, seed += 5, kSplits);
  }
}

TEST(AttentionBackward, F32Path) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 5000;
  for (const Heads& hd : {Heads{14, 2, 64}, Heads{12, 2, 128}, Heads{3, 1, 40}, Heads{2, 2, 256}}) {
    for (int64_t T : {1, 7, 129}) check_case({"causal", T, T, hd.Hq, hd.Hkv, hd.D}, DType::F32, seed += 5);
    check_case({"window 64", 300, 300, hd.Hq, hd.Hkv, hd.D, true, 64}, DType::F32, seed += 5);
    check_case({"masked rows", 50, 60, hd.Hq, hd.Hkv, hd.D, true, 0, 0, 20}, DType::F32, seed += 5);
    check_case({"full", 33, 40, hd.Hq, hd.Hkv, hd.D, false, 0}, DType::F32, seed += 5);
  }
}

// A NaN in one element of dout (row r, head h) reaches the gradients it feeds: all of dq's row
// (r, h), dk of the keys r sees in h's KV group, and dv's element of those keys. Rows and KV heads
// it cannot reach stay finite: nothing is zeroed, nothing spreads across groups or rows of dq.
void check_nan_dout(const Case& c, int64_t r, int splits, uint64_t seed) {
  SCOPED_TRACE(c.str() + " NaN in dout row " + std::to_string(r) + " group_splits " + std::to_string(splits));
  const size_t nq = static_cast<size_t>(c.Tq * c.Hq * c.D), nk = static_cast<size_t>(c.Tk * c.Hkv * c.D);
  std::vector<float> q = randn(nq, seed), k = randn(nk, seed + 1), v = randn(nk, seed + 2), dout = randn(nq, seed + 3);
  std::vector<uint16_t> qb = round_bf16(q), kb = round_bf16(k), vb = round_bf16(v), dob = round_bf16(dout);
  const int64_t h = c.Hq - 1, g = h / (c.Hq / c.Hkv), e = 3;
  dob[static_cast<size_t>((r * c.Hq + h) * c.D + e)] = 0x7FC0;
  DeviceBuffer bq(nq * 2), bk(nk * 2), bv(nk * 2), bo(nq * 2), bdo(nq * 2), bdq(nq * 2), bdk(nk * 2), bdv(nk * 2),
      blse(static_cast<size_t>(c.Hq * c.Tq) * 4);
  bq.upload(qb.data(), nq * 2);
  bk.upload(kb.data(), nk * 2);
  bv.upload(vb.data(), nk * 2);
  bdo.upload(dob.data(), nq * 2);
  auto view = [&](DeviceBuffer& b, int64_t T, int64_t H) {
    return TensorView::contiguous(b.p, DType::BF16, Device::CUDA, {T, H, c.D});
  };
  const TensorView tlse = TensorView::contiguous(blse.p, DType::F32, Device::CUDA, {c.Hq, c.Tq});
  rt::cuda::attention_forward_lse(view(bq, c.Tq, c.Hq), view(bk, c.Tk, c.Hkv), view(bv, c.Tk, c.Hkv),
                                  view(bo, c.Tq, c.Hq), tlse, c.spec(), nullptr);
  bdq.poison();
  bdk.poison();
  bdv.poison();
  rt::cuda::attention_backward_with(view(bq, c.Tq, c.Hq), view(bk, c.Tk, c.Hkv), view(bv, c.Tk, c.Hkv),
                                    view(bo, c.Tq, c.Hq), tlse, view(bdo, c.Tq, c.Hq), view(bdq, c.Tq, c.Hq),
                                    view(bdk, c.Tk, c.Hkv), view(bdv, c.Tk, c.Hkv), c.spec(), splits, nullptr);
  cuda_ok(cudaDeviceSynchronize(), "attention_backward");
  auto host = [&](const DeviceBuffer& b, size_t n) {
    std::vector<uint16_t> raw(n);
    b.download(raw.data(), n * 2);
    std::vector<float> out(n);
    for (size_t i = 0; i < n; ++i) out[i] = rt::bf16_to_f32(raw[i]);
    return out;
  };
  const std::vector<float> dq = host(bdq, nq), dk = host(bdk, nk), dv = host(bdv, nk);
  size_t wrong = 0;
  for (int64_t i = 0; i < c.Tq; ++i)
    for (int64_t hq = 0; hq < c.Hq; ++hq)
      for (int64_t d = 0; d < c.D; ++d) {
        const float x = dq[static_cast<size_t>((i * c.Hq + hq) * c.D + d)];
        if (i == r && hq == h ? !std::isnan(x) : !std::isfinite(x)) ++wrong;
      }
  EXPECT_EQ(wrong, 0u) << "dq: NaN must fill row (r, h) and nothing else";
  wrong = 0;
  const int64_t pos = c.q_pos0 + r;  // causal, k_pos0 = 0: row r sees keys 0..pos
  for (int64_t j = 0; j < c.Tk; ++j)
    for (int64_t hk = 0; hk < c.Hkv; ++hk)
      for (int64_t d = 0; d < c.D; ++d) {
        const size_t at = static_cast<size_t>((j * c.Hkv + hk) * c.D + d);
        if (hk != g) {
          wrong += !std::isfinite(dk[at]) || !std::isfinite(dv[at]);  // another KV group: untouched by row r
        } else if (j <= pos) {
          wrong += !std::isnan(dk[at]);
          if (d == e) wrong += !std::isnan(dv[at]);
        }
      }
  EXPECT_EQ(wrong, 0u) << "dk / dv: NaN must reach every key row r sees in its KV group, and no other group";
}

TEST(AttentionBackward, NonFiniteGradientsPropagate) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 6000;
  for (const Heads& hd : {kHeads[0], kHeads[1]})
    for (int splits : kSplits) {
      check_nan_dout({"nan", 300, 300, hd.Hq, hd.Hkv, hd.D}, 100, splits, seed += 5);
      check_nan_dout({"nan, last row", 300, 300, hd.Hq, hd.Hkv, hd.D}, 299, splits, seed += 5);
    }
}

TEST(AttentionBackward, RejectsBadArguments) {
  SKIP_WITHOUT_GPU();
  const int64_t T = 8, H = 2, D = 96;  // head dim 96: not supported by the bf16 path
  DeviceBuffer a(T * H * D * 2 * 9), lse(T * H * 4);
  auto v = [&](int i, int64_t d = 96, DType t = DType::BF16) {
    return TensorView::contiguous(static_cast<char*>(a.p) + i * T * H * D * 2, t, Device::CUDA, {T, H, d});
  };
  const TensorView tl = TensorView::contiguous(lse.p, DType::F32, Device::CUDA, {H, T});
  AttentionSpec spec;
  EXPECT_THROW(rt::cuda::attention_backward(v(0), v(1), v(2), v(3), tl, v(4), v(5), v(6), v(7), spec, nullptr), rt::Error);
  // f16 is not supported.
  EXPECT_THROW(rt::cuda::attention_backward(v(0, 64, DType::F16), v(1, 64, DType::F16), v(2, 64, DType::F16),
                                            v(3, 64, DType::F16), tl, v(4, 64, DType::F16), v(5, 64, DType::F16),
                                            v(6, 64, DType::F16), v(7, 64, DType::F16), spec, nullptr),
               rt::Error);
  // Mixed dtypes, missing lse, wrong lse shape, output overlapping an input.
  EXPECT_THROW(rt::cuda::attention_backward(v(0, 64), v(1, 64), v(2, 64), v(3, 64), tl, v(4, 64), v(5, 64, DType::F32),
                                            v(6, 64), v(7, 64), spec, nullptr),
               rt::Error);
  EXPECT_THROW(rt::cuda::attention_backward(v(0, 64), v(1, 64), v(2, 64), v(3, 64), TensorView{}, v(4, 64), v(5, 64),
                                            v(6, 64), v(7, 64), spec, nullptr),
               rt::Error);
  const TensorView bad_lse = TensorView::contiguous(lse.p, DType::F32, Device::CUDA, {T, H});
  EXPECT_THROW(rt::cuda::attention_backward(v(0, 64), v(1, 64), v(2, 64), v(3, 64), bad_lse, v(4, 64), v(5, 64),
                                            v(6, 64), v(7, 64), spec, nullptr),
               rt::Error);
  EXPECT_THROW(rt::cuda::attention_backward(v(0, 64), v(1, 64), v(2, 64), v(3, 64), tl, v(4, 64), v(0, 64), v(6, 64),
                                            v(7, 64), spec, nullptr),
               rt::Error);
}

}  // namespace
