// lm_head_cross_entropy: the language-model head fused with cross-entropy, in h's dtype (f32, or
// f64 for finite-difference gradient checks). For rows h [N, hidden], w [V, hidden] (any float
// dtype, converted tile by tile when it is not h's), targets [N] (i32, -100 = ignored):
//   losses[n] (=) logsumexp(z_n) - z_n[target_n],  z = h w^T      (0 for ignored rows)
//   dh (=) grad_scale (softmax(z) - onehot) w,  dw += grad_scale (softmax(z) - onehot)^T h
//   is_greedy[n] (=) target_n is the first index of max(z_n)    (0 for ignored rows)
//
// The rows are processed in chunks of max(1, chunk_elems / V) rows, so that at most [chunk, V]
// logits exist at once (never [N, V]). Per chunk:
//   1. z = h_c w^T, threads splitting the vocabulary into tiles of kVTile rows of w;
//   2. per row (threads split the rows): max-subtracted log-sum-exp, the loss, and in place of z
//      the gradient of the loss G = grad_scale (softmax(z) - onehot(target)) (0 for ignored rows);
//   3. dw[tile] += G[:, tile]^T h_c (each tile owned by one thread) and per-thread partial
//      dh_c += G[:, tile] w[tile], summed in thread order into dh (deterministic for a given
//      thread count).
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include <Eigen/Core>

#include "cpu/check.h"
#include "cpu/convert.h"
#include "cpu/kernels.h"

