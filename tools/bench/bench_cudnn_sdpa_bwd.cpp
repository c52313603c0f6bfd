// bench_cudnn_sdpa_bwd: cuDNN SDPA forward (with lse) and backward (rt::cuda::cudnn_sdpa_forward /
// cudnn_sdpa_backward) at the Qwen2.5 attention shapes, bf16, batch 1, with CUDA events (warm-up,
// then the median of the repeats). Reports forward, backward and forward+backward ms and TFLOP/s,
// and cuDNN's first-call graph build time (forward + backward graphs).
//
//   bench_cudnn_sdpa_bwd [--json FILE] [--reps N] [--seqs 4096,16384,32768,65536] [--window 2048]
//
// FLOPs: forward causal 4*D*Hq*T^2/2; window 4*D*Hq*(W(W+1)/2 + (T-W)*W) (T > W; causal count
// otherwise); backward 2.5x forward; forward+backward 3.5x forward (the FlashAttention convention,
// as PyTorch's SDPA benchmarks count it).
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cuda/cudnn_sdpa/cudnn_sdpa.h"
#include "rt/sdk/error.h"
#include "rt/sdk/half.h"

#define RT_BENCH_TOOL "bench_cudnn_sdpa_bwd"
#include "bench_util.h"

using namespace rt::bench;

namespace {

using rt::DType;
using rt::Device;
using rt::TensorView;

using Buf = HostFilledBuf;

// Non-finite values among (up to) the first n bf16 values of a device array.
size_t count_nonfinite(const void* p, size_t n) {
  n = std::min<size_t>(n, size_t{1} << 22);
  std::vector<uint16_t> h(n);
  ck(cudaMemcpy(h.data(), p, n * 2, cudaMemcpyDeviceToHost), "download");
  size_t bad = 0;
  for (uint16_t x : h) bad += !std::isfinite(rt::bf16_to_f32(x));
  return bad;
}

struct Result {
  std::string model, mask;
  int64_t Hq, Hkv, D, T, window;
  double fwd_ms, bwd_ms, fwdbwd_ms, fwd_tflops, bwd_tflops, fwdbwd_tflops, build_ms;
  bool supported;
};

}  // namespace

