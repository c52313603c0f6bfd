// attention: o = softmax(q k^T * scale + mask) v, grouped-query, flash-style, in q's dtype (f32,
// or f64 for finite-difference gradient checks). attention_forward_lse also writes each row's
// log-sum-exp lse [Hq, Tq] = m + log(l) of its scaled, masked scores (+inf for a row that sees no
// key), which attention_backward reads.
//
// Work is split into tasks (KV head, group of query heads sharing it, block of query rows). A
// task stacks its query rows (heads x queries, ~128 rows) into one matrix, so each K/V tile is
// read once for all the query heads of a GQA group, and walks the keys that any of its rows can
// see in tiles of kKeyTile keys with an online softmax (running max m, running sum l, rescaled
// accumulator): scores are held for one tile only, O(rows x kKeyTile) floats per thread whatever Tk
// is. Both products per tile are single-threaded Eigen GEMMs (or, for <= kSmallRows stacked rows,
// as in decode, vectorized dots/axpys that read each key row once); tasks are spread over OpenMP
// threads (dynamic schedule, heaviest causal blocks first). Decode with fewer KV heads than
// threads splits a head group over several tasks.
//
// Masks (AttentionSpec; the shared definition in common/attention_rows.h): query row i sits at
// position q_pos0 + i, key row j at k_pos0 + j. Row i sees key j iff (not causal or kpos <= qpos)
// and (window == 0 or kpos > qpos - window). Those keys are a contiguous range [lo(i), hi(i)) and
// both ends grow with i, which is what lets a block skip the tiles none of its rows can see
// (causal: ~half the work; window: all but ~W keys).
//
// Routed queries (spec.routed(), L2A): q, o and lse hold a compact list of rows, row i at position
// q_pos0 + q_index[i] (strictly ascending, so lo / hi still grow with the row and the tile skipping
// holds); only the first q_count rows (clamped to [0, Tq]) are computed, the others get o = 0 and
// lse = +inf (or are left as they are: spec.inactive_unwritten). With spec.q_indexed, q holds every
// row and routed row i reads q row q_index[i].
//
// A query row that sees no key at all (e.g. its position is before k_pos0) gets an output of
// zeros: softmax over an empty set is undefined, and zeros are what a sum over no values is (the
// CUDA backend must match). Non-finite values propagate: a row with a NaN or infinite score among
// its visible keys gets a non-finite output and lse (NaN), never zeros.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include <Eigen/Core>

#include "cpu/attention_mask.h"
#include "cpu/check.h"
#include "cpu/convert.h"
#include "cpu/kernels.h"

