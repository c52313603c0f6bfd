// Routed attention on CUDA (L2A's global attention over the rows its router picked: the flash
// kernels' RoutedRows instantiations, forward and backward) and the routing ops (compact_rows,
// gather_rows, scatter_add_rows, rope_rows), against the CPU backend as the reference.
//
// Inputs are random normal, rounded to bf16 once and fed to both sides; device outputs are
// poisoned (NaN) before every call. Cases: ragged T, 0 / 1 / all rows routed, rows clustered at
// the start or the end, a random 20% and 80%, GQA groups 7, 6 and 1, head dims 64 and 128, a count
// smaller than the index (inactive rows), key offsets. Checks:
//  - forward: o and lse of the routed rows equal, bit for bit, our dense flash kernel's rows at the
//    same positions (same tiles, same order); within bf16 tolerance of the CPU fp32 reference;
//    inactive rows exactly o = 0, lse = +inf; with q_indexed (queries read from the full q through
//    the index) the same bits, and with inactive_unwritten the poison past the count left in place;
//  - backward: dq, dk, dv within bf16 tolerance of the CPU reference's routed backward; dq of
//    inactive rows exactly 0; two runs give the same bits (no atomics), dense rows too;
//  - the routing ops bit for bit against the CPU ops' defaults.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "cpu/cpu_ops.h"
#include "cuda/attention/attention.h"
#include "cuda/attention/attention_backward.h"
#include "cuda/cuda_ops.h"
#include "cuda_test_util.h"

