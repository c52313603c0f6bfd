// Helpers shared by the attention benches (bench_attention, bench_attention_bwd, bench_cudnn_sdpa,
// bench_cudnn_sdpa_bwd): CUDA error check, CUDA-event median timing, visible-pair counts for the
// FLOP formulas, the Qwen2.5 shape table, command-line parsing and the device query.
// Header-only and host-only, so it compiles both under nvcc (.cu) and the host compiler (.cpp).
//
// Each bench defines RT_BENCH_TOOL (its program name, used as the prefix of error messages)
// before including this header.
#pragma once

#ifndef RT_BENCH_TOOL
#error "define RT_BENCH_TOOL (the bench's program name) before including bench_util.h"
#endif

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "rt/sdk/half.h"

namespace rt::bench {

inline void ck(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, RT_BENCH_TOOL ": %s: %s\n", what, cudaGetErrorString(e));
    std::exit(1);
  }
}

#ifdef __CUDACC__
#define RT_BENCH_HD __host__ __device__
#else
#define RT_BENCH_HD
#endif

// Element i of a seeded draw, uniform with unit variance: a hash of the index, so the host and the
// device fill (bench_random_buffer.cuh) give the same values.
RT_BENCH_HD inline float unit_variance_value(uint32_t i, uint32_t seed) {
  uint32_t x = i * 2654435761u ^ seed;
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  const float u = (x & 0xffffff) * (1.f / 16777216.f);  // [0, 1)
  return (u - 0.5f) * 3.4641f;
}

// Device buffer of n bf16 values, uniform with unit variance (unit_variance_value, filled on the
// host); bytes: a raw buffer of that many bytes, left uninitialised.
struct HostFilledBuf {
  void* p = nullptr;
  HostFilledBuf(size_t n, uint32_t seed) {
    ck(cudaMalloc(&p, std::max<size_t>(n * 2, 16)), "cudaMalloc");
    std::vector<uint16_t> h(n);
    for (size_t i = 0; i < n; ++i) h[i] = rt::f32_to_bf16(unit_variance_value(static_cast<uint32_t>(i), seed));
    ck(cudaMemcpy(p, h.data(), n * 2, cudaMemcpyHostToDevice), "upload");
  }
  explicit HostFilledBuf(size_t bytes) { ck(cudaMalloc(&p, std::max<size_t>(bytes, 16)), "cudaMalloc"); }
  ~HostFilledBuf() { cudaFree(p); }
  HostFilledBuf(const HostFilledBuf&) = delete;
  HostFilledBuf& operator=(const HostFilledBuf&) = delete;
};

// "a,b" -> {"a", "b"} (empty items dropped).
inline std::vector<std::string> split_list(const char* s) {
  std::vector<std::string> v;
  const std::string str(s);
  for (size_t pos = 0; pos < str.size();) {
    size_t end = str.find(',', pos);
    if (end == std::string::npos) end = str.size();
    if (end > pos) v.push_back(str.substr(pos, end - pos));
    pos = end + 1;
  }
  return v;
}
// "4096,16384" -> {4096, 16384}.
inline std::vector<int64_t> parse_list(const char* s) {
  std::vector<int64_t> v;
  for (const std::string& item : split_list(s)) v.push_back(std::atoll(item.c_str()));
  return v;
}

// Median over reps of one event pair around `inner` calls of fn (per call), after warmup calls.
template <class Fn>
double median_ms(Fn&& fn, int reps, int inner, int warmup) {
  for (int i = 0; i < warmup; ++i) fn();
  ck(cudaDeviceSynchronize(), "warm-up");
  cudaEvent_t a, b;
  ck(cudaEventCreate(&a), "event");
  ck(cudaEventCreate(&b), "event");
  std::vector<float> t;
  for (int r = 0; r < reps; ++r) {
    ck(cudaEventRecord(a), "record");
    for (int i = 0; i < inner; ++i) fn();
    ck(cudaEventRecord(b), "record");
    ck(cudaEventSynchronize(b), "sync");
    float ms = 0;
    ck(cudaEventElapsedTime(&ms, a, b), "elapsed");
    t.push_back(ms / inner);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(t.begin(), t.end());
  return t.size() % 2 ? t[t.size() / 2] : 0.5 * (t[t.size() / 2 - 1] + t[t.size() / 2]);
}

// Exact number of visible (query, key) pairs, causal, window W (0: none), queries = keys = T.
inline double visible_pairs(int64_t T, int64_t W) {
  const double t = static_cast<double>(T);
  if (W <= 0 || W >= T) return t * (t + 1) / 2;
  const double w = static_cast<double>(W);
  return w * (w + 1) / 2 + (t - w) * w;
}

// Pairs for the FLOP convention of the backward benches: T^2/2 without a window (or W >= T),
// the exact visible pairs with one.
inline double flop_pairs(int64_t T, int64_t W) {
  const double t = static_cast<double>(T);
  if (W <= 0 || W >= T) return t * t / 2;
  return visible_pairs(T, W);
}

// Qwen2.5 attention shapes.
struct Model {
  const char* name;
  int64_t Hq, Hkv, D;
};
inline constexpr Model kModels[] = {{"qwen2.5-0.5b", 14, 2, 64}, {"qwen2.5-1.5b", 12, 2, 128}};

// Command line: [--json FILE] [--reps N] [--seqs a,b,...] [--window W] and, where decode is
// accepted, [--decode a,b,...]. Fields hold the defaults on entry.
struct Args {
  const char* json = nullptr;
  int reps = 10;
  std::vector<int64_t> seqs;
  std::vector<int64_t> decode;
  int64_t window = 2048;
};

// Parses argv into a; on an unknown argument prints "usage: <argv0> <usage>" and returns false.
inline bool parse_args(int argc, char** argv, Args& a, bool accept_decode, const char* usage) {
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--json") && i + 1 < argc) a.json = argv[++i];
    else if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) a.reps = std::max(1, std::atoi(argv[++i]));
    else if (!std::strcmp(argv[i], "--seqs") && i + 1 < argc) a.seqs = parse_list(argv[++i]);
    else if (accept_decode && !std::strcmp(argv[i], "--decode") && i + 1 < argc) a.decode = parse_list(argv[++i]);
    else if (!std::strcmp(argv[i], "--window") && i + 1 < argc) a.window = std::atoll(argv[++i]);
    else {
      std::fprintf(stderr, "usage: %s %s\n", argv[0], usage);
      return false;
    }
  }
  return true;
}

// Properties of the current device; prints "<tool>: no CUDA device" and returns false without one.
inline bool device_props(cudaDeviceProp& prop) {
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&prop, dev) != cudaSuccess) {
    std::fprintf(stderr, RT_BENCH_TOOL ": no CUDA device\n");
    return false;
  }
  return true;
}

// Opens the JSON output; prints "<tool>: cannot write FILE" and returns nullptr on failure.
inline FILE* open_json(const char* path) {
  FILE* f = std::fopen(path, "w");
  if (f == nullptr) std::fprintf(stderr, RT_BENCH_TOOL ": cannot write %s\n", path);
  return f;
}

// A JSON number, or null where x is not finite.
inline std::string json_num(double x) { return std::isfinite(x) ? std::to_string(x) : std::string("null"); }

}  // namespace rt::bench
