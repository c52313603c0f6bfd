// Tests of the CUDA attention kernels (backends/cuda/attention) against the CPU reference
// rt::cpu::attention_forward. Inputs are random (fixed seeds); for the bf16 kernels they are rounded
// to bf16 first and the CPU reference gets the same rounded values in f32. Outputs are poisoned
// with NaN before every call. Pass: relative Frobenius error < 1e-2 (bf16; ~3e-3 expected) or
// < 1e-5 (f32 path), every output finite. Each case runs through the kernel chosen automatically
// and through the other kernel forced (flash forward / split-KV decode), which compute the same
// function. Without a GPU every test skips.
#include <gtest/gtest.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>
#include <string>
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
using rt::cuda::AttentionKernel;

// Runs one case on the GPU with the given kernel and dtype and compares with the CPU reference.
void check_case(const Case& c, DType dtype, const std::vector<AttentionKernel>& kernels, uint64_t seed,
                bool check_lse = false) {
  SCOPED_TRACE(c.str() + (dtype == DType::BF16 ? " [bf16]" : " [f32]"));
  const size_t nq = static_cast<size_t>(c.Tq * c.Hq * c.D), nk = static_cast<size_t>(c.Tk * c.Hkv * c.D);
  std::vector<float> q = randn(nq, seed), k = randn(nk, seed + 1), v = randn(nk, seed + 2);
  std::vector<uint16_t> qb, kb, vb;
  if (dtype == DType::BF16) {
    qb = round_bf16(q);
    kb = round_bf16(k);
    vb = round_bf16(v);
  }
  std::vector<float> ref(nq, std::numeric_limits<float>::quiet_NaN());
  const AttentionSpec spec = c.spec();
  reference_forward(c, q, k, v, ref);
  double ref_norm = 0;
  for (float x : ref) ref_norm += static_cast<double>(x) * x;
  ref_norm = std::sqrt(ref_norm);

  const size_t es = rt::dtype_size(dtype);
  DeviceBuffer dq(nq * es), dk(nk * es), dv(nk * es), dout(nq * es), dlse(static_cast<size_t>(c.Hq * c.Tq) * 4);
  if (dtype == DType::BF16) {
    dq.upload(qb.data(), nq * 2);
    dk.upload(kb.data(), nk * 2);
    dv.upload(vb.data(), nk * 2);
  } else {
    dq.upload(q.data(), nq * 4);
    dk.upload(k.data(), nk * 4);
    dv.upload(v.data(), nk * 4);
  }
  const TensorView tq = TensorView::contiguous(dq.p, dtype, Device::CUDA, {c.Tq, c.Hq, c.D});
  const TensorView tk = TensorView::contiguous(dk.p, dtype, Device::CUDA, {c.Tk, c.Hkv, c.D});
  const TensorView tv = TensorView::contiguous(dv.p, dtype, Device::CUDA, {c.Tk, c.Hkv, c.D});
  const TensorView to = TensorView::contiguous(dout.p, dtype, Device::CUDA, {c.Tq, c.Hq, c.D});
  const TensorView tlse = check_lse ? TensorView::contiguous(dlse.p, DType::F32, Device::CUDA, {c.Hq, c.Tq}) : TensorView{};
  const double tol = dtype == DType::BF16 ? 1e-2 : 1e-5;

  for (AttentionKernel kern : kernels) {
    SCOPED_TRACE(kern == AttentionKernel::Auto ? "kernel auto" : kern == AttentionKernel::Flash ? "kernel flash" : "kernel decode");
    dout.poison();
    dlse.poison();
    rt::cuda::attention_forward_with(tq, tk, tv, to, tlse, spec, kern, nullptr);
    cuda_ok(cudaDeviceSynchronize(), "attention");
    std::vector<float> out(nq);
    if (dtype == DType::BF16) {
      std::vector<uint16_t> ob(nq);
      dout.download(ob.data(), nq * 2);
      for (size_t i = 0; i < nq; ++i) out[i] = rt::bf16_to_f32(ob[i]);
    } else {
      dout.download(out.data(), nq * 4);
    }
    double err = 0, maxabs = 0;
    size_t bad = 0;
    for (size_t i = 0; i < nq; ++i) {
      if (!std::isfinite(out[i])) {
        ++bad;
        continue;
      }
      const double d = static_cast<double>(out[i]) - ref[i];
      err += d * d;
      maxabs = std::max(maxabs, std::fabs(static_cast<double>(out[i])));
    }
    ASSERT_EQ(bad, 0u) << "non-finite outputs (unwritten or NaN)";
    if (ref_norm == 0) {
      EXPECT_EQ(maxabs, 0.0) << "reference is all zeros (no visible key), output is not";
    } else {
      const double rel = std::sqrt(err) / ref_norm;
      EXPECT_LT(rel, tol) << "relative Frobenius error";
    }
    if (check_lse) {
      const std::vector<double> want = reference_lse(c, q, k);
      std::vector<float> got(want.size());
      dlse.download(got.data(), got.size() * 4);
      double worst = 0;
      for (size_t i = 0; i < want.size(); ++i) {
        if (std::isinf(want[i])) {
          EXPECT_TRUE(std::isinf(got[i]) && got[i] > 0) << "lse of an empty row must be +inf, index " << i;
          continue;
        }
        worst = std::max(worst, std::fabs(got[i] - want[i]));
      }
      EXPECT_LT(worst, dtype == DType::BF16 ? 2e-3 : 1e-4) << "log-sum-exp";
    }
  }
}

