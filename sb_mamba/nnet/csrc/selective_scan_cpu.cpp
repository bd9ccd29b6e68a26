// Fused CPU kernel for Mamba's selective scan (forward and backward).
//
// Per (batch, channel) pair the real diagonal recurrence
//     x_n <- exp(delta_l * A_n) * x_n + delta_l * B_{l,n} * u_l,
//     y_l  = sum_n x_n * C_{l,n}
// is run sequentially in time, vectorised over the state dimension N and
// parallelised over the (batch * channel) pairs with at::parallel_for.
// The forward pass can start from a given state (x0: streaming, or a long
// sequence in segments); it stores the state at chunk boundaries only (the
// first is the initial state, the last the final one); the backward
// pass recomputes one chunk of states at a time from those checkpoints, so
// no (b, d, L, N) tensor is ever materialised.
//
// Authors
// -------
//  * sb_mamba developers

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <mutex>
#include <vector>

#include "kernels.h"
#include "sb_math.h"

namespace {

using sb::fast_expf;

// Forward over steps [l0, l1) of one (batch, channel) pair, continuing from
// (and updating) its state x[N]. u, dt, y: the pair's (L,) rows; A: its (N,)
// row; B, C: its group's (L, N) slab. kN > 0 fixes the state size at compile
// time (fully unrolled inner loop); kN = 0 takes it from N_ at run time.
template <int64_t kN>
SB_CLONES void fwd_steps(const float* __restrict__ u, const float* __restrict__ dt,
                         const float* __restrict__ A, const float* __restrict__ B,
                         const float* __restrict__ C, float* __restrict__ y,
                         float* __restrict__ x, int64_t l0, int64_t l1, int64_t N_) {
  const int64_t N = kN > 0 ? kN : N_;
  for (int64_t l = l0; l < l1; ++l) {
    const float dl = dt[l], dlu = dl * u[l];
    const float* __restrict__ Bl = B + l * N;
    const float* __restrict__ Cl = C + l * N;
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int64_t n = 0; n < N; ++n) {
      const float xn = fast_expf(dl * A[n]) * x[n] + dlu * Bl[n];
      x[n] = xn;
      acc += xn * Cl[n];
    }
    y[l] = acc;
  }
}

// Backward over the chunk [l0, l0 + len) of one pair. x0: state before the
// chunk (its checkpoint); h[N]: dLoss/dstate after the chunk, updated to
// before it; dB, dC: the group's (L, N) slab accumulators; dA[N] += this
// chunk's dA. Scratch: xs ((len + 1) * N), as (len * N), dAc (N).
template <int64_t kN>
SB_CLONES void bwd_chunk(const float* __restrict__ u, const float* __restrict__ dt,
                         const float* __restrict__ A, const float* __restrict__ B,
                         const float* __restrict__ C, const float* __restrict__ x0,
                         const float* __restrict__ gy, float* __restrict__ du,
                         float* __restrict__ ddt, float* __restrict__ dB,
                         float* __restrict__ dC, float* __restrict__ h,
                         double* __restrict__ dA, float* __restrict__ xs,
                         float* __restrict__ as, float* __restrict__ dAc,
                         int64_t l0, int64_t len, int64_t N_) {
  const int64_t N = kN > 0 ? kN : N_;
  // 1) Recompute the states: xs[j] = state before step l0 + j, xs[j + 1] after.
  std::memcpy(xs, x0, N * sizeof(float));
  for (int64_t j = 0; j < len; ++j) {
    const int64_t l = l0 + j;
    const float dl = dt[l], dlu = dl * u[l];
    const float* __restrict__ Bl = B + l * N;
    const float* __restrict__ xp = xs + j * N;
    float* __restrict__ xn = xs + (j + 1) * N;
    float* __restrict__ al = as + j * N;
#pragma omp simd
    for (int64_t n = 0; n < N; ++n) {
      const float a = fast_expf(dl * A[n]);
      al[n] = a;
      xn[n] = a * xp[n] + dlu * Bl[n];
    }
  }
  // 2) Reverse-time recurrence; h holds dLoss/dx_l.
  std::fill(dAc, dAc + N, 0.0f);
  for (int64_t j = len - 1; j >= 0; --j) {
    const int64_t l = l0 + j;
    const float g = gy[l], dl = dt[l], ul = u[l], dlu = dl * ul;
    const float* __restrict__ Bl = B + l * N;
    const float* __restrict__ Cl = C + l * N;
    const float* __restrict__ xp = xs + j * N;
    const float* __restrict__ xl = xp + N;
    const float* __restrict__ al = as + j * N;
    float* __restrict__ dBl = dB + l * N;
    float* __restrict__ dCl = dC + l * N;
    float hb = 0.0f, hx = 0.0f;
#pragma omp simd reduction(+ : hb, hx)
    for (int64_t n = 0; n < N; ++n) {
      const float hn = h[n] + g * Cl[n];
      dCl[n] += g * xl[n];
      dBl[n] += hn * dlu;
      hb += hn * Bl[n];
      const float hxa = hn * xp[n] * al[n];
      hx += hxa * A[n];
      dAc[n] += hxa * dl;
      h[n] = hn * al[n];
    }
    du[l] = dl * hb;        // sum_n h_n * delta_l * B_{l,n}
    ddt[l] = ul * hb + hx;  // sum_n h_n * (B_{l,n} u_l + x_{l-1,n} a_{l,n} A_n)
  }
  for (int64_t n = 0; n < N; ++n) dA[n] += static_cast<double>(dAc[n]);
}

