// Per-op timings of one Qwen2.5 decoder layer on the CUDA backend, to see where prefill time goes:
//   build/bin/bench_cuda_ops [T=4096] [hidden=896 heads=14 kv=2 inter=4864]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>

#include "cuda/cuda_ops.h"

namespace {

double time_ms(rt::Ops& ops, const std::function<void()>& f, int reps = 20) {
  f();
  ops.synchronize();
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < reps; ++i) f();
  ops.synchronize();
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / reps;
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
  const int64_t D = H / Hq;
  auto ops = rt::make_cuda_ops();
  const rt::DType bf = rt::DType::BF16;
  auto x = ops->alloc(rt::DType::F32, {T, H});
  auto h = ops->alloc(bf, {T, H});
  auto nw = ops->alloc(bf, {H});
  auto wq = ops->alloc(bf, {Hq * D, H}), bq = ops->alloc(bf, {Hq * D});
  auto wk = ops->alloc(bf, {Hkv * D, H}), bk = ops->alloc(bf, {Hkv * D});
  auto wo = ops->alloc(bf, {H, Hq * D});
  auto wg = ops->alloc(bf, {I, H}), wd = ops->alloc(bf, {H, I});
  auto q = ops->alloc(bf, {T, Hq, D}), k = ops->alloc(bf, {T, Hkv, D}), o = ops->alloc(bf, {T, Hq, D});
  auto a = ops->alloc(bf, {T, H}), g = ops->alloc(bf, {T, I}), u = ops->alloc(bf, {T, I});
  for (auto* t : {&x, &h, &nw, &wq, &bq, &wk, &bk, &wo, &wg, &wd, &q, &k, &o, &a, &g, &u}) ops->fill(*t, 0.01f);
  auto gemm = [&](const char* what, rt::TensorView in, rt::TensorView w, rt::TensorView b, rt::TensorView out) {
    const double ms = time_ms(*ops, [&] { ops->linear(in, w, b, out); });
    const double fl = 2.0 * in.shape[0] * in.shape[1] * w.shape[0];
    std::printf("%-28s %8.3f ms  %6.1f TFLOP/s\n", what, ms, fl / ms / 1e9);
  };
  std::printf("T=%lld hidden=%lld heads=%lld/%lld D=%lld inter=%lld\n", (long long)T, (long long)H, (long long)Hq,
              (long long)Hkv, (long long)D, (long long)I);
  std::printf("%-28s %8.3f ms\n", "rmsnorm f32->bf16", time_ms(*ops, [&] { ops->rmsnorm(x, nw, 1e-6f, h); }));
  gemm("q_proj (+bias)", h, wq, bq, q.view.reshaped({T, Hq * D}));
  gemm("k_proj (+bias)", h, wk, bk, k.view.reshaped({T, Hkv * D}));
  gemm("q_proj (no bias)", h, wq, rt::TensorView{}, q.view.reshaped({T, Hq * D}));
  std::printf("%-28s %8.3f ms\n", "rope q", time_ms(*ops, [&] { ops->rope(q, 0, 1e6); }));
  rt::AttentionSpec spec;
  std::printf("%-28s %8.3f ms\n", "attention causal", time_ms(*ops, [&] { ops->attention(q, k, k, o, spec); }, 5));
  gemm("o_proj", o.view.reshaped({T, Hq * D}), wo, rt::TensorView{}, a);
  std::printf("%-28s %8.3f ms\n", "add f32 += bf16", time_ms(*ops, [&] { ops->add(x, a, x); }));
  gemm("gate_proj", h, wg, rt::TensorView{}, g);
  std::printf("%-28s %8.3f ms\n", "swiglu", time_ms(*ops, [&] { ops->swiglu(g, u, g); }));
  gemm("down_proj", g, wd, rt::TensorView{}, a);
  std::printf("%-28s %8.3f ms\n", "alloc+free [T,I] bf16", time_ms(*ops, [&] { auto t = ops->alloc(bf, {T, I}); }));
  return 0;
}