std::vector<AttentionKernel> both_kernels(const Case& c) {
  // Auto (decode for Tq <= 16), and the other one forced; the decode kernel on long Tq is only
  // worth it for moderate sizes.
  std::vector<AttentionKernel> ks{AttentionKernel::Auto};
  if (c.Tq <= 16) ks.push_back(AttentionKernel::Flash);
  else if (c.Tq <= 300) ks.push_back(AttentionKernel::Decode);
  return ks;
}

// Qwen2.5-0.5B (14/2/64) and 1.5B (12/2/128) head layouts, plus GQA ratio 1.
struct Heads {
  int64_t Hq, Hkv, D;
};
const Heads kHeads[] = {{14, 2, 64}, {12, 2, 128}, {2, 2, 64}, {4, 4, 128}};

TEST(FlashAttention, CausalSizes) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 100;
  for (const Heads& hd : kHeads)
    for (int64_t T : {1, 7, 127, 128, 129, 4096 + 3}) {
      if (T > 129 && hd.Hq == hd.Hkv) continue;  // ratio 1 at the small sizes only (CPU reference time)
      Case c{"causal", T, T, hd.Hq, hd.Hkv, hd.D};
      check_case(c, DType::BF16, both_kernels(c), seed += 3);
    }
}

TEST(FlashAttention, SlidingWindow) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 200;
  for (const Heads& hd : {kHeads[0], kHeads[1]}) {
    // T < W, T = W, T > W, W = 1 (only the diagonal), W crossing tile boundaries.
    for (auto [T, W] : std::vector<std::pair<int64_t, int64_t>>{
             {129, 2048}, {129, 129}, {129, 64}, {129, 1}, {7, 1}, {7, 3}, {300, 100}, {1000, 129}}) {
      Case c{"window", T, T, hd.Hq, hd.Hkv, hd.D, true, W};
      check_case(c, DType::BF16, both_kernels(c), seed += 3);
    }
    Case big{"window", 4096 + 3, 4096 + 3, hd.Hq, hd.Hkv, hd.D, true, 2048};
    check_case(big, DType::BF16, {AttentionKernel::Auto}, seed += 3);
    Case small_w{"window", 4096 + 3, 4096 + 3, hd.Hq, hd.Hkv, hd.D, true, 64};
    check_case(small_w, DType::BF16, {AttentionKernel::Auto}, seed += 3);
  }
}

TEST(FlashAttention, NonCausal) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 300;
  for (const Heads& hd : {kHeads[0], kHeads[1]}) {
    for (int64_t T : {1, 7, 129, 300}) {
      Case c{"full", T, T + 5, hd.Hq, hd.Hkv, hd.D, false, 0};
      check_case(c, DType::BF16, both_kernels(c), seed += 3);
      Case w{"window, not causal", T, T + 5, hd.Hq, hd.Hkv, hd.D, false, 50};
      check_case(w, DType::BF16, both_kernels(w), seed += 3);
    }
  }
}

