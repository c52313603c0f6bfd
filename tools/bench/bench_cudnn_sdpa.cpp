// bench_cudnn_sdpa: A/B of our flash kernels (rt::cuda::attention_forward) and cuDNN SDPA
// (rt::cuda::cudnn_sdpa_forward) on the same inputs at the Qwen2.5 attention shapes, bf16,
// batch 1, with CUDA events (warm-up, then the median of the repeats). Also prints the relative
// Frobenius difference of the two outputs (cross-check) and cuDNN's first-call graph build time.
//
//   bench_cudnn_sdpa [--json FILE] [--reps N] [--seqs 4096,16384,32768,65536] [--window 2048]
//                    [--decode 4096,32768]
//
// FLOP and byte counts as in bench_attention: causal 4*D*Hq*T^2/2, window 4*D*Hq*P with P the
// exact visible pairs; decode GB/s = 2 * keys * Hkv * D * 2 bytes, 50 calls per timed repeat.
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

#include "cuda/attention/attention.h"
#include "cuda/cudnn_sdpa/cudnn_sdpa.h"
#include "rt/sdk/error.h"
#include "rt/sdk/half.h"

#define RT_BENCH_TOOL "bench_cudnn_sdpa"
#include "bench_util.h"

using namespace rt::bench;

namespace {

using rt::DType;
using rt::Device;
using rt::TensorView;

using Buf = HostFilledBuf;

// Relative Frobenius difference of two bf16 device arrays of n values.
double rel_diff(const void* a, const void* b, size_t n) {
  std::vector<uint16_t> ha(n), hb(n);
  ck(cudaMemcpy(ha.data(), a, n * 2, cudaMemcpyDeviceToHost), "download");
  ck(cudaMemcpy(hb.data(), b, n * 2, cudaMemcpyDeviceToHost), "download");
  double err = 0, norm = 0;
  for (size_t i = 0; i < n; ++i) {
    const double x = rt::bf16_to_f32(ha[i]), y = rt::bf16_to_f32(hb[i]);
    if (!std::isfinite(x) || !std::isfinite(y)) return INFINITY;
    err += (x - y) * (x - y);
    norm += y * y;
  }
  return norm > 0 ? std::sqrt(err / norm) : std::sqrt(err);
}

struct Result {
  std::string kind, model, mask;
  int64_t Hq, Hkv, D, Tq, Tk, window;
  double flash_ms, cudnn_ms, flash_rate, cudnn_rate, rel_diff, build_ms;  // rate: TFLOP/s (forward) or GB/s (decode)
};

}  // namespace

