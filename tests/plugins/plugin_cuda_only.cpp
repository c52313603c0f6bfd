// A plugin that supports CUDA only: creating it on the CPU must be refused.
#include "test_plugins_common.h"

struct CudaOnlyBackend : CapsOnlyBackend {
  CudaOnlyBackend() : CapsOnlyBackend(false, true) {}
};
RT_REGISTER_ATTENTION_PLUGIN(CudaOnlyBackend, "cuda_only", "0.0.1", "needs a GPU")
