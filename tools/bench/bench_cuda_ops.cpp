// Per-op costs of one Qwen2.5 decoder layer on the CUDA backend, as the model runs it (fused QKV
// GEMM + split/RoPE, GEMMs accumulating into the f32 residual, fused gate/up GEMM):
//   build/bin/bench_cuda_ops [T=4096] [hidden=896 heads=14 kv=2 inter=4864] [context=4096]
// (T > 1 adds the training backward's MLP ops: the norm's backward, SwiGLU's, the gate/up input gradient.)
// Two columns per op: device time per call (back-to-back calls, synchronized at the end) and host
// time per call (the time to enqueue a few calls, no synchronization in between). T = 1 is a
// decode step: when the host column is the larger, decode is bound by the host, not the GPU.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <vector>
#include <string>

#include "cuda/cuda_ops.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Cost {
  double device_us, host_us;
};

Cost measure(rt::Ops& ops, const std::function<void()>& f) {
  f();
  ops.synchronize();
  const int reps = 50;
  auto t0 = Clock::now();
  for (int i = 0; i < reps; ++i) f();
  const double host = std::chrono::duration<double, std::micro>(Clock::now() - t0).count() / reps;
  ops.synchronize();
  t0 = Clock::now();
  for (int i = 0; i < reps; ++i) f();
  ops.synchronize();
  const double dev = std::chrono::duration<double, std::micro>(Clock::now() - t0).count() / reps;
  return {dev, host};
}

// t = normal(0, sigma) values: a 4M-value random block, tiled (uploaded chunk by chunk).
void fill_random(rt::Ops& ops, const rt::Tensor& t, float sigma) {
  static std::vector<float> block = [] {
    std::vector<float> b(size_t{1} << 22);
    std::mt19937 rng(7);
    std::normal_distribution<float> nd(0.f, 1.f);
    for (float& v : b) v = nd(rng);
    return b;
  }();
  std::vector<float> scaled(block.size());
  for (size_t i = 0; i < block.size(); ++i) scaled[i] = block[i] * sigma;
  const int64_t n = t.view.numel(), chunk = static_cast<int64_t>(scaled.size());
  const rt::TensorView flat = t.view.reshaped({n});
  for (int64_t i = 0; i < n; i += chunk) {
    const int64_t m = std::min(chunk, n - i);
    ops.copy(rt::TensorView::contiguous(scaled.data(), rt::DType::F32, rt::Device::CPU, {m}), flat.rows(i, i + m));
  }
}