void check_tensor(const at::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK(t.device().is_cpu(), "selective_scan_cpu: ", name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == at::kFloat, "selective_scan_cpu: ", name,
              " must be float32, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == dim, "selective_scan_cpu: ", name, " must have ", dim,
              " dims, got shape ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), "selective_scan_cpu: ", name, " must be contiguous");
}

// Validates all inputs; returns {b, d, L, N, G}.
std::vector<int64_t> check_inputs(const at::Tensor& u, const at::Tensor& delta,
                                  const at::Tensor& A, const at::Tensor& Bt,
                                  const at::Tensor& Ct, int64_t chunk) {
  check_tensor(u, "u", 3);
  check_tensor(delta, "delta", 3);
  check_tensor(A, "A", 2);
  check_tensor(Bt, "Bt", 4);
  check_tensor(Ct, "Ct", 4);
  const int64_t b = u.size(0), d = u.size(1), L = u.size(2), N = A.size(1), G = Bt.size(1);
  TORCH_CHECK(delta.sizes() == u.sizes(), "selective_scan_cpu: delta shape ", delta.sizes(),
              " must equal u shape ", u.sizes());
  TORCH_CHECK(A.size(0) == d, "selective_scan_cpu: A must be (d, N) with d=", d, ", got ", A.sizes());
  TORCH_CHECK(G >= 1 && d % G == 0, "selective_scan_cpu: groups G=", G, " must divide d=", d);
  TORCH_CHECK(Bt.size(0) == b && Bt.size(2) == L && Bt.size(3) == N,
              "selective_scan_cpu: Bt must be (b, G, L, N) = (", b, ", G, ", L, ", ", N,
              "), got ", Bt.sizes());
  TORCH_CHECK(Ct.sizes() == Bt.sizes(), "selective_scan_cpu: Ct shape ", Ct.sizes(),
              " must equal Bt shape ", Bt.sizes());
  TORCH_CHECK(chunk >= 1, "selective_scan_cpu: chunk must be >= 1, got ", chunk);
  return {b, d, L, N, G};
}

}  // namespace

std::vector<at::Tensor> scan_fwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                 const at::Tensor& Bt, const at::Tensor& Ct, int64_t chunk,
                                 const c10::optional<at::Tensor>& x0) {
  const auto s = check_inputs(u, delta, A, Bt, Ct, chunk);
  const int64_t b = s[0], d = s[1], L = s[2], N = s[3], G = s[4], dpg = d / G;
  if (x0.has_value()) {
    check_tensor(*x0, "x0", 3);
    TORCH_CHECK(x0->size(0) == b && x0->size(1) == d && x0->size(2) == N,
                "selective_scan_cpu: x0 must be (b, d, N) = (", b, ", ", d, ", ", N, "), got ",
                x0->sizes());
  }
  const float* px0 = x0.has_value() ? x0->data_ptr<float>() : nullptr;
  const int64_t n_chunks = (L + chunk - 1) / chunk;
  auto y = at::empty({b, d, L}, u.options());
  auto ckpt = at::empty({b, d, n_chunks + 1, N}, u.options());
  const float *pu = u.data_ptr<float>(), *pdt = delta.data_ptr<float>(), *pA = A.data_ptr<float>();
  const float *pB = Bt.data_ptr<float>(), *pC = Ct.data_ptr<float>();
  float *py = y.data_ptr<float>(), *pck = ckpt.data_ptr<float>();
  auto fwd = N == 16 ? fwd_steps<16> : fwd_steps<0>;
  at::parallel_for(0, b * d, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> x;
    for (int64_t p = begin; p < end;) {
      // The task's channels of one (batch, group) slab advance together chunk
      // by chunk, so the chunk's rows of B and C stay in cache across them.
      const int64_t slab = p / dpg, q = std::min(end, (slab + 1) * dpg);
      if (px0 == nullptr) x.assign((q - p) * N, 0.0f);
      else x.assign(px0 + p * N, px0 + q * N);  // the caller's initial states
      for (int64_t k = 0; k <= n_chunks; ++k) {
        for (int64_t i = p; i < q; ++i) {
          float* xi = x.data() + (i - p) * N;
          std::memcpy(pck + (i * (n_chunks + 1) + k) * N, xi, N * sizeof(float));
          if (k == n_chunks) continue;  // the last checkpoint is the final state
          fwd(pu + i * L, pdt + i * L, pA + (i % d) * N, pB + slab * L * N,
              pC + slab * L * N, py + i * L, xi, k * chunk, std::min(L, (k + 1) * chunk), N);
        }
      }
      p = q;
    }
  });
  return {y, ckpt};
}

