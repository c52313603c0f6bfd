// The CUDA backend as a loadable module (sdk/include/rt/sdk/backend_module.h): librt_backend_cuda.so,
// loaded by the runtime on --device cuda. It carries the whole backend (rt_backend_cuda: cuBLASLt,
// cuDNN, our kernels), so the runtime links none of the CUDA libraries.
#include <cuda_runtime_api.h>

#include <string>

#include "cuda/cuda_ops.h"
#include "rt/sdk/backend_module.h"

namespace {

bool cuda_available(std::string* why) {
  if (rt::cuda_device_available()) return true;
  if (why != nullptr) {
    int count = 0;
    const cudaError_t err = cudaGetDeviceCount(&count);
    (void)cudaGetLastError();
    *why = err != cudaSuccess ? std::string("no usable CUDA device (") + cudaGetErrorString(err) + ")"
                              : std::string("no CUDA device on this machine");
  }
  return false;
}

rt::Ops* create_cuda_ops(int device) { return rt::make_cuda_ops(device).release(); }

}  // namespace

RT_REGISTER_BACKEND_MODULE("cuda", "NVIDIA GPUs: cuBLASLt GEMMs, cuDNN SDPA, own flash and routed kernels",
                           cuda_available, create_cuda_ops)
