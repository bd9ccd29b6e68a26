// Fused backward of a Mamba mixer's selective scan (see mamba_scan_fwd.cpp).
//
// Given dLoss/dy, it returns dLoss/du (into gu), dLoss/dz (into gz),
// dLoss/d[dt_low | B | C] (into gxdbl) and the parameter gradients of w_dt,
// dt_bias, A and D. Each (batch, 16-channel block) task walks the chunks in
// reverse order: it recomputes the chunk's states from the forward pass's
// checkpoint (with the exp factors, kept for the reverse pass), then runs the
// reverse-time recurrence of dLoss/dstate. The gradients of B, C and dt_low
// sum over channels: a task accumulates them for all its blocks in a
// lane-wise chunk buffer and sums the lanes once per chunk.
//
// Authors
// -------
//  * sb_mamba developers

#include <ATen/Parallel.h>

#include <algorithm>
#include <mutex>
#include <vector>

#include "mamba_scan.h"

namespace sb {
namespace {

// One chunk [i0, i0 + len) of one block. ck: the block's checkpoint before the
// chunk (row n at ck + n * ck_sn); h [S][kLanes]: dLoss/dstate after the chunk,
// updated to before it. Scratch: xs [(len + 1) S][kLanes], as [len S][kLanes],
// ds, sg [len][kLanes]. P [len][R + 2S][kLanes] accumulates the lane-wise
// terms of d[dt_low | B | C]; acc [S + R + 2][kLanes] the parameter gradients
// (A, w_dt, dt_bias, D).
template <int64_t kS, bool kFull>
SB_CLONES void bwd_chunk(const ScanRows& a, const ScanBlock& blk, const float* ck, int64_t ck_sn,
                         int64_t i0, int64_t len, float* __restrict__ h, float* __restrict__ xs,
                         float* __restrict__ as, float* __restrict__ ds, float* __restrict__ sg,
                         float* __restrict__ P, float* __restrict__ acc) {
  const int64_t S = kS > 0 ? kS : blk.S, R = blk.R, nv = kFull ? kLanes : blk.nv;
  const int64_t Q = R + 2 * S;
  const float* __restrict__ Wt = blk.Wt.data();
  const float* __restrict__ At = blk.At.data();
  const float* __restrict__ bias = blk.bias.data();
  const float* __restrict__ Dv = blk.Dv.data();
  for (int64_t n = 0; n < S; ++n) load_lanes(xs + n * kLanes, ck + n * ck_sn, nv);
  // 1) Recompute the chunk's step sizes, decays and states.
  for (int64_t j = 0; j < len; ++j) {
    const int64_t ip = i0 + j + kPrefetch;
    prefetch(a.u, ip * a.su);
    prefetch(a.xd, ip * a.sxd);
    prefetch(a.xd, ip * a.sxd + Q - 1);
    const float* __restrict__ xr = a.xd + (i0 + j) * a.sxd;
    float uv[kLanes], dv[kLanes] = {}, du[kLanes];
    load_lanes(uv, a.u + (i0 + j) * a.su, nv);
    for (int64_t r = 0; r < R; ++r) {
      const float q = xr[r];
#pragma omp simd
      for (int64_t k = 0; k < kLanes; ++k) dv[k] += q * Wt[r * kLanes + k];
    }
    float* __restrict__ dj = ds + j * kLanes;
    float* __restrict__ sj = sg + j * kLanes;
#pragma omp simd
    for (int64_t k = 0; k < kLanes; ++k) {
      dj[k] = softplus_d(dv[k] + bias[k], sj + k);
      du[k] = dj[k] * uv[k];
    }
#pragma GCC unroll 4
    for (int64_t n = 0; n < S; ++n) {
      const float bn = xr[R + n];
      const float* __restrict__ An = At + n * kLanes;
      const float* __restrict__ xp = xs + (j * S + n) * kLanes;
      float* __restrict__ xn = xs + ((j + 1) * S + n) * kLanes;
      float* __restrict__ al = as + (j * S + n) * kLanes;
#pragma omp simd
      for (int64_t k = 0; k < kLanes; ++k) {
        const float e = fast_exp_nonpos(dj[k] * An[k]);
        al[k] = e;
        xn[k] = e * xp[k] + du[k] * bn;
      }
    }
  }
  // 2) Reverse-time recurrence.
  float* __restrict__ accA = acc;
  float* __restrict__ accW = acc + S * kLanes;
  float* __restrict__ accb = acc + (S + R) * kLanes;
  float* __restrict__ accD = accb + kLanes;
  for (int64_t j = len - 1; j >= 0; --j) {
    const int64_t i = i0 + j, ip = i - kPrefetch;
    prefetch(a.u, ip * a.su);
    prefetch(a.z, ip * a.sz);
    prefetch(a.gy, ip * a.sgy);
    prefetch(a.xd, ip * a.sxd);
    prefetch(a.xd, ip * a.sxd + Q - 1);
    prefetch_w(a.gu, ip * a.sgu);
    prefetch_w(a.gz, ip * a.sgz);
    const float* __restrict__ xr = a.xd + i * a.sxd;
    const float* __restrict__ dj = ds + j * kLanes;
    float uv[kLanes], zv[kLanes], gyv[kLanes], g[kLanes], du[kLanes], sz[kLanes];
    float hb[kLanes] = {}, hx[kLanes] = {}, yacc[kLanes] = {};
    load_lanes(uv, a.u + i * a.su, nv);
    load_lanes(zv, a.z + i * a.sz, nv);
    load_lanes(gyv, a.gy + i * a.sgy, nv);
#pragma omp simd
    for (int64_t k = 0; k < kLanes; ++k) {
      du[k] = dj[k] * uv[k];
      sz[k] = sigmoid(zv[k]);
      g[k] = gyv[k] * (zv[k] * sz[k]);  // dLoss/d(scan output + D u)
    }
    float* __restrict__ Pj = P + j * Q * kLanes;
#pragma GCC unroll 4
    for (int64_t n = 0; n < S; ++n) {
      const float bn = xr[R + n], cn = xr[R + S + n];
      const float* __restrict__ An = At + n * kLanes;
      const float* __restrict__ xp = xs + (j * S + n) * kLanes;
      const float* __restrict__ xl = xp + S * kLanes;
      const float* __restrict__ al = as + (j * S + n) * kLanes;
      float* __restrict__ hn_ = h + n * kLanes;
      float* __restrict__ pB = Pj + (R + n) * kLanes;
      float* __restrict__ pC = Pj + (R + S + n) * kLanes;
      float* __restrict__ aA = accA + n * kLanes;
#pragma omp simd
      for (int64_t k = 0; k < kLanes; ++k) {
        const float hn = hn_[k] + g[k] * cn;
        pC[k] += g[k] * xl[k];
        pB[k] += hn * du[k];
        hb[k] += hn * bn;
        const float hxa = hn * xp[k] * al[k];
        hx[k] += hxa * An[k];
        aA[k] += hxa * dj[k];
        hn_[k] = hn * al[k];
        yacc[k] += xl[k] * cn;
      }
    }
    float guv[kLanes], gzv[kLanes], gv[kLanes];
    const float* __restrict__ sj = sg + j * kLanes;
#pragma omp simd
    for (int64_t k = 0; k < kLanes; ++k) {
      const float ypre = yacc[k] + Dv[k] * uv[k];
      gzv[k] = gyv[k] * ypre * (sz[k] * (1.0f + zv[k] * (1.0f - sz[k])));
      guv[k] = dj[k] * hb[k] + g[k] * Dv[k];
      accD[k] += g[k] * uv[k];
      gv[k] = (uv[k] * hb[k] + hx[k]) * sj[k];  // dLoss/d(dt_low . w_dt + dt_bias)
      accb[k] += gv[k];
    }
    for (int64_t r = 0; r < R; ++r) {
      const float q = xr[r];
      float* __restrict__ pr = Pj + r * kLanes;
#pragma omp simd
      for (int64_t k = 0; k < kLanes; ++k) {
        pr[k] += gv[k] * Wt[r * kLanes + k];
        accW[r * kLanes + k] += gv[k] * q;
      }
    }
    store_lanes(a.gz + i * a.sgz, gzv, nv);
    store_lanes(a.gu + i * a.sgu, guv, nv);
  }
}

// Sums the lanes of P [len * Q][kLanes] into rows out + j * step (Q values each).
SB_CLONES void sum_lanes(const float* __restrict__ P, int64_t len, int64_t Q, float* out,
                         int64_t step) {
  for (int64_t j = 0; j < len; ++j) {
    float* row = out + j * step;
    for (int64_t q = 0; q < Q; ++q) {
      const float* __restrict__ v = P + (j * Q + q) * kLanes;
      float s = 0.0f;
#pragma omp simd reduction(+ : s)
      for (int64_t k = 0; k < kLanes; ++k) s += v[k];
      row[q] = s;
    }
  }
}

struct Partial {
  int64_t b, begin;
  std::vector<float> g;  // (L, Q) in processing order
};

}  // namespace
}  // namespace sb