namespace rt::cpu {
namespace {

template <typename T>
using RowMat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <typename T>
using CMap = Eigen::Map<const RowMat<T>, 0, Eigen::OuterStride<>>;

constexpr int64_t kKeyTile = 256;     // keys per tile
constexpr int64_t kTargetRows = 128;  // stacked query rows per task
// With this few stacked rows (decode: one query, the heads of one group) a GEMM spends most of its
// time packing K/V tiles; plain vectorized dot products / axpys read each key row once instead.
constexpr int64_t kSmallRows = 16;
template <typename T>
using CRow = Eigen::Map<const Eigen::Matrix<T, 1, Eigen::Dynamic>>;

template <typename T>
void attention_impl(TensorView q, TensorView k, TensorView v, TensorView o, TensorView lse, const AttentionSpec& spec,
                    const QueryRows& rows);

// Rows [r0, Tq) of o (all heads) (=) 0 and of lse (=) +inf: the inactive routed rows.
template <typename T>
void clear_inactive_rows(TensorView o, TensorView lse, int64_t r0) {
  const int64_t Tq = o.shape[0], Hq = o.shape[1], D = o.shape[2];
  for (int64_t i = r0; i < Tq; ++i)
    for (int64_t h = 0; h < Hq; ++h) {
      T* dst = o.ptr<T>() + i * o.stride[0] + h * o.stride[1];
      for (int64_t d = 0; d < D; ++d) dst[d] = T(0);
      if (given(lse)) lse.ptr<T>()[h * lse.stride[0] + i * lse.stride[1]] = std::numeric_limits<T>::infinity();
    }
}

void attention_checked(const char* op, TensorView q, TensorView k, TensorView v, TensorView o, TensorView lse,
                       const AttentionSpec& spec) {
  check_attention_view(op, "q", q, q.dtype);
  check_attention_view(op, "k", k, q.dtype);
  check_attention_view(op, "v", v, q.dtype);
  check_attention_view(op, "o", o, q.dtype);
  const int64_t Tq = q.shape[0], Hq = q.shape[1], D = q.shape[2];
  const int64_t Tk = k.shape[0], Hkv = k.shape[1];
  check_dim(op, "k", k, 2, D, "head dim, q.shape[2]");
  check_same_shape(op, "k", k, "v", v);
  check_same_shape(op, "q", q, "o", o);
  RT_CHECK(Hkv > 0 || Hq == 0, op, ": k has 0 heads, shape ", k.shape_str());
  RT_CHECK(Hkv == 0 || Hq % Hkv == 0, op, ": query heads (", Hq, ", q shape ", q.shape_str(),
           ") must be a multiple of KV heads (", Hkv, ", k shape ", k.shape_str(), ")");
  RT_CHECK(spec.window >= 0, op, ": window must be >= 0 (0: none), found ", spec.window);
  RT_CHECK(std::isfinite(spec.scale), op, ": scale must be finite, found ", spec.scale);
  RT_CHECK(!views_overlap(o, k) && !views_overlap(o, v), op, ": output 'o' overlaps 'k' or 'v'");
  check_key_rows(op, k);
  check_not_overlapping_rows(op, "o", o, spec);
  if (given(lse)) {
    check_lse_view(op, lse, Hq, Tq, q.dtype);
    const std::pair<const char*, const TensorView*> others[] = {{"q", &q}, {"k", &k}, {"v", &v}, {"o", &o}};
    for (const auto& [name, t] : others)
      RT_CHECK(!views_overlap(lse, *t), op, ": output 'lse' overlaps '", name, "'");
    check_not_overlapping_rows(op, "lse", lse, spec);
  }
  spec.check_routed_options(op, false);
  const QueryRows rows = query_rows(op, spec, Tq);
  if (Tq == 0 || Hq == 0) return;
  if (D == 0 || Hkv == 0) {  // no features: o is empty, lse still defined
    if (given(lse)) {
      const attn::KeyRange mask = key_range(spec, Tk, rows.index);
      dispatch_compute(q.dtype, [&](auto tag) {
        using T = decltype(tag);
        for (int64_t h = 0; h < Hq; ++h)
          for (int64_t i = 0; i < (spec.inactive_unwritten ? rows.active : Tq); ++i)
            lse.ptr<T>()[h * lse.stride[0] + i * lse.stride[1]] =
                i < rows.active && mask.lo(i) < mask.hi(i) ? std::log(static_cast<T>(mask.hi(i) - mask.lo(i)))
                                                           : std::numeric_limits<T>::infinity();
      });
    }
    return;
  }
  dispatch_compute(q.dtype, [&](auto tag) {
    using T = decltype(tag);
    if (!spec.inactive_unwritten) clear_inactive_rows<T>(o, lse, rows.active);
    if (rows.active > 0) attention_impl<T>(q, k, v, o, lse, spec, rows);
  });
}

template <typename T>
void attention_impl(TensorView q, TensorView k, TensorView v, TensorView o, TensorView lse, const AttentionSpec& spec,
                    const QueryRows& rows) {
  const int64_t Tq = rows.active, Hq = q.shape[1], D = q.shape[2];  // the active rows (all, unless routed)
  const int64_t Tk = k.shape[0], Hkv = k.shape[1];
  // f32: the scale rounded to f32 as before; f64: 1/sqrt(D) in double (spec.scale is exact in both).
  const T scale = spec.scale != 0.f ? static_cast<T>(spec.scale)
                                    : static_cast<T>(1.0 / std::sqrt(static_cast<double>(D)));
  const attn::KeyRange mask = key_range(spec, Tk, rows.index);

  const int64_t g = Hq / Hkv;  // query heads per KV head
  const int nt = omp_get_max_threads();
  int64_t gs = std::min<int64_t>(g, kTargetRows);                         // heads per task
  const int64_t nq = std::clamp<int64_t>(kTargetRows / gs, 1, Tq);         // queries per task
  const int64_t nblocks = (Tq + nq - 1) / nq;
  int64_t nsub = (g + gs - 1) / gs;
  // Few query blocks (decode): split the head groups further so every thread has work.
  while (gs > 1 && Hkv * nsub * nblocks < static_cast<int64_t>(nt)) {
    gs = (gs + 1) / 2;
    nsub = (g + gs - 1) / gs;
  }
  const int64_t tasks = Hkv * nsub * nblocks;
  const int64_t rmax = gs * nq;
  const double work = static_cast<double>(Tq) * static_cast<double>(Tk) * static_cast<double>(Hq * D);

  const int64_t qs0 = q.stride[0], qs1 = q.stride[1], ks0 = k.stride[0], ks1 = k.stride[1];
  const int64_t vs0 = v.stride[0], vs1 = v.stride[1], os0 = o.stride[0], os1 = o.stride[1];
  const T* qp = q.ptr<const T>();
  const T* kp = k.ptr<const T>();
  const T* vp = v.ptr<const T>();
  T* op = o.ptr<T>();
  T* lp = given(lse) ? lse.ptr<T>() : nullptr;
  const int64_t ls0 = given(lse) ? lse.stride[0] : 0, ls1 = given(lse) ? lse.stride[1] : 0;
  constexpr T kNegInf = -std::numeric_limits<T>::infinity();

#pragma omp parallel if (tasks > 1 && work >= 1 << 16)
  {
    RowMat<T> Q(rmax, D), S(rmax, kKeyTile), O(rmax, D);
    std::vector<T> m(static_cast<size_t>(rmax)), l(static_cast<size_t>(rmax));
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      // Latest query blocks first: under a causal mask they see the most keys.
      const int64_t blk = nblocks - 1 - task / (Hkv * nsub);
      const int64_t hk = (task % (Hkv * nsub)) / nsub, sub = task % nsub;
      const int64_t h0 = hk * g + sub * gs, h1 = std::min(hk * g + (sub + 1) * gs, (hk + 1) * g);
      const int64_t i0 = blk * nq, i1 = std::min(Tq, i0 + nq);
      const int64_t nh = h1 - h0, nqb = i1 - i0, R = nh * nqb;  // row r = (head h0 + r / nqb, query i0 + r % nqb)
      const int64_t jlo = mask.lo(i0), jhi = mask.hi(i1 - 1);

      for (int64_t r = 0; r < R; ++r) {
        m[static_cast<size_t>(r)] = kNegInf;
        l[static_cast<size_t>(r)] = T(0);
      }
      if (jlo < jhi) {
        for (int64_t r = 0; r < R; ++r) {
          const T* src = qp + q_source_row(spec, rows, i0 + r % nqb) * qs0 + (h0 + r / nqb) * qs1;
          for (int64_t d = 0; d < D; ++d) Q(r, d) = src[d] * scale;
        }
        O.topRows(R).setZero();
        for (int64_t j0 = jlo; j0 < jhi; j0 += kKeyTile) {
          const int64_t n = std::min(kKeyTile, jhi - j0);
          CMap<T> K(kp + j0 * ks0 + hk * ks1, n, D, Eigen::OuterStride<>(ks0));
          CMap<T> V(vp + j0 * vs0 + hk * vs1, n, D, Eigen::OuterStride<>(vs0));
          auto St = S.topLeftCorner(R, n);
          if (R <= kSmallRows) {
            for (int64_t j = 0; j < n; ++j) {
              const CRow<T> kj(kp + (j0 + j) * ks0 + hk * ks1, D);
              for (int64_t r = 0; r < R; ++r) St(r, j) = Q.row(r).dot(kj);
            }
          } else {
            St.noalias() = Q.topRows(R) * K.transpose();
          }
          for (int64_t r = 0; r < R; ++r) {
            const int64_t i = i0 + r % nqb;
            const int64_t a = std::max(mask.lo(i), j0) - j0, b = std::min(mask.hi(i), j0 + n) - j0;
            auto row = St.row(r);
            if (a >= b) {  // nothing visible in this tile
              row.setZero();
              continue;
            }
            auto vis = row.segment(a, b - a).array();
            const T mold = m[static_cast<size_t>(r)];
            // NaN must propagate: std::max(-inf, NaN) is -inf, which would read as "no key seen".
            // (std::max(NaN, x) is NaN, so a NaN m stays NaN.)
            const T tmax = vis.maxCoeff();
            const T mnew = std::isnan(tmax) ? tmax : std::max(mold, tmax);
            vis = (vis - mnew).exp();
            const T sum = vis.sum();
            if (a > 0) row.head(a).setZero();
            if (b < n) row.segment(b, n - b).setZero();
            if (l[static_cast<size_t>(r)] == T(0)) {  // first visible key (l is >= 1 or non-finite after)
              l[static_cast<size_t>(r)] = sum;
            } else if (mnew != mold) {
              const T corr = std::exp(mold - mnew);
              l[static_cast<size_t>(r)] = l[static_cast<size_t>(r)] * corr + sum;
              O.row(r) *= corr;
            } else {
              l[static_cast<size_t>(r)] += sum;
            }
            m[static_cast<size_t>(r)] = mnew;
          }
          if (R <= kSmallRows) {
            for (int64_t j = 0; j < n; ++j) {
              const CRow<T> vj(vp + (j0 + j) * vs0 + hk * vs1, D);
              for (int64_t r = 0; r < R; ++r) O.row(r) += St(r, j) * vj;
            }
          } else {
            O.topRows(R).noalias() += St * V;
          }
        }
      }
      for (int64_t r = 0; r < R; ++r) {
        T* dst = op + (i0 + r % nqb) * os0 + (h0 + r / nqb) * os1;
        const T mr = m[static_cast<size_t>(r)], lr = l[static_cast<size_t>(r)];
        // l == 0 only for a row that saw no key: otherwise l >= 1 (the max term contributes
        // exp(0)), or NaN / inf when a score was non-finite, which then reaches o and lse.
        const bool seen = lr != T(0);
        if (seen) {
          const T inv = T(1) / lr;
          for (int64_t d = 0; d < D; ++d) dst[d] = O(r, d) * inv;
        } else {  // no visible key: zeros (see the header comment)
          for (int64_t d = 0; d < D; ++d) dst[d] = T(0);
        }
        if (lp)
          lp[(h0 + r / nqb) * ls0 + (i0 + r % nqb) * ls1] =
              seen ? mr + std::log(lr) : std::numeric_limits<T>::infinity();
      }
    }
  }
}

}  // namespace

void attention_forward(TensorView q, TensorView k, TensorView v, TensorView o, const AttentionSpec& spec) {
  attention_checked("attention", q, k, v, o, TensorView{}, spec);
}

void attention_forward_lse(TensorView q, TensorView k, TensorView v, TensorView o, TensorView lse,
                           const AttentionSpec& spec) {
  attention_checked("attention_forward_lse", q, k, v, o, lse, spec);
}

}  // namespace rt::cpu
