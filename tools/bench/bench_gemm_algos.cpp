// bench_gemm_algos: every cuBLASLt algorithm the heuristic offers (up to 16) for the 0.5B layer's
// GEMMs at T rows, timed, with its algorithm id, tile, stages and split-K, and whether its output
// is bit-equal to the heuristic's first choice (what `linear` took before it tuned: gemm_tune.h).
// Two questions for the prefill: is there a faster algorithm than the first choice (o_proj and
// down_proj accumulate into the f32 residual, beta = 1, and run ~30% under the bf16 GEMMs' rate),
// and would picking one by time keep training bit-reproducible?
//
//   bench_gemm_algos [T=32768] [hidden=896 inter=4864 qkv_out=1152]
//
// Same layout as linear.cpp: y [T, out] = x [T, in] W^T with W [out, in] row-major, i.e. the
// column-major y^T = W x^T with TRANSA = T. Inputs are bf16 random normals (weights at 0.02);
// y is bf16 for the plain GEMMs and f32 for the accumulating ones.
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace {

void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "bench_gemm_algos: %s: %s\n", what, cudaGetErrorString(e));
    std::exit(1);
  }
}
void check_blas(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) {
    std::fprintf(stderr, "bench_gemm_algos: %s: cuBLAS status %d\n", what, static_cast<int>(s));
    std::exit(1);
  }
}

struct GemmShape {
  const char* name;
  int64_t out, in;
  bool accumulate;  // y f32 += x W^T (beta = 1), as linear_accumulate runs o_proj and down_proj
};

void* device_random_bf16(size_t n, uint64_t seed, float stddev) {
  std::vector<__nv_bfloat16> h(n);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.f, stddev);
  for (auto& v : h) v = __float2bfloat16(dist(rng));
  void* d = nullptr;
  check_cuda(cudaMalloc(&d, n * sizeof(__nv_bfloat16)), "cudaMalloc");
  check_cuda(cudaMemcpy(d, h.data(), n * sizeof(__nv_bfloat16), cudaMemcpyHostToDevice), "upload");
  return d;
}

template <typename T>
std::string algo_attr(const cublasLtMatmulAlgo_t& algo, cublasLtMatmulAlgoConfigAttributes_t attr) {
  T v{};
  size_t written = 0;
  if (cublasLtMatmulAlgoConfigGetAttribute(&algo, attr, &v, sizeof v, &written) != CUBLAS_STATUS_SUCCESS)
    return "?";
  return std::to_string(static_cast<long long>(v));
}