// The kernels take the row max on the raw scores and fold the scale into the exponent, so a
// negative scale (the max is then the raw minimum) and a scale far from 1/sqrt(D) are their own cases.
TEST(FlashAttention, CustomScales) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 350;
  for (const Heads& hd : {kHeads[0], kHeads[1]})
    for (float scale : {-0.125f, 0.9f, -1.5f})
      for (auto [T, W] : std::vector<std::pair<int64_t, int64_t>>{{129, 0}, {1000 + 3, 0}, {700, 129}}) {
        Case c{"scale", T, T, hd.Hq, hd.Hkv, hd.D, true, W};
        c.scale = scale;
        check_case(c, DType::BF16, both_kernels(c), seed += 3, /*check_lse=*/true);
      }
}

TEST(FlashAttention, DecodeAgainstCache) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 400;
  for (const Heads& hd : {kHeads[0], kHeads[1]}) {
    for (int64_t Tk : {1, 100, 4099, 32768}) {
      Case c{"decode", 1, Tk, hd.Hq, hd.Hkv, hd.D, true, 0, Tk - 1, 0};
      check_case(c, DType::BF16, both_kernels(c), seed += 3);
      Case w{"decode, window 2048", 1, Tk, hd.Hq, hd.Hkv, hd.D, true, 2048, Tk - 1, 0};
      check_case(w, DType::BF16, both_kernels(w), seed += 3);
    }
    // A chunk of 5 queries continuing after 300 cached keys.
    Case chunk{"chunk", 5, 305, hd.Hq, hd.Hkv, hd.D, true, 0, 300, 0};
    check_case(chunk, DType::BF16, both_kernels(chunk), seed += 3);
    Case chunk_w{"chunk, window 64", 5, 305, hd.Hq, hd.Hkv, hd.D, true, 64, 300, 0};
    check_case(chunk_w, DType::BF16, both_kernels(chunk_w), seed += 3);
    // A ring-buffer window cache: the 2048 most recent keys at positions 7953..10000.
    Case ring{"ring cache", 1, 2048, hd.Hq, hd.Hkv, hd.D, true, 2048, 10000, 10000 - 2047};
    check_case(ring, DType::BF16, both_kernels(ring), seed += 3);
    // 16 queries (the largest Tq the automatic choice sends to the decode kernel).
    Case sixteen{"16 queries", 16, 5000, hd.Hq, hd.Hkv, hd.D, true, 0, 4984, 0};
    check_case(sixteen, DType::BF16, both_kernels(sixteen), seed += 3);
  }
}

TEST(FlashAttention, RowsThatSeeNothing) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 500;
  for (const Heads& hd : {kHeads[0], kHeads[1]}) {
    // Keys start at position 10: queries 0..9 see nothing (zeros), the rest see some.
    Case late_keys{"keys after the first queries", 129, 129, hd.Hq, hd.Hkv, hd.D, true, 0, 0, 10};
    check_case(late_keys, DType::BF16, both_kernels(late_keys), seed += 3, true);
    // Keys start after a whole first query block: blocks that see nothing write zeros.
    Case late_block{"keys after a whole block", 300, 300, hd.Hq, hd.Hkv, hd.D, true, 0, 0, 150};
    check_case(late_block, DType::BF16, {AttentionKernel::Auto}, seed += 3, true);
    // Every key is out of the window: all zeros.
    Case none{"window sees nothing", 7, 50, hd.Hq, hd.Hkv, hd.D, true, 16, 200, 0};
    check_case(none, DType::BF16, both_kernels(none), seed += 3, true);
    // No keys at all.
    Case empty{"no keys", 7, 0, hd.Hq, hd.Hkv, hd.D, true, 0, 0, 0};
    check_case(empty, DType::BF16, both_kernels(empty), seed += 3);
  }
}

