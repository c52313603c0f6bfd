// embedding: out[t, :] = table[ids[t], :] with conversion to out's dtype (f32 residual stream
// from a bf16 table). One block per token. Ids are validated before any table read: on the host
// when they live there, on the device otherwise (a bad id writes a NaN row and an error record
// the owner reports after the next synchronization), so the kernel never reads out of bounds.
// embedding_backward scatters dout rows into the f32 table gradient with atomicAdd (the same id
// checks; a bad device id drops its row).
#include <cmath>
#include <vector>

#include "cuda/check.h"
#include "cuda/device_utils.cuh"
#include "cuda/kernels.h"
#include "cuda/memory.h"

namespace rt::cuda {
namespace {

__global__ void embedding_kernel(const void* table, DType tdt, int64_t table_stride, int64_t vocab,
                                 const int32_t* ids, int64_t ids_stride, RowsDesc out, int64_t d,
                                 EmbeddingError* err) {
  const int64_t t = blockIdx.x;
  const int64_t id = ids[t * ids_stride];
  const int64_t o = out.row_offset(t);
  if (id < 0 || id >= vocab) {
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) store_f(out.data, o + i * out.col_stride, out.dtype, NAN);
    if (threadIdx.x == 0 && err && atomicCAS(&err->flag, 0, kErrEmbedding) == 0) {
      err->id = static_cast<int32_t>(id);
      err->pos = static_cast<int32_t>(t);
      err->vocab = static_cast<int32_t>(vocab);
    }
    return;
  }
  const int64_t base = id * table_stride;
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x)
    store_f(out.data, o + i * out.col_stride, out.dtype, load_f(table, base + i, tdt));
}

// dtable[ids[t], :] += dout[t, :], one block per token (atomicAdd: repeated ids sum). A bad id
// drops its row and fills the error record (flag kErrEmbeddingBackward).
__global__ void embedding_backward_kernel(const int32_t* ids, int64_t ids_stride, RowsDesc dout, float* dtable,
                                          int64_t table_stride, int64_t vocab, int64_t d, EmbeddingError* err) {
  const int64_t t = blockIdx.x;
  const int64_t id = ids[t * ids_stride];
  if (id < 0 || id >= vocab) {
    if (threadIdx.x == 0 && err && atomicCAS(&err->flag, 0, kErrEmbeddingBackward) == 0) {
      err->id = static_cast<int32_t>(id);
      err->pos = static_cast<int32_t>(t);
      err->vocab = static_cast<int32_t>(vocab);
    }
    return;
  }
  const int64_t o = dout.row_offset(t);
  float* row = dtable + id * table_stride;
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x)
    atomicAdd(row + i, load_f(dout.data, o + i * dout.col_stride, dout.dtype));
}

}  // namespace

void embedding_backward(TensorView ids, TensorView dout, TensorView dtable, EmbeddingError* err,
                        cudaStream_t stream) {
  const char* op = "embedding_backward";
  check_view(op, "ids", ids);
  check_cuda(op, "dout", dout);
  check_float(op, "dout", dout);
  check_dtype(op, "ids", ids, DType::I32);
  check_ndim(op, "dout", dout, 2);
  RT_CHECK(ids.ndim == 1 || (ids.ndim == 2 && ids.shape[0] == 1), op, ": argument 'ids' must be ",
           "[T] (or [1, T]), found shape ", ids.shape_str());
  const int64_t T = ids.shape[ids.ndim - 1];
  check_dim(op, "dout", dout, 0, T, "number of ids");
  if (is_empty_output(dtable)) return;
  check_cuda(op, "dtable", dtable);
  check_not_f64(op, "dtable", dtable);
  check_dtype(op, "dtable", dtable, DType::F32);
  check_ndim(op, "dtable", dtable, 2);
  const int64_t V = dtable.shape[0], d = dtable.shape[1];
  check_dim(op, "dout", dout, 1, d, "embedding width, dtable.shape[1]");
  check_unit_inner_stride(op, "dtable", dtable);
  RT_CHECK(!views_overlap(dtable, dout), op, ": output 'dtable' overlaps 'dout'");
  RT_CHECK(ids.device == Device::CPU || !views_overlap(dtable, ids), op, ": output 'dtable' overlaps 'ids'");
  RT_CHECK(V <= INT32_MAX, op, ": vocabulary of ", V, " rows exceeds the i32 id range");
  RT_CHECK(T <= INT32_MAX, op, ": ", T, " ids exceed the launch limit");
  if (T == 0 || d == 0) return;
  int64_t ids_stride = ids.stride[ids.ndim - 1];
  std::unique_ptr<Scratch> staged;
  const int32_t* dev_ids = ids.ptr<int32_t>();
  if (ids.device == Device::CPU) {  // validate every id before anything is added, then upload
    std::vector<int32_t> host(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) {
      const int64_t v = ids.ptr<int32_t>()[t * ids_stride];
      RT_CHECK(v >= 0 && v < V, op, ": token id ", v, " at position ", t, " is out of range for a vocabulary of size ",
               V, " (valid ids are 0..", V - 1, ")");
      host[static_cast<size_t>(t)] = static_cast<int32_t>(v);
    }
    staged = std::make_unique<Scratch>(host.size() * sizeof(int32_t), stream, "embedding_backward ids");
    CUDA_CHECK(cudaMemcpyAsync(staged->get(), host.data(), host.size() * sizeof(int32_t), cudaMemcpyHostToDevice,
                               stream));
    CUDA_CHECK(cudaStreamSynchronize(stream));  // `host` dies at scope end
    dev_ids = static_cast<const int32_t*>(staged->get());
    ids_stride = 1;
  }
  const int threads = d >= 512 ? 256 : 128;
  embedding_backward_kernel<<<static_cast<unsigned>(T), threads, 0, stream>>>(
      dev_ids, ids_stride, rows_desc(dout), dtable.ptr<float>(), dtable.stride[0], V, d, err);
  CUDA_CHECK_LAUNCH();
}

