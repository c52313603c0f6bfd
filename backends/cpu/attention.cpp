// attention: o = softmax(q k^T * scale + mask) v, grouped-query, fp32, flash-style.
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
// Masks (AttentionSpec): query row i sits at position q_pos0 + i, key row j at k_pos0 + j. Row i
// sees key j iff (not causal or kpos <= qpos) and (window == 0 or kpos > qpos - window). Those keys
// are a contiguous range [lo(i), hi(i)) and both ends grow with i, which is what lets a block skip
// the tiles none of its rows can see (causal: ~half the work; window: all but ~W keys).
//
// A query row that sees no key at all (e.g. its position is before k_pos0) gets an output of
// zeros: softmax over an empty set is undefined, and zeros are what a sum over no values is (the
// CUDA backend must match).
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include <Eigen/Core>

#include "cpu/attention_mask.h"
#include "cpu/check.h"
#include "cpu/kernels.h"

namespace rt::cpu {
namespace {

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using CMap = Eigen::Map<const RowMat, 0, Eigen::OuterStride<>>;

constexpr int64_t kKeyTile = 256;     // keys per tile
constexpr int64_t kTargetRows = 128;  // stacked query rows per task
// With this few stacked rows (decode: one query, the heads of one group) a GEMM spends most of its
// time packing K/V tiles; plain vectorized dot products / axpys read each key row once instead.
constexpr int64_t kSmallRows = 16;
using CRow = Eigen::Map<const Eigen::RowVectorXf>;



}  // namespace

void attention_forward(TensorView q, TensorView k, TensorView v, TensorView o, const AttentionSpec& spec) {
  check_attention_view("attention", "q", q);
  check_attention_view("attention", "k", k);
  check_attention_view("attention", "v", v);
  check_attention_view("attention", "o", o);
  const int64_t Tq = q.shape[0], Hq = q.shape[1], D = q.shape[2];
  const int64_t Tk = k.shape[0], Hkv = k.shape[1];
  check_dim("attention", "k", k, 2, D, "head dim, q.shape[2]");
  check_same_shape("attention", "k", k, "v", v);
  check_same_shape("attention", "q", q, "o", o);
  RT_CHECK(Hkv > 0 || Hq == 0, "attention: k has 0 heads, shape ", k.shape_str());
  RT_CHECK(Hkv == 0 || Hq % Hkv == 0, "attention: query heads (", Hq, ", q shape ", q.shape_str(),
           ") must be a multiple of KV heads (", Hkv, ", k shape ", k.shape_str(), ")");
  RT_CHECK(spec.window >= 0, "attention: window must be >= 0 (0: none), found ", spec.window);
  RT_CHECK(std::isfinite(spec.scale), "attention: scale must be finite, found ", spec.scale);
  RT_CHECK(!views_overlap(o, k) && !views_overlap(o, v), "attention: output 'o' overlaps 'k' or 'v'");
  if (Tq == 0 || Hq == 0 || D == 0) return;
  const float scale = spec.scale != 0.f ? spec.scale : static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
  const KeyRange mask = KeyRange::of(spec, Tk);

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
  const float* qp = q.ptr<const float>();
  const float* kp = k.ptr<const float>();
  const float* vp = v.ptr<const float>();
  float* op = o.ptr<float>();
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();

#pragma omp parallel if (tasks > 1 && work >= 1 << 16)
  {
    RowMat Q(rmax, D), S(rmax, kKeyTile), O(rmax, D);
    std::vector<float> m(static_cast<size_t>(rmax)), l(static_cast<size_t>(rmax));
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
        l[static_cast<size_t>(r)] = 0.f;
      }
      if (jlo < jhi) {
        for (int64_t r = 0; r < R; ++r) {
          const float* src = qp + (i0 + r % nqb) * qs0 + (h0 + r / nqb) * qs1;
          for (int64_t d = 0; d < D; ++d) Q(r, d) = src[d] * scale;
        }
        O.topRows(R).setZero();
        for (int64_t j0 = jlo; j0 < jhi; j0 += kKeyTile) {
          const int64_t n = std::min(kKeyTile, jhi - j0);
          CMap K(kp + j0 * ks0 + hk * ks1, n, D, Eigen::OuterStride<>(ks0));
          CMap V(vp + j0 * vs0 + hk * vs1, n, D, Eigen::OuterStride<>(vs0));
          auto St = S.topLeftCorner(R, n);
          if (R <= kSmallRows) {
            for (int64_t j = 0; j < n; ++j) {
              const CRow kj(kp + (j0 + j) * ks0 + hk * ks1, D);
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
            const float mold = m[static_cast<size_t>(r)];
            const float mnew = std::max(mold, vis.maxCoeff());
            vis = (vis - mnew).exp();
            const float sum = vis.sum();
            if (a > 0) row.head(a).setZero();
            if (b < n) row.segment(b, n - b).setZero();
            if (mold == kNegInf) {
              l[static_cast<size_t>(r)] = sum;
            } else if (mnew != mold) {
              const float corr = std::exp(mold - mnew);
              l[static_cast<size_t>(r)] = l[static_cast<size_t>(r)] * corr + sum;
              O.row(r) *= corr;
            } else {
              l[static_cast<size_t>(r)] += sum;
            }
            m[static_cast<size_t>(r)] = mnew;
          }
          if (R <= kSmallRows) {
            for (int64_t j = 0; j < n; ++j) {
              const CRow vj(vp + (j0 + j) * vs0 + hk * vs1, D);
              for (int64_t r = 0; r < R; ++r) O.row(r) += St(r, j) * vj;
            }
          } else {
            O.topRows(R).noalias() += St * V;
          }
        }
      }
      for (int64_t r = 0; r < R; ++r) {
        float* dst = op + (i0 + r % nqb) * os0 + (h0 + r / nqb) * os1;
        if (m[static_cast<size_t>(r)] != kNegInf) {  // l >= 1: the max term contributes exp(0)
          const float inv = 1.f / l[static_cast<size_t>(r)];
          for (int64_t d = 0; d < D; ++d) dst[d] = O(r, d) * inv;
        } else {  // no visible key: zeros (see the header comment)
          for (int64_t d = 0; d < D; ++d) dst[d] = 0.f;
        }
      }
    }
  }
}

}  // namespace rt::cpu