// A NaN in q or k reaches the outputs of exactly the rows that use it (issue 11: the kernels used
// to map a NaN row to zeros, since fmaxf drops NaN from the running max and a NaN sum failed the
// "sum > 0" test). Every other row stays finite.
void check_nan_case(const Case& c, AttentionKernel kern, int64_t nan_q_row, int64_t nan_k_row, uint64_t seed) {
  SCOPED_TRACE(c.str() + " nan q row " + std::to_string(nan_q_row) + " nan k row " + std::to_string(nan_k_row));
  const size_t nq = static_cast<size_t>(c.Tq * c.Hq * c.D), nk = static_cast<size_t>(c.Tk * c.Hkv * c.D);
  std::vector<float> q = randn(nq, seed), k = randn(nk, seed + 1), v = randn(nk, seed + 2);
  std::vector<uint16_t> qb = round_bf16(q), kb = round_bf16(k), vb = round_bf16(v);
  const uint16_t nan_bits = 0x7FC0;
  const int64_t q_head = c.Hq - 1;  // last query head; k: KV head 0 (query heads 0 .. group-1)
  if (nan_q_row >= 0) qb[static_cast<size_t>((nan_q_row * c.Hq + q_head) * c.D + 3)] = nan_bits;
  if (nan_k_row >= 0) kb[static_cast<size_t>(nan_k_row * c.Hkv * c.D + 5)] = nan_bits;
  DeviceBuffer dq(nq * 2), dk(nk * 2), dv(nk * 2), dout(nq * 2), dlse(static_cast<size_t>(c.Hq * c.Tq) * 4);
  dq.upload(qb.data(), nq * 2);
  dk.upload(kb.data(), nk * 2);
  dv.upload(vb.data(), nk * 2);
  dout.poison();
  dlse.poison();
  rt::cuda::attention_forward_with(TensorView::contiguous(dq.p, DType::BF16, Device::CUDA, {c.Tq, c.Hq, c.D}),
                                   TensorView::contiguous(dk.p, DType::BF16, Device::CUDA, {c.Tk, c.Hkv, c.D}),
                                   TensorView::contiguous(dv.p, DType::BF16, Device::CUDA, {c.Tk, c.Hkv, c.D}),
                                   TensorView::contiguous(dout.p, DType::BF16, Device::CUDA, {c.Tq, c.Hq, c.D}),
                                   TensorView::contiguous(dlse.p, DType::F32, Device::CUDA, {c.Hq, c.Tq}), c.spec(),
                                   kern, nullptr);
  cuda_ok(cudaDeviceSynchronize(), "attention");
  std::vector<uint16_t> ob(nq);
  std::vector<float> lse(static_cast<size_t>(c.Hq * c.Tq));
  dout.download(ob.data(), nq * 2);
  dlse.download(lse.data(), lse.size() * 4);
  const int64_t group = c.Hq / c.Hkv;
  size_t wrong = 0;
  for (int64_t i = 0; i < c.Tq; ++i)
    for (int64_t h = 0; h < c.Hq; ++h) {
      const int64_t pos = c.q_pos0 + i;  // causal, k_pos0 = 0: row i sees keys 0..pos
      const bool nan_expected = (i == nan_q_row && h == q_head) || (nan_k_row >= 0 && h < group && nan_k_row <= pos);
      const float l = lse[static_cast<size_t>(h * c.Tq + i)];
      if (std::isnan(l) != nan_expected) ++wrong;
      for (int64_t d = 0; d < c.D; ++d) {
        const float x = rt::bf16_to_f32(ob[static_cast<size_t>((i * c.Hq + h) * c.D + d)]);
        if (nan_expected ? !std::isnan(x) : !std::isfinite(x)) ++wrong;
      }
    }
  EXPECT_EQ(wrong, 0u) << "outputs/lse that are NaN where they should be finite, or finite where NaN is expected";
}