std::vector<at::Tensor> scan_bwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                 const at::Tensor& Bt, const at::Tensor& Ct, const at::Tensor& ckpt,
                                 const at::Tensor& gy, int64_t chunk) {
  const auto s = check_inputs(u, delta, A, Bt, Ct, chunk);
  const int64_t b = s[0], d = s[1], L = s[2], N = s[3], G = s[4], dpg = d / G;
  const int64_t n_chunks = (L + chunk - 1) / chunk, slab_sz = L * N;
  check_tensor(ckpt, "ckpt", 4);
  check_tensor(gy, "gy", 3);
  TORCH_CHECK(ckpt.size(0) == b && ckpt.size(1) == d && ckpt.size(2) == n_chunks + 1 &&
              ckpt.size(3) == N, "selective_scan_cpu: ckpt must be (b, d, n_chunks + 1, N) = (",
              b, ", ", d, ", ", n_chunks + 1, ", ", N, "), got ", ckpt.sizes(),
              " (was it produced with the same chunk?)");
  TORCH_CHECK(gy.sizes() == u.sizes(), "selective_scan_cpu: gy shape ", gy.sizes(),
              " must equal u shape ", u.sizes());

  auto du = at::empty_like(u), ddelta = at::empty_like(delta);
  auto dBt = at::zeros_like(Bt), dCt = at::zeros_like(Ct);
  auto dA_part = at::empty({b, d, N}, A.options().dtype(at::kDouble));
  const float *pu = u.data_ptr<float>(), *pdt = delta.data_ptr<float>(), *pA = A.data_ptr<float>();
  const float *pB = Bt.data_ptr<float>(), *pC = Ct.data_ptr<float>();
  const float *pck = ckpt.data_ptr<float>(), *pgy = gy.data_ptr<float>();
  float *pdu = du.data_ptr<float>(), *pddt = ddelta.data_ptr<float>();
  float *pdB = dBt.data_ptr<float>(), *pdC = dCt.data_ptr<float>();
  double* pdA = dA_part.data_ptr<double>();

  // dBt/dCt sum over the channels of a (batch, group) slab. A task that owns
  // every channel of a slab writes into the output directly; a slab shared by
  // several tasks is accumulated in a task-private buffer, reduced afterwards
  // in a fixed order (deterministic for a given thread count).
  struct Partial { int64_t slab, begin; std::vector<float> dB, dC; };
  std::vector<Partial> partials;
  std::mutex mu;
  auto bwd = N == 16 ? bwd_chunk<16> : bwd_chunk<0>;
  at::parallel_for(0, b * d, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> xs((chunk + 1) * N), as(chunk * N), dAc(N), h;
    for (int64_t p = begin; p < end;) {
      const int64_t slab = p / dpg, q = std::min(end, (slab + 1) * dpg);
      const bool owned = p == slab * dpg && q == (slab + 1) * dpg;
      Partial part{slab, begin, {}, {}};
      if (!owned) { part.dB.assign(slab_sz, 0.0f); part.dC.assign(slab_sz, 0.0f); }
      float* dB = owned ? pdB + slab * slab_sz : part.dB.data();
      float* dC = owned ? pdC + slab * slab_sz : part.dC.data();
      h.assign((q - p) * N, 0.0f);
      std::fill(pdA + p * N, pdA + q * N, 0.0);
      // Chunks in reverse; the channels advance together (cache reuse of the
      // chunk's rows of B, C, dB and dC).
      for (int64_t k = n_chunks - 1; k >= 0; --k) {
        for (int64_t i = p; i < q; ++i) {
          bwd(pu + i * L, pdt + i * L, pA + (i % d) * N, pB + slab * slab_sz,
              pC + slab * slab_sz, pck + (i * (n_chunks + 1) + k) * N, pgy + i * L,
              pdu + i * L, pddt + i * L, dB, dC, h.data() + (i - p) * N, pdA + i * N,
              xs.data(), as.data(), dAc.data(), k * chunk, std::min(chunk, L - k * chunk), N);
        }
      }
      if (!owned) { std::lock_guard<std::mutex> lock(mu); partials.push_back(std::move(part)); }
      p = q;
    }
  });
  std::sort(partials.begin(), partials.end(), [](const Partial& x, const Partial& y) {
    return x.slab != y.slab ? x.slab < y.slab : x.begin < y.begin;
  });
  for (size_t i = 0; i < partials.size();) {
    size_t j = i;
    while (j < partials.size() && partials[j].slab == partials[i].slab) ++j;
    float* oB = pdB + partials[i].slab * slab_sz;
    float* oC = pdC + partials[i].slab * slab_sz;
    at::parallel_for(0, slab_sz, 4096, [&](int64_t lo, int64_t hi) {
      for (size_t k = i; k < j; ++k) {
        const float *sB = partials[k].dB.data(), *sC = partials[k].dC.data();
        for (int64_t e = lo; e < hi; ++e) { oB[e] += sB[e]; oC[e] += sC[e]; }
      }
    });
    i = j;
  }
  auto dA = dA_part.sum(0).to(at::kFloat);
  return {du, ddelta, dA, dBt, dCt};
}
