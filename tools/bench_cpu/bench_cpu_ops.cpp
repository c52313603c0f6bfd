// CPU backend timings at Qwen2.5-0.5B shapes: build/bin/bench_cpu_ops [--threads N].
// Benchmarks live here, not in the unit tests: these numbers depend on the machine.
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>

#include "cpu/cpu_ops.h"
#include "rt/sdk/half.h"

namespace {

std::unique_ptr<rt::Ops> ops;

rt::Tensor randn(std::initializer_list<int64_t> shape, float sd = 1.f) {
  rt::Tensor t = ops->alloc(rt::DType::F32, shape);
  std::mt19937 gen(42);
  std::normal_distribution<float> dist(0.f, sd);
  for (int64_t i = 0; i < t.view.numel(); ++i) t.ptr<float>()[i] = dist(gen);
  return t;
}

template <typename F>
double time_ms(F&& f, int reps) {
  f();  // warm up
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < reps; ++i) f();
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / reps;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 3 && std::strcmp(argv[1], "--threads") == 0) omp_set_num_threads(std::atoi(argv[2]));
  ops = rt::make_cpu_ops();
  std::printf("threads: %d\n", omp_get_max_threads());
  {
    rt::Tensor q = randn({4096, 14, 64}), k = randn({4096, 2, 64}), v = randn({4096, 2, 64});
    rt::Tensor o = ops->alloc(rt::DType::F32, {4096, 14, 64});
    rt::AttentionSpec spec;
    std::printf("attention prefill T=4096 Hq=14 Hkv=2 D=64 causal: %.1f ms\n",
                time_ms([&] { ops->attention(q, k, v, o, spec); }, 3));
    spec.window = 1024;
    std::printf("attention prefill T=4096 Hq=14 Hkv=2 D=64 window=1024: %.1f ms\n",
                time_ms([&] { ops->attention(q, k, v, o, spec); }, 3));
  }
  {
    rt::Tensor q = randn({1, 14, 64}), k = randn({32768, 2, 64}), v = randn({32768, 2, 64});
    rt::Tensor o = ops->alloc(rt::DType::F32, {1, 14, 64});
    rt::AttentionSpec spec;
    spec.q_pos0 = 32767;
    std::printf("attention decode Tk=32768 Hq=14 Hkv=2 D=64: %.2f ms\n",
                time_ms([&] { ops->attention(q, k, v, o, spec); }, 10));
  }
  {
    rt::Tensor x = randn({1, 896}), w = randn({151936, 896}, 0.05f);
    rt::Tensor y = ops->alloc(rt::DType::F32, {1, 151936});
    std::printf("linear 1x896 @ 151936x896 (f32 W): %.1f ms\n",
                time_ms([&] { ops->linear(x, w, rt::TensorView{}, y); }, 5));
    rt::Tensor wb = ops->alloc(rt::DType::BF16, {151936, 896});
    ops->copy(w, wb);
    std::printf("linear 1x896 @ 151936x896 (bf16 W): %.1f ms\n",
                time_ms([&] { ops->linear(x, wb, rt::TensorView{}, y); }, 3));
  }
  {
    rt::Tensor x = randn({512, 896}), w = randn({4864, 896}, 0.05f);
    rt::Tensor y = ops->alloc(rt::DType::F32, {512, 4864});
    const double ms = time_ms([&] { ops->linear(x, w, rt::TensorView{}, y); }, 3);
    std::printf("linear 512x896 @ 4864x896: %.1f ms (%.1f GFLOP/s)\n", ms, 2.0 * 512 * 896 * 4864 / ms / 1e6);
  }
  return 0;
}