TEST(FlashAttention, NonFiniteInputsPropagate) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 900;
  for (const Heads& hd : {kHeads[0], kHeads[1]}) {
    Case c{"nan", 300, 300, hd.Hq, hd.Hkv, hd.D};
    check_nan_case(c, AttentionKernel::Flash, 70, -1, seed += 3);
    check_nan_case(c, AttentionKernel::Flash, -1, 200, seed += 3);
    Case d{"nan decode", 1, 300, hd.Hq, hd.Hkv, hd.D, true, 0, 299, 0};
    check_nan_case(d, AttentionKernel::Decode, 0, -1, seed += 3);
    check_nan_case(d, AttentionKernel::Decode, -1, 123, seed += 3);
  }
}

TEST(FlashAttention, LogSumExp) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 600;
  for (const Heads& hd : {kHeads[0], kHeads[1]}) {
    Case c{"lse causal", 129, 129, hd.Hq, hd.Hkv, hd.D};
    check_case(c, DType::BF16, {AttentionKernel::Flash, AttentionKernel::Decode}, seed += 3, true);
    Case w{"lse window", 129, 129, hd.Hq, hd.Hkv, hd.D, true, 40};
    check_case(w, DType::BF16, {AttentionKernel::Flash, AttentionKernel::Decode}, seed += 3, true);
    Case d{"lse decode", 1, 777, hd.Hq, hd.Hkv, hd.D, true, 0, 776, 0};
    check_case(d, DType::F32, {AttentionKernel::Auto}, seed += 3, true);
  }
}

TEST(FlashAttention, Float32Path) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 700;
  for (const Heads& hd : kHeads)
    for (int64_t T : {1, 7, 129, 300}) {
      Case c{"f32 causal", T, T, hd.Hq, hd.Hkv, hd.D};
      check_case(c, DType::F32, {AttentionKernel::Auto}, seed += 3);
      Case w{"f32 window", T, T, hd.Hq, hd.Hkv, hd.D, true, 64};
      check_case(w, DType::F32, {AttentionKernel::Auto}, seed += 3);
    }
  Case odd{"f32 head dim 80", 33, 40, 6, 3, 80, true, 0, 7, 0};
  check_case(odd, DType::F32, {AttentionKernel::Auto}, seed += 3);
  Case dec{"f32 decode", 1, 4099, 14, 2, 64, true, 2048, 4098, 0};
  check_case(dec, DType::F32, {AttentionKernel::Auto}, seed += 3);
}