void report(const char* what, const Cost& c, double flops = 0) {
  std::printf("%-34s %10.1f %10.1f", what, c.device_us, c.host_us);
  if (flops > 0) std::printf(" %9.1f", flops / c.device_us / 1e6);
  std::printf("\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (!rt::cuda_device_available()) {
    std::printf("no CUDA device\n");
    return 0;
  }
  const int64_t T = argc > 1 ? std::atoll(argv[1]) : 4096;
  const int64_t H = argc > 2 ? std::atoll(argv[2]) : 896, Hq = argc > 3 ? std::atoll(argv[3]) : 14;
  const int64_t Hkv = argc > 4 ? std::atoll(argv[4]) : 2, I = argc > 5 ? std::atoll(argv[5]) : 4864;
  const int64_t ctx = argc > 6 ? std::atoll(argv[6]) : 4096;
  const int64_t D = H / Hq, Nqkv = (Hq + 2 * Hkv) * D;
  auto ops = rt::make_cuda_ops();
  const rt::DType bf = rt::DType::BF16;
  auto x = ops->alloc(rt::DType::F32, {T, H});
  auto h = ops->alloc(bf, {T, H});
  auto nw = ops->alloc(bf, {H});
  auto wqkv = ops->alloc(bf, {Nqkv, H}), bqkv = ops->alloc(bf, {Nqkv});
  auto wo = ops->alloc(bf, {H, Hq * D});
  auto wgu = ops->alloc(bf, {2 * I, H}), wd = ops->alloc(bf, {H, I});
  auto qkv = ops->alloc(bf, {T, Nqkv});
  auto q = ops->alloc(bf, {T, Hq, D}), o = ops->alloc(bf, {T, Hq, D});
  const int64_t Tk = T == 1 ? ctx : T;  // decode: one query against a cache of ctx keys
  auto kc = ops->alloc(bf, {Tk, Hkv, D}), vc = ops->alloc(bf, {Tk, Hkv, D});
  auto gu = ops->alloc(bf, {T, 2 * I}), s = ops->alloc(bf, {T, I});
  // Random values, not a constant: tensor cores draw less power on constant data and hold higher
  // clocks, which made a constant-filled bench up to 10% faster than the same kernels in the model.
  for (auto* t : {&x, &h, &qkv, &q, &o, &kc, &vc, &gu, &s}) fill_random(*ops, *t, 1.f);
  for (auto* t : {&wqkv, &bqkv, &wo, &wgu, &wd}) fill_random(*ops, *t, 0.02f);
  ops->fill(nw, 1.f);

  std::printf("T=%lld hidden=%lld heads=%lld/%lld D=%lld inter=%lld%s (%s)\n", (long long)T, (long long)H,
              (long long)Hq, (long long)Hkv, (long long)D, (long long)I,
              T == 1 ? (" decode at context " + std::to_string(ctx)).c_str() : "", ops->description().c_str());
  std::printf("%-34s %10s %10s %9s\n", "op", "device us", "host us", "TFLOP/s");
  double dev = 0, host = 0;
  auto add = [&](const char* what, const Cost& c, double flops = 0) {
    report(what, c, flops);
    dev += c.device_us;
    host += c.host_us;
  };
  add("alloc + free [T, hidden] bf16", measure(*ops, [&] { (void)ops->alloc(bf, {T, H}); }));
  add("rmsnorm f32 -> bf16", measure(*ops, [&] { ops->rmsnorm(x, nw, 1e-6f, h); }));
  add("qkv_proj (+bias, one GEMM)", measure(*ops, [&] { ops->linear(h, wqkv, bqkv, qkv); }), 2.0 * T * H * Nqkv);
  add("qkv_rope_split (k, v to cache)", measure(*ops, [&] {
        ops->qkv_rope_split(qkv, Tk - T, 1e6, q, kc.view.rows(Tk - T, Tk), vc.view.rows(Tk - T, Tk));
      }));
  rt::AttentionSpec spec;
  spec.q_pos0 = Tk - T;
  spec.scale = 0.125f;
  add("attention causal", measure(*ops, [&] { ops->attention(q, kc, vc, o, spec); }));
  add("o_proj += residual", measure(*ops, [&] { ops->linear_accumulate(o.view.reshaped({T, Hq * D}), wo, x); }),
      2.0 * T * H * Hq * D);
  add("rmsnorm f32 -> bf16", measure(*ops, [&] { ops->rmsnorm(x, nw, 1e-6f, h); }));
  add("gate_up (one GEMM)", measure(*ops, [&] { ops->linear(h, wgu, rt::TensorView{}, gu); }), 2.0 * T * H * 2 * I);
  add("swiglu (column halves)",
      measure(*ops, [&] { ops->swiglu(gu.view.cols(0, I), gu.view.cols(I, 2 * I), s); }));
  add("down_proj += residual", measure(*ops, [&] { ops->linear_accumulate(s, wd, x); }), 2.0 * T * I * H);
  std::printf("%-34s %10.1f %10.1f   (x %d layers: %.2f ms device, %.2f ms host)\n", "layer total", dev, host, 24,
              dev * 24 / 1e3, host * 24 / 1e3);
  if (T > 1) {
    // The training backward's MLP ops as mlp_backward runs them: the norm's backward on the f32
    // residual (dx +=, dw +=), SwiGLU's into the column halves of one [T, 2I] gradient, and the
    // input gradient through the stacked gate/up weight (one GEMM of depth 2I).
    auto du = ops->alloc(rt::DType::F32, {T, H}), dres = ops->alloc(rt::DType::F32, {T, H});
    auto dnw = ops->alloc(rt::DType::F32, {H});
    auto dgu = ops->alloc(bf, {T, 2 * I});
    for (auto* t : {&du, &dres, &dgu}) fill_random(*ops, *t, 1.f);
    ops->fill(dnw, 0.f);
    std::printf("training backward (not in the total above)\n");
    report("rmsnorm_backward f32 rows", measure(*ops, [&] { ops->rmsnorm_backward(x, nw, 1e-6f, du, dres, dnw); }));
    report("swiglu_backward (column halves)", measure(*ops, [&] {
             ops->swiglu_backward(gu.view.cols(0, I), gu.view.cols(I, 2 * I), s, dgu.view.cols(0, I),
                                  dgu.view.cols(I, 2 * I));
           }));
    report("gate_up input gradient (depth 2I)", measure(*ops, [&] {
             ops->linear_backward(h, wgu, dgu, du, rt::TensorView{}, rt::TensorView{}, false);
           }),
           2.0 * T * 2 * I * H);
  }
  return 0;
}
