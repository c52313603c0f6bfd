// attention backward, fp32, flash-style (P recomputed tile by tile, nothing T x T in memory).
//
// One task per query head (OpenMP, dynamic). A task walks its query rows in blocks of kRows; for a
// block it computes D = rowsum(dO * O), then two passes over the key tiles the block can see (the
// same [lo(i), hi(i)) ranges as attention_forward): pass 1 recomputes the log-sum-exp of every row,
// pass 2 recomputes P = exp(S - lse) (0 outside a row's visible range), dP = dO V^T,
// dS = P * (dP - D), and accumulates dQ (block) += dS K, dK_h += dS^T Q, dV_h += P^T dO, all with
// single-threaded Eigen GEMMs. dK_h / dV_h are per query head ([Hq, Tk, D] scratch) so the tasks
// never write the same memory; the heads of a GQA group are summed at the end in a fixed order
// (deterministic). Rows that see no key get dq = 0 and contribute nothing.
#include "cpu/attention_backward.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include <Eigen/Core>

#include "cpu/attention_mask.h"
#include "cpu/check.h"

namespace rt::cpu {
namespace {

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using CMap = Eigen::Map<const RowMat, 0, Eigen::OuterStride<>>;
using MMap = Eigen::Map<RowMat>;

constexpr int64_t kKeyTile = 256;  // keys per tile
constexpr int64_t kRows = 64;      // query rows per block



}  // namespace

void attention_backward(TensorView q, TensorView k, TensorView v, TensorView o, TensorView dout, TensorView dq,
                        TensorView dk, TensorView dv, const AttentionSpec& spec) {
  const char* op = "attention_backward";
  check_attention_view(op, "q", q);
  check_attention_view(op, "k", k);
  check_attention_view(op, "v", v);
  check_attention_view(op, "o", o);
  check_attention_view(op, "dout", dout);
  check_attention_view(op, "dq", dq);
  check_attention_view(op, "dk", dk);
  check_attention_view(op, "dv", dv);
  const int64_t Tq = q.shape[0], Hq = q.shape[1], D = q.shape[2];
  const int64_t Tk = k.shape[0], Hkv = k.shape[1];
  check_dim(op, "k", k, 2, D, "head dim, q.shape[2]");
  check_same_shape(op, "k", k, "v", v);
  check_same_shape(op, "q", q, "o", o);
  check_same_shape(op, "q", q, "dout", dout);
  check_same_shape(op, "q", q, "dq", dq);
  check_same_shape(op, "k", k, "dk", dk);
  check_same_shape(op, "k", k, "dv", dv);
  RT_CHECK(Hkv > 0 || Hq == 0, "attention_backward: k has 0 heads, shape ", k.shape_str());
  RT_CHECK(Hkv == 0 || Hq % Hkv == 0, "attention_backward: query heads (", Hq, ", q shape ", q.shape_str(),
           ") must be a multiple of KV heads (", Hkv, ", k shape ", k.shape_str(), ")");
  RT_CHECK(spec.window >= 0, "attention_backward: window must be >= 0 (0: none), found ", spec.window);
  RT_CHECK(std::isfinite(spec.scale), "attention_backward: scale must be finite, found ", spec.scale);
  {
    const std::pair<const char*, const TensorView*> outs[] = {{"dq", &dq}, {"dk", &dk}, {"dv", &dv}};
    const std::pair<const char*, const TensorView*> ins[] = {
        {"q", &q}, {"k", &k}, {"v", &v}, {"o", &o}, {"dout", &dout}};
    for (const auto& [on, ov] : outs) {
      for (const auto& [in, iv] : ins)
        RT_CHECK(!views_overlap(*ov, *iv), "attention_backward: output '", on, "' overlaps input '", in, "'");
      for (const auto& [on2, ov2] : outs)
        RT_CHECK(ov == ov2 || !views_overlap(*ov, *ov2), "attention_backward: outputs '", on, "' and '", on2, "' overlap");
    }
  }
  if (Hkv == 0 || D == 0) return;
  auto zero_rows = [](TensorView t) {
    for (int64_t i = 0; i < t.shape[0]; ++i)
      for (int64_t h = 0; h < t.shape[1]; ++h) {
        float* p = t.ptr<float>() + i * t.stride[0] + h * t.stride[1];
        std::fill(p, p + t.shape[2], 0.f);
      }
  };
  if (Tq == 0 || Hq == 0 || Tk == 0) {
    zero_rows(dq);
    zero_rows(dk);
    zero_rows(dv);
    return;
  }
  const float scale = spec.scale != 0.f ? spec.scale : static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
  const KeyRange mask = KeyRange::of(spec, Tk);
  const int64_t group = Hq / Hkv;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();

  // Per-query-head dK / dV ([Hq][Tk][D], contiguous), summed over each group at the end.
  std::vector<float> dk_h(static_cast<size_t>(Hq * Tk * D)), dv_h(static_cast<size_t>(Hq * Tk * D));
  const float* qp = q.ptr<const float>();
  const float* kp = k.ptr<const float>();
  const float* vp = v.ptr<const float>();
  const float* op_ = o.ptr<const float>();
  const float* dop = dout.ptr<const float>();
  float* dqp = dq.ptr<float>();

#pragma omp parallel
  {
    RowMat Q(kRows, D), dO(kRows, D), dQ(kRows, D), S(kRows, kKeyTile), dP(kRows, kKeyTile);
    std::vector<float> lse(kRows), Dl(kRows), m(kRows), l(kRows);
#pragma omp for schedule(dynamic, 1)
    for (int64_t h = 0; h < Hq; ++h) {
      const int64_t hk = h / group;
      MMap dK(dk_h.data() + h * Tk * D, Tk, D), dV(dv_h.data() + h * Tk * D, Tk, D);
      dK.setZero();
      dV.setZero();
      for (int64_t i0 = 0; i0 < Tq; i0 += kRows) {
        const int64_t nb = std::min(kRows, Tq - i0);
        const int64_t jlo = mask.lo(i0), jhi = mask.hi(i0 + nb - 1);
        for (int64_t r = 0; r < nb; ++r) {
          const float* qr = qp + (i0 + r) * q.stride[0] + h * q.stride[1];
          const float* dr = dop + (i0 + r) * dout.stride[0] + h * dout.stride[1];
          const float* orow = op_ + (i0 + r) * o.stride[0] + h * o.stride[1];
          float acc = 0.f;
          for (int64_t d = 0; d < D; ++d) {
            Q(r, d) = qr[d];
            dO(r, d) = dr[d];
            acc += dr[d] * orow[d];
          }
          Dl[static_cast<size_t>(r)] = acc;
          m[static_cast<size_t>(r)] = kNegInf;
          l[static_cast<size_t>(r)] = 0.f;
        }
        auto Qb = Q.topRows(nb);
        auto dOb = dO.topRows(nb);
        dQ.topRows(nb).setZero();
        // Pass 1: log-sum-exp of every row.
        for (int64_t j0 = jlo; j0 < jhi; j0 += kKeyTile) {
          const int64_t n = std::min(kKeyTile, jhi - j0);
          CMap K(kp + j0 * k.stride[0] + hk * k.stride[1], n, D, Eigen::OuterStride<>(k.stride[0]));
          auto St = S.topLeftCorner(nb, n);
          St.noalias() = Qb * K.transpose();
          for (int64_t r = 0; r < nb; ++r) {
            const int64_t a = std::max(mask.lo(i0 + r), j0) - j0, b = std::min(mask.hi(i0 + r), j0 + n) - j0;
            if (a >= b) continue;
            auto vis = (St.row(r).segment(a, b - a).array() * scale).eval();
            const float mo = m[static_cast<size_t>(r)];
            const float mn = std::max(mo, vis.maxCoeff());
            const float sum = (vis - mn).exp().sum();
            l[static_cast<size_t>(r)] = (mo == kNegInf ? 0.f : l[static_cast<size_t>(r)] * std::exp(mo - mn)) + sum;
            m[static_cast<size_t>(r)] = mn;
          }
        }
        for (int64_t r = 0; r < nb; ++r)
          lse[static_cast<size_t>(r)] = m[static_cast<size_t>(r)] == kNegInf
                                            ? std::numeric_limits<float>::infinity()
                                            : m[static_cast<size_t>(r)] + std::log(l[static_cast<size_t>(r)]);
        // Pass 2: P, dS and the three gradient products.
        for (int64_t j0 = jlo; j0 < jhi; j0 += kKeyTile) {
          const int64_t n = std::min(kKeyTile, jhi - j0);
          CMap K(kp + j0 * k.stride[0] + hk * k.stride[1], n, D, Eigen::OuterStride<>(k.stride[0]));
          CMap V(vp + j0 * v.stride[0] + hk * v.stride[1], n, D, Eigen::OuterStride<>(v.stride[0]));
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
            const float ls = lse[static_cast<size_t>(r)], Dr = Dl[static_cast<size_t>(r)];
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
          dV.middleRows(j0, n).noalias() += Pt.transpose() * dOb;
          dK.middleRows(j0, n).noalias() += dSt.transpose() * Qb;
          dQ.topRows(nb).noalias() += dSt * K;
        }
        for (int64_t r = 0; r < nb; ++r) {
          float* dst = dqp + (i0 + r) * dq.stride[0] + h * dq.stride[1];
          for (int64_t d = 0; d < D; ++d) dst[d] = dQ(r, d) * scale;
        }
      }
    }
    // Sum the heads of each group (fixed order).
#pragma omp for schedule(static)
    for (int64_t j = 0; j < Tk; ++j)
      for (int64_t hk = 0; hk < Hkv; ++hk) {
        float* dkr = dk.ptr<float>() + j * dk.stride[0] + hk * dk.stride[1];
        float* dvr = dv.ptr<float>() + j * dv.stride[0] + hk * dv.stride[1];
        for (int64_t d = 0; d < D; ++d) {
          float sk = 0.f, sv = 0.f;
          for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
            sk += dk_h[static_cast<size_t>((h * Tk + j) * D + d)];
            sv += dv_h[static_cast<size_t>((h * Tk + j) * D + d)];
          }
          dkr[d] = sk * scale;
          dvr[d] = sv;
        }
      }
  }
}

}  // namespace rt::cpu