namespace rt::test::cuda {
namespace {

using ::rt::AttentionSpec;
using ::rt::DType;
using ::rt::Ops;
using ::rt::Tensor;
using ::rt::TensorView;

// Positions 0..T-1 picked by a named pattern.
std::vector<int32_t> pattern(const std::string& name, int64_t T, uint64_t seed) {
  std::vector<int32_t> idx;
  if (name == "none") return idx;
  if (name == "one") return {static_cast<int32_t>(T / 2)};
  if (name == "last") return {static_cast<int32_t>(T - 1)};
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(0, 1);
  for (int64_t t = 0; t < T; ++t) {
    bool on = false;
    if (name == "all") on = true;
    else if (name == "start") on = t < std::max<int64_t>(1, T / 5);
    else if (name == "end") on = t >= T - std::max<int64_t>(1, T / 5);
    else if (name == "r20") on = u(rng) < 0.2;
    else if (name == "r80") on = u(rng) < 0.8;
    else if (name == "r5") on = u(rng) < 0.05;
    if (on) idx.push_back(static_cast<int32_t>(t));
  }
  return idx;
}

struct Gpu {
  std::unique_ptr<Ops> ops = ::rt::make_cuda_ops();
  std::unique_ptr<Ops> cpu = ::rt::make_cpu_ops();
  cudaStream_t stream() { return static_cast<::rt::CudaOps&>(*ops).stream(); }
  Tensor upload(const std::vector<float>& host, std::initializer_list<int64_t> shape, DType dt) {
    Tensor t = ops->alloc(dt, shape);
    std::vector<float> copy = host;
    ops->copy(TensorView::contiguous(copy.data(), DType::F32, Device::CPU, shape), t);
    return t;
  }
  Tensor upload_i32(const std::vector<int32_t>& host, int64_t n) {
    Tensor t = ops->alloc(DType::I32, {n});
    std::vector<int32_t> h(static_cast<size_t>(n), 0);
    std::copy(host.begin(), host.end(), h.begin());
    if (n > 0) ops->copy(TensorView::contiguous(h.data(), DType::I32, Device::CPU, {n}), t);
    return t;
  }
  std::vector<float> download(const Tensor& t) {
    std::vector<float> out(static_cast<size_t>(t.view.numel()));
    TensorView host = t.view;  // same shape, contiguous f32 on the host
    host = TensorView::contiguous(out.data(), DType::F32, Device::CPU, {t.view.numel()});
    host.ndim = t.view.ndim;
    host.shape = t.view.shape;
    int64_t stride = 1;
    for (int i = t.view.ndim - 1; i >= 0; --i) {
      host.stride[i] = stride;
      stride *= t.view.shape[i];
    }
    ops->copy(t, host);
    return out;
  }
  void poison(const Tensor& t) {
    ops->synchronize();
    cuda_ok(cudaMemset(t.view.data, 0xff, t.view.nbytes()), "poison");
  }
};

std::vector<float> rand_bf16(size_t n, uint64_t seed) {
  std::vector<float> x = randn(n, seed);
  round_bf16(x);
  return x;
}

struct RoutedCase {
  int64_t T, Hq, Hkv, D;
  std::string routing;
  int64_t inactive = 0;  // extra index entries past the count
  int64_t k_prefix = 0;  // keys before the first query position (q_pos0 = k_prefix)
  std::string str() const {
    return "T " + std::to_string(T) + " Hq " + std::to_string(Hq) + " Hkv " + std::to_string(Hkv) + " D " +
           std::to_string(D) + " routing " + routing + " inactive " + std::to_string(inactive) + " k_prefix " +
           std::to_string(k_prefix);
  }
};

// Everything one case needs on both sides.
struct RoutedData {
  RoutedCase c;
  std::vector<int32_t> idx;
  int64_t cap = 0, Tk = 0;
  std::vector<float> q_full, q_r, k, v, dout_r;
};

RoutedData make_data(const RoutedCase& c, uint64_t seed) {
  RoutedData r{c};
  r.idx = pattern(c.routing, c.T, seed);
  r.cap = static_cast<int64_t>(r.idx.size()) + c.inactive;
  r.Tk = c.T + c.k_prefix;
  r.q_full = rand_bf16(static_cast<size_t>(c.T * c.Hq * c.D), seed + 1);
  r.k = rand_bf16(static_cast<size_t>(r.Tk * c.Hkv * c.D), seed + 2);
  r.v = rand_bf16(static_cast<size_t>(r.Tk * c.Hkv * c.D), seed + 3);
  r.q_r = rand_bf16(static_cast<size_t>(r.cap * c.Hq * c.D), seed + 4);
  const size_t row = static_cast<size_t>(c.Hq * c.D);
  for (size_t i = 0; i < r.idx.size(); ++i)
    std::copy_n(r.q_full.begin() + r.idx[i] * row, row, r.q_r.begin() + i * row);
  r.dout_r = rand_bf16(static_cast<size_t>(r.cap * c.Hq * c.D), seed + 5);
  // Inactive rows hold NaN: anything may sit past the count, and no kernel may let it reach an
  // active result (the Hopper dK/dV kernel loads whole tiles of q and dout by TMA).
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::fill(r.q_r.begin() + r.idx.size() * row, r.q_r.end(), nan);
  std::fill(r.dout_r.begin() + r.idx.size() * row, r.dout_r.end(), nan);
  return r;
}

AttentionSpec routed_spec(const RoutedData& r, TensorView index, TensorView count) {
  AttentionSpec s;
  s.causal = true;
  s.q_pos0 = r.c.k_prefix;
  s.q_index = index;
  s.q_count = count;
  return s;
}

void check_forward(Gpu& g, const RoutedCase& c, uint64_t seed) {
  SCOPED_TRACE(c.str());
  RoutedData r = make_data(c, seed);
  const int64_t n = static_cast<int64_t>(r.idx.size()), cap = r.cap, Hq = c.Hq, D = c.D;
  std::vector<int32_t> index = r.idx;
  for (int64_t i = 0; i < c.inactive; ++i) index.push_back(static_cast<int32_t>(c.T + 1000 + i));  // never read
  Tensor q = g.upload(r.q_r, {cap, Hq, D}, DType::BF16), k = g.upload(r.k, {r.Tk, c.Hkv, D}, DType::BF16),
         v = g.upload(r.v, {r.Tk, c.Hkv, D}, DType::BF16);
  Tensor ix = g.upload_i32(index, std::max<int64_t>(cap, 1)), cnt = g.upload_i32({static_cast<int32_t>(n)}, 1);
  Tensor o = g.ops->alloc(DType::BF16, {cap, Hq, D}), lse = g.ops->alloc(DType::F32, {Hq, cap});
  g.poison(o);
  g.poison(lse);
  const AttentionSpec spec = routed_spec(r, ix, cnt);
  g.ops->attention_forward_lse(q, k, v, o, lse, spec);
  std::vector<float> go = g.download(o), glse = g.download(lse);
  {  // deterministic: a second call gives the same bits (the key split's combine included)
    g.poison(o);
    g.ops->attention_forward_lse(q, k, v, o, lse, spec);
    const std::vector<float> again = g.download(o), again_lse = g.download(lse);
    ASSERT_EQ(0, std::memcmp(again.data(), go.data(), go.size() * sizeof(float))) << "o differs between runs";
    ASSERT_EQ(0, std::memcmp(again_lse.data(), glse.data(), glse.size() * sizeof(float))) << "lse differs between runs";
  }

  // Dense flash kernel over every position (bit-exact reference for the routed rows).
  Tensor qf = g.upload(r.q_full, {c.T, Hq, D}, DType::BF16);
  Tensor of = g.ops->alloc(DType::BF16, {c.T, Hq, D}), lf = g.ops->alloc(DType::F32, {Hq, c.T});
  AttentionSpec dense;
  dense.causal = true;
  dense.q_pos0 = c.k_prefix;
  ::rt::cuda::attention_forward_with(qf, k, v, of, lf, dense, ::rt::cuda::AttentionKernel::Flash, g.stream());
  const std::vector<float> fo = g.download(of), flse = g.download(lf);

  // CPU fp32 reference of the routed call.
  std::vector<float> co(static_cast<size_t>(cap * Hq * D)), clse(static_cast<size_t>(Hq * cap));
  std::vector<int32_t> cidx = index, ccnt = {static_cast<int32_t>(n)};
  std::vector<float> qr = r.q_r, kk = r.k, vv = r.v;
  AttentionSpec cs = spec;
  cidx.resize(static_cast<size_t>(std::max<int64_t>(cap, 1)));
  cs.q_index = TensorView::contiguous(cidx.data(), DType::I32, Device::CPU, {std::max<int64_t>(cap, 1)});
  cs.q_count = TensorView::contiguous(ccnt.data(), DType::I32, Device::CPU, {1});
  g.cpu->attention_forward_lse(TensorView::contiguous(qr.data(), DType::F32, Device::CPU, {cap, Hq, D}),
                               TensorView::contiguous(kk.data(), DType::F32, Device::CPU, {r.Tk, c.Hkv, D}),
                               TensorView::contiguous(vv.data(), DType::F32, Device::CPU, {r.Tk, c.Hkv, D}),
                               TensorView::contiguous(co.data(), DType::F32, Device::CPU, {cap, Hq, D}),
                               TensorView::contiguous(clse.data(), DType::F32, Device::CPU, {Hq, cap}), cs);

  const size_t row = static_cast<size_t>(Hq * D);
  std::vector<float> got_active(go.begin(), go.begin() + n * row), cpu_active(co.begin(), co.begin() + n * row);
  if (n > 0) {
    EXPECT_LT(rel_err(got_active, cpu_active), 1e-2) << "routed rows against the CPU fp32 reference";
  }
  // The same tiles as the dense kernel: in the same order (only the compiler's choice of fused
  // multiply-adds may differ between the two instantiations, an ulp of the fp32 statistics), or,
  // where the Hopper forward splits a block's keys (flash_fwd_split.cuh), in chunks merged in fp32:
  // other roundings, so the rows may differ by a bf16 ulp, but their error against the fp32
  // reference stays within 2x the dense kernel's.
  std::vector<float> dense_rows;
  for (int64_t i = 0; i < n; ++i) {
    const int32_t t = r.idx[static_cast<size_t>(i)];
    dense_rows.insert(dense_rows.end(), fo.begin() + t * row, fo.begin() + (t + 1) * row);
    for (int64_t h = 0; h < Hq; ++h) {
      const float a = glse[static_cast<size_t>(h * cap + i)], b = flse[static_cast<size_t>(h * c.T + t)];
      ASSERT_NEAR(a, b, 1e-5 * std::max(1.f, std::abs(b))) << "lse row " << i << " head " << h;
      ASSERT_NEAR(a, clse[static_cast<size_t>(h * cap + i)], 2e-2);
    }
  }
  if (n > 0) {
    EXPECT_LT(rel_err(got_active, dense_rows), 4e-3) << "routed rows against the dense flash kernel's rows";
    const double err = rel_err(got_active, cpu_active), dense_err = rel_err(dense_rows, cpu_active);
    EXPECT_LE(err, 2 * dense_err) << "routed rows' error against fp32: " << err << ", the dense kernel's: " << dense_err;
  }
  for (int64_t i = n; i < cap; ++i) {
    for (size_t e = 0; e < row; ++e) ASSERT_EQ(go[i * row + e], 0.f) << "inactive row " << i << " not zero";
    for (int64_t h = 0; h < Hq; ++h) ASSERT_TRUE(std::isinf(glse[static_cast<size_t>(h * cap + i)]));
  }

  // q_indexed: the queries read from the full q through the index give the rows of a compact call
  // of the same capacity (T rows: the same blocks, and the same key split) to the bit; past the
  // count zeros and +inf, or (inactive_unwritten) the poison left in place.
  if (c.T == 0) return;
  Tensor ix_t = g.upload_i32(index, c.T);  // entries past the count: never read
  {
    std::vector<float> q_t(static_cast<size_t>(c.T) * row, std::numeric_limits<float>::quiet_NaN());
    std::copy_n(r.q_r.begin(), static_cast<size_t>(n) * row, q_t.begin());
    Tensor qt = g.upload(q_t, {c.T, Hq, D}, DType::BF16);
    Tensor ot = g.ops->alloc(DType::BF16, {c.T, Hq, D}), lt = g.ops->alloc(DType::F32, {Hq, c.T});
    g.ops->attention_forward_lse(qt, k, v, ot, lt, routed_spec(r, ix_t, cnt));
    go = g.download(ot);
    glse = g.download(lt);
  }
  for (const bool unwritten : {false, true}) {
    SCOPED_TRACE(unwritten ? "q_indexed, inactive_unwritten" : "q_indexed");
    AttentionSpec is = routed_spec(r, ix_t, cnt);
    is.q_indexed = true;
    is.inactive_unwritten = unwritten;
    Tensor oi = g.ops->alloc(DType::BF16, {c.T, Hq, D}), li = g.ops->alloc(DType::F32, {Hq, c.T});
    g.poison(oi);
    g.poison(li);
    g.ops->attention_forward_lse(qf, k, v, oi, li, is);
    const std::vector<float> io = g.download(oi), ilse = g.download(li);
    for (size_t e = 0; e < static_cast<size_t>(n) * row; ++e) ASSERT_EQ(io[e], go[e]) << "o element " << e;
    for (int64_t i = 0; i < c.T; ++i)
      for (int64_t h = 0; h < Hq; ++h) {
        const float got = ilse[static_cast<size_t>(h * c.T + i)];
        if (i < n) ASSERT_EQ(got, glse[static_cast<size_t>(h * c.T + i)]) << "lse row " << i << " head " << h;
        else ASSERT_TRUE(unwritten ? std::isnan(got) : std::isinf(got)) << "lse past the count: " << got;
      }
    for (size_t e = static_cast<size_t>(n) * row; e < io.size(); ++e)
      ASSERT_TRUE(unwritten ? std::isnan(io[e]) : io[e] == 0.f) << "o past the count: " << io[e];
  }
}

const RoutedCase kForwardCases[] = {
    {1, 14, 2, 64, "all"},        {77, 14, 2, 64, "r20"},       {300, 12, 2, 128, "r80"},
    {1000, 14, 2, 64, "r20"},     {1000, 12, 2, 128, "r20"},    {513, 2, 2, 64, "start"},
    {513, 2, 2, 128, "end"},      {700, 14, 2, 64, "none"},     {700, 14, 2, 64, "one"},
    {700, 12, 2, 128, "last"},    {700, 14, 2, 64, "all"},      {333, 14, 2, 64, "r20", 37},
    {333, 12, 2, 128, "r80", 5},  {257, 7, 1, 64, "r20", 0, 100}, {2048, 14, 2, 64, "r20"},
    // Few routed rows over many keys: the Hopper forward splits the heavy blocks' key range
    // (flash_fwd_split.cuh) without RT_ATTN_ROUTED_SPLIT=force too.
    {8192, 14, 2, 64, "r5"},      {6000, 12, 2, 128, "r5", 9, 300},
};

TEST(RoutedAttention, ForwardMatchesDenseRowsAndCpu) {
  SKIP_WITHOUT_GPU();
  Gpu g;
  uint64_t seed = 100;
  for (const RoutedCase& c : kForwardCases) check_forward(g, c, seed += 10);
}

void check_backward(Gpu& g, const RoutedCase& c, uint64_t seed) {
  SCOPED_TRACE(c.str());
  RoutedData r = make_data(c, seed);
  const int64_t n = static_cast<int64_t>(r.idx.size()), cap = r.cap, Hq = c.Hq, Hkv = c.Hkv, D = c.D, Tk = r.Tk;
  std::vector<int32_t> index = r.idx;
  for (int64_t i = 0; i < c.inactive; ++i) index.push_back(0);
  Tensor q = g.upload(r.q_r, {cap, Hq, D}, DType::BF16), k = g.upload(r.k, {Tk, Hkv, D}, DType::BF16),
         v = g.upload(r.v, {Tk, Hkv, D}, DType::BF16), dout = g.upload(r.dout_r, {cap, Hq, D}, DType::BF16);
  Tensor ix = g.upload_i32(index, std::max<int64_t>(cap, 1)), cnt = g.upload_i32({static_cast<int32_t>(n)}, 1);
  Tensor o = g.ops->alloc(DType::BF16, {cap, Hq, D}), lse = g.ops->alloc(DType::F32, {Hq, cap});
  const AttentionSpec spec = routed_spec(r, ix, cnt);
  g.ops->attention_forward_lse(q, k, v, o, lse, spec);
  std::vector<float> grads[2][3];
  for (int run = 0; run < 2; ++run) {
    Tensor dq = g.ops->alloc(DType::BF16, {cap, Hq, D}), dk = g.ops->alloc(DType::BF16, {Tk, Hkv, D}),
           dv = g.ops->alloc(DType::BF16, {Tk, Hkv, D});
    g.poison(dq);
    g.poison(dk);
    g.poison(dv);
    g.ops->attention_backward(q, k, v, o, lse, dout, dq, dk, dv, spec);
    grads[run][0] = g.download(dq);
    grads[run][1] = g.download(dk);
    grads[run][2] = g.download(dv);
  }
  for (int i = 0; i < 3; ++i)
    ASSERT_EQ(0, std::memcmp(grads[0][i].data(), grads[1][i].data(), grads[0][i].size() * sizeof(float)))
        << "gradient " << "qkv"[i] << " differs between two runs (not deterministic)";

  // CPU reference: its own forward (o, lse) and backward of the routed call, in fp32.
  std::vector<float> qr = r.q_r, kk = r.k, vv = r.v, dd = r.dout_r;
  std::vector<float> co(static_cast<size_t>(cap * Hq * D)), clse(static_cast<size_t>(Hq * cap));
  std::vector<float> cdq(co.size()), cdk(kk.size()), cdv(vv.size());
  std::vector<int32_t> cidx = index, ccnt = {static_cast<int32_t>(n)};
  cidx.resize(static_cast<size_t>(std::max<int64_t>(cap, 1)));
  AttentionSpec cs = spec;
  cs.q_index = TensorView::contiguous(cidx.data(), DType::I32, Device::CPU, {std::max<int64_t>(cap, 1)});
  cs.q_count = TensorView::contiguous(ccnt.data(), DType::I32, Device::CPU, {1});
  auto view = [](std::vector<float>& x, std::initializer_list<int64_t> s) {
    return TensorView::contiguous(x.data(), DType::F32, Device::CPU, s);
  };
  g.cpu->attention_forward_lse(view(qr, {cap, Hq, D}), view(kk, {Tk, Hkv, D}), view(vv, {Tk, Hkv, D}),
                               view(co, {cap, Hq, D}), view(clse, {Hq, cap}), cs);
  g.cpu->attention_backward(view(qr, {cap, Hq, D}), view(kk, {Tk, Hkv, D}), view(vv, {Tk, Hkv, D}),
                            view(co, {cap, Hq, D}), view(clse, {Hq, cap}), view(dd, {cap, Hq, D}),
                            view(cdq, {cap, Hq, D}), view(cdk, {Tk, Hkv, D}), view(cdv, {Tk, Hkv, D}), cs);
  const size_t row = static_cast<size_t>(Hq * D);
  if (n > 0) {
    std::vector<float> a(grads[0][0].begin(), grads[0][0].begin() + n * row), b(cdq.begin(), cdq.begin() + n * row);
    EXPECT_LT(rel_err(a, b), 2e-2) << "dq";
    EXPECT_LT(rel_err(grads[0][1], cdk), 2e-2) << "dk";
    EXPECT_LT(rel_err(grads[0][2], cdv), 2e-2) << "dv";
  } else {
    for (int i = 1; i < 3; ++i)
      for (float x : grads[0][i]) ASSERT_EQ(x, 0.f) << "no routed row: dk, dv must be 0";
  }
  for (size_t e = n * row; e < grads[0][0].size(); ++e) ASSERT_EQ(grads[0][0][e], 0.f) << "inactive dq not zero";
}

const RoutedCase kBackwardCases[] = {
    {77, 14, 2, 64, "r20"},   {300, 12, 2, 128, "r80"},  {700, 14, 2, 64, "none"}, {700, 14, 2, 64, "one"},
    {513, 2, 2, 64, "start"}, {513, 12, 2, 128, "end"},  {700, 14, 2, 64, "all"},  {333, 14, 2, 64, "r20", 21},
    {257, 7, 1, 128, "r20", 3, 64}, {1500, 14, 2, 64, "r20"},
};

TEST(RoutedAttention, BackwardMatchesCpuAndIsDeterministic) {
  SKIP_WITHOUT_GPU();
  Gpu g;
  uint64_t seed = 500;
  for (const RoutedCase& c : kBackwardCases) check_backward(g, c, seed += 10);
}

// The dense backward is deterministic too (dQ in its own pass, split-group partials summed in
// order): two runs, same bits, at a short T (where the group is split over CTAs) and a long one.
TEST(RoutedAttention, DenseBackwardIsDeterministic) {
  SKIP_WITHOUT_GPU();
  Gpu g;
  for (int64_t T : {96, 2048}) {
    const int64_t Hq = 14, Hkv = 2, D = 64;
    Tensor q = g.upload(rand_bf16(T * Hq * D, 1), {T, Hq, D}, DType::BF16);
    Tensor k = g.upload(rand_bf16(T * Hkv * D, 2), {T, Hkv, D}, DType::BF16);
    Tensor v = g.upload(rand_bf16(T * Hkv * D, 3), {T, Hkv, D}, DType::BF16);
    Tensor dout = g.upload(rand_bf16(T * Hq * D, 4), {T, Hq, D}, DType::BF16);
    Tensor o = g.ops->alloc(DType::BF16, {T, Hq, D}), lse = g.ops->alloc(DType::F32, {Hq, T});
    AttentionSpec s;
    ::rt::cuda::attention_forward_lse(q, k, v, o, lse, s, g.stream());
    std::vector<float> out[2][3];
    for (int run = 0; run < 2; ++run) {
      Tensor dq = g.ops->alloc(DType::BF16, {T, Hq, D}), dk = g.ops->alloc(DType::BF16, {T, Hkv, D}),
             dv = g.ops->alloc(DType::BF16, {T, Hkv, D});
      ::rt::cuda::attention_backward(q, k, v, o, lse, dout, dq, dk, dv, s, g.stream());
      out[run][0] = g.download(dq);
      out[run][1] = g.download(dk);
      out[run][2] = g.download(dv);
    }
    for (int i = 0; i < 3; ++i)
      EXPECT_EQ(0, std::memcmp(out[0][i].data(), out[1][i].data(), out[0][i].size() * sizeof(float)))
          << "T " << T << ": gradient " << "qkv"[i] << " differs between two runs";
  }
}

// The routing ops, bit for bit against the CPU backend's (the SDK defaults).
TEST(RoutedAttention, RoutingOpsMatchCpu) {
  SKIP_WITHOUT_GPU();
  Gpu g;
  for (int64_t T : {1, 5, 1000, 70000}) {
    SCOPED_TRACE("T " + std::to_string(T));
    std::mt19937_64 rng(static_cast<uint64_t>(T));
    std::vector<float> flags(static_cast<size_t>(T));
    for (auto& f : flags) f = (rng() % 5 == 0) ? 1.f : 0.f;
    Tensor df = g.upload(flags, {T}, DType::F32);
    Tensor ix = g.ops->alloc(DType::I32, {T}), cnt = g.ops->alloc(DType::I32, {1});
    g.poison(ix);
    g.ops->compact_rows(df, ix, cnt);
    std::vector<int32_t> gi(static_cast<size_t>(T)), ci(static_cast<size_t>(T));
    int32_t gn = -1, cn = -2;
    g.ops->copy(ix, TensorView::contiguous(gi.data(), DType::I32, Device::CPU, {T}));
    g.ops->copy(cnt, TensorView::contiguous(&gn, DType::I32, Device::CPU, {1}));
    g.cpu->compact_rows(TensorView::contiguous(flags.data(), DType::F32, Device::CPU, {T}),
                        TensorView::contiguous(ci.data(), DType::I32, Device::CPU, {T}),
                        TensorView::contiguous(&cn, DType::I32, Device::CPU, {1}));
    ASSERT_EQ(gn, cn);
    ASSERT_EQ(gi, ci);

    const TensorView cix = TensorView::contiguous(ci.data(), DType::I32, Device::CPU, {T});
    const TensorView ccnt = TensorView::contiguous(&cn, DType::I32, Device::CPU, {1});
    // Widths and dtypes that take the 16-byte vector kernel (f32 96, bf16 896: unit stride, aligned
    // rows), a block per row (bf16 100: rows of 200 bytes) and a thread per element (narrow rows:
    // f32 1, the gate's; bf16 36), each bit for bit against the CPU; bf16 inputs are rounded on the
    // host, and the CPU's f32 scatter-add is rounded to bf16 once, as the device adds in f32 and
    // rounds each element.
    for (const auto& [C, dt] : std::vector<std::pair<int64_t, DType>>{
             {96, DType::F32}, {896, DType::BF16}, {100, DType::BF16}, {36, DType::BF16}, {1, DType::F32}}) {
      if (dt == DType::BF16 && T == 70000) continue;  // the bf16 widths are covered at T = 1000
      SCOPED_TRACE("C " + std::to_string(C) + (dt == DType::BF16 ? " bf16" : " f32"));
      std::vector<float> x = randn(static_cast<size_t>(T * C), 7), y = randn(static_cast<size_t>(T * C), 8);
      if (dt == DType::BF16) {
        round_bf16(x);
        round_bf16(y);
      }
      Tensor gx = g.upload(x, {T, C}, dt), gout = g.ops->alloc(dt, {T, C});
      g.poison(gout);
      g.ops->gather_rows(gx, ix, cnt, gout);
      std::vector<float> cout(static_cast<size_t>(T * C));
      auto cv = [&](std::vector<float>& h) { return TensorView::contiguous(h.data(), DType::F32, Device::CPU, {T, C}); };
      g.cpu->gather_rows(cv(x), cix, ccnt, cv(cout));
      EXPECT_EQ(g.download(gout), cout) << "gather_rows";

      Tensor gy = g.upload(y, {T, C}, dt);
      g.ops->scatter_add_rows(gx, ix, cnt, gy);
      g.cpu->scatter_add_rows(cv(x), cix, ccnt, cv(y));
      if (dt == DType::BF16) round_bf16(y);
      EXPECT_EQ(g.download(gy), y) << "scatter_add_rows";
    }

    // Mixed types take the vector kernel too: bf16 o_proj rows scatter-added into the f32
    // residual (the paper layout), and an f32 -> bf16 gather (rounded once per element).
    if (T <= 1000) {
      const int64_t C = 896;
      std::vector<float> x = randn(static_cast<size_t>(T * C), 10), y = randn(static_cast<size_t>(T * C), 11);
      round_bf16(x);
      auto cv = [&](std::vector<float>& h) { return TensorView::contiguous(h.data(), DType::F32, Device::CPU, {T, C}); };
      Tensor gx = g.upload(x, {T, C}, DType::BF16), gy = g.upload(y, {T, C}, DType::F32);
      g.ops->scatter_add_rows(gx, ix, cnt, gy);
      g.cpu->scatter_add_rows(cv(x), cix, ccnt, cv(y));
      EXPECT_EQ(g.download(gy), y) << "scatter_add_rows bf16 -> f32";
      std::vector<float> f = randn(static_cast<size_t>(T * C), 12), cout(static_cast<size_t>(T * C));
      Tensor gf = g.upload(f, {T, C}, DType::F32), gout = g.ops->alloc(DType::BF16, {T, C});
      g.poison(gout);
      g.ops->gather_rows(gf, ix, cnt, gout);
      g.cpu->gather_rows(cv(f), cix, ccnt, cv(cout));
      round_bf16(cout);
      EXPECT_EQ(g.download(gout), cout) << "gather_rows f32 -> bf16";
    }

    const int64_t H = 3, D = 32;
    std::vector<float> r = randn(static_cast<size_t>(T * H * D), 9);
    Tensor gr = g.upload(r, {T, H, D}, DType::F32);
    for (bool back : {false, true}) {
      g.ops->rope_rows(gr, ix, cnt, 5, 10000.0, back);
      g.cpu->rope_rows(TensorView::contiguous(r.data(), DType::F32, Device::CPU, {T, H, D}), cix, ccnt, 5, 10000.0,
                       back);
      const std::vector<float> got = g.download(gr);
      EXPECT_LT(rel_err(got, r), 1e-6) << "rope_rows backward=" << back;
    }
  }
}

// q_indexed and inactive_unwritten on the paths that are not the bf16 flash kernels: the exact
// f32 kernel (f32 tensors) and the f32 copies of other head dims, against the CPU backend; on the
// Hopper and mma.sync kernels ForwardMatchesDenseRowsAndCpu checks them (l2a_gpu_check.sh runs the
// tests under both forward paths).
TEST(RoutedAttention, IndexedQueriesOnTheF32Paths) {
  SKIP_WITHOUT_GPU();
  Gpu g;
  for (const auto& [dt, D] : {std::pair{DType::F32, int64_t{64}}, std::pair{DType::BF16, int64_t{32}}}) {
    const int64_t T = 97, Hq = 6, Hkv = 2;
    SCOPED_TRACE(std::string(::rt::dtype_name(dt)) + " D " + std::to_string(D));
    const std::vector<int32_t> idx = pattern("r20", T, 7);
    const int32_t n = static_cast<int32_t>(idx.size());
    std::vector<float> q = rand_bf16(T * Hq * D, 1), k = rand_bf16(T * Hkv * D, 2), v = rand_bf16(T * Hkv * D, 3);
    Tensor gq = g.upload(q, {T, Hq, D}, dt), gk = g.upload(k, {T, Hkv, D}, dt), gv = g.upload(v, {T, Hkv, D}, dt);
    Tensor ix = g.upload_i32(idx, T), cnt = g.upload_i32({n}, 1);
    Tensor o = g.ops->alloc(dt, {T, Hq, D});
    g.poison(o);
    AttentionSpec s;
    s.q_index = ix;
    s.q_count = cnt;
    s.q_indexed = s.inactive_unwritten = true;
    g.ops->attention(gq, gk, gv, o, s);
    const std::vector<float> got = g.download(o);

    std::vector<int32_t> cidx = idx, ccnt = {n};
    cidx.resize(static_cast<size_t>(T), 0);
    std::vector<float> want(static_cast<size_t>(T * Hq * D), std::numeric_limits<float>::quiet_NaN());
    AttentionSpec cs = s;
    cs.q_index = TensorView::contiguous(cidx.data(), DType::I32, Device::CPU, {T});
    cs.q_count = TensorView::contiguous(ccnt.data(), DType::I32, Device::CPU, {1});
    g.cpu->attention(TensorView::contiguous(q.data(), DType::F32, Device::CPU, {T, Hq, D}),
                     TensorView::contiguous(k.data(), DType::F32, Device::CPU, {T, Hkv, D}),
                     TensorView::contiguous(v.data(), DType::F32, Device::CPU, {T, Hkv, D}),
                     TensorView::contiguous(want.data(), DType::F32, Device::CPU, {T, Hq, D}), cs);
    const size_t active = static_cast<size_t>(n * Hq * D);
    EXPECT_LT(rel_err(std::vector<float>(got.begin(), got.begin() + active),
                      std::vector<float>(want.begin(), want.begin() + active)),
              dt == DType::F32 ? 1e-5 : 1e-2);
    for (size_t e = active; e < got.size(); ++e) ASSERT_TRUE(std::isnan(got[e])) << "o past the count: " << got[e];
  }
}

TEST(RoutedAttention, RejectsBadRoutedArguments) {
  SKIP_WITHOUT_GPU();
  Gpu g;
  const int64_t T = 64, Hq = 2, D = 64;
  Tensor q = g.upload(rand_bf16(T * Hq * D, 1), {T, Hq, D}, DType::BF16);
  Tensor o = g.ops->alloc(DType::BF16, {T, Hq, D});
  Tensor short_ix = g.ops->alloc(DType::I32, {T / 2}), cnt = g.ops->alloc(DType::I32, {1});
  Tensor f_ix = g.ops->alloc(DType::F32, {T});
  AttentionSpec s;
  s.q_index = short_ix;
  s.q_count = cnt;
  try {
    g.ops->attention(q, q, q, o, s);
    FAIL() << "a short index was accepted";
  } catch (const ::rt::Error& e) {
    EXPECT_NE(std::string(e.what()).find("q_index"), std::string::npos) << e.what();
  }
  s.q_index = f_ix;
  EXPECT_THROW(g.ops->attention(q, q, q, o, s), ::rt::Error);
  s.materialize = true;
  s.q_index = short_ix;
  EXPECT_THROW(g.ops->attention(q, q, q, o, s), ::rt::Error);
  // The routed forward-only options: refused without routed queries and in a backward.
  AttentionSpec dense;
  dense.q_indexed = true;
  EXPECT_THROW_MSG(g.ops->attention(q, q, q, o, dense), "routed queries only");
  Tensor ix = g.upload_i32({0, 5}, T), two = g.upload_i32({2}, 1);
  AttentionSpec routed;
  routed.q_index = ix;
  routed.q_count = two;
  routed.inactive_unwritten = true;
  Tensor lse = g.ops->alloc(DType::F32, {Hq, T}), dq = g.ops->alloc(DType::BF16, {T, Hq, D});
  g.ops->attention_forward_lse(q, q, q, o, lse, routed);
  EXPECT_THROW_MSG(g.ops->attention_backward(q, q, q, o, lse, q, dq, TensorView{}, TensorView{}, routed),
                   "forward-only");
}

}  // namespace
}  // namespace rt::test::cuda
