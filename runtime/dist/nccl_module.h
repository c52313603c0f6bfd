// The ABI between the runtime and bin/backends/librt_dist_nccl.so, the CUDA process group. NCCL
// and the CUDA runtime live in that module only, as the CUDA backend lives in
// librt_backend_cuda.so: the runtime links neither and starts on machines without them. A separate
// module rather than a function in the backend's table keeps the backend module ABI unchanged and
// lets a CUDA build without NCCL still load its backend. Both modules use the shared CUDA runtime
// (libcudart.so), so they see the same devices and contexts.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "dist/process_group.h"

namespace rt::dist {

inline constexpr uint32_t kNcclModuleAbiVersion = 1;
inline constexpr const char* kNcclModuleFile = "librt_dist_nccl.so";
inline constexpr const char* kNcclModuleEntrySymbol = "rt_dist_nccl_module_entry";

struct NcclModuleDescriptor {
  uint32_t abi_version;      // must stay the first member
  uint32_t ops_abi_version;  // kPluginAbiVersion of the SDK it was built with (TensorView's layout)
  size_t unique_id_bytes;    // sizeof(ncclUniqueId)
  // True when a CUDA device and NCCL can be used; otherwise false with the reason. Never throws.
  bool (*available)(std::string* why);
  // Rank 0 makes the id that every rank then passes to create(). Throws rt::Error.
  void (*make_unique_id)(void* out);
  // ncclCommInitRank on GPU local_rank % device count; collectives fail after timeout_ms. Throws
  // rt::Error. The caller deletes the group (its destructor lives in the module, which stays loaded).
  ProcessGroup* (*create)(const void* unique_id, int rank, int size, int local_rank, int64_t timeout_ms);
};

using NcclModuleEntryFn = const NcclModuleDescriptor* (*)();

}  // namespace rt::dist
