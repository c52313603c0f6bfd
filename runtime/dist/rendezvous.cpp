#include "dist/rendezvous.h"

#include <atomic>
#include <map>
#include <mutex>
#include <thread>

#include "rt/sdk/error.h"

namespace rt::dist {

Rendezvous rendezvous(const WorldInfo& world, std::chrono::milliseconds timeout) {
  RT_CHECK(world.world_size > 1 && world.rank >= 0 && world.rank < world.world_size,
           "join_process_group: rank ", world.rank, " of a world of ", world.world_size, " needs no rendezvous");
  RT_CHECK(!world.master_addr.empty() && world.master_port > 0 && world.master_port <= 65535,
           "join_process_group: rank ", world.rank, " has no rendezvous address (MASTER_ADDR='", world.master_addr,
           "', MASTER_PORT=", world.master_port, ")");
  // One store per address per process: a second group (CPU and CUDA in one run) reuses it, as rank
  // 0 cannot listen on the port twice.
  static std::mutex mu;
  static std::map<std::string, std::weak_ptr<TcpStore>> stores;
  static std::atomic<int> joins{0};
  Rendezvous rv;
  {
    std::lock_guard<std::mutex> lock(mu);
    const std::string key = world.master_addr + ":" + std::to_string(world.master_port);
    rv.store = stores[key].lock();
    if (!rv.store) {
      rv.store = std::make_shared<TcpStore>(world.master_addr, world.master_port, world.rank, world.rank == 0, timeout);
      stores[key] = rv.store;
    }
  }
  rv.prefix = "pg" + std::to_string(joins++) + "/";
  rv.store->set(rv.prefix + "arrived/" + std::to_string(world.rank), "1");
  std::vector<std::string> keys;
  for (int r = 0; r < world.world_size; ++r) keys.push_back(rv.prefix + "arrived/" + std::to_string(r));
  const std::vector<std::string> absent = [&] {
    try {
      rv.store->wait(keys, timeout);
      return std::vector<std::string>{};
    } catch (const Error&) {
      return rv.store->missing(keys);
    }
  }();
  if (!absent.empty()) {
    std::string ranks;
    for (const auto& k : absent) ranks += (ranks.empty() ? "" : ", ") + k.substr(k.rfind('/') + 1);
    fail("rank ", world.rank, ": joining the process group of ", world.world_size, " at ", rv.store->address(),
         ": rank", absent.size() > 1 ? "s " : " ", ranks, " did not arrive within ", timeout.count() / 1000.0,
         " s (not started, crashed, or given another MASTER_ADDR/MASTER_PORT; RT_DIST_TIMEOUT_S sets the timeout)");
  }
  return rv;
}

std::string lost_rank_message(TcpStore& store) {
  try {
    for (int attempt = 0; attempt < 20; ++attempt) {
      const std::vector<int> lost = store.lost_ranks();
      if (!lost.empty()) {
        std::string ranks;
        for (int r : lost) ranks += (ranks.empty() ? "" : ", ") + std::to_string(r);
        return "rank " + ranks + " lost (exited or crashed without leaving the group)";
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return "no rank is known to have exited: a rank may be stuck, or the network failed";
  } catch (const Error&) {
    return "rank 0 lost (the store it served at " + store.address() + " is gone)";
  }
}

void check_reducible(const TensorView& t, int rank, Device device) {
  RT_CHECK(t.dtype == DType::F32 || t.dtype == DType::F64, "rank ", rank, ": allreduce_sum takes f32 or f64 tensors, not ",
           dtype_name(t.dtype));
  RT_CHECK(t.device == device, "rank ", rank, ": this process group reduces ", device_name(device), " tensors, not ",
           device_name(t.device));
  RT_CHECK(t.is_contiguous(), "rank ", rank, ": allreduce_sum needs a contiguous tensor, got shape ", t.shape_str());
}

std::chrono::milliseconds effective_timeout(std::chrono::seconds fallback) {
  const char* v = std::getenv("RT_DIST_TIMEOUT_S");
  if (v == nullptr || *v == '\0') return fallback;
  char* end = nullptr;
  const double s = std::strtod(v, &end);
  RT_CHECK(end != nullptr && *end == '\0' && s > 0 && s < 1e7, "RT_DIST_TIMEOUT_S=", v,
           " is not a positive number of seconds");
  return std::chrono::milliseconds(static_cast<int64_t>(s * 1000));
}

}  // namespace rt::dist
