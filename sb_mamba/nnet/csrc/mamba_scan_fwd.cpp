// Fused forward of a Mamba mixer's selective scan, time-major layout.
//
// For each (batch b, channel d), in processing order t (reversed in time when
// `reverse`), with [dt_low | B | C] = xdbl[b, t]:
//   delta = softplus(dt_low . w_dt[d] + dt_bias[d])
//   x_n   = exp(delta * A[d, n]) * x_n + delta * u[t, d] * B_n
//   y     = (sum_n C_n * x_n + D[d] * u[t, d]) * silu(z[t, d])
// Work is split over (batch, block of 16 channels); each task runs the
// recurrence over the whole sequence with its 16 channels in SIMD lanes (so
// B_n and C_n are broadcasts and no horizontal sum is needed). With
// save_ckpt the state before every chunk of `chunk` steps (and the final
// state) is stored, (B, n_chunks + 1, N, D), for the backward pass. With
// `state` (B, N, D) the scan continues from that state and leaves its final
// state there (a long sequence can then be processed in segments).
//
// Authors
// -------
//  * sb_mamba developers

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "mamba_scan.h"

namespace sb {

void ScanBlock::prepare(const float* w_dt, const float* dt_bias, const float* A_,
                        const float* D_, int64_t d0_, int64_t nv_, int64_t R_, int64_t S_) {
  d0 = d0_, nv = nv_, R = R_, S = S_;
  Wt.assign(R * kLanes, 0.0f);
  At.assign(S * kLanes, 0.0f);
  bias.assign(kLanes, 0.0f);
  Dv.assign(kLanes, 0.0f);
  for (int64_t c = 0; c < nv; ++c) {
    const int64_t d = d0 + c;
    for (int64_t r = 0; r < R; ++r) Wt[r * kLanes + c] = w_dt[d * R + r];
    for (int64_t n = 0; n < S; ++n) At[n * kLanes + c] = A_[d * S + n];
    bias[c] = dt_bias[d];
    Dv[c] = D_[d];
  }
}

void check_scan_args(const at::Tensor& xdbl, const at::Tensor& w_dt, const at::Tensor& dt_bias,
                     const at::Tensor& A, const at::Tensor& D, int64_t B, int64_t L,
                     int64_t Dm, int64_t chunk) {
  auto vec = [](const at::Tensor& t, const char* name, std::vector<int64_t> shape) {
    TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous(),
                "mamba_scan: ", name, " must be a contiguous float32 CPU tensor");
    TORCH_CHECK(t.sizes() == at::IntArrayRef(shape), "mamba_scan: ", name, " must have shape ",
                at::IntArrayRef(shape), ", got ", t.sizes());
  };
  TORCH_CHECK(w_dt.dim() == 2 && A.dim() == 2, "mamba_scan: w_dt and A must be 2-D");
  const int64_t R = w_dt.size(1), S = A.size(1);
  vec(w_dt, "w_dt", {Dm, R});
  vec(A, "A", {Dm, S});
  vec(dt_bias, "dt_bias", {Dm});
  vec(D, "D", {Dm});
  vec(xdbl, "xdbl", {B, L, R + 2 * S});
  TORCH_CHECK(chunk >= 1, "mamba_scan: chunk must be >= 1, got ", chunk);
}

namespace {

// One (batch, channel block) over the whole sequence. x [S][kLanes]: the
// state, initial on entry (zeros, or the caller's), final on exit. ck: the
// block's checkpoints (row n of chunk c at ck + c * ck_sc + n * ck_sn), or
// null.
template <int64_t kS, bool kFull>
SB_CLONES void fwd_block(const ScanRows& a, const ScanBlock& blk, float* __restrict__ x,
                         float* ck, int64_t ck_sc, int64_t ck_sn, int64_t chunk) {
  const int64_t S = kS > 0 ? kS : blk.S, R = blk.R, nv = kFull ? kLanes : blk.nv;
  const int64_t Q = R + 2 * S;
  const float* __restrict__ Wt = blk.Wt.data();
  const float* __restrict__ At = blk.At.data();
  const float* __restrict__ bias = blk.bias.data();
  const float* __restrict__ Dv = blk.Dv.data();
  auto save = [&](int64_t c) {
    for (int64_t n = 0; n < S; ++n) store_lanes(ck + c * ck_sc + n * ck_sn, x + n * kLanes, nv);
  };
  for (int64_t i = 0; i < a.L; ++i) {
    if (ck != nullptr && i % chunk == 0) save(i / chunk);
    const int64_t ip = i + kPrefetch;
    prefetch(a.u, ip * a.su);
    prefetch(a.z, ip * a.sz);
    prefetch(a.xd, ip * a.sxd);
    prefetch(a.xd, ip * a.sxd + Q - 1);
    prefetch_w(a.y, ip * a.sy);
    const float* __restrict__ xr = a.xd + i * a.sxd;
    float uv[kLanes], zv[kLanes], dv[kLanes] = {}, du[kLanes], acc[kLanes] = {};
    load_lanes(uv, a.u + i * a.su, nv);
    load_lanes(zv, a.z + i * a.sz, nv);
    for (int64_t r = 0; r < R; ++r) {
      const float q = xr[r];
#pragma omp simd
      for (int64_t k = 0; k < kLanes; ++k) dv[k] += q * Wt[r * kLanes + k];
    }
#pragma omp simd
    for (int64_t k = 0; k < kLanes; ++k) {
      dv[k] = softplus(dv[k] + bias[k]);
      du[k] = dv[k] * uv[k];
    }
    const float* __restrict__ Br = xr + R;
    const float* __restrict__ Cr = xr + R + S;
#pragma GCC unroll 4
    for (int64_t n = 0; n < S; ++n) {
      const float bn = Br[n], cn = Cr[n];
      float* __restrict__ xn = x + n * kLanes;
      const float* __restrict__ An = At + n * kLanes;
#pragma omp simd
      for (int64_t k = 0; k < kLanes; ++k) {
        const float v = fast_exp_nonpos(dv[k] * An[k]) * xn[k] + du[k] * bn;
        xn[k] = v;
        acc[k] += v * cn;
      }
    }
    float o[kLanes];
#pragma omp simd
    for (int64_t k = 0; k < kLanes; ++k)
      o[k] = (acc[k] + Dv[k] * uv[k]) * (zv[k] * sigmoid(zv[k]));
    store_lanes(a.y + i * a.sy, o, nv);
  }
  if (ck != nullptr) save((a.L + chunk - 1) / chunk);
}

}  // namespace
}  // namespace sb

