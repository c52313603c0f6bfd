// bench_attention: times rt::cuda attention (flash forward and split-KV decode) at the Qwen2.5
// attention shapes, bf16, batch 1, with CUDA events (warm-up, then the median of the repeats).
//
//   bench_attention [--json FILE] [--reps N] [--seqs 4096,16384,32768,65536] [--window 2048]
//                   [--decode 4096,32768]
//
// Shapes: Qwen2.5-0.5B (Hq 14, Hkv 2, D 64) and Qwen2.5-1.5B (Hq 12, Hkv 2, D 128).
// FLOP counts (forward: two matrix products, 2 FLOPs per multiply-add each, so 4 D FLOPs per
// visible (query, key) pair and head):
//   causal: 4 * D * Hq * T^2 / 2 (the FlashAttention / PyTorch-benchmark convention; the exact
//           count of visible pairs T(T+1)/2 differs by < 0.03% at T >= 4096)
//   window: 4 * D * Hq * P with P the exact number of visible pairs,
//           P = W(W+1)/2 + (T - W) W for T >= W (~ T W), T(T+1)/2 for T < W
// Decode (one query at position Tk-1 against Tk cached keys) is bound by reading K and V: it
// reports GB/s with bytes = 2 (K and V) * keys visible * Hkv * D * 2 bytes (q/o are negligible).
// Timing: each repeat is one event pair around `inner` calls (1 for prefill; 50 for decode, so
// launch gaps are included as they would be in a decode loop without graphs); median over repeats.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cuda/attention/attention.h"
#include "rt/sdk/error.h"

#define RT_BENCH_TOOL "bench_attention"
#include "bench_util.h"
#include "bench_random_buffer.cuh"

using namespace rt::bench;

namespace {

struct Result {
  std::string kind, model, mask;
  int64_t Hq, Hkv, D, Tq, Tk, window;
  double ms, tflops, gbps;
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
  std::printf("device: %s (%d SMs), bf16, batch 1, median of %d repeats\n", prop.name, prop.multiProcessorCount,
              reps);

