// The runtime's side of the CUDA process group: load librt_dist_nccl.so (nccl_module.h), share
// rank 0's NCCL id through the store, and add the store's view of which rank died to the errors.
#include <dlfcn.h>

#include <filesystem>

#include "dist/nccl_module.h"
#include "dist/rendezvous.h"
#include "plugin_host/backend_module.h"
#include "plugin_host/elf_check.h"
#include "rt/sdk/error.h"
#include "rt/sdk/plugin.h"

namespace rt::dist {
namespace {

const NcclModuleDescriptor& load_nccl_module(int rank) {
  static const NcclModuleDescriptor* loaded = nullptr;
  if (loaded != nullptr) return *loaded;
  std::string searched;
  const std::filesystem::path path = find_backend_module(kNcclModuleFile, &searched);
  RT_CHECK(!path.empty(), "rank ", rank, ": a CUDA process group needs ", kNcclModuleFile, ", which was not found (searched ",
           searched, "): it is built with the CUDA backend when NCCL is found at configure time (libnccl-dev, or "
           "the CUDA toolkit's NCCL)");
  if (const std::string problem = elf_shared_object_problem(path); !problem.empty())
    fail("rank ", rank, ": cannot load ", path.string(), ": ", problem, "; rebuild or reinstall it");
  // Never unloaded: the group it creates, and the errors it throws, refer to its code.
  void* lib = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
  RT_CHECK(lib != nullptr, "rank ", rank, ": cannot load ", path.string(), ": ", ::dlerror(),
           " (NCCL or the CUDA runtime may be missing: see `ldd ", path.string(), "`)");
  auto entry = reinterpret_cast<NcclModuleEntryFn>(::dlsym(lib, kNcclModuleEntrySymbol));
  RT_CHECK(entry != nullptr, path.string(), " does not export ", kNcclModuleEntrySymbol);
  const NcclModuleDescriptor* d = entry();
  RT_CHECK(d != nullptr && d->abi_version == kNcclModuleAbiVersion, path.string(), " speaks NCCL module ABI ",
           d ? d->abi_version : 0, ", this runtime ", kNcclModuleAbiVersion, "; rebuild it with this runtime");
  RT_CHECK(d->ops_abi_version == kPluginAbiVersion && d->available && d->make_unique_id && d->create,
           path.string(), " was built against SDK ABI ", d->ops_abi_version, " (this runtime: ", kPluginAbiVersion,
           ") or lacks a function; rebuild it with this runtime");
  loaded = d;
  return *d;
}

// Adds which rank died (from the store) to the module's error.
class NcclGroup final : public ProcessGroup {
 public:
  NcclGroup(std::unique_ptr<ProcessGroup> inner, Rendezvous rv) : inner_(std::move(inner)), rv_(std::move(rv)) {}
  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  void allreduce_sum(TensorView t) override {
    check_reducible(t, rank(), Device::CUDA);
    guarded([&] { inner_->allreduce_sum(t); });
  }
  void broadcast(TensorView t, int root) override {
    guarded([&] { inner_->broadcast(t, root); });
  }
  void barrier() override {
    guarded([&] { inner_->barrier(); });
  }

 private:
  template <typename F>
  void guarded(F&& f) {
    try {
      f();
    } catch (const std::exception& e) {
      fail(e.what(), "; ", lost_rank_message(*rv_.store));
    }
  }
  std::unique_ptr<ProcessGroup> inner_;
  Rendezvous rv_;
};

}  // namespace

std::unique_ptr<ProcessGroup> make_nccl_group(const WorldInfo& world, Rendezvous rv, std::chrono::milliseconds timeout) {
  const NcclModuleDescriptor& m = load_nccl_module(world.rank);
  std::string why;
  RT_CHECK(m.available(&why), "rank ", world.rank, ": cannot join a CUDA process group: ", why);
  const std::string key = rv.prefix + "nccl/unique_id";
  std::string id(m.unique_id_bytes, '\0');
  if (world.rank == 0) {
    m.make_unique_id(id.data());
    rv.store->set(key, id);
  } else {
    id = rv.store->get(key, timeout);
    RT_CHECK(id.size() == m.unique_id_bytes, "rank ", world.rank, ": the NCCL id from rank 0 has ", id.size(),
             " bytes, expected ", m.unique_id_bytes, " (ranks built against different NCCL versions?)");
  }
  std::unique_ptr<ProcessGroup> inner;
  try {
    inner.reset(m.create(id.data(), world.rank, world.world_size, world.local_rank, static_cast<int64_t>(timeout.count())));
  } catch (const std::exception& e) {
    fail(e.what(), "; ", lost_rank_message(*rv.store));
  }
  RT_CHECK(inner != nullptr, "rank ", world.rank, ": ", kNcclModuleFile, " created no group");
  return std::make_unique<NcclGroup>(std::move(inner), std::move(rv));
}

}  // namespace rt::dist
