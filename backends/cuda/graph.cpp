#include "cuda/graph.h"

#include <utility>

#include "cuda/check.h"

namespace rt::cuda {
namespace {

class CudaGraph final : public Ops::CapturedWork {
 public:
  CudaGraph(cudaGraphExec_t exec, cudaStream_t stream, std::shared_ptr<void> keep)
      : exec_(exec), stream_(stream), keep_(std::move(keep)) {}
  ~CudaGraph() override {
    (void)cudaStreamSynchronize(stream_);  // no replay still in flight when the graph goes
    (void)cudaGraphExecDestroy(exec_);
    (void)cudaGetLastError();
  }
  void replay() override { CUDA_CHECK(cudaGraphLaunch(exec_, stream_)); }

 private:
  cudaGraphExec_t exec_;
  cudaStream_t stream_;
  std::shared_ptr<void> keep_;
};

}  // namespace

std::unique_ptr<Ops::CapturedWork> capture_graph(cudaStream_t stream, std::shared_ptr<void> keep,
                                                 const std::function<void()>& work) {
  // Thread-local mode: only this thread's capture-unsafe calls (a synchronizing copy, cudaMalloc)
  // are refused, and they are refused loudly, as errors from that call.
  CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  try {
    work();
  } catch (...) {
    cudaGraph_t broken = nullptr;
    (void)cudaStreamEndCapture(stream, &broken);
    if (broken != nullptr) (void)cudaGraphDestroy(broken);
    (void)cudaGetLastError();
    throw;
  }
  cudaGraph_t graph = nullptr;
  CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  cudaGraphExec_t exec = nullptr;
  const cudaError_t e = cudaGraphInstantiate(&exec, graph, 0);
  (void)cudaGraphDestroy(graph);
  CUDA_CHECK(e);
  return std::make_unique<CudaGraph>(exec, stream, std::move(keep));
}

}  // namespace rt::cuda