// q, k, v as head slices of one fused [T, Hq + 2 Hkv, D] projection buffer (row stride larger than
// Hq * D), and the output as rows [3, 3 + T) of a larger buffer (TensorView::rows).
TEST(FlashAttention, StridedViews) {
  SKIP_WITHOUT_GPU();
  for (const Heads& hd : {kHeads[0], kHeads[1]})
    for (int64_t T : {1, 200}) {
      SCOPED_TRACE("strided views, T " + std::to_string(T) + " D " + std::to_string(hd.D));
      const int64_t Hall = hd.Hq + 2 * hd.Hkv, D = hd.D;
      std::vector<float> qkv = randn(static_cast<size_t>(T * Hall * D), 900 + T);
      std::vector<uint16_t> qkv_b = round_bf16(qkv);
      // Contiguous copies for the CPU reference.
      std::vector<float> q(static_cast<size_t>(T * hd.Hq * D)), k(static_cast<size_t>(T * hd.Hkv * D)), v(k.size());
      for (int64_t t = 0; t < T; ++t)
        for (int64_t h = 0; h < Hall; ++h)
          for (int64_t d = 0; d < D; ++d) {
            const float x = qkv[static_cast<size_t>((t * Hall + h) * D + d)];
            if (h < hd.Hq) q[static_cast<size_t>((t * hd.Hq + h) * D + d)] = x;
            else if (h < hd.Hq + hd.Hkv) k[static_cast<size_t>((t * hd.Hkv + h - hd.Hq) * D + d)] = x;
            else v[static_cast<size_t>((t * hd.Hkv + h - hd.Hq - hd.Hkv) * D + d)] = x;
          }
      std::vector<float> ref(q.size());
      AttentionSpec spec;
      spec.window = 77;
      rt::cpu::attention_forward(TensorView::contiguous(q.data(), DType::F32, Device::CPU, {T, hd.Hq, D}),
                                 TensorView::contiguous(k.data(), DType::F32, Device::CPU, {T, hd.Hkv, D}),
                                 TensorView::contiguous(v.data(), DType::F32, Device::CPU, {T, hd.Hkv, D}),
                                 TensorView::contiguous(ref.data(), DType::F32, Device::CPU, {T, hd.Hq, D}), spec);
      DeviceBuffer dqkv(qkv_b.size() * 2), dout(static_cast<size_t>((T + 3) * hd.Hq * D) * 2);
      dqkv.upload(qkv_b.data(), qkv_b.size() * 2);
      auto head_slice = [&](int64_t h0, int64_t nh) {
        TensorView t = TensorView::contiguous(static_cast<uint16_t*>(dqkv.p) + h0 * D, DType::BF16, Device::CUDA, {T, nh, D});
        t.stride[0] = Hall * D;
        return t;
      };
      const TensorView to =
          TensorView::contiguous(dout.p, DType::BF16, Device::CUDA, {T + 3, hd.Hq, D}).rows(3, 3 + T);
      for (AttentionKernel kern : {AttentionKernel::Flash, AttentionKernel::Decode}) {
        dout.poison();
        rt::cuda::attention_forward_with(head_slice(0, hd.Hq), head_slice(hd.Hq, hd.Hkv),
                                         head_slice(hd.Hq + hd.Hkv, hd.Hkv), to, TensorView{}, spec, kern, nullptr);
        cuda_ok(cudaDeviceSynchronize(), "attention");
        std::vector<uint16_t> ob(static_cast<size_t>((T + 3) * hd.Hq * D));
        dout.download(ob.data(), ob.size() * 2);
        double err = 0, nrm = 0;
        size_t bad = 0;
        for (size_t i = 0; i < ref.size(); ++i) {
          const float x = rt::bf16_to_f32(ob[i + static_cast<size_t>(3 * hd.Hq * D)]);
          if (!std::isfinite(x)) ++bad;
          err += (x - ref[i]) * static_cast<double>(x - ref[i]);
          nrm += static_cast<double>(ref[i]) * ref[i];
        }
        EXPECT_EQ(bad, 0u);
        EXPECT_LT(std::sqrt(err / nrm), 1e-2);
        // Rows before the view stay untouched (still the NaN poison).
        EXPECT_TRUE(std::isnan(rt::bf16_to_f32(ob[0])));
      }
    }
}