  std::vector<Result> results;
  try {
    for (const Model& m : kModels) {
      const int64_t Tmax = std::max(*std::max_element(seqs.begin(), seqs.end()),
                                    *std::max_element(decode_tk.begin(), decode_tk.end()));
      RandomBuffer q(static_cast<size_t>(Tmax * m.Hq * m.D) * 2, 1), k(static_cast<size_t>(Tmax * m.Hkv * m.D) * 2, 2),
          v(static_cast<size_t>(Tmax * m.Hkv * m.D) * 2, 3), o(static_cast<size_t>(Tmax * m.Hq * m.D) * 2, 4);
      std::printf("\n%s: Hq %lld, Hkv %lld, D %lld -- forward (flash kernel)\n", m.name,
                  static_cast<long long>(m.Hq), static_cast<long long>(m.Hkv), static_cast<long long>(m.D));
      std::printf("%-8s %-12s %10s %10s\n", "T", "mask", "ms", "TFLOP/s");
      for (int64_t T : seqs) {
        for (int64_t W : {int64_t{0}, window}) {
          using rt::DType;
          using rt::Device;
          using rt::TensorView;
          const TensorView tq = TensorView::contiguous(q.p, DType::BF16, Device::CUDA, {T, m.Hq, m.D});
          const TensorView tk = TensorView::contiguous(k.p, DType::BF16, Device::CUDA, {T, m.Hkv, m.D});
          const TensorView tv = TensorView::contiguous(v.p, DType::BF16, Device::CUDA, {T, m.Hkv, m.D});
          const TensorView to = TensorView::contiguous(o.p, DType::BF16, Device::CUDA, {T, m.Hq, m.D});
          rt::AttentionSpec spec;
          spec.window = W;
          const double ms = median_ms([&] { rt::cuda::attention_forward(tq, tk, tv, to, spec, nullptr); }, reps, 1, 3);
          const double pairs = W == 0 ? static_cast<double>(T) * T / 2 : visible_pairs(T, W);
          const double tflops = 4.0 * m.D * m.Hq * pairs / (ms * 1e-3) / 1e12;
          const std::string mask = W == 0 ? "causal" : "window " + std::to_string(W);
          std::printf("%-8lld %-12s %10.3f %10.1f\n", static_cast<long long>(T), mask.c_str(), ms, tflops);
          results.push_back({"forward", m.name, W == 0 ? "causal" : "window", m.Hq, m.Hkv, m.D, T, T, W, ms, tflops, 0});
        }
      }
      std::printf("\n%s -- decode (1 query at position Tk-1)\n", m.name);
      std::printf("%-8s %-12s %-8s %10s %10s\n", "Tk", "mask", "kernel", "us", "GB/s");
      for (int64_t Tk : decode_tk) {
        for (int64_t W : {int64_t{0}, window}) {
          for (auto kern : {rt::cuda::AttentionKernel::Decode, rt::cuda::AttentionKernel::Flash}) {
            using rt::DType;
            using rt::Device;
            using rt::TensorView;
            const TensorView tq = TensorView::contiguous(q.p, DType::BF16, Device::CUDA, {1, m.Hq, m.D});
            const TensorView tk = TensorView::contiguous(k.p, DType::BF16, Device::CUDA, {Tk, m.Hkv, m.D});
            const TensorView tv = TensorView::contiguous(v.p, DType::BF16, Device::CUDA, {Tk, m.Hkv, m.D});
            const TensorView to = TensorView::contiguous(o.p, DType::BF16, Device::CUDA, {1, m.Hq, m.D});
            rt::AttentionSpec spec;
            spec.window = W;
            spec.q_pos0 = Tk - 1;
            const double ms = median_ms(
                [&] { rt::cuda::attention_forward_with(tq, tk, tv, to, TensorView{}, spec, kern, nullptr); }, reps, 50,
                5);
            const double keys = static_cast<double>(W > 0 ? std::min(W, Tk) : Tk);
            const double gbps = 2.0 * keys * m.Hkv * m.D * 2 / (ms * 1e-3) / 1e9;
            const std::string mask = W == 0 ? "causal" : "window " + std::to_string(W);
            const char* kname = kern == rt::cuda::AttentionKernel::Decode ? "decode" : "flash";
            std::printf("%-8lld %-12s %-8s %10.2f %10.1f\n", static_cast<long long>(Tk), mask.c_str(), kname,
                        ms * 1e3, gbps);
            results.push_back({std::string("decode_") + kname, m.name, W == 0 ? "causal" : "window", m.Hq, m.Hkv, m.D,
                               1, Tk, W, ms, 0, gbps});
          }
        }
      }
    }
  } catch (const rt::Error& e) {
    std::fprintf(stderr, "bench_attention: %s\n", e.what());
    return 1;
  }

  if (json != nullptr) {
    FILE* f = open_json(json);
    if (f == nullptr) return 1;
    std::fprintf(f, "{\n  \"device\": \"%s\",\n  \"reps\": %d,\n", prop.name, reps);
    std::fprintf(f, "  \"flops\": \"causal 4*D*Hq*T^2/2; window 4*D*Hq*(W(W+1)/2+(T-W)W); decode GB/s = 2*keys*Hkv*D*2 bytes\",\n");
    std::fprintf(f, "  \"results\": [\n");
    for (size_t i = 0; i < results.size(); ++i) {
      const Result& r = results[i];
      std::fprintf(f,
                   "    {\"kind\": \"%s\", \"model\": \"%s\", \"mask\": \"%s\", \"Hq\": %lld, \"Hkv\": %lld, \"D\": %lld, "
                   "\"Tq\": %lld, \"Tk\": %lld, \"window\": %lld, \"ms\": %.6f, \"tflops\": %.3f, \"gbps\": %.3f}%s\n",
                   r.kind.c_str(), r.model.c_str(), r.mask.c_str(), static_cast<long long>(r.Hq),
                   static_cast<long long>(r.Hkv), static_cast<long long>(r.D), static_cast<long long>(r.Tq),
                   static_cast<long long>(r.Tk), static_cast<long long>(r.window), r.ms, r.tflops, r.gbps,
                   i + 1 < results.size() ? "," : "");
    }
    std::fprintf(f, "  ]\n}\n");
    std::fclose(f);
    std::printf("\nwrote %s\n", json);
  }
  return 0;
}