std::vector<at::Tensor> mamba_scan_bwd(const at::Tensor& u, const at::Tensor& z,
                                       const at::Tensor& xdbl, const at::Tensor& w_dt,
                                       const at::Tensor& dt_bias, const at::Tensor& A,
                                       const at::Tensor& D, const at::Tensor& ckpt,
                                       const at::Tensor& gy, const at::Tensor& gu,
                                       const at::Tensor& gz, const at::Tensor& gxdbl,
                                       bool reverse, int64_t chunk) {
  using namespace sb;
  TORCH_CHECK(u.dim() == 3, "mamba_scan: u must be (B, L, D), got ", u.sizes());
  const int64_t B = u.size(0), L = u.size(1), Dm = u.size(2);
  check_scan_args(xdbl, w_dt, dt_bias, A, D, B, L, Dm, chunk);
  const int64_t R = w_dt.size(1), S = A.size(1), Q = R + 2 * S, NP = S + R + 2;
  const int64_t n_chunks = (L + chunk - 1) / chunk, nblk = (Dm + kLanes - 1) / kLanes;
  TORCH_CHECK(ckpt.is_contiguous() && ckpt.scalar_type() == at::kFloat &&
                  ckpt.sizes() == at::IntArrayRef({B, n_chunks + 1, S, Dm}),
              "mamba_scan: ckpt must be a contiguous (", B, ", ", n_chunks + 1, ", ", S, ", ", Dm,
              ") float32 tensor (from mamba_scan_fwd with the same chunk), got ", ckpt.sizes());
  const Rows ru = rows_of(u, "u", B, L, Dm, reverse), rz = rows_of(z, "z", B, L, Dm, reverse);
  const Rows rx = rows_of(xdbl, "xdbl", B, L, Q, reverse);
  const Rows rgy = rows_of(gy, "gy", B, L, Dm, reverse), rgu = rows_of(gu, "gu", B, L, Dm, reverse);
  const Rows rgz = rows_of(gz, "gz", B, L, Dm, reverse);
  const Rows rgx = rows_of(gxdbl, "gxdbl", B, L, Q, reverse);
  auto part = at::empty({B, Dm, NP}, u.options().dtype(at::kDouble));
  double* pp = part.data_ptr<double>();
  const float *pw = w_dt.data_ptr<float>(), *pb = dt_bias.data_ptr<float>();
  const float *pA = A.data_ptr<float>(), *pD = D.data_ptr<float>(), *pck = ckpt.data_ptr<float>();
  std::vector<Partial> partials;
  std::mutex mu;
  auto bwd = S == 16 ? bwd_chunk<16, true> : bwd_chunk<0, true>;
  auto bwd_tail = S == 16 ? bwd_chunk<16, false> : bwd_chunk<0, false>;

  at::parallel_for(0, B * nblk, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> xs((chunk + 1) * S * kLanes), as(chunk * S * kLanes);
    std::vector<float> ds(chunk * kLanes), sg(chunk * kLanes), P(chunk * Q * kLanes);
    std::vector<float> accf(NP * kLanes);
    for (int64_t p = begin; p < end;) {
      // The task's blocks of one batch item advance together, chunk by chunk.
      const int64_t b = p / nblk, q = std::min(end, (b + 1) * nblk), nb = q - p;
      const bool owned = p == b * nblk && q == (b + 1) * nblk;
      Partial part{b, begin, {}};
      if (!owned) part.g.assign(L * Q, 0.0f);
      float* tgt = owned ? rgx.row0(b) : part.g.data();
      const int64_t tstep = owned ? rgx.step() : Q;
      std::vector<ScanBlock> blks(nb);
      std::vector<ScanRows> rows(nb);
      for (int64_t jb = 0; jb < nb; ++jb) {
        const int64_t d0 = ((p + jb) % nblk) * kLanes, nv = std::min(kLanes, Dm - d0);
        blks[jb].prepare(pw, pb, pA, pD, d0, nv, R, S);
        ScanRows& a = rows[jb];
        a.L = L;
        a.u = ru.row0(b) + d0, a.su = ru.step();
        a.z = rz.row0(b) + d0, a.sz = rz.step();
        a.xd = rx.row0(b), a.sxd = rx.step();
        a.gy = rgy.row0(b) + d0, a.sgy = rgy.step();
        a.gu = rgu.row0(b) + d0, a.sgu = rgu.step();
        a.gz = rgz.row0(b) + d0, a.sgz = rgz.step();
      }
      std::vector<float> h(nb * S * kLanes, 0.0f);
      std::vector<double> dacc(nb * NP * kLanes, 0.0);
      for (int64_t c = n_chunks - 1; c >= 0; --c) {
        const int64_t i0 = c * chunk, len = std::min(chunk, L - i0);
        std::fill(P.begin(), P.begin() + len * Q * kLanes, 0.0f);
        for (int64_t jb = 0; jb < nb; ++jb) {
          const float* ck = pck + ((b * (n_chunks + 1) + c) * S) * Dm + blks[jb].d0;
          std::fill(accf.begin(), accf.end(), 0.0f);
          (blks[jb].nv == kLanes ? bwd : bwd_tail)(rows[jb], blks[jb], ck, Dm, i0, len,
                                                   h.data() + jb * S * kLanes, xs.data(),
                                                   as.data(), ds.data(), sg.data(), P.data(),
                                                   accf.data());
          for (int64_t e = 0; e < NP * kLanes; ++e) dacc[jb * NP * kLanes + e] += accf[e];
        }
        sum_lanes(P.data(), len, Q, tgt + i0 * tstep, tstep);
      }
      for (int64_t jb = 0; jb < nb; ++jb)
        for (int64_t c = 0; c < blks[jb].nv; ++c)
          for (int64_t e = 0; e < NP; ++e)
            pp[(b * Dm + blks[jb].d0 + c) * NP + e] = dacc[(jb * NP + e) * kLanes + c];
      if (!owned) {
        std::lock_guard<std::mutex> lock(mu);
        partials.push_back(std::move(part));
      }
      p = q;
    }
  });

  // Batch items split between tasks: sum their partial d[dt_low | B | C] in
  // a fixed order (deterministic for a given thread count).
  std::sort(partials.begin(), partials.end(), [](const Partial& x, const Partial& y) {
    return x.b != y.b ? x.b < y.b : x.begin < y.begin;
  });
  for (size_t i = 0; i < partials.size();) {
    size_t j = i;
    while (j < partials.size() && partials[j].b == partials[i].b) ++j;
    float* out = rgx.row0(partials[i].b);
    const int64_t step = rgx.step();
    at::parallel_for(0, L, 256, [&](int64_t lo, int64_t hi) {
      for (int64_t t = lo; t < hi; ++t) {
        float* row = out + t * step;
        for (int64_t e = 0; e < Q; ++e) {
          float s = 0.0f;
          for (size_t k = i; k < j; ++k) s += partials[k].g[t * Q + e];
          row[e] = s;
        }
      }
    });
    i = j;
  }
  auto tot = part.sum(0).to(at::kFloat);  // (Dm, NP)
  return {tot.narrow(1, S, R).contiguous(), tot.select(1, S + R).contiguous(),
          tot.narrow(1, 0, S).contiguous(), tot.select(1, S + R + 1).contiguous()};
}
