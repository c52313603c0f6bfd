// librt_dist_nccl.so: the CUDA process group on NCCL (nccl_module.h says why it is a module).
// The communicator is non-blocking (config.blocking = 0) so that every wait is ours to bound:
// each collective polls its stream and the communicator's async error until done or the timeout,
// and on timeout aborts the communicator, so a dead peer becomes an rt::Error, never a hang.
// The CUDA backend computes on its own non-blocking stream, so each collective first waits for the
// device to be idle and returns once its own stream is done: simple and safe, not overlapped.
#include <cuda_runtime_api.h>
#include <nccl.h>

#include <chrono>
#include <cstring>
#include <string>
#include <thread>

#include "dist/nccl_module.h"
#include "rt/sdk/error.h"
#include "rt/sdk/plugin.h"

namespace rt::dist {
namespace {

using Clock = std::chrono::steady_clock;

void cuda_check(cudaError_t err, int rank, const char* what) {
  RT_CHECK(err == cudaSuccess, "rank ", rank, ": ", what, ": ", cudaGetErrorString(err));
}

class NcclProcessGroup final : public ProcessGroup {
 public:
  NcclProcessGroup(const void* id, int rank, int size, int local_rank, int64_t timeout_ms)
      : rank_(rank), size_(size), timeout_(timeout_ms) {
    int count = 0;
    cuda_check(cudaGetDeviceCount(&count), rank, "cudaGetDeviceCount");
    RT_CHECK(count > 0, "rank ", rank, ": no CUDA device for the NCCL process group");
    device_ = local_rank % count;
    cuda_check(cudaSetDevice(device_), rank, "cudaSetDevice");
    cuda_check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), rank, "cudaStreamCreate");
    cuda_check(cudaMalloc(&barrier_word_, sizeof(int)), rank, "cudaMalloc");
    ncclUniqueId uid;
    std::memcpy(&uid, id, sizeof(uid));
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    ncclResult_t rc = ncclCommInitRankConfig(&comm_, size, uid, rank, &config);
    if (rc != ncclSuccess && rc != ncclInProgress) fail_nccl("ncclCommInitRank", rc);
    wait_comm("ncclCommInitRank (joining the NCCL communicator)", /*stream_too=*/false);
  }

  ~NcclProcessGroup() override {
    if (comm_ != nullptr) ncclCommDestroy(comm_);
    if (barrier_word_ != nullptr) cudaFree(barrier_word_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }

  void allreduce_sum(TensorView t) override {
    if (t.numel() == 0) return;
    const ncclDataType_t type = t.dtype == DType::F32 ? ncclFloat32 : ncclFloat64;
    run("ncclAllReduce", [&] {
      return ncclAllReduce(t.data, t.data, static_cast<size_t>(t.numel()), type, ncclSum, comm_, stream_);
    });
  }

  void broadcast(TensorView t, int root) override {
    RT_CHECK(root >= 0 && root < size_, "rank ", rank_, ": broadcast root ", root, " is not a rank of a world of ",
             size_);
    RT_CHECK(t.device == Device::CUDA && t.is_contiguous(), "rank ", rank_,
             ": the NCCL group broadcasts contiguous CUDA tensors");
    if (t.nbytes() == 0) return;
    run("ncclBroadcast", [&] { return ncclBroadcast(t.data, t.data, t.nbytes(), ncclUint8, root, comm_, stream_); });
  }

  void barrier() override {
    run("barrier (ncclAllReduce of one int)",
        [&] { return ncclAllReduce(barrier_word_, barrier_word_, 1, ncclInt32, ncclSum, comm_, stream_); });
  }

 private:
  template <typename F>
  void run(const char* what, F&& enqueue) {
    RT_CHECK(comm_ != nullptr, "rank ", rank_, ": the NCCL communicator was aborted by an earlier failure");
    cuda_check(cudaSetDevice(device_), rank_, "cudaSetDevice");
    cuda_check(cudaDeviceSynchronize(), rank_, "waiting for pending GPU work before a collective");
    const ncclResult_t rc = enqueue();
    if (rc != ncclSuccess && rc != ncclInProgress) fail_nccl(what, rc);
    wait_comm(what, /*stream_too=*/true);
  }

  // Polls until the communicator is ready (and the stream done), or aborts it at the timeout.
  void wait_comm(const char* what, bool stream_too) {
    const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_);
    while (true) {
      ncclResult_t state = ncclSuccess;
      ncclCommGetAsyncError(comm_, &state);
      if (state != ncclSuccess && state != ncclInProgress) fail_nccl(what, state);
      if (state == ncclSuccess) {
        if (!stream_too) return;
        const cudaError_t q = cudaStreamQuery(stream_);
        if (q == cudaSuccess) return;
        if (q != cudaErrorNotReady) cuda_check(q, rank_, what);
      }
      if (Clock::now() >= deadline) {
        abort_comm();
        fail("rank ", rank_, ": ", what, " did not finish within ", timeout_ / 1000.0,
             " s (a peer rank died or is stuck; RT_DIST_TIMEOUT_S sets the timeout)");
      }
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

  [[noreturn]] void fail_nccl(const char* what, ncclResult_t rc) {
    const std::string detail = ncclGetErrorString(rc);
    const char* last = comm_ != nullptr ? ncclGetLastError(comm_) : nullptr;
    abort_comm();
    fail("rank ", rank_, ": ", what, " failed: ", detail, last && *last ? std::string(" (") + last + ")" : "");
  }

  void abort_comm() {
    if (comm_ != nullptr) ncclCommAbort(comm_);
    comm_ = nullptr;
  }

  int rank_, size_, device_ = 0;
  int64_t timeout_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  int* barrier_word_ = nullptr;
};

bool nccl_available(std::string* why) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err == cudaSuccess && count > 0) return true;
  (void)cudaGetLastError();
  if (why != nullptr)
    *why = err != cudaSuccess ? std::string("no usable CUDA device (") + cudaGetErrorString(err) + ")"
                              : std::string("no CUDA device on this machine");
  return false;
}

void nccl_make_unique_id(void* out) {
  ncclUniqueId id;
  const ncclResult_t rc = ncclGetUniqueId(&id);
  RT_CHECK(rc == ncclSuccess, "rank 0: ncclGetUniqueId failed: ", ncclGetErrorString(rc));
  std::memcpy(out, &id, sizeof(id));
}

ProcessGroup* nccl_create(const void* id, int rank, int size, int local_rank, int64_t timeout_ms) {
  return new NcclProcessGroup(id, rank, size, local_rank, timeout_ms);
}

}  // namespace
}  // namespace rt::dist

extern "C" __attribute__((visibility("default"))) const rt::dist::NcclModuleDescriptor* rt_dist_nccl_module_entry() {
  static const rt::dist::NcclModuleDescriptor desc{rt::dist::kNcclModuleAbiVersion, rt::kPluginAbiVersion,
                                                   sizeof(ncclUniqueId), rt::dist::nccl_available,
                                                   rt::dist::nccl_make_unique_id, rt::dist::nccl_create};
  return &desc;
}
