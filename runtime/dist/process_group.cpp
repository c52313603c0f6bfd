// single_process_group() and join_process_group(): the world of one, and the choice of library.
#include <signal.h>

#include <cstring>

#include "dist/process_group.h"
#include "dist/rendezvous.h"
#include "rt/sdk/error.h"

namespace rt::dist {
namespace {

class SingleProcessGroup final : public ProcessGroup {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void allreduce_sum(TensorView t) override { check_reducible(t, 0, t.device); }
  void broadcast(TensorView, int root) override {
    RT_CHECK(root == 0, "broadcast: root ", root, " is not a rank of a world of one");
  }
  void barrier() override {}
};

}  // namespace

#ifndef RT_HAVE_GLOO
std::unique_ptr<ProcessGroup> make_gloo_group(const WorldInfo& world, Rendezvous, std::chrono::milliseconds) {
  fail("rank ", world.rank, ": this runtime was built without Gloo: install libgloo-dev and rebuild");
}
#endif

std::unique_ptr<ProcessGroup> single_process_group() { return std::make_unique<SingleProcessGroup>(); }

std::unique_ptr<ProcessGroup> join_process_group(const WorldInfo& world, Device device, std::chrono::seconds timeout) {
  RT_CHECK(world.world_size >= 1 && world.rank >= 0 && world.rank < world.world_size, "join_process_group: rank ",
           world.rank, " is not in a world of ", world.world_size);
  if (world.world_size == 1) return single_process_group();
  const std::chrono::milliseconds t = effective_timeout(timeout);
#ifndef RT_HAVE_GLOO
  // Before the rendezvous: every rank fails alike, at once, rather than rank 0 waiting for the rest.
  RT_CHECK(device != Device::CPU, "rank ", world.rank, ": a world of ", world.world_size,
           " on the CPU needs Gloo, and this runtime was built without it: install libgloo-dev "
           "(apt-get install libgloo-dev, or bash tools/setup.sh) and rebuild");
#endif
  // Gloo (and NCCL's socket transport) write to peers without MSG_NOSIGNAL: a dead peer would kill
  // this process with SIGPIPE instead of failing the collective with a message naming the rank.
  struct sigaction current {};
  if (::sigaction(SIGPIPE, nullptr, &current) == 0 && current.sa_handler == SIG_DFL) ::signal(SIGPIPE, SIG_IGN);
  Rendezvous rv = rendezvous(world, t);
  return device == Device::CPU ? make_gloo_group(world, std::move(rv), t) : make_nccl_group(world, std::move(rv), t);
}

}  // namespace rt::dist
