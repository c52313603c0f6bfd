// Choosing among cuBLASLt's algorithms by time, without giving up bit-reproducibility.
//
// cuBLASLt's heuristic ranks algorithms by a model, not a measurement: on the H100 its first
// choice for the 0.5B layer's GEMMs at 32K rows ran 7-16% under the fastest of its own top eight
// (tools/bench/bench_gemm_algos.cpp; o_proj into the f32 residual 162.7 against 138.5 us, down_proj
// 449.0 against 387.2). A shape's first call times the candidates once and keeps the fastest, but
// only one whose output equals the first choice's bit for bit on the rows it compares (the first
// and last rows of the output; no split-K candidate is considered). The first choice is a function
// of the shape and the GPU, so the bits of every GEMM stay what they were without tuning: a run and
// its resume agree whichever candidate each one's timing picks.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <cstddef>

namespace rt::cuda {

// One cuBLASLt matmul as GemmContext runs it: D = alpha op(A) op(B) + beta D (C is D), with the
// bias pointer (if any) already set on desc. D is column-major [m, n] with leading dimension ld.
struct GemmCall {
  cublasLtHandle_t handle;
  cublasLtMatmulDesc_t desc;
  cublasLtMatrixLayout_t a, b, d;
  const void* A;
  const void* B;
  void* D;
  float beta;
  size_t m, n, ld, elem_bytes;  // D's shape, leading dimension and element size
  void* workspace;
  size_t workspace_bytes;
};

// Whether GEMMs are tuned at all: RT_GEMM_TUNE=0 turns it off (the heuristic's first choice
// everywhere), unset or 1 on.
bool gemm_tuning_enabled();

// The algorithm to keep for this call's shape: candidates[0] (the heuristic's first choice)
// unless a faster one of the others gives the same bits (see above). Runs the candidates on the
// call's operands; with beta = 0 they write D (which the caller's real call then overwrites),
// with beta = 1 a scratch copy of D's first rows, at most 64 MiB of them (so that tuning adds
// little to a training step's peak memory; the time and the bits are those of that slice).
// Returns candidates[0] without running anything when tuning is off, the stream is being captured
// into a graph or the GEMM is small (under a GFLOP), and untuned when the scratch cannot be had.
cublasLtMatmulAlgo_t tuned_algo(const GemmCall& call, const cublasLtMatmulAlgo_t* candidates, int n_candidates,
                                double flops, cudaStream_t stream);

}  // namespace rt::cuda
