// embedding: out[t, :] = table[ids[t], :] with conversion to out's dtype (f32 residual stream
// from a bf16 table). One block per token. Ids are validated before any table read: on the host
// when they live there, on the device otherwise (a bad id writes a NaN row and an error record
// the owner reports after the next synchronization), so the kernel never reads out of bounds.
// embedding_backward adds dout rows into the f32 table gradient deterministically, without
// floating-point atomics, so training is bit-reproducible (the same id checks; a bad device id
// drops its row). See the comment above its kernels.
#include <cub/device/device_radix_sort.cuh>

#include <algorithm>
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

// embedding_backward: dtable[ids[t], :] += dout[t, :] with repeated ids summed in a fixed order.
// Atomics would add a repeated id's rows in whatever order the blocks run, so the bits of the
// gradient (and of every later step) would vary from run to run. Instead:
//   1. keys: ids[t] made contiguous (a bad id becomes the key `vocab`, so it sorts after every
//      valid id, and is recorded in the error record), values: positions t;
//   2. a stable radix sort by key (CUB): equal ids end up adjacent, in position order;
//   3. one block per chunk of kChunk sorted entries sums each run of equal keys inside the chunk
//      in position order. A run wholly inside its chunk is added to its dtable row right there;
//      a run that crosses a chunk boundary leaves each chunk's piece in `partials`;
//   4. one block per chunk where such a run starts adds its pieces, in chunk order, into the row.
// Each dtable row is written by exactly one block, and every sum has a fixed order (positions
// within a piece, then pieces in chunk order), so two calls give the same bits. Chunking keeps a
// long run (a frequent token, or every id equal) from serializing on one block: its length L costs
// kChunk + L / kChunk sequential rows instead of L. The common case (mostly distinct ids) is one
// sort and one pass of row-sized work per chunk.
constexpr int kChunk = 32;

// keys[t] = ids[t] (or vocab for a bad id, whose row is then dropped), pos[t] = t.
__global__ void embedding_backward_keys_kernel(const int32_t* ids, int64_t ids_stride, int64_t T, int64_t vocab,
                                               uint32_t* keys, int32_t* pos, EmbeddingError* err) {
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < T;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t id = ids[t * ids_stride];
    const bool bad = id < 0 || id >= vocab;
    if (bad && err && atomicCAS(&err->flag, 0, kErrEmbeddingBackward) == 0) {
      err->id = static_cast<int32_t>(id);
      err->pos = static_cast<int32_t>(t);
      err->vocab = static_cast<int32_t>(vocab);
    }
    keys[t] = static_cast<uint32_t>(bad ? vocab : id);
    pos[t] = static_cast<int32_t>(t);
  }
}

// Step 3 (see above): the runs of chunk blockIdx.x. partials holds two rows of d floats per chunk:
// [0] its first piece when that continues a run from the previous chunk, [1] its last piece when
// that starts here and continues into the next chunk (a piece that does both is a middle piece, [0]).
__global__ void embedding_backward_chunk_kernel(const uint32_t* keys, const int32_t* pos, int64_t T, RowsDesc dout,
                                                float* dtable, int64_t table_stride, uint32_t vocab, int64_t d,
                                                float* partials) {
  // key[0] is the key before the chunk, key[1..n] the chunk's, key[n + 1] the one after it
  // (UINT32_MAX, equal to no key, at the ends of the array).
  __shared__ uint32_t key[kChunk + 2];
  __shared__ int64_t row[kChunk];  // dout offsets of the chunk's rows, in sorted order
  const int64_t s0 = static_cast<int64_t>(blockIdx.x) * kChunk;
  const int n = static_cast<int>(T - s0 < kChunk ? T - s0 : kChunk);
  for (int i = threadIdx.x; i < n + 2; i += blockDim.x) {
    const int64_t s = s0 - 1 + i;
    key[i] = s >= 0 && s < T ? keys[s] : UINT32_MAX;
  }
  for (int i = threadIdx.x; i < n; i += blockDim.x) row[i] = dout.row_offset(pos[s0 + i]);
  __syncthreads();
  float* part = partials + 2 * static_cast<int64_t>(blockIdx.x) * d;
  for (int a = 0; a < n;) {
    const uint32_t k = key[a + 1];
    if (k >= vocab) break;  // bad ids sort last: the rest of the chunk is dropped rows
    int b = a + 1;
    while (b < n && key[b + 1] == k) ++b;
    const bool from_prev = a == 0 && key[0] == k, to_next = b == n && key[n + 1] == k;
    float* dst = from_prev ? part : to_next ? part + d : dtable + static_cast<int64_t>(k) * table_stride;
    const bool whole = !from_prev && !to_next;
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
      const int64_t co = c * dout.col_stride;
      float acc = 0.f;
#pragma unroll 4
      for (int r = a; r < b; ++r) acc += load_f(dout.data, row[r] + co, dout.dtype);
      dst[c] = whole ? dst[c] + acc : acc;
    }
    a = b;
  }
}

