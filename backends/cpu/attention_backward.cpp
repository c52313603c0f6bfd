// attention backward, flash-style (P recomputed tile by tile, nothing T x T in memory), in q's
// dtype (f32, or f64 for finite-difference gradient checks).
//
// One task per query head (OpenMP, dynamic). A task walks its query rows in blocks of kRows; for a
// block it computes D = rowsum(dO * O), then goes over the key tiles the block can see (the same
// [lo(i), hi(i)) ranges as attention_forward): with an empty lse view, a first pass recomputes the
// log-sum-exp of every row (otherwise lse from attention_forward_lse is read); then it recomputes P = exp(S - lse) (0 outside a row's visible range), dP = dO V^T,
// dS = P * (dP - D), and accumulates dQ (block) += dS K, dK_h += dS^T Q, dV_h += P^T dO, all with
// single-threaded Eigen GEMMs. dK_h / dV_h are per query head ([Hq, Tk, D] scratch) so the tasks
// never write the same memory; the heads of a GQA group are summed at the end in a fixed order
// (deterministic). Rows that see no key get dq = 0 and contribute nothing.
//
// Routed queries (spec.routed()): q, o, lse, dout and dq hold a compact list of rows, row i at
// position q_pos0 + q_index[i] (ascending; the masks map the row to its position); only the first
// q_count rows (clamped to [0, Tq]) are active. Inactive rows get dq = 0 and add nothing to dk, dv.
#include "cpu/attention_backward.h"

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
template <typename T>
using MMap = Eigen::Map<RowMat<T>>;

constexpr int64_t kKeyTile = 256;  // keys per tile
constexpr int64_t kRows = 64;      // query rows per block


template <typename T>
void attention_backward_impl(TensorView q, TensorView k, TensorView v, TensorView o, TensorView lse_in,
                             TensorView dout, TensorView dq, TensorView dk, TensorView dv, const AttentionSpec& spec,
                             const QueryRows& rows);

}  // namespace

void attention_backward(TensorView q, TensorView k, TensorView v, TensorView o, TensorView lse, TensorView dout,
                        TensorView dq, TensorView dk, TensorView dv, const AttentionSpec& spec) {
  const char* op = "attention_backward";
  const DType dt = q.dtype;
  check_attention_view(op, "q", q, dt);
  check_attention_view(op, "k", k, dt);
  check_attention_view(op, "v", v, dt);
  check_attention_view(op, "o", o, dt);
  check_attention_view(op, "dout", dout, dt);
  const int64_t Tq = q.shape[0], Hq = q.shape[1], D = q.shape[2];
  const int64_t Tk = k.shape[0], Hkv = k.shape[1];
  check_dim(op, "k", k, 2, D, "head dim, q.shape[2]");
  check_same_shape(op, "k", k, "v", v);
  check_same_shape(op, "q", q, "o", o);
  check_same_shape(op, "q", q, "dout", dout);
  if (given(dq)) {
    check_attention_view(op, "dq", dq, dt);
    check_same_shape(op, "q", q, "dq", dq);
  }
  if (given(dk)) {
    check_attention_view(op, "dk", dk, dt);
    check_same_shape(op, "k", k, "dk", dk);
  }
  if (given(dv)) {
    check_attention_view(op, "dv", dv, dt);
    check_same_shape(op, "k", k, "dv", dv);
  }
  if (given(lse)) check_lse_view(op, lse, Hq, Tq, dt);
  RT_CHECK(Hkv > 0 || Hq == 0, "attention_backward: k has 0 heads, shape ", k.shape_str());
  RT_CHECK(Hkv == 0 || Hq % Hkv == 0, "attention_backward: query heads (", Hq, ", q shape ", q.shape_str(),
           ") must be a multiple of KV heads (", Hkv, ", k shape ", k.shape_str(), ")");
  RT_CHECK(spec.window >= 0, "attention_backward: window must be >= 0 (0: none), found ", spec.window);
  RT_CHECK(std::isfinite(spec.scale), "attention_backward: scale must be finite, found ", spec.scale);
  check_key_rows(op, k);
  {
    const std::pair<const char*, const TensorView*> outs[] = {{"dq", &dq}, {"dk", &dk}, {"dv", &dv}};
    const std::pair<const char*, const TensorView*> ins[] = {
        {"q", &q}, {"k", &k}, {"v", &v}, {"o", &o}, {"lse", &lse}, {"dout", &dout}};
    for (const auto& [on, ov] : outs) {
      if (!given(*ov)) continue;
      for (const auto& [in, iv] : ins)
        RT_CHECK(!given(*iv) || !views_overlap(*ov, *iv), "attention_backward: output '", on, "' overlaps input '",
                 in, "'");
      for (const auto& [on2, ov2] : outs)
        RT_CHECK(ov == ov2 || !given(*ov2) || !views_overlap(*ov, *ov2), "attention_backward: outputs '", on,
                 "' and '", on2, "' overlap");
      check_not_overlapping_rows(op, on, *ov, spec);
    }
  }
  spec.check_routed_options(op, true);
  const QueryRows rows = query_rows(op, spec, Tq);
  if (!given(dq) && !given(dk) && !given(dv)) return;
  if (Hkv == 0 || D == 0) return;
  if (rows.active == 0 || Hq == 0 || Tk == 0) {  // no query sees a key: every gradient is zero
    for (TensorView t : {dq, dk, dv})
      if (given(t)) fill_forward(t, 0.f);
    return;
  }
  dispatch_compute(dt, [&](auto tag) {
    using T = decltype(tag);
    if (given(dq))  // inactive routed rows: dq = 0
      for (int64_t i = rows.active; i < Tq; ++i)
        for (int64_t h = 0; h < Hq; ++h) {
          T* dst = dq.ptr<T>() + i * dq.stride[0] + h * dq.stride[1];
          for (int64_t d = 0; d < D; ++d) dst[d] = T(0);
        }
    attention_backward_impl<T>(q, k, v, o, lse, dout, dq, dk, dv, spec, rows);
  });
}

