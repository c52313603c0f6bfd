// The CPU process group on Gloo: our TCP store as Gloo's rendezvous store, a full mesh of TCP
// pairs on the interface that reaches MASTER_ADDR, and Gloo's ring allreduce (reduce-scatter then
// allgather: each element is summed once, in one place, so every rank gets the same bits).
// Gloo's timeout is the join timeout, so a dead peer ends a collective with an rt::Error naming
// the rank (asked of the store) instead of a hang.
#include <gloo/allreduce.h>
#include <gloo/barrier.h>
#include <gloo/broadcast.h>
#include <gloo/common/error.h>
#include <gloo/math.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/store.h>
#include <gloo/transport/tcp/device.h>

#include <functional>

#include "dist/rendezvous.h"
#include "dist/socket_io.h"
#include "rt/sdk/error.h"

namespace rt::dist {
namespace {

class GlooStore final : public gloo::rendezvous::Store {
 public:
  GlooStore(TcpStore& store, std::string prefix, std::chrono::milliseconds timeout)
      : store_(store), prefix_(std::move(prefix)), timeout_(timeout) {}
  void set(const std::string& key, const std::vector<char>& data) override {
    store_.set(prefix_ + key, std::string(data.begin(), data.end()));
  }
  std::vector<char> get(const std::string& key) override {
    const std::string v = store_.get(prefix_ + key, timeout_);
    return {v.begin(), v.end()};
  }
  void wait(const std::vector<std::string>& keys) override { wait(keys, timeout_); }
  void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) override {
    std::vector<std::string> full;
    for (const auto& k : keys) full.push_back(prefix_ + k);
    store_.wait(full, timeout);
  }

 private:
  TcpStore& store_;
  std::string prefix_;
  std::chrono::milliseconds timeout_;
};

class GlooGroup final : public ProcessGroup {
 public:
  GlooGroup(const WorldInfo& world, Rendezvous rv, std::chrono::milliseconds timeout)
      : rank_(world.rank), size_(world.world_size), rv_(std::move(rv)), timeout_(timeout) {
    guarded("joining (Gloo rendezvous)", [&] {
      gloo::transport::tcp::attr attr;
      attr.hostname = local_address_towards(world.master_addr);
      auto device = gloo::transport::tcp::CreateDevice(attr);
      context_ = std::make_shared<gloo::rendezvous::Context>(rank_, size_);
      context_->setTimeout(timeout_);
      GlooStore store(*rv_.store, rv_.prefix + "gloo/", timeout_);
      context_->connectFullMesh(store, device);
    });
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }

  void allreduce_sum(TensorView t) override {
    check_reducible(t, rank_, Device::CPU);
    if (t.numel() == 0) return;
    guarded("allreduce_sum", [&] {
      gloo::AllreduceOptions opts(context_);
      opts.setTag(next_tag());
      opts.setTimeout(timeout_);
      const size_t n = static_cast<size_t>(t.numel());
      if (t.dtype == DType::F32) {
        opts.setOutput(t.ptr<float>(), n);
        opts.setReduceFunction(static_cast<void (*)(void*, const void*, const void*, size_t)>(&gloo::sum<float>));
      } else {
        opts.setOutput(t.ptr<double>(), n);
        opts.setReduceFunction(static_cast<void (*)(void*, const void*, const void*, size_t)>(&gloo::sum<double>));
      }
      gloo::allreduce(opts);
    });
  }

  void broadcast(TensorView t, int root) override {
    RT_CHECK(root >= 0 && root < size_, "rank ", rank_, ": broadcast root ", root, " is not a rank of a world of ",
             size_);
    RT_CHECK(t.device == Device::CPU, "rank ", rank_, ": the Gloo group broadcasts CPU tensors, not ",
             device_name(t.device));
    RT_CHECK(t.is_contiguous(), "rank ", rank_, ": broadcast needs a contiguous tensor, got ", t.shape_str());
    if (t.nbytes() == 0) return;
    guarded("broadcast", [&] {
      gloo::BroadcastOptions opts(context_);
      opts.setTag(next_tag());
      opts.setTimeout(timeout_);
      opts.setRoot(root);
      opts.setOutput(static_cast<uint8_t*>(t.data), t.nbytes());
      gloo::broadcast(opts);
    });
  }

  void barrier() override {
    guarded("barrier", [&] {
      gloo::BarrierOptions opts(context_);
      opts.setTag(next_tag());
      opts.setTimeout(timeout_);
      gloo::barrier(opts);
    });
  }

 private:
  uint32_t next_tag() { return tag_++; }

  // Gloo reports a dead peer as an IoException naming its address; the store knows which rank
  // that was.
  void guarded(const char* op, const std::function<void()>& body) {
    try {
      body();
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      fail("rank ", rank_, ": ", op, " failed: ", lost_rank_message(*rv_.store), " (Gloo: ", e.what(),
           "; timeout ", timeout_.count() / 1000.0, " s, RT_DIST_TIMEOUT_S sets it)");
    }
  }

  int rank_, size_;
  Rendezvous rv_;
  std::chrono::milliseconds timeout_;
  std::shared_ptr<gloo::rendezvous::Context> context_;
  uint32_t tag_ = 1;
};

}  // namespace

std::unique_ptr<ProcessGroup> make_gloo_group(const WorldInfo& world, Rendezvous rv, std::chrono::milliseconds timeout) {
  return std::make_unique<GlooGroup>(world, std::move(rv), timeout);
}

}  // namespace rt::dist