// Step 4: block c adds the pieces of the run that starts in chunk c and crosses into chunk c + 1
// (if there is one), in chunk order, into its dtable row.
__global__ void embedding_backward_carry_kernel(const uint32_t* keys, int64_t T, float* dtable, int64_t table_stride,
                                                uint32_t vocab, int64_t d, const float* partials) {
  const int64_t c = blockIdx.x, s0 = c * kChunk, s1 = s0 + kChunk < T ? s0 + kChunk : T;
  const uint32_t k = keys[s1 - 1];
  // The chunk's last piece must continue into the next chunk and start in this one (sorted keys:
  // the chunk is not all one key continuing from before).
  if (k >= vocab || s1 >= T || keys[s1] != k || (s0 > 0 && keys[s0 - 1] == k)) return;
  int64_t last = c + 1;  // the chunk where the run ends
  while ((last + 1) * kChunk < T && keys[(last + 1) * kChunk] == k) ++last;
  float* out = dtable + static_cast<int64_t>(k) * table_stride;
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
    float acc = partials[(2 * c + 1) * d + i];
    for (int64_t j = c + 1; j <= last; ++j) acc += partials[2 * j * d + i];
    out[i] += acc;
  }
}

// Bits needed for keys 0..vocab (vocab itself marks a bad id): the sort skips the rest.
int key_bits(int64_t vocab) {
  int bits = 1;
  while (bits < 32 && (int64_t{1} << bits) <= vocab) ++bits;
  return bits;
}

size_t align_up(size_t n) { return (n + 255) & ~size_t{255}; }

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
  // One stream-ordered scratch (no host synchronization): keys and positions, their sorted copies,
  // the pieces of chunk-crossing runs (2 rows of d floats per chunk), and CUB's temporary storage.
  const int n = static_cast<int>(T);
  const int64_t chunks = (T + kChunk - 1) / kChunk;
  const int bits = key_bits(V);
  size_t cub_bytes = 0;
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, cub_bytes, static_cast<const uint32_t*>(nullptr),
                                             static_cast<uint32_t*>(nullptr), static_cast<const int32_t*>(nullptr),
                                             static_cast<int32_t*>(nullptr), n, 0, bits, stream));
  const size_t keys_bytes = align_up(static_cast<size_t>(T) * sizeof(uint32_t));
  const size_t part_bytes = align_up(static_cast<size_t>(chunks) * 2 * static_cast<size_t>(d) * sizeof(float));
  Scratch scratch(4 * keys_bytes + part_bytes + cub_bytes, stream, "embedding_backward sort");
  char* base = static_cast<char*>(scratch.get());
  auto* keys = reinterpret_cast<uint32_t*>(base);
  auto* sorted_keys = reinterpret_cast<uint32_t*>(base + keys_bytes);
  auto* pos = reinterpret_cast<int32_t*>(base + 2 * keys_bytes);
  auto* sorted_pos = reinterpret_cast<int32_t*>(base + 3 * keys_bytes);
  auto* partials = reinterpret_cast<float*>(base + 4 * keys_bytes);
  void* cub_temp = base + 4 * keys_bytes + part_bytes;

  const unsigned key_blocks = static_cast<unsigned>(std::min<int64_t>((T + 255) / 256, 4096));
  embedding_backward_keys_kernel<<<key_blocks, 256, 0, stream>>>(dev_ids, ids_stride, T, V, keys, pos, err);
  CUDA_CHECK_LAUNCH();
  // Radix sort is stable: equal ids keep their position order, which fixes the summation order.
  CUDA_CHECK(
      cub::DeviceRadixSort::SortPairs(cub_temp, cub_bytes, keys, sorted_keys, pos, sorted_pos, n, 0, bits, stream));
  const int threads = d >= 512 ? 256 : 128;
  const auto vocab = static_cast<uint32_t>(V);
  embedding_backward_chunk_kernel<<<static_cast<unsigned>(chunks), threads, 0, stream>>>(
      sorted_keys, sorted_pos, T, rows_desc(dout), dtable.ptr<float>(), dtable.stride[0], vocab, d, partials);
  CUDA_CHECK_LAUNCH();
  if (chunks > 1) {  // a single chunk has no crossing runs
    embedding_backward_carry_kernel<<<static_cast<unsigned>(chunks), threads, 0, stream>>>(
        sorted_keys, T, dtable.ptr<float>(), dtable.stride[0], vocab, d, partials);
    CUDA_CHECK_LAUNCH();
  }
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