namespace rt::cpu {
namespace {

template <typename T>
using RowMat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <typename T>
using CMap = Eigen::Map<const RowMat<T>, 0, Eigen::OuterStride<>>;
template <typename T>
using MMap = Eigen::Map<RowMat<T>, 0, Eigen::OuterStride<>>;

constexpr int64_t kVTile = 512;      // rows of w per tile
constexpr int32_t kIgnore = -100;    // ignored target (PyTorch's ignore_index)
std::atomic<int64_t> g_chunk_elems{int64_t{1} << 24};  // 64 MiB of f32 logits (108 rows of a 152K vocabulary)

int64_t outer(const TensorView& v, int64_t cols) { return std::max<int64_t>(v.shape[0] > 1 ? v.stride[0] : cols, 1); }

template <typename T>
void cross_entropy_impl(TensorView h, TensorView w, TensorView targets, float grad_scale, TensorView losses,
                        TensorView dh, TensorView dw, TensorView is_greedy) {
  const int64_t N = h.shape[0], hidden = h.shape[1], V = w.shape[0];
  const bool want_loss = given(losses), want_dh = given(dh), want_dw = given(dw), want_grad = want_dh || want_dw;
  const int64_t rc = std::clamp<int64_t>(g_chunk_elems.load() / std::max<int64_t>(V, 1), 1, N);
  const int64_t ntiles = (V + kVTile - 1) / kVTile;
  const bool w_native = w.dtype == dtype_of<T>();
  const int64_t ws = outer(w, hidden);
  const size_t ew = dtype_size(w.dtype);
  const int32_t* tp = targets.ptr<const int32_t>();
  const int64_t tst = targets.stride[0];
  const T gs = static_cast<T>(grad_scale);
  const int nt = omp_get_max_threads();
  const bool par = static_cast<double>(rc) * static_cast<double>(V) * static_cast<double>(hidden) >= 1 << 18;

  RowMat<T> Z(rc, V);
  std::vector<RowMat<T>> dh_part(want_dh ? static_cast<size_t>(nt) : 0);

  for (int64_t c0 = 0; c0 < N; c0 += rc) {
    const int64_t n = std::min(rc, N - c0);
    CMap<T> Hc(h.ptr<T>() + c0 * h.stride[0], n, hidden, Eigen::OuterStride<>(outer(h, hidden)));
    auto Zc = Z.topRows(n);

#pragma omp parallel num_threads(par ? nt : 1)
    {
      const int tid = omp_get_thread_num();
      RowMat<T> Wbuf(w_native ? 0 : std::min(kVTile, V), w_native ? 0 : hidden);
      // The w rows of tile [v0, v0 + nv) as a T matrix (mapped, or converted into Wbuf).
      auto tile = [&](int64_t v0, int64_t nv) {
        if (w_native) return CMap<T>(w.ptr<T>() + v0 * ws, nv, hidden, Eigen::OuterStride<>(ws));
        for (int64_t r = 0; r < nv; ++r)
          to_compute<T>(static_cast<const char*>(w.data) + (v0 + r) * ws * static_cast<int64_t>(ew), w.dtype,
                        Wbuf.data() + r * hidden, static_cast<size_t>(hidden));
        return CMap<T>(Wbuf.data(), nv, hidden, Eigen::OuterStride<>(std::max<int64_t>(hidden, 1)));
      };

      // 1. logits
#pragma omp for schedule(static)
      for (int64_t t = 0; t < ntiles; ++t) {
        const int64_t v0 = t * kVTile, nv = std::min(kVTile, V - v0);
        Zc.middleCols(v0, nv).noalias() = Hc * tile(v0, nv).transpose();
      }
      // 2. losses and G (implicit barrier above)
#pragma omp for schedule(static)
      for (int64_t r = 0; r < n; ++r) {
        const int32_t tgt = tp[(c0 + r) * tst];
        auto z = Zc.row(r).array();
        if (given(is_greedy)) {  // the first index of the largest logit, read before z turns into G
          int64_t best = 0;
          for (int64_t j = 1; j < V; ++j)
            if (z(j) > z(best)) best = j;
          is_greedy.ptr<int32_t>()[(c0 + r) * is_greedy.stride[0]] = tgt != kIgnore && best == tgt ? 1 : 0;
        }
        if (tgt == kIgnore) {
          if (want_loss) store_d(elem_ptr(losses, (c0 + r) * losses.stride[0]), losses.dtype, 0.0);
          if (want_grad) z.setZero();
          continue;
        }
        const T m = z.maxCoeff();
        const T lse = m + std::log((z - m).exp().sum());
        if (want_loss) store_d(elem_ptr(losses, (c0 + r) * losses.stride[0]), losses.dtype, lse - z(tgt));
        if (want_grad) {
          z = (z - lse).exp() * gs;
          z(tgt) -= gs;
        }
      }
      // 3. gradients
      if (want_grad) {
        if (want_dh) {
          dh_part[static_cast<size_t>(tid)].setZero(n, hidden);
        }
#pragma omp for schedule(static)
        for (int64_t t = 0; t < ntiles; ++t) {
          const int64_t v0 = t * kVTile, nv = std::min(kVTile, V - v0);
          const CMap<T> Wt = tile(v0, nv);
          if (want_dw) {
            MMap<T> dW(dw.ptr<T>() + v0 * dw.stride[0], nv, hidden, Eigen::OuterStride<>(outer(dw, hidden)));
            dW.noalias() += Zc.middleCols(v0, nv).transpose() * Hc;
          }
          if (want_dh) dh_part[static_cast<size_t>(tid)].noalias() += Zc.middleCols(v0, nv) * Wt;
        }
        if (want_dh) {
          // Sum of the partials in thread order; threads split the rows of dh.
#pragma omp for schedule(static)
          for (int64_t r = 0; r < n; ++r) {
            T* dst = dh.ptr<T>() + (c0 + r) * dh.stride[0];
            const int nth = omp_get_num_threads();
            for (int64_t c = 0; c < hidden; ++c) {
              T s = 0;
              for (int p = 0; p < nth; ++p) s += dh_part[static_cast<size_t>(p)](r, c);
              dst[c] = s;
            }
          }
        }
      }
    }
  }
}

}  // namespace

int64_t cross_entropy_chunk_elems() { return g_chunk_elems.load(); }

int64_t set_cross_entropy_chunk_elems(int64_t elems) {
  RT_CHECK(elems >= 1, "lm_head_cross_entropy: chunk size must be >= 1 logit, found ", elems);
  return g_chunk_elems.exchange(elems);
}

void lm_head_cross_entropy(TensorView h, TensorView w, TensorView targets, float grad_scale, TensorView losses,
                           TensorView dh, TensorView dw, TensorView is_greedy) {
  const char* op = "lm_head_cross_entropy";
  check_cpu(op, "h", h);
  check_cpu(op, "w", w);
  check_cpu(op, "targets", targets);
  check_compute(op, "h", h);
  check_float(op, "w", w);
  check_dtype(op, "targets", targets, DType::I32);
  check_ndim(op, "h", h, 2);
  check_ndim(op, "w", w, 2);
  check_unit_inner_stride(op, "h", h);
  check_unit_inner_stride(op, "w", w);
  const int64_t N = h.shape[0], hidden = h.shape[1], V = w.shape[0];
  check_dim(op, "w", w, 1, hidden, "hidden size, h.shape[1]");
  RT_CHECK(targets.ndim == 1 && targets.shape[0] == N, "lm_head_cross_entropy: argument 'targets' must have shape [",
           N, "] (rows of h), found ", targets.shape_str());
  RT_CHECK(std::isfinite(grad_scale), "lm_head_cross_entropy: grad_scale must be finite, found ", grad_scale);
  if (given(losses)) {
    check_cpu(op, "losses", losses);
    check_dtype_as(op, "losses", losses, "h", h.dtype);
    RT_CHECK(losses.ndim == 1 && losses.shape[0] == N, "lm_head_cross_entropy: argument 'losses' must have shape [",
             N, "] (rows of h), found ", losses.shape_str());
  }
  if (given(dh)) {
    check_cpu(op, "dh", dh);
    check_dtype_as(op, "dh", dh, "h", h.dtype);
    check_ndim(op, "dh", dh, 2);
    check_same_shape(op, "h", h, "dh", dh);
    check_unit_inner_stride(op, "dh", dh);
  }
  if (given(dw)) {
    check_cpu(op, "dw", dw);
    check_dtype_as(op, "dw", dw, "h", h.dtype);
    check_ndim(op, "dw", dw, 2);
    check_same_shape(op, "w", w, "dw", dw);
    check_unit_inner_stride(op, "dw", dw);
  }
  if (given(is_greedy)) {
    check_cpu(op, "is_greedy", is_greedy);
    check_dtype(op, "is_greedy", is_greedy, DType::I32);
    RT_CHECK(is_greedy.ndim == 1 && is_greedy.shape[0] == N, "lm_head_cross_entropy: argument 'is_greedy' must have ",
             "shape [", N, "] (rows of h), found ", is_greedy.shape_str());
  }
  {
    const std::pair<const char*, const TensorView*> outs[] = {
        {"losses", &losses}, {"dh", &dh}, {"dw", &dw}, {"is_greedy", &is_greedy}};
    const std::pair<const char*, const TensorView*> ins[] = {{"h", &h}, {"w", &w}, {"targets", &targets}};
    for (const auto& [on, ov] : outs) {
      if (!given(*ov)) continue;
      for (const auto& [in, iv] : ins)
        RT_CHECK(!views_overlap(*ov, *iv), "lm_head_cross_entropy: output '", on, "' overlaps input '", in, "'");
      for (const auto& [on2, ov2] : outs)
        RT_CHECK(ov == ov2 || !given(*ov2) || !views_overlap(*ov, *ov2), "lm_head_cross_entropy: outputs '", on,
                 "' and '", on2, "' overlap");
    }
  }
  // Validate every target before writing anything.
  const int32_t* tp = targets.ptr<const int32_t>();
  for (int64_t n = 0; n < N; ++n) {
    const int64_t t = tp[n * targets.stride[0]];
    RT_CHECK(t == kIgnore || (t >= 0 && t < V), "lm_head_cross_entropy: argument 'targets': target ", t, " at row ",
             n, " is out of range for a vocabulary of size ", V, " (valid: 0..", V - 1, ", or -100 to ignore)");
  }
  if (N == 0) return;
  if (!given(losses) && !given(dh) && !given(dw) && !given(is_greedy)) return;
  dispatch_compute(h.dtype, [&](auto tag) {
    cross_entropy_impl<decltype(tag)>(h, w, targets, grad_scale, losses, dh, dw, is_greedy);
  });
}

}  // namespace rt::cpu