int main(int argc, char** argv) {
  Args args;
  args.seqs = {4096, 16384, 32768, 65536};
  args.decode = {4096, 32768};
  if (!parse_args(argc, argv, args, true,
                  "[--json FILE] [--reps N] [--seqs 4096,16384,...] [--window W] [--decode 4096,32768]"))
    return 2;
  const char* json = args.json;
  const int reps = args.reps;
  const std::vector<int64_t>& seqs = args.seqs;
  const std::vector<int64_t>& decode_tk = args.decode;
  const int64_t window = args.window;
  cudaDeviceProp prop{};
  if (!device_props(prop)) return 1;
  if (rt::cuda::cudnn_sdpa_version() == 0) {
    std::fprintf(stderr, "bench_cudnn_sdpa: this build has no cuDNN SDPA\n");
    return 1;
  }
  std::printf("device: %s (%d SMs), cuDNN %lld, bf16, batch 1, median of %d repeats\n", prop.name,
              prop.multiProcessorCount, static_cast<long long>(rt::cuda::cudnn_sdpa_version()), reps);

  std::vector<Result> results;
  try {
    for (const Model& m : kModels) {
      int64_t Tmax = 1;
      for (int64_t t : seqs) Tmax = std::max(Tmax, t);
      for (int64_t t : decode_tk) Tmax = std::max(Tmax, t);
      Buf q(static_cast<size_t>(Tmax * m.Hq * m.D), 1), k(static_cast<size_t>(Tmax * m.Hkv * m.D), 2),
          v(static_cast<size_t>(Tmax * m.Hkv * m.D), 3), o(static_cast<size_t>(Tmax * m.Hq * m.D), 4),
          o2(static_cast<size_t>(Tmax * m.Hq * m.D), 5);

      // One A/B row: times both implementations on the same views.
      auto run = [&](const char* kind, int64_t Tq, int64_t Tk, int64_t W, int inner, int warmup) {
        const TensorView tq = TensorView::contiguous(q.p, DType::BF16, Device::CUDA, {Tq, m.Hq, m.D});
        const TensorView tk = TensorView::contiguous(k.p, DType::BF16, Device::CUDA, {Tk, m.Hkv, m.D});
        const TensorView tv = TensorView::contiguous(v.p, DType::BF16, Device::CUDA, {Tk, m.Hkv, m.D});
        const TensorView to = TensorView::contiguous(o.p, DType::BF16, Device::CUDA, {Tq, m.Hq, m.D});
        const TensorView to2 = TensorView::contiguous(o2.p, DType::BF16, Device::CUDA, {Tq, m.Hq, m.D});
        rt::AttentionSpec spec;
        spec.window = W;
        spec.q_pos0 = Tk - Tq;
        Result r{kind, m.name, W == 0 ? "causal" : "window", m.Hq, m.Hkv, m.D, Tq, Tk, W, 0, NAN, 0, NAN, NAN, NAN};
        r.flash_ms = median_ms([&] { rt::cuda::attention_forward(tq, tk, tv, to, spec, nullptr); }, reps, inner, warmup);
        const auto t0 = std::chrono::steady_clock::now();
        const bool ok = rt::cuda::cudnn_sdpa_supported(tq, tk, tv, spec);
        r.build_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        if (ok) {
          r.cudnn_ms =
              median_ms([&] { rt::cuda::cudnn_sdpa_forward(tq, tk, tv, to2, spec, nullptr); }, reps, inner, warmup);
          r.rel_diff = rel_diff(o2.p, o.p, static_cast<size_t>(Tq * m.Hq * m.D));
        }
        if (Tq == 1) {
          const double keys = static_cast<double>(W > 0 ? std::min(W, Tk) : Tk);
          const double bytes = 2.0 * keys * m.Hkv * m.D * 2;
          r.flash_rate = bytes / (r.flash_ms * 1e-3) / 1e9;
          r.cudnn_rate = bytes / (r.cudnn_ms * 1e-3) / 1e9;
        } else {
          const double pairs = W == 0 ? static_cast<double>(Tq) * Tq / 2 : visible_pairs(Tq, W);
          r.flash_rate = 4.0 * m.D * m.Hq * pairs / (r.flash_ms * 1e-3) / 1e12;
          r.cudnn_rate = 4.0 * m.D * m.Hq * pairs / (r.cudnn_ms * 1e-3) / 1e12;
        }
        const std::string mask = W == 0 ? "causal" : "window " + std::to_string(W);
        const double scale = Tq == 1 ? 1e3 : 1.0;  // decode in us
        std::printf("%-8lld %-12s %10.3f %8.1f %10.3f %8.1f %8.2fx %-6s %9.1e %9.0f\n",
                    static_cast<long long>(Tq == 1 ? Tk : Tq), mask.c_str(), r.flash_ms * scale, r.flash_rate,
                    r.cudnn_ms * scale, r.cudnn_rate, r.flash_ms / r.cudnn_ms,
                    !ok ? "flash" : r.cudnn_ms < r.flash_ms ? "cudnn" : "flash", r.rel_diff, r.build_ms);
        results.push_back(r);
      };

      std::printf("\n%s: Hq %lld, Hkv %lld, D %lld -- forward, ms and TFLOP/s\n", m.name,
                  static_cast<long long>(m.Hq), static_cast<long long>(m.Hkv), static_cast<long long>(m.D));
      std::printf("%-8s %-12s %10s %8s %10s %8s %9s %-6s %9s %9s\n", "T", "mask", "flash ms", "TF/s", "cudnn ms",
                  "TF/s", "speedup", "faster", "rel diff", "build ms");
      for (int64_t T : seqs)
        for (int64_t W : {int64_t{0}, window}) run("forward", T, T, W, 1, 3);
      std::printf("\n%s -- decode (1 query at position Tk-1), us and GB/s\n", m.name);
      std::printf("%-8s %-12s %10s %8s %10s %8s %9s %-6s %9s %9s\n", "Tk", "mask", "flash us", "GB/s", "cudnn us",
                  "GB/s", "speedup", "faster", "rel diff", "build ms");
      for (int64_t Tk : decode_tk)
        for (int64_t W : {int64_t{0}, window}) run("decode", 1, Tk, W, 50, 5);
    }
  } catch (const rt::Error& e) {
    std::fprintf(stderr, "bench_cudnn_sdpa: %s\n", e.what());
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
    std::fprintf(f, "  \"rate\": \"forward: TFLOP/s (causal 4*D*Hq*T^2/2; window 4*D*Hq*(W(W+1)/2+(T-W)W)); "
                    "decode: GB/s = 2*keys*Hkv*D*2 bytes\",\n");
    std::fprintf(f, "  \"results\": [\n");
    for (size_t i = 0; i < results.size(); ++i) {
      const Result& r = results[i];
      std::fprintf(f,
                   "    {\"kind\": \"%s\", \"model\": \"%s\", \"mask\": \"%s\", \"Hq\": %lld, \"Hkv\": %lld, \"D\": %lld, "
                   "\"Tq\": %lld, \"Tk\": %lld, \"window\": %lld, \"flash_ms\": %s, \"cudnn_ms\": %s, "
                   "\"flash_rate\": %s, \"cudnn_rate\": %s, \"rel_diff\": %s, \"cudnn_build_ms\": %s}%s\n",
                   r.kind.c_str(), r.model.c_str(), r.mask.c_str(), static_cast<long long>(r.Hq),
                   static_cast<long long>(r.Hkv), static_cast<long long>(r.D), static_cast<long long>(r.Tq),
                   static_cast<long long>(r.Tk), static_cast<long long>(r.window), json_num(r.flash_ms).c_str(),
                   json_num(r.cudnn_ms).c_str(), json_num(r.flash_rate).c_str(), json_num(r.cudnn_rate).c_str(),
                   json_num(r.rel_diff).c_str(), json_num(r.build_ms).c_str(), i + 1 < results.size() ? "," : "");
    }
    std::fprintf(f, "  ]\n}\n");
    std::fclose(f);
    std::printf("wrote %s\n", json);
  }
  return 0;
}
