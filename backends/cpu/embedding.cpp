// embedding: out[t, :] = table[ids[t], :], converting bf16/f16 tables to f32.
#include <cstring>

#include "cpu/check.h"
#include "cpu/kernels.h"
#include "rt/sdk/half.h"

namespace rt::cpu {

void embedding_forward(TensorView table, TensorView ids, TensorView out) {
  check_cpu("embedding", "table", table);
  check_cpu("embedding", "ids", ids);
  check_cpu("embedding", "out", out);
  check_float("embedding", "table", table);
  check_dtype("embedding", "ids", ids, DType::I32);
  RT_CHECK(out.dtype == DType::F32 || out.dtype == table.dtype,
           "embedding: argument 'out' must have dtype f32 (or the table's dtype ", dtype_name(table.dtype),
           "), found ", dtype_name(out.dtype));
  check_ndim("embedding", "table", table, 2);
  check_ndim("embedding", "out", out, 2);
  RT_CHECK(ids.ndim == 1 || (ids.ndim == 2 && ids.shape[0] == 1), "embedding: argument 'ids' must be ",
           "[T] (or [1, T]), found shape ", ids.shape_str());
  const int64_t T = ids.shape[ids.ndim - 1];
  const int64_t ids_stride = ids.stride[ids.ndim - 1];
  const int64_t V = table.shape[0], d = table.shape[1];
  check_dim("embedding", "out", out, 0, T, "number of ids");
  check_dim("embedding", "out", out, 1, d, "embedding width, table.shape[1]");
  check_unit_inner_stride("embedding", "table", table);
  check_unit_inner_stride("embedding", "out", out);
  const int32_t* id = ids.ptr<int32_t>();
  // Validate every id before writing anything.
  for (int64_t t = 0; t < T; ++t) {
    const int64_t v = id[t * ids_stride];
    RT_CHECK(v >= 0 && v < V, "embedding: token id ", v, " at position ", t,
             " is out of range for a vocabulary of size ", V, " (valid ids are 0..", V - 1, ")");
  }
  const size_t es = dtype_size(table.dtype);
#pragma omp parallel for schedule(static) if (T * d >= (1 << 15) && T > 1)
  for (int64_t t = 0; t < T; ++t) {
    const char* src = static_cast<const char*>(table.data) + id[t * ids_stride] * table.stride[0] * static_cast<int64_t>(es);
    char* dst = static_cast<char*>(out.data) + t * out.stride[0] * static_cast<int64_t>(dtype_size(out.dtype));
    if (out.dtype == table.dtype)
      std::memcpy(dst, src, static_cast<size_t>(d) * es);
    else
      convert_to_f32(src, table.dtype, reinterpret_cast<float*>(dst), static_cast<size_t>(d));
  }
}

}  // namespace rt::cpu