TEST(FlashAttention, BadArgumentsThrow) {
  SKIP_WITHOUT_GPU();
  DeviceBuffer a(1 << 20), b(1 << 20), c(1 << 20), d(1 << 20);
  auto view = [](DeviceBuffer& buf, DType dt, std::initializer_list<int64_t> dims) {
    return TensorView::contiguous(buf.p, dt, Device::CUDA, dims);
  };
  const AttentionSpec spec;
  // Unsupported head dim (bf16).
  EXPECT_THROW(rt::cuda::attention_forward(view(a, DType::BF16, {8, 2, 32}), view(b, DType::BF16, {8, 2, 32}),
                                           view(c, DType::BF16, {8, 2, 32}), view(d, DType::BF16, {8, 2, 32}), spec,
                                           nullptr),
               rt::Error);
  try {
    rt::cuda::attention_forward(view(a, DType::BF16, {8, 2, 96}), view(b, DType::BF16, {8, 2, 96}),
                                view(c, DType::BF16, {8, 2, 96}), view(d, DType::BF16, {8, 2, 96}), spec, nullptr);
    ADD_FAILURE() << "head dim 96 accepted";
  } catch (const rt::Error& e) {
    EXPECT_NE(std::string(e.what()).find("head dim 96"), std::string::npos) << e.what();
  }
  // Hq not a multiple of Hkv.
  EXPECT_THROW(rt::cuda::attention_forward(view(a, DType::BF16, {8, 7, 64}), view(b, DType::BF16, {8, 2, 64}),
                                           view(c, DType::BF16, {8, 2, 64}), view(d, DType::BF16, {8, 7, 64}), spec,
                                           nullptr),
               rt::Error);
  // dtype mismatch.
  EXPECT_THROW(rt::cuda::attention_forward(view(a, DType::BF16, {8, 2, 64}), view(b, DType::F32, {8, 2, 64}),
                                           view(c, DType::BF16, {8, 2, 64}), view(d, DType::BF16, {8, 2, 64}), spec,
                                           nullptr),
               rt::Error);
  // f16 is not supported.
  EXPECT_THROW(rt::cuda::attention_forward(view(a, DType::F16, {8, 2, 64}), view(b, DType::F16, {8, 2, 64}),
                                           view(c, DType::F16, {8, 2, 64}), view(d, DType::F16, {8, 2, 64}), spec,
                                           nullptr),
               rt::Error);
  // Shape mismatch of v and o.
  EXPECT_THROW(rt::cuda::attention_forward(view(a, DType::BF16, {8, 2, 64}), view(b, DType::BF16, {8, 2, 64}),
                                           view(c, DType::BF16, {9, 2, 64}), view(d, DType::BF16, {8, 2, 64}), spec,
                                           nullptr),
               rt::Error);
  EXPECT_THROW(rt::cuda::attention_forward(view(a, DType::BF16, {8, 2, 64}), view(b, DType::BF16, {8, 2, 64}),
                                           view(c, DType::BF16, {8, 2, 64}), view(d, DType::BF16, {8, 4, 64}), spec,
                                           nullptr),
               rt::Error);
  // Host memory labelled cuda.
  std::vector<uint16_t> host(8 * 2 * 64);
  TensorView hv = TensorView::contiguous(host.data(), DType::BF16, Device::CUDA, {8, 2, 64});
  EXPECT_THROW(rt::cuda::attention_forward(hv, view(b, DType::BF16, {8, 2, 64}), view(c, DType::BF16, {8, 2, 64}),
                                           view(d, DType::BF16, {8, 2, 64}), spec, nullptr),
               rt::Error);
  // A CPU view.
  TensorView cv = TensorView::contiguous(host.data(), DType::BF16, Device::CPU, {8, 2, 64});
  EXPECT_THROW(rt::cuda::attention_forward(cv, view(b, DType::BF16, {8, 2, 64}), view(c, DType::BF16, {8, 2, 64}),
                                           view(d, DType::BF16, {8, 2, 64}), spec, nullptr),
               rt::Error);
  // Misaligned rows (bf16 needs 16-byte aligned rows).
  TensorView mis = view(a, DType::BF16, {8, 2, 64});
  mis.data = static_cast<char*>(a.p) + 2;
  EXPECT_THROW(rt::cuda::attention_forward(mis, view(b, DType::BF16, {8, 2, 64}), view(c, DType::BF16, {8, 2, 64}),
                                           view(d, DType::BF16, {8, 2, 64}), spec, nullptr),
               rt::Error);
  // Negative window, output overlapping k, wrong lse shape.
  AttentionSpec neg;
  neg.window = -1;
  EXPECT_THROW(rt::cuda::attention_forward(view(a, DType::BF16, {8, 2, 64}), view(b, DType::BF16, {8, 2, 64}),
                                           view(c, DType::BF16, {8, 2, 64}), view(d, DType::BF16, {8, 2, 64}), neg,
                                           nullptr),
               rt::Error);
  EXPECT_THROW(rt::cuda::attention_forward(view(a, DType::BF16, {8, 2, 64}), view(b, DType::BF16, {8, 2, 64}),
                                           view(c, DType::BF16, {8, 2, 64}), view(b, DType::BF16, {8, 2, 64}), spec,
                                           nullptr),
               rt::Error);
  EXPECT_THROW(rt::cuda::attention_forward_lse(view(a, DType::BF16, {8, 2, 64}), view(b, DType::BF16, {8, 2, 64}),
                                               view(c, DType::BF16, {8, 2, 64}), view(d, DType::BF16, {8, 2, 64}),
                                               TensorView::contiguous(b.p, DType::F32, Device::CUDA, {8, 2}), spec,
                                               nullptr),
               rt::Error);
  // Nothing was left in a sticky error state.
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
}

}  // namespace
