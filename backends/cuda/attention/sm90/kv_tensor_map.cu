// Tensor maps for the Hopper attention kernels' K and V (kv_tensor_map.h).
#include "cuda/attention/sm90/kv_tensor_map.h"

#include <cudaTypedefs.h>
#include <cuda_runtime_api.h>

namespace rt::cuda::attn_launch {
namespace {

PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult res{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &res) !=
            cudaSuccess ||
        res != cudaDriverEntryPointSuccess) {
      (void)cudaGetLastError();
      return static_cast<PFN_cuTensorMapEncodeTiled_v12000>(nullptr);
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  return fn;
}

}  // namespace

// Strides of size-1 dimensions are free in the view, so they are replaced by valid ones.
bool kv_tensor_map(CUtensorMap* map, const TensorView& t, int box_rows) {
  const auto encode = tensor_map_encoder();
  if (encode == nullptr) return false;
  const int64_t rows = t.shape[0], heads = t.shape[1], D = t.shape[2];
  const int64_t head_stride = heads > 1 ? t.stride[1] : D;
  const int64_t row_stride = rows > 1 ? t.stride[0] : heads * head_stride;
  const cuuint64_t dims[3] = {static_cast<cuuint64_t>(D), static_cast<cuuint64_t>(heads),
                              static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[2] = {static_cast<cuuint64_t>(head_stride * 2), static_cast<cuuint64_t>(row_stride * 2)};
  const cuuint32_t box[3] = {64, 1, static_cast<cuuint32_t>(box_rows)};
  const cuuint32_t elem[3] = {1, 1, 1};
  const CUresult r = encode(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, t.data, dims, strides, box, elem,
                            CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                            CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS;
}

}  // namespace rt::cuda::attn_launch