void embedding_forward(TensorView table, TensorView ids, TensorView out, EmbeddingError* err, cudaStream_t stream) {
  const char* op = "embedding";
  check_cuda(op, "table", table);
  check_view(op, "ids", ids);
  check_cuda(op, "out", out);
  check_float(op, "table", table);
  check_float(op, "out", out);
  check_dtype(op, "ids", ids, DType::I32);
  check_ndim(op, "table", table, 2);
  check_ndim(op, "out", out, 2);
  RT_CHECK(ids.ndim == 1 || (ids.ndim == 2 && ids.shape[0] == 1), "embedding: argument 'ids' must be ",
           "[T] (or [1, T]), found shape ", ids.shape_str());
  const int64_t T = ids.shape[ids.ndim - 1];
  const int64_t V = table.shape[0], d = table.shape[1];
  check_dim(op, "out", out, 0, T, "number of ids");
  check_dim(op, "out", out, 1, d, "embedding width, table.shape[1]");
  check_unit_inner_stride(op, "table", table);
  RT_CHECK(V <= INT32_MAX, "embedding: vocabulary of ", V, " rows exceeds the i32 id range");
  if (T == 0 || d == 0) return;
  int64_t ids_stride = ids.stride[ids.ndim - 1];

  // Host ids: validate every id before anything is written (same message as the CPU backend),
  // then upload them contiguously.
  std::unique_ptr<Scratch> staged;
  const int32_t* dev_ids = ids.ptr<int32_t>();
  if (ids.device == Device::CPU) {
    std::vector<int32_t> host(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) {
      const int64_t v = ids.ptr<int32_t>()[t * ids_stride];
      RT_CHECK(v >= 0 && v < V, "embedding: token id ", v, " at position ", t,
               " is out of range for a vocabulary of size ", V, " (valid ids are 0..", V - 1, ")");
      host[static_cast<size_t>(t)] = static_cast<int32_t>(v);
    }
    staged = std::make_unique<Scratch>(host.size() * sizeof(int32_t), stream, "embedding ids");
    CUDA_CHECK(cudaMemcpyAsync(staged->get(), host.data(), host.size() * sizeof(int32_t), cudaMemcpyHostToDevice,
                               stream));
    CUDA_CHECK(cudaStreamSynchronize(stream));  // `host` dies at scope end
    dev_ids = static_cast<const int32_t*>(staged->get());
    ids_stride = 1;
  }
  RT_CHECK(T <= INT32_MAX, "embedding: ", T, " ids exceed the launch limit");
  const int threads = d >= 512 ? 256 : 128;
  embedding_kernel<<<static_cast<unsigned>(T), threads, 0, stream>>>(table.data, table.dtype, table.stride[0], V,
                                                                     dev_ids, ids_stride, rows_desc(out), d, err);
  CUDA_CHECK_LAUNCH();
}

}  // namespace rt::cuda
