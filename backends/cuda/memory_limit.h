// RT_CUDA_MEMORY_LIMIT: run as if the GPU had only this much memory, e.g. "24GiB" on an H200 to
// see what fits on a 24 GB RTX 4090. Allocations past it fail as on that card, and the plans that
// scale with the device's memory (cuDNN's backward workspace, at most a quarter of it) are chosen
// for it. It counts what the runtime allocates (tensors and scratch), not the CUDA context or the
// libraries' own handles.
#pragma once

#include <cstddef>
#include <string_view>

namespace rt::cuda {

// Bytes from "24GiB", "24 GiB", "1536MiB", "24GB" (10^9), "25769803776" (bytes); the units B, KiB,
// MiB, GiB, TiB, KB, MB, GB, TB, case-insensitive. Throws rt::Error naming `var`, the value and the
// accepted forms for anything else (0, negative, fractions of a byte, overflow).
size_t parse_memory_size(std::string_view value, const char* var);

// RT_CUDA_MEMORY_LIMIT in bytes, read once; 0 when unset or empty.
size_t memory_limit_bytes();

// The memory to plan with on a device of total_bytes: total_bytes, or the limit where it is lower.
inline size_t memory_budget(size_t total_bytes) {
  const size_t limit = memory_limit_bytes();
  return limit > 0 && (total_bytes == 0 || limit < total_bytes) ? limit : total_bytes;
}

}  // namespace rt::cuda
