// What every process group does before its library connects: share one store per process, agree
// on a key prefix for this join, and check that every rank arrived (naming the ones that did not).
// After a collective fails, lost_rank_message() asks the store which rank died.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "dist/process_group.h"
#include "dist/tcp_store.h"

namespace rt::dist {

struct Rendezvous {
  std::shared_ptr<TcpStore> store;
  std::string prefix;  // "pg<N>/": the N-th join of this process, the same N on every rank
};

// Connects (rank 0 serves first), then waits up to `timeout` for every rank's arrival key.
Rendezvous rendezvous(const WorldInfo& world, std::chrono::milliseconds timeout);

// "rank 1 lost (it disconnected from the store without leaving)", "rank 0 lost (...)", or a
// sentence saying no rank is known to have died (one may be stuck). Waits briefly: the dead rank's
// store connection may close a moment after its collective connection did.
std::string lost_rank_message(TcpStore& store);

// allreduce_sum's contract (f32/f64, contiguous, on `device`), checked the same way by every group.
void check_reducible(const TensorView& t, int rank, Device device);

// The launcher-chosen join timeout: RT_DIST_TIMEOUT_S when set, else `fallback`.
std::chrono::milliseconds effective_timeout(std::chrono::seconds fallback);

// Gloo (CPU) and NCCL (CUDA) groups; see process_group_gloo.cpp and nccl_loader.cpp.
std::unique_ptr<ProcessGroup> make_gloo_group(const WorldInfo& world, Rendezvous rv, std::chrono::milliseconds timeout);
std::unique_ptr<ProcessGroup> make_nccl_group(const WorldInfo& world, Rendezvous rv, std::chrono::milliseconds timeout);

}  // namespace rt::dist
