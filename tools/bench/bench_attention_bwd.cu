// bench_attention_bwd: times rt::cuda attention forward (attention_forward_lse), backward
// (attention_backward) and forward+backward at the Qwen2.5 attention shapes, bf16, batch 1, with
// CUDA events (warm-up, then the median of the repeats).
//
//   bench_attention_bwd [--json FILE] [--reps N] [--seqs 4096,16384,32768] [--window 2048]
//                       [--masks causal,window,routed] [--models 0.5b,1.5b] [--sparsity 0.8]
//
// Shapes: Qwen2.5-0.5B (Hq 14, Hkv 2, D 64) and Qwen2.5-1.5B (Hq 12, Hkv 2, D 128); masks causal,
// causal + sliding window W, and L2A's routed rows (causal, the queries a seeded random draw routes
// with probability 1 - sparsity, as `runtime profile --sparsity`). --masks and --models pick a
// subset, so that a profiler (ncu --launch-count 1) sees the one kernel asked for.
// FLOP counts (the FlashAttention / PyTorch-benchmark convention): forward = 4 * D * Hq * P with
//   P = T^2 / 2 (causal), P = W(W+1)/2 + (T - W) W (window, exact visible pairs, T >= W),
//   P = sum over routed rows of (position + 1) (routed);
//   backward = 2.5 x forward (five matrix products against the forward's two), so
//   forward + backward = 3.5 x forward.
// Reference point (issue 3): PyTorch SDPA forward+backward ~15.4 ms at T = 32768 on the 0.5B shape
// on an H100 (~437 TFLOP/s by this count); the target is >= 0.9x of it.
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
#include "cuda/attention/attention_backward.h"
#include "rt/sdk/error.h"

#define RT_BENCH_TOOL "bench_attention_bwd"
#include "bench_util.h"
#include "bench_random_buffer.cuh"

using namespace rt::bench;

namespace {

// The positions a seeded draw routes (each with probability 1 - sparsity): runtime profile's
// routed_kernel_row draws the same ones, so the two report the same kernel rows.
std::vector<int32_t> routed_positions(int64_t T, double sparsity) {
  std::vector<int32_t> pos;
  uint64_t x = 0x9e3779b97f4a7c15ull ^ static_cast<uint64_t>(T);
  for (int64_t t = 0; t < T; ++t) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    if (static_cast<double>(x >> 11) * 0x1.0p-53 >= sparsity) pos.push_back(static_cast<int32_t>(t));
  }
  return pos;
}

// This bench's own options, taken out of argv before the shared parser sees the rest.
struct Selection {
  std::vector<std::string> masks{"causal", "window"};
  std::vector<std::string> models{"0.5b", "1.5b"};
  double sparsity = 0.8;
};
bool take_selection(int& argc, char** argv, Selection& sel) {
  int out = 1;
  for (int i = 1; i < argc; ++i) {
    const bool has_value = i + 1 < argc;
    if (!std::strcmp(argv[i], "--masks") && has_value) {
      sel.masks = split_list(argv[++i]);
      for (const std::string& m : sel.masks)
        if (m != "causal" && m != "window" && m != "routed") {
          std::fprintf(stderr, "bench_attention_bwd: --masks: expected causal, window or routed, found '%s'\n",
                       m.c_str());
          return false;
        }
    } else if (!std::strcmp(argv[i], "--models") && has_value) {
      sel.models = split_list(argv[++i]);
    } else if (!std::strcmp(argv[i], "--sparsity") && has_value) {
      sel.sparsity = std::atof(argv[++i]);
      if (!(sel.sparsity >= 0.0 && sel.sparsity < 1.0)) {
        std::fprintf(stderr, "bench_attention_bwd: --sparsity: expected a fraction in [0, 1), found '%s'\n", argv[i]);
        return false;
      }
    } else {
      argv[out++] = argv[i];
    }
  }
  argc = out;
  return true;
}
bool selected(const std::vector<std::string>& names, const std::string& name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

struct Result {
  std::string model, mask;
  int64_t Hq, Hkv, D, T, window;
  double fwd_ms, bwd_ms, fwdbwd_ms, fwd_tflops, bwd_tflops, fwdbwd_tflops;
};

}  // namespace