at::Tensor mamba_scan_fwd(const at::Tensor& u, const at::Tensor& z, const at::Tensor& xdbl,
                          const at::Tensor& w_dt, const at::Tensor& dt_bias, const at::Tensor& A,
                          const at::Tensor& D, const at::Tensor& y, bool reverse, int64_t chunk,
                          bool save_ckpt, const c10::optional<at::Tensor>& state) {
  using namespace sb;
  TORCH_CHECK(u.dim() == 3, "mamba_scan: u must be (B, L, D), got ", u.sizes());
  const int64_t B = u.size(0), L = u.size(1), Dm = u.size(2);
  check_scan_args(xdbl, w_dt, dt_bias, A, D, B, L, Dm, chunk);
  const int64_t R = w_dt.size(1), S = A.size(1), Q = R + 2 * S;
  const Rows ru = rows_of(u, "u", B, L, Dm, reverse), rz = rows_of(z, "z", B, L, Dm, reverse);
  const Rows ry = rows_of(y, "y", B, L, Dm, reverse);
  const Rows rx = rows_of(xdbl, "xdbl", B, L, Q, reverse);
  const int64_t n_chunks = (L + chunk - 1) / chunk, nblk = (Dm + kLanes - 1) / kLanes;
  auto ckpt = at::empty({save_ckpt ? B : 0, n_chunks + 1, S, Dm}, u.options());
  float* pck = save_ckpt ? ckpt.data_ptr<float>() : nullptr;
  if (state.has_value())
    TORCH_CHECK(state->device().is_cpu() && state->scalar_type() == at::kFloat &&
                    state->is_contiguous() && state->sizes() == at::IntArrayRef({B, S, Dm}),
                "mamba_scan: state must be a contiguous float32 (", B, ", ", S, ", ", Dm,
                ") CPU tensor, got ", state->sizes());
  float* pst = state.has_value() ? state->data_ptr<float>() : nullptr;
  const float *pw = w_dt.data_ptr<float>(), *pb = dt_bias.data_ptr<float>();
  const float *pA = A.data_ptr<float>(), *pD = D.data_ptr<float>();
  at::parallel_for(0, B * nblk, 1, [&](int64_t begin, int64_t end) {
    ScanBlock blk;
    std::vector<float> x(S * kLanes);
    for (int64_t p = begin; p < end; ++p) {
      const int64_t b = p / nblk, d0 = (p % nblk) * kLanes, nv = std::min(kLanes, Dm - d0);
      blk.prepare(pw, pb, pA, pD, d0, nv, R, S);
      ScanRows a{};
      a.L = L;
      a.u = ru.row0(b) + d0, a.su = ru.step();
      a.z = rz.row0(b) + d0, a.sz = rz.step();
      a.y = ry.row0(b) + d0, a.sy = ry.step();
      a.xd = rx.row0(b), a.sxd = rx.step();
      float* ck = pck == nullptr ? nullptr : pck + b * (n_chunks + 1) * S * Dm + d0;
      auto f = nv == kLanes ? (S == 16 ? fwd_block<16, true> : fwd_block<0, true>)
                            : (S == 16 ? fwd_block<16, false> : fwd_block<0, false>);
      float* st = pst == nullptr ? nullptr : pst + b * S * Dm + d0;
      for (int64_t n = 0; n < S; ++n) {
        if (st == nullptr) std::fill(x.begin() + n * kLanes, x.begin() + (n + 1) * kLanes, 0.0f);
        else load_lanes(x.data() + n * kLanes, st + n * Dm, nv);
      }
      f(a, blk, x.data(), ck, S * Dm, Dm, chunk);
      if (st != nullptr)
        for (int64_t n = 0; n < S; ++n) store_lanes(st + n * Dm, x.data() + n * kLanes, nv);
    }
  });
  return ckpt;
}
