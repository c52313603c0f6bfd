// A rank of a test world: joins the world from the launcher's variables, allreduces f32 and f64
// tensors and broadcasts bytes, checks every value, and prints "rank R checksum C" (C is the same
// on every rank and predictable by the test: see expected_checksum in test_dist_launch.cpp).
//
// Environment knobs for the failure tests:
//   RT_PROBE_DEVICE=cuda           tensors on the GPU (the NCCL group), via the CUDA backend module
//   RT_PROBE_EXIT_BEFORE_JOIN=R    rank R exits with code 4 before joining
//   RT_PROBE_EXIT_AFTER_JOIN=R     rank R exits with code 3 once every rank has joined (a barrier:
//                                  joins finish at different times on different ranks), before the
//                                  collectives
//   RT_PROBE_OTHERS_SLEEP=S        with RT_PROBE_EXIT_AFTER_JOIN, the other ranks sleep S seconds
//                                  before their collectives, so that only a launcher stops them
//                                  (without it they fail at once in the collective, which races
//                                  with the launcher's view of which rank failed first)
// `dist_allreduce_probe store-set HOST PORT RANK KEY VALUE` instead connects to a TCP store as
// RANK, sets KEY and dies without leaving (the store tests' second process).
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "dist/process_group.h"
#include "dist/tcp_store.h"
#include "plugin_host/backend_module.h"
#include "rt/sdk/error.h"
#include "rt/sdk/ops.h"

namespace {

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v ? std::atoi(v) : fallback;
}

// Copies host data to the group's device and back (identity on the CPU).
struct Staging {
  std::unique_ptr<rt::Ops> ops;  // null: CPU
  template <typename T>
  void reduce(rt::dist::ProcessGroup& pg, std::vector<T>& host, rt::DType dtype) {
    const int64_t n = static_cast<int64_t>(host.size()), nbytes = n * static_cast<int64_t>(sizeof(T));
    if (!ops) return pg.allreduce_sum(rt::TensorView::contiguous(host.data(), dtype, rt::Device::CPU, {n}));
    // Device memory as bytes: the CUDA backend allocates no f64 tensors, but NCCL reduces f64
    // buffers (the group's sums of losses and counts), so the view is typed over raw bytes.
    rt::Tensor bytes = ops->alloc(rt::DType::U8, {nbytes});
    auto host_bytes = rt::TensorView::contiguous(host.data(), rt::DType::U8, rt::Device::CPU, {nbytes});
    ops->copy(host_bytes, bytes.view);
    ops->synchronize();
    pg.allreduce_sum(rt::TensorView::contiguous(bytes.view.data, dtype, bytes.view.device, {n}));
    ops->copy(bytes.view, host_bytes);
    ops->synchronize();
  }
  void broadcast(rt::dist::ProcessGroup& pg, std::vector<uint8_t>& host, int root) {
    auto cpu = rt::TensorView::contiguous(host.data(), rt::DType::U8, rt::Device::CPU, {static_cast<int64_t>(host.size())});
    if (!ops) return pg.broadcast(cpu, root);
    rt::Tensor dev = ops->alloc(rt::DType::U8, {static_cast<int64_t>(host.size())});
    ops->copy(cpu, dev.view);
    ops->synchronize();
    pg.broadcast(dev.view, root);
    ops->copy(dev.view, cpu);
    ops->synchronize();
  }
};

int store_set(char** argv) {
  rt::dist::TcpStore* store = new rt::dist::TcpStore(argv[2], std::atoi(argv[3]), std::atoi(argv[4]), false,
                                                     std::chrono::seconds(10));
  store->set(argv[5], argv[6]);
  std::fflush(stdout);
  _exit(0);  // no goodbye: the store must report this rank as lost
}

int run() {
  const auto world = rt::dist::world_from_env();
  RT_CHECK(world.has_value(), "dist_allreduce_probe: no launcher variables (run it under runtime launch)");
  const int rank = world->rank, n = world->world_size;
  if (env_int("RT_PROBE_EXIT_BEFORE_JOIN", -1) == rank) _exit(4);
  const bool cuda = std::getenv("RT_PROBE_DEVICE") && std::string(std::getenv("RT_PROBE_DEVICE")) == "cuda";
  Staging st;
  if (cuda) st.ops = rt::load_backend_ops("cuda", world->local_rank);
  auto pg = rt::dist::join_process_group(*world, cuda ? rt::Device::CUDA : rt::Device::CPU);
  RT_CHECK(pg->rank() == rank && pg->size() == n, "group rank/size mismatch");
  if (const int leaver = env_int("RT_PROBE_EXIT_AFTER_JOIN", -1); leaver >= 0) {
    pg->barrier();
    if (leaver == rank) _exit(3);
    if (const int wait_s = env_int("RT_PROBE_OTHERS_SLEEP", 0); wait_s > 0) ::sleep(static_cast<unsigned>(wait_s));
  }

  // Integers and halves: sums are exact in both precisions, so the check can be ==.
  std::vector<float> f(1000);
  for (size_t i = 0; i < f.size(); ++i) f[i] = static_cast<float>((rank + 1) * (i % 17)) + 0.5f;
  st.reduce(*pg, f, rt::DType::F32);
  std::vector<double> d(3001);
  for (size_t i = 0; i < d.size(); ++i) d[i] = static_cast<double>(rank * 1000 + i) * 0.25;
  st.reduce(*pg, d, rt::DType::F64);
  double checksum = 0;
  const double ranks_sum = n * (n + 1) / 2.0;
  for (size_t i = 0; i < f.size(); ++i) {
    const float want = static_cast<float>(ranks_sum * (i % 17) + 0.5 * n);
    RT_CHECK(f[i] == want, "rank ", rank, ": f32 sum at ", i, " is ", f[i], ", expected ", want);
    checksum += f[i];
  }
  for (size_t i = 0; i < d.size(); ++i) {
    const double want = (1000.0 * (n * (n - 1) / 2.0) + n * static_cast<double>(i)) * 0.25;
    RT_CHECK(d[i] == want, "rank ", rank, ": f64 sum at ", i, " is ", d[i], ", expected ", want);
    checksum += d[i];
  }
  const int root = n - 1;
  std::vector<uint8_t> bytes(777, rank == root ? 0 : 0xEE);
  if (rank == root)
    for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(i * 7 + 3);
  st.broadcast(*pg, bytes, root);
  for (size_t i = 0; i < bytes.size(); ++i) {
    RT_CHECK(bytes[i] == static_cast<uint8_t>(i * 7 + 3), "rank ", rank, ": broadcast byte ", i, " differs");
    checksum += bytes[i];
  }
  pg->barrier();
  std::printf("rank %d checksum %.2f\n", rank, checksum);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (argc == 7 && std::string(argv[1]) == "store-set") return store_set(argv);
    return run();
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