namespace {

template <typename T>
void attention_backward_impl(TensorView q, TensorView k, TensorView v, TensorView o, TensorView lse_in,
                             TensorView dout, TensorView dq, TensorView dk, TensorView dv, const AttentionSpec& spec,
                             const QueryRows& rows) {
  const int64_t Tq = rows.active, Hq = q.shape[1], D = q.shape[2];  // the active rows (all, unless routed)
  const int64_t Tk = k.shape[0], Hkv = k.shape[1];
  const bool want_dq = given(dq), want_dkv = given(dk) || given(dv);
  const T scale = spec.scale != 0.f ? static_cast<T>(spec.scale)
                                    : static_cast<T>(1.0 / std::sqrt(static_cast<double>(D)));
  const attn::KeyRange mask = key_range(spec, Tk, rows.index);
  const int64_t group = Hq / Hkv;
  constexpr T kNegInf = -std::numeric_limits<T>::infinity();

  // Per-query-head dK / dV ([Hq][Tk][D], contiguous), summed over each group at the end.
  const size_t scratch = want_dkv ? static_cast<size_t>(Hq * Tk * D) : 0;
  std::vector<T> dk_h(scratch), dv_h(scratch);
  const T* qp = q.ptr<const T>();
  const T* kp = k.ptr<const T>();
  const T* vp = v.ptr<const T>();
  const T* op_ = o.ptr<const T>();
  const T* dop = dout.ptr<const T>();
  const T* lsep = given(lse_in) ? lse_in.ptr<const T>() : nullptr;

#pragma omp parallel
  {
    RowMat<T> Q(kRows, D), dO(kRows, D), dQ(kRows, D), S(kRows, kKeyTile), dP(kRows, kKeyTile);
    std::vector<T> lse(kRows), Dl(kRows), m(kRows), l(kRows);
#pragma omp for schedule(dynamic, 1)
    for (int64_t h = 0; h < Hq; ++h) {
      const int64_t hk = h / group;
      MMap<T> dK(want_dkv ? dk_h.data() + h * Tk * D : nullptr, want_dkv ? Tk : 0, D);
      MMap<T> dV(want_dkv ? dv_h.data() + h * Tk * D : nullptr, want_dkv ? Tk : 0, D);
      dK.setZero();
      dV.setZero();
      for (int64_t i0 = 0; i0 < Tq; i0 += kRows) {
        const int64_t nb = std::min(kRows, Tq - i0);
        const int64_t jlo = mask.lo(i0), jhi = mask.hi(i0 + nb - 1);
        for (int64_t r = 0; r < nb; ++r) {
          const T* qr = qp + (i0 + r) * q.stride[0] + h * q.stride[1];
          const T* dr = dop + (i0 + r) * dout.stride[0] + h * dout.stride[1];
          const T* orow = op_ + (i0 + r) * o.stride[0] + h * o.stride[1];
          T acc = 0;
          for (int64_t d = 0; d < D; ++d) {
            Q(r, d) = qr[d];
            dO(r, d) = dr[d];
            acc += dr[d] * orow[d];
          }
          Dl[static_cast<size_t>(r)] = acc;
          m[static_cast<size_t>(r)] = kNegInf;
          l[static_cast<size_t>(r)] = T(0);
        }
        auto Qb = Q.topRows(nb);
        auto dOb = dO.topRows(nb);
        dQ.topRows(nb).setZero();
        if (lsep) {  // from attention_forward_lse
          for (int64_t r = 0; r < nb; ++r)
            lse[static_cast<size_t>(r)] = lsep[h * lse_in.stride[0] + (i0 + r) * lse_in.stride[1]];
        } else {  // Pass 1: log-sum-exp of every row.
          for (int64_t j0 = jlo; j0 < jhi; j0 += kKeyTile) {
            const int64_t n = std::min(kKeyTile, jhi - j0);
            CMap<T> K(kp + j0 * k.stride[0] + hk * k.stride[1], n, D, Eigen::OuterStride<>(k.stride[0]));
            auto St = S.topLeftCorner(nb, n);
            St.noalias() = Qb * K.transpose();
            for (int64_t r = 0; r < nb; ++r) {
              const int64_t a = std::max(mask.lo(i0 + r), j0) - j0, b = std::min(mask.hi(i0 + r), j0 + n) - j0;
              if (a >= b) continue;
              auto vis = (St.row(r).segment(a, b - a).array() * scale).eval();
              const T mo = m[static_cast<size_t>(r)];
              // NaN must propagate (std::max(-inf, NaN) is -inf); std::max(NaN, x) keeps a NaN m.
              const T tmax = vis.maxCoeff();
              const T mn = std::isnan(tmax) ? tmax : std::max(mo, tmax);
              const T sum = (vis - mn).exp().sum();
              const T lo = l[static_cast<size_t>(r)];
              l[static_cast<size_t>(r)] = (lo == T(0) ? T(0) : lo * std::exp(mo - mn)) + sum;
              m[static_cast<size_t>(r)] = mn;
            }
          }
          for (int64_t r = 0; r < nb; ++r)
            lse[static_cast<size_t>(r)] = l[static_cast<size_t>(r)] == T(0)  // no visible key
                                              ? std::numeric_limits<T>::infinity()
                                              : m[static_cast<size_t>(r)] + std::log(l[static_cast<size_t>(r)]);
        }
        // Pass 2: P, dS and the three gradient products.
        for (int64_t j0 = jlo; j0 < jhi; j0 += kKeyTile) {
          const int64_t n = std::min(kKeyTile, jhi - j0);
          CMap<T> K(kp + j0 * k.stride[0] + hk * k.stride[1], n, D, Eigen::OuterStride<>(k.stride[0]));
          CMap<T> V(vp + j0 * v.stride[0] + hk * v.stride[1], n, D, Eigen::OuterStride<>(v.stride[0]));
          auto Pt = S.topLeftCorner(nb, n);
          auto dSt = dP.topLeftCorner(nb, n);
          Pt.noalias() = Qb * K.transpose();
          dSt.noalias() = dOb * V.transpose();
          for (int64_t r = 0; r < nb; ++r) {
            const int64_t a = std::max(mask.lo(i0 + r), j0) - j0, b = std::min(mask.hi(i0 + r), j0 + n) - j0;
            auto prow = Pt.row(r);
            auto dsrow = dSt.row(r);
            if (a >= b) {
              prow.setZero();
              dsrow.setZero();
              continue;
            }
            const T ls = lse[static_cast<size_t>(r)], Dr = Dl[static_cast<size_t>(r)];
            auto pv = prow.segment(a, b - a).array();
            pv = (pv * scale - ls).exp();
            dsrow.segment(a, b - a).array() = pv * (dsrow.segment(a, b - a).array() - Dr);
            if (a > 0) {
              prow.head(a).setZero();
              dsrow.head(a).setZero();
            }
            if (b < n) {
              prow.segment(b, n - b).setZero();
              dsrow.segment(b, n - b).setZero();
            }
          }
          if (want_dkv) {
            dV.middleRows(j0, n).noalias() += Pt.transpose() * dOb;
            dK.middleRows(j0, n).noalias() += dSt.transpose() * Qb;
          }
          if (want_dq) dQ.topRows(nb).noalias() += dSt * K;
        }
        if (want_dq)
          for (int64_t r = 0; r < nb; ++r) {
            T* dst = dq.ptr<T>() + (i0 + r) * dq.stride[0] + h * dq.stride[1];
            for (int64_t d = 0; d < D; ++d) dst[d] = dQ(r, d) * scale;
          }
      }
    }
    // Sum the heads of each group (fixed order).
    if (want_dkv) {
#pragma omp for schedule(static)
      for (int64_t j = 0; j < Tk; ++j)
        for (int64_t hk = 0; hk < Hkv; ++hk) {
          T* dkr = given(dk) ? dk.ptr<T>() + j * dk.stride[0] + hk * dk.stride[1] : nullptr;
          T* dvr = given(dv) ? dv.ptr<T>() + j * dv.stride[0] + hk * dv.stride[1] : nullptr;
          for (int64_t d = 0; d < D; ++d) {
            T sk = 0, sv = 0;
            for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
              sk += dk_h[static_cast<size_t>((h * Tk + j) * D + d)];
              sv += dv_h[static_cast<size_t>((h * Tk + j) * D + d)];
            }
            if (dkr) dkr[d] = sk * scale;
            if (dvr) dvr[d] = sv;
          }
        }
    }
  }
}

}  // namespace

}  // namespace rt::cpu