void run_shape(cublasLtHandle_t lt, const GemmShape& g, int64_t T, void* workspace, size_t ws_bytes) {
  const size_t nx = static_cast<size_t>(T * g.in), nw = static_cast<size_t>(g.out * g.in),
               ny = static_cast<size_t>(T * g.out);
  void* x = device_random_bf16(nx, 1, 1.f);
  void* w = device_random_bf16(nw, 2, 0.02f);
  const size_t ysize = ny * (g.accumulate ? sizeof(float) : sizeof(__nv_bfloat16));
  void *y = nullptr, *y0 = nullptr, *yref = nullptr;
  check_cuda(cudaMalloc(&y, ysize), "cudaMalloc y");
  check_cuda(cudaMalloc(&y0, ysize), "cudaMalloc y0");
  check_cuda(cudaMalloc(&yref, ysize), "cudaMalloc yref");
  {  // the residual (accumulate) or anything (plain: overwritten): random f32 / zeros
    std::vector<float> h(g.accumulate ? ny : 0);
    std::mt19937_64 rng(3);
    std::normal_distribution<float> dist(0.f, 1.f);
    for (auto& v : h) v = dist(rng);
    if (g.accumulate) check_cuda(cudaMemcpy(y0, h.data(), ysize, cudaMemcpyHostToDevice), "upload y0");
    else check_cuda(cudaMemset(y0, 0, ysize), "memset y0");
  }

  cublasLtMatmulDesc_t desc = nullptr;
  check_blas(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "desc");
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  check_blas(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta), "transa");
  check_blas(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb), "transb");
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, ld = nullptr;
  check_blas(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, g.in, g.out, g.in), "layout a");
  check_blas(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, g.in, T, g.in), "layout b");
  check_blas(cublasLtMatrixLayoutCreate(&ld, g.accumulate ? CUDA_R_32F : CUDA_R_16BF, g.out, T, g.out), "layout d");
  cublasLtMatmulPreference_t pref = nullptr;
  check_blas(cublasLtMatmulPreferenceCreate(&pref), "pref");
  const uint64_t ws = ws_bytes;
  check_blas(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws),
             "pref workspace");
  cublasLtMatmulHeuristicResult_t res[16];
  int found = 0;
  check_blas(cublasLtMatmulAlgoGetHeuristic(lt, desc, la, lb, ld, ld, pref, 16, res, &found), "heuristic");

  const float alpha = 1.f, beta = g.accumulate ? 1.f : 0.f;
  const double flops = 2.0 * static_cast<double>(T) * static_cast<double>(g.out) * static_cast<double>(g.in);
  std::printf("\n%s: y [%lld, %lld] %s= x [%lld, %lld] W^T, %.1f GFLOP, %d algorithms\n", g.name,
              static_cast<long long>(T), static_cast<long long>(g.out), g.accumulate ? "+" : "",
              static_cast<long long>(T), static_cast<long long>(g.in), flops * 1e-9, found);
  std::printf("%5s %6s %6s %7s %8s %10s %9s %s\n", "rank", "id", "tile", "stages", "split-k", "us", "TFLOP/s",
              "bits vs rank 0");
  cudaEvent_t e0, e1;
  check_cuda(cudaEventCreate(&e0), "event");
  check_cuda(cudaEventCreate(&e1), "event");
  std::vector<unsigned char> ref(ysize), got(ysize);
  for (int i = 0; i < found; ++i) {
    auto run = [&] {
      return cublasLtMatmul(lt, desc, &alpha, w, la, x, lb, &beta, y, ld, y, ld, &res[i].algo, workspace, ws_bytes, 0);
    };
    // The output of one call from the same starting y, compared with rank 0's bit for bit.
    check_cuda(cudaMemcpy(y, y0, ysize, cudaMemcpyDeviceToDevice), "reset y");
    if (run() != CUBLAS_STATUS_SUCCESS) {
      std::printf("%5d  (failed to run)\n", i);
      continue;
    }
    check_cuda(cudaDeviceSynchronize(), "run");
    check_cuda(cudaMemcpy(got.data(), y, ysize, cudaMemcpyDeviceToHost), "download");
    if (i == 0) ref = got;
    const bool equal = std::memcmp(ref.data(), got.data(), ysize) == 0;
    for (int r = 0; r < 3; ++r) run();  // warm-up
    constexpr int kReps = 20;
    std::vector<float> ms(kReps);
    for (int r = 0; r < kReps; ++r) {
      check_cuda(cudaEventRecord(e0, 0), "record");
      run();
      check_cuda(cudaEventRecord(e1, 0), "record");
      check_cuda(cudaEventSynchronize(e1), "sync");
      check_cuda(cudaEventElapsedTime(&ms[r], e0, e1), "elapsed");
    }
    std::sort(ms.begin(), ms.end());
    const double us = ms[kReps / 2] * 1e3;
    std::printf("%5d %6s %6s %7s %8s %10.1f %9.1f %s\n", i, algo_attr<int>(res[i].algo, CUBLASLT_ALGO_CONFIG_ID).c_str(),
                algo_attr<uint32_t>(res[i].algo, CUBLASLT_ALGO_CONFIG_TILE_ID).c_str(),
                algo_attr<uint32_t>(res[i].algo, CUBLASLT_ALGO_CONFIG_STAGES_ID).c_str(),
                algo_attr<uint32_t>(res[i].algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM).c_str(), us, flops / us * 1e-6,
                i == 0 ? "(reference)" : equal ? "equal" : "DIFFER");
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cublasLtMatmulPreferenceDestroy(pref);
  cublasLtMatrixLayoutDestroy(la);
  cublasLtMatrixLayoutDestroy(lb);
  cublasLtMatrixLayoutDestroy(ld);
  cublasLtMatmulDescDestroy(desc);
  for (void* p : {x, w, y, y0, yref}) cudaFree(p);
}

}  // namespace

int main(int argc, char** argv) {
  auto arg = [&](int i, int64_t def) { return argc > i ? std::atoll(argv[i]) : def; };
  const int64_t T = arg(1, 32768), hidden = arg(2, 896), inter = arg(3, 4864), qkv_out = arg(4, 1152);
  if (T < 1 || hidden < 1 || inter < 1 || qkv_out < 1) {
    std::fprintf(stderr, "usage: bench_gemm_algos [T=32768] [hidden=896 inter=4864 qkv_out=1152] (all >= 1)\n");
    return 2;
  }
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) {
    std::fprintf(stderr, "bench_gemm_algos: no CUDA device\n");
    return 1;
  }
  cudaDeviceProp prop{};
  check_cuda(cudaGetDeviceProperties(&prop, dev), "device properties");
  std::printf("device: %s, T = %lld, median of 20 calls each\n", prop.name, static_cast<long long>(T));
  cublasLtHandle_t lt = nullptr;
  check_blas(cublasLtCreate(&lt), "cublasLtCreate");
  constexpr size_t kWorkspace = 32u << 20;  // as linear.cpp
  void* workspace = nullptr;
  check_cuda(cudaMalloc(&workspace, kWorkspace), "workspace");
  const GemmShape shapes[] = {
      {"o_proj (into the f32 residual)", hidden, hidden, true},
      {"down_proj (into the f32 residual)", hidden, inter, true},
      {"gate/up", 2 * inter, hidden, false},
      {"q/k/v", qkv_out, hidden, false},
  };
  for (const auto& g : shapes) run_shape(lt, g, T, workspace, kWorkspace);
  cudaFree(workspace);
  cublasLtDestroy(lt);
  return 0;
}
