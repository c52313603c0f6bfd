// Data parallelism's communication: which process this is in a world of N, and the collectives
// the trainer, eval and profile need. A world is joined from the launcher's environment
// (torchrun's RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT, OpenMPI's
// OMPI_COMM_WORLD_*, PMI / Slurm), with a small TCP store on MASTER_ADDR:MASTER_PORT for the
// rendezvous. CPU tensors go through Gloo; CUDA tensors through NCCL (its unique id exchanged
// through the same store). A rank that dies makes the others fail with a clear error within the
// timeout, never hang.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "rt/sdk/tensor.h"

namespace rt::dist {

struct WorldInfo {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  std::string master_addr;  // rendezvous host (rank 0 serves the store there)
  int master_port = 0;
  std::string source;  // which launcher's variables it came from ("torchrun", "openmpi", "pmi", "slurm")
};

// The world this process was launched into, or nullopt when no launcher variables are set (a plain
// single-process run). Inconsistent or partial variables are an rt::Error naming them.
std::optional<WorldInfo> world_from_env();

// Makes this process use the GPU of its local rank: entry local_rank of CUDA_VISIBLE_DEVICES when
// the launcher set a list (the devices the node gives the job), else device local_rank, as the only
// visible device. Call it before the CUDA backend loads.
void use_local_gpu(int local_rank);

class ProcessGroup {
 public:
  virtual ~ProcessGroup() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // In place: every rank ends with the element-wise sum over ranks. F32 or F64, contiguous, on the
  // device the group serves (CPU: Gloo; CUDA: NCCL). Same element order on every rank, so every
  // rank gets the same bits.
  virtual void allreduce_sum(TensorView t) = 0;
  // In place: every rank ends with root's bytes (any dtype, contiguous).
  virtual void broadcast(TensorView t, int root) = 0;
  virtual void barrier() = 0;
};

// Joins `world` for tensors on `device` (Device::CPU: Gloo over TCP; Device::CUDA: NCCL). Blocks
// until every rank has joined, or fails after `timeout` naming the ranks that did not arrive.
// RT_DIST_TIMEOUT_S (seconds), when set, replaces `timeout`, which also bounds every collective:
// a rank that dies makes the others throw rt::Error ("rank 1 lost ...") within it. CUDA: the group
// uses GPU local_rank % device count (create the CUDA Ops with that index) and is loaded from
// bin/backends/librt_dist_nccl.so, so the runtime links no NCCL; each collective waits for the
// device to finish pending work first, and returns when its result is there. Joining a world of
// more than one sets SIGPIPE to ignored (if it was the default), so a dead peer is an error.
std::unique_ptr<ProcessGroup> join_process_group(const WorldInfo& world, Device device,
                                                 std::chrono::seconds timeout = std::chrono::seconds(120));

// A world of one (no communication): what a single-process run uses, so callers need no branches.
std::unique_ptr<ProcessGroup> single_process_group();

}  // namespace rt::dist
