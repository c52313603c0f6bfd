// Which kernel family an attention pass runs on an sm_90 GPU, chosen by an environment variable
// (RT_ATTN_FWD for the forward, RT_ATTN_BWD for the backward): wgmma = the Hopper kernels or an
// error; mma = the mma.sync kernels (sm_89's, testable on Hopper by forcing them); auto (unset
// or empty) = the pass's default.
#pragma once

namespace rt::cuda::attn_launch {

enum class KernelPath { Auto, Wgmma, Mma };

// Parses environment variable `var` once per call; an unknown value fails with the accepted ones.
KernelPath kernel_path_from_env(const char* var);

}  // namespace rt::cuda::attn_launch