int main(int argc, char** argv) {
  Args args;
  args.seqs = {4096, 16384, 32768, 65536};
  if (!parse_args(argc, argv, args, false,
                  "[--json FILE] [--reps N] [--seqs 4096,16384,...] [--window W]"))
    return 2;
  const char* json = args.json;
  const int reps = args.reps;
  const std::vector<int64_t>& seqs = args.seqs;
  const int64_t window = args.window;
  cudaDeviceProp prop{};
  if (!device_props(prop)) return 1;
  if (rt::cuda::cudnn_sdpa_version() == 0) {
    std::fprintf(stderr, "bench_cudnn_sdpa_bwd: this build has no cuDNN SDPA\n");
    return 1;
  }
  std::printf("device: %s (%d SMs), cuDNN %lld, bf16, batch 1, median of %d repeats\n", prop.name,
              prop.multiProcessorCount, static_cast<long long>(rt::cuda::cudnn_sdpa_version()), reps);

  std::vector<Result> results;
  bool all_ok = true;
  try {
    for (const Model& m : kModels) {
      int64_t Tmax = 1;
      for (int64_t t : seqs) Tmax = std::max(Tmax, t);
      const size_t nq = static_cast<size_t>(Tmax * m.Hq * m.D), nk = static_cast<size_t>(Tmax * m.Hkv * m.D);
      Buf q(nq, 1), k(nk, 2), v(nk, 3), dout(nq, 4), o(nq * 2), dq(nq * 2), dk(nk * 2), dv(nk * 2),
          lse(static_cast<size_t>(Tmax * m.Hq) * 4);

      std::printf("\n%s: Hq %lld, Hkv %lld, D %lld -- cuDNN SDPA, ms and TFLOP/s\n", m.name,
                  static_cast<long long>(m.Hq), static_cast<long long>(m.Hkv), static_cast<long long>(m.D));
      std::printf("%-8s %-12s %9s %7s %9s %7s %10s %7s %9s\n", "T", "mask", "fwd ms", "TF/s", "bwd ms", "TF/s",
                  "f+b ms", "TF/s", "build ms");
      for (int64_t T : seqs)
        for (int64_t W : {int64_t{0}, window}) {
          auto q3 = [&](void* p) { return TensorView::contiguous(p, DType::BF16, Device::CUDA, {T, m.Hq, m.D}); };
          auto k3 = [&](void* p) { return TensorView::contiguous(p, DType::BF16, Device::CUDA, {T, m.Hkv, m.D}); };
          const TensorView tq = q3(q.p), tk = k3(k.p), tv = k3(v.p), to = q3(o.p), tdo = q3(dout.p), tdq = q3(dq.p),
                           tdk = k3(dk.p), tdv = k3(dv.p);
          const TensorView tlse = TensorView::contiguous(lse.p, DType::F32, Device::CUDA, {m.Hq, T});
          rt::AttentionSpec spec;
          spec.window = W;
          Result r{m.name, W == 0 ? "causal" : "window", m.Hq, m.Hkv, m.D, T, W, NAN, NAN, NAN, NAN, NAN, NAN, NAN,
                   false};
          const auto t0 = std::chrono::steady_clock::now();
          r.supported = rt::cuda::cudnn_sdpa_supported(tq, tk, tv, spec, true) &&
                        rt::cuda::cudnn_sdpa_backward_supported(tq, tk, tv, spec);
          r.build_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
          const std::string mask = W == 0 ? "causal" : "window " + std::to_string(W);
          if (!r.supported) {
            std::printf("%-8lld %-12s unsupported by cuDNN\n", static_cast<long long>(T), mask.c_str());
            results.push_back(r);
            all_ok = false;
            continue;
          }
          auto fwd = [&] { rt::cuda::cudnn_sdpa_forward(tq, tk, tv, to, spec, nullptr, tlse); };
          auto bwd = [&] { rt::cuda::cudnn_sdpa_backward(tq, tk, tv, to, tlse, tdo, tdq, tdk, tdv, spec, nullptr); };
          r.fwd_ms = median_ms(fwd, reps, 1, 3);
          r.bwd_ms = median_ms(bwd, reps, 1, 3);  // o, lse from the forward above
          r.fwdbwd_ms = median_ms(
              [&] {
                fwd();
                bwd();
              },
              reps, 1, 2);
          const size_t bad = count_nonfinite(dq.p, static_cast<size_t>(T * m.Hq * m.D)) +
                             count_nonfinite(dk.p, static_cast<size_t>(T * m.Hkv * m.D)) +
                             count_nonfinite(dv.p, static_cast<size_t>(T * m.Hkv * m.D));
          if (bad) {
            std::fprintf(stderr, "bench_cudnn_sdpa_bwd: %zu non-finite gradient values at T %lld %s\n", bad,
                         static_cast<long long>(T), mask.c_str());
            all_ok = false;
          }
          const double f = 4.0 * m.D * m.Hq * flop_pairs(T, W);
          r.fwd_tflops = f / (r.fwd_ms * 1e-3) / 1e12;
          r.bwd_tflops = 2.5 * f / (r.bwd_ms * 1e-3) / 1e12;
          r.fwdbwd_tflops = 3.5 * f / (r.fwdbwd_ms * 1e-3) / 1e12;
          std::printf("%-8lld %-12s %9.3f %7.1f %9.3f %7.1f %10.3f %7.1f %9.0f\n", static_cast<long long>(T),
                      mask.c_str(), r.fwd_ms, r.fwd_tflops, r.bwd_ms, r.bwd_tflops, r.fwdbwd_ms, r.fwdbwd_tflops,
                      r.build_ms);
          results.push_back(r);
        }
    }
  } catch (const rt::Error& e) {
    std::fprintf(stderr, "bench_cudnn_sdpa_bwd: %s\n", e.what());
    return 1;
  }
  const rt::cuda::CudnnSdpaStats st = rt::cuda::cudnn_sdpa_stats();
  std::printf("\ncuDNN graphs built %llu, failed %llu, cache hits %llu\n",
              static_cast<unsigned long long>(st.graphs_built), static_cast<unsigned long long>(st.build_failures),
              static_cast<unsigned long long>(st.cache_hits));

  if (json != nullptr) {
    FILE* f = open_json(json);
    if (f == nullptr) return 1;
    std::fprintf(f, "{\n  \"device\": \"%s\",\n  \"cudnn\": %lld,\n  \"reps\": %d,\n", prop.name,
                 static_cast<long long>(rt::cuda::cudnn_sdpa_version()), reps);
    std::fprintf(f, "  \"flops\": \"forward causal 4*D*Hq*T^2/2, window 4*D*Hq*(W(W+1)/2+(T-W)W); backward 2.5x, "
                    "forward+backward 3.5x forward\",\n");
    std::fprintf(f, "  \"results\": [\n");
    for (size_t i = 0; i < results.size(); ++i) {
      const Result& r = results[i];
      std::fprintf(f,
                   "    {\"impl\": \"cudnn\", \"model\": \"%s\", \"mask\": \"%s\", \"Hq\": %lld, \"Hkv\": %lld, "
                   "\"D\": %lld, \"T\": %lld, \"window\": %lld, \"supported\": %s, \"fwd_ms\": %s, \"bwd_ms\": %s, "
                   "\"fwd_bwd_ms\": %s, \"fwd_tflops\": %s, \"bwd_tflops\": %s, \"fwd_bwd_tflops\": %s, "
                   "\"build_ms\": %s}%s\n",
                   r.model.c_str(), r.mask.c_str(), static_cast<long long>(r.Hq), static_cast<long long>(r.Hkv),
                   static_cast<long long>(r.D), static_cast<long long>(r.T), static_cast<long long>(r.window),
                   r.supported ? "true" : "false", json_num(r.fwd_ms).c_str(), json_num(r.bwd_ms).c_str(),
                   json_num(r.fwdbwd_ms).c_str(), json_num(r.fwd_tflops).c_str(), json_num(r.bwd_tflops).c_str(),
                   json_num(r.fwdbwd_tflops).c_str(), json_num(r.build_ms).c_str(), i + 1 < results.size() ? "," : "");
    }
    std::fprintf(f, "  ]\n}\n");
    std::fclose(f);
    std::printf("wrote %s\n", json);
  }
  return all_ok ? 0 : 1;
}