int main(int argc, char** argv) {
  Args args;
  args.seqs = {4096, 16384, 32768};
  Selection sel;
  if (!take_selection(argc, argv, sel) ||
      !parse_args(argc, argv, args, false,
                  "[--json FILE] [--reps N] [--seqs 4096,16384,32768] [--window W] "
                  "[--masks causal,window,routed] [--models 0.5b,1.5b] [--sparsity 0.8]"))
    return 2;
  const char* json = args.json;
  const int reps = args.reps;
  const std::vector<int64_t>& seqs = args.seqs;
  const int64_t window = args.window;
  cudaDeviceProp prop{};
  if (!device_props(prop)) return 1;
  std::printf("device: %s (%d SMs), bf16, batch 1, median of %d repeats\n", prop.name, prop.multiProcessorCount,
              reps);
  std::printf("FLOPs: forward 4*D*Hq*pairs (causal pairs T^2/2), backward 2.5x, forward+backward 3.5x forward\n");

  std::vector<Result> results;
  try {
    for (const Model& m : kModels) {
      const std::string short_name = std::string(m.name).substr(std::string("qwen2.5-").size());
      if (!selected(sel.models, short_name)) continue;
      const int64_t Tmax = *std::max_element(seqs.begin(), seqs.end());
      const size_t nq = static_cast<size_t>(Tmax * m.Hq * m.D) * 2, nk = static_cast<size_t>(Tmax * m.Hkv * m.D) * 2;
      RandomBuffer q(nq, 1), k(nk, 2), v(nk, 3), o(nq, 0), dout(nq, 4), dq(nq, 0), dk(nk, 0), dv(nk, 0),
          lse(static_cast<size_t>(Tmax * m.Hq) * 4, 0), index(static_cast<size_t>(Tmax) * 4, 0), count(4, 0);
      std::printf("\n%s: Hq %lld, Hkv %lld, D %lld\n", m.name, static_cast<long long>(m.Hq),
                  static_cast<long long>(m.Hkv), static_cast<long long>(m.D));
      std::printf("%-8s %-12s %10s %10s %10s %10s %12s %12s\n", "T", "mask", "fwd ms", "bwd ms", "f+b ms", "fwd TF/s",
                  "bwd TF/s", "f+b TF/s");
      for (int64_t T : seqs) {
        for (const std::string& kind : {std::string("causal"), std::string("window"), std::string("routed")}) {
          if (!selected(sel.masks, kind)) continue;
          const int64_t W = kind == "window" ? window : 0;
          using rt::DType;
          using rt::Device;
          using rt::TensorView;
          auto view = [&](RandomBuffer& b, int64_t H) {
            return TensorView::contiguous(b.p, DType::BF16, Device::CUDA, {T, H, m.D});
          };
          const TensorView tq = view(q, m.Hq), tk = view(k, m.Hkv), tv = view(v, m.Hkv), to = view(o, m.Hq);
          const TensorView tdo = view(dout, m.Hq), tdq = view(dq, m.Hq), tdk = view(dk, m.Hkv), tdv = view(dv, m.Hkv);
          const TensorView tl = TensorView::contiguous(lse.p, DType::F32, Device::CUDA, {m.Hq, T});
          rt::AttentionSpec spec;
          spec.window = W;
          double pairs = flop_pairs(T, W);
          std::string mask = W == 0 ? "causal" : "window " + std::to_string(W);
          if (kind == "routed") {  // the routed rows are q's first n rows, as L2A compacts them
            std::vector<int32_t> pos = routed_positions(T, sel.sparsity);
            const int32_t n = static_cast<int32_t>(pos.size());
            pairs = 0;
            for (int32_t t : pos) pairs += static_cast<double>(t) + 1;
            pos.resize(static_cast<size_t>(T), static_cast<int32_t>(T));  // [>= Tq] entries; past n unused
            ck(cudaMemcpy(index.p, pos.data(), pos.size() * 4, cudaMemcpyHostToDevice), "upload index");
            ck(cudaMemcpy(count.p, &n, 4, cudaMemcpyHostToDevice), "upload count");
            spec.q_index = TensorView::contiguous(index.p, DType::I32, Device::CUDA, {T});
            spec.q_count = TensorView::contiguous(count.p, DType::I32, Device::CUDA, {1});
            char label[32];
            std::snprintf(label, sizeof label, "routed %.2f", sel.sparsity);
            mask = label;
          }
          auto fwd = [&] { rt::cuda::attention_forward_lse(tq, tk, tv, to, tl, spec, nullptr); };
          auto bwd = [&] { rt::cuda::attention_backward(tq, tk, tv, to, tl, tdo, tdq, tdk, tdv, spec, nullptr); };
          const double fwd_ms = median_ms(fwd, reps, 1, 3);
          const double bwd_ms = median_ms(bwd, reps, 1, 3);
          const double fb_ms = median_ms([&] { fwd(); bwd(); }, reps, 1, 2);
          const double fwd_flops = 4.0 * m.D * m.Hq * pairs;
          const double tf = fwd_flops / (fwd_ms * 1e-3) / 1e12, tb = 2.5 * fwd_flops / (bwd_ms * 1e-3) / 1e12,
                       tfb = 3.5 * fwd_flops / (fb_ms * 1e-3) / 1e12;
          std::printf("%-8lld %-12s %10.3f %10.3f %10.3f %10.1f %12.1f %12.1f\n", static_cast<long long>(T),
                      mask.c_str(), fwd_ms, bwd_ms, fb_ms, tf, tb, tfb);
          results.push_back({m.name, kind, m.Hq, m.Hkv, m.D, T, W, fwd_ms, bwd_ms, fb_ms, tf,
                             tb, tfb});
        }
      }
    }
  } catch (const rt::Error& e) {
    std::fprintf(stderr, "bench_attention_bwd: %s\n", e.what());
    return 1;
  }

  if (json != nullptr) {
    FILE* f = open_json(json);
    if (f == nullptr) return 1;
    std::fprintf(f, "{\n  \"device\": \"%s\",\n  \"reps\": %d,\n", prop.name, reps);
    std::fprintf(f,
                 "  \"flops\": \"forward 4*D*Hq*pairs (causal T^2/2; window W(W+1)/2+(T-W)W; routed sum of "
                 "position+1 over routed rows); backward 2.5x; forward+backward 3.5x forward\",\n");
    std::fprintf(f, "  \"sparsity\": %.4f,\n", sel.sparsity);
    std::fprintf(f, "  \"results\": [\n");
    for (size_t i = 0; i < results.size(); ++i) {
      const Result& r = results[i];
      std::fprintf(f,
                   "    {\"model\": \"%s\", \"mask\": \"%s\", \"Hq\": %lld, \"Hkv\": %lld, \"D\": %lld, \"T\": %lld, "
                   "\"window\": %lld, \"fwd_ms\": %.6f, \"bwd_ms\": %.6f, \"fwd_bwd_ms\": %.6f, \"fwd_tflops\": %.3f, "
                   "\"bwd_tflops\": %.3f, \"fwd_bwd_tflops\": %.3f}%s\n",
                   r.model.c_str(), r.mask.c_str(), static_cast<long long>(r.Hq), static_cast<long long>(r.Hkv),
                   static_cast<long long>(r.D), static_cast<long long>(r.T), static_cast<long long>(r.window), r.fwd_ms,
                   r.bwd_ms, r.fwdbwd_ms, r.fwd_tflops, r.bwd_tflops, r.fwdbwd_tflops,
                   i + 1 < results.size() ? "," : "");
    }
    std::fprintf(f, "  ]\n}\n");
    std::fclose(f);
    std::printf("\nwrote %s\n", json);
  }
  return 0;
}
