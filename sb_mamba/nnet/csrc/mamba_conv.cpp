// Causal depthwise convolution + bias + SiLU of a Mamba mixer, forward and
// backward, in the time-major (batch, L, channels) layout.
//
//   s[t, d] = bias[d] + sum_k w[d, k] * x[t - (K - 1) + k, d]   (x[<0] = 0)
//   out     = silu(s)
//
// With `reverse` the same is computed in reversed time (the conv then reads
// x[t .. t + K - 1]). The forward can continue a sequence: `hist` then holds
// the K - 1 input rows that precede it (in processing order). Work is split over (batch, block of 16 channels) pairs;
// each task walks the whole sequence, vectorised over its 16 channels.
//
// Authors
// -------
//  * sb_mamba developers

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "kernels.h"
#include "sb_math.h"

namespace sb {

Rows rows_of(const at::Tensor& t, const char* name, int64_t B, int64_t L, int64_t C,
             bool reverse) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat, "mamba kernels: ", name,
              " must be a float32 CPU tensor, got ", t.scalar_type(), " on ", t.device());
  TORCH_CHECK(t.dim() == 3 && t.size(0) == B && t.size(1) == L && t.size(2) == C,
              "mamba kernels: ", name, " must have shape (", B, ", ", L, ", ", C, "), got ",
              t.sizes());
  TORCH_CHECK(C <= 1 || t.stride(2) == 1, "mamba kernels: ", name,
              " must have contiguous channels (stride 1 in the last dim)");
  return Rows{t.data_ptr<float>(), t.stride(0), t.stride(1), L, reverse};
}

namespace {

// Forward of one (batch, channel block): rows x + i * sx (processing order),
// out + i * so (may alias x: the loop runs backwards, so every input row is
// read before it is overwritten). wt: [K][kLanes], bias: [kLanes]. hist
// (rows of D floats, or null for zeros) holds the K - 1 rows before row 0.
template <bool kFull>
SB_CLONES void conv_fwd_block(const float* x, int64_t sx, float* out, int64_t so,
                              const float* __restrict__ wt, const float* __restrict__ bias,
                              const float* hist, int64_t D, int64_t L, int64_t K,
                              int64_t nv_) {
  const int64_t nv = kFull ? kLanes : nv_;
  for (int64_t i = L - 1; i >= 0; --i) {
    prefetch(x, (i - K - 4 * kPrefetch) * sx);
    prefetch_w(out, (i - 4 * kPrefetch) * so);
    float acc[kLanes] = {};
    const int64_t k0 = hist != nullptr ? 0 : std::max<int64_t>(0, K - 1 - i);
    for (int64_t k = k0; k < K; ++k) {
      float xv[kLanes];
      const int64_t src = i - (K - 1) + k;
      load_lanes(xv, src >= 0 ? x + src * sx : hist + (src + K - 1) * D, nv);
      const float* __restrict__ wk = wt + k * kLanes;
#pragma omp simd
      for (int64_t c = 0; c < kLanes; ++c) acc[c] += wk[c] * xv[c];
    }
    float o[kLanes];
#pragma omp simd
    for (int64_t c = 0; c < kLanes; ++c) {
      const float s = acc[c] + bias[c];
      o[c] = s * sigmoid(s);
    }
    store_lanes(out + i * so, o, nv);
  }
}

// Backward of one (batch, channel block). g + i * sg holds dLoss/dout on
// entry and dLoss/dx on exit, in place: step i computes the pre-activation
// gradient gs[i] (recomputing s[i] from a window of the last K rows of x)
// and then gx[i - K + 1] = sum_k w[k] gs[i - k], from a window of the last K
// values of gs; row i - K + 1 of g was read K - 1 steps earlier. gw:
// [K][kLanes] and gb: [kLanes] accumulate dLoss/dw and dLoss/dbias (in float
// over 256 steps, then in double). kK > 0 fixes K at compile time.
template <int64_t kK, bool kFull>
SB_CLONES void conv_bwd_block(const float* x, int64_t sx, float* g, int64_t sg,
                              const float* __restrict__ wt, const float* __restrict__ bias,
                              double* __restrict__ gw, double* __restrict__ gb,
                              float* __restrict__ xw, float* __restrict__ gsw,
                              float* __restrict__ fw, int64_t L, int64_t K_, int64_t nv_) {
  const int64_t K = kK > 0 ? kK : K_, nv = kFull ? kLanes : nv_;
  std::fill(fw, fw + (K + 1) * kLanes, 0.0f);  // float partial sums of gw, gb
  std::fill(xw, xw + K * kLanes, 0.0f);        // x[i - K + 1 .. i]
  std::fill(gsw, gsw + K * kLanes, 0.0f);      // gs[i - K + 1 .. i]
  float* __restrict__ fb = fw + K * kLanes;
  for (int64_t i = 0; i < L + K - 1; ++i) {
    prefetch(x, (i + 4 * kPrefetch) * sx);
    prefetch_w(g, (i + 4 * kPrefetch) * sg);
    for (int64_t k = 0; k + 1 < K; ++k)
#pragma omp simd
      for (int64_t c = 0; c < kLanes; ++c) {
        xw[k * kLanes + c] = xw[(k + 1) * kLanes + c];
        gsw[k * kLanes + c] = gsw[(k + 1) * kLanes + c];
      }
    float* __restrict__ xi = xw + (K - 1) * kLanes;
    float* __restrict__ gi = gsw + (K - 1) * kLanes;
    if (i < L) {
      float gv[kLanes], acc[kLanes] = {};
      load_lanes(xi, x + i * sx, nv);
      load_lanes(gv, g + i * sg, nv);
      for (int64_t k = 0; k < K; ++k)
#pragma omp simd
        for (int64_t c = 0; c < kLanes; ++c) acc[c] += wt[k * kLanes + c] * xw[k * kLanes + c];
#pragma omp simd
      for (int64_t c = 0; c < kLanes; ++c) {
        const float s = acc[c] + bias[c], sig = sigmoid(s);
        gi[c] = gv[c] * sig * (1.0f + s * (1.0f - sig));
        fb[c] += gi[c];
      }
      for (int64_t k = 0; k < K; ++k)
#pragma omp simd
        for (int64_t c = 0; c < kLanes; ++c) fw[k * kLanes + c] += gi[c] * xw[k * kLanes + c];
      if (i % 256 == 255) {
        for (int64_t e = 0; e < (K + 1) * kLanes; ++e) {
          (e < K * kLanes ? gw[e] : gb[e - K * kLanes]) += fw[e];
          fw[e] = 0.0f;
        }
      }
    } else {
#pragma omp simd
      for (int64_t c = 0; c < kLanes; ++c) xi[c] = gi[c] = 0.0f;
    }
    const int64_t m = i - (K - 1);
    if (m < 0) continue;
    float gx[kLanes] = {};
    for (int64_t k = 0; k < K; ++k)
#pragma omp simd
      for (int64_t c = 0; c < kLanes; ++c) gx[c] += wt[k * kLanes + c] * gsw[(K - 1 - k) * kLanes + c];
    store_lanes(g + m * sg, gx, nv);
  }
  for (int64_t e = 0; e < (K + 1) * kLanes; ++e) (e < K * kLanes ? gw[e] : gb[e - K * kLanes]) += fw[e];
}

// Weight [D, K] and bias [D] of channels d0 .. d0 + nv, as [K][kLanes] and
// [kLanes] (zero padded).
void block_params(const float* w, const float* b, int64_t K, int64_t d0, int64_t nv,
                  float* wt, float* bt) {
  std::fill(wt, wt + K * kLanes, 0.0f);
  std::fill(bt, bt + kLanes, 0.0f);
  for (int64_t c = 0; c < nv; ++c) {
    for (int64_t k = 0; k < K; ++k) wt[k * kLanes + c] = w[(d0 + c) * K + k];
    if (b != nullptr) bt[c] = b[d0 + c];
  }
}

void check_params(const at::Tensor& w, const c10::optional<at::Tensor>& bias, int64_t D) {
  TORCH_CHECK(w.device().is_cpu() && w.scalar_type() == at::kFloat && w.is_contiguous() &&
                  w.dim() == 2 && w.size(0) == D && w.size(1) >= 1,
              "conv_silu: weight must be a contiguous float32 (", D, ", K) CPU tensor, got ",
              w.sizes());
  if (bias.has_value())
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->is_contiguous() &&
                    bias->dim() == 1 && bias->size(0) == D,
                "conv_silu: bias must be a contiguous float32 (", D, ",) tensor");
}

}  // namespace
}  // namespace sb

void conv_silu_fwd(const at::Tensor& x, const at::Tensor& weight,
                   const c10::optional<at::Tensor>& bias, const at::Tensor& out, bool reverse,
                   const c10::optional<at::Tensor>& hist) {
  using namespace sb;
  TORCH_CHECK(x.dim() == 3, "conv_silu: x must be (B, L, D), got ", x.sizes());
  const int64_t B = x.size(0), L = x.size(1), D = x.size(2), K = weight.size(-1);
  check_params(weight, bias, D);
  if (hist.has_value())
    TORCH_CHECK(hist->scalar_type() == at::kFloat && hist->is_contiguous() &&
                    hist->sizes() == at::IntArrayRef({B, K - 1, D}),
                "conv_silu: hist must be a contiguous float32 (", B, ", ", K - 1, ", ", D,
                ") tensor, got ", hist->sizes());
  const float* ph = hist.has_value() && K > 1 ? hist->data_ptr<float>() : nullptr;
  const Rows rx = rows_of(x, "x", B, L, D, reverse), ro = rows_of(out, "out", B, L, D, reverse);
  const float* pw = weight.data_ptr<float>();
  const float* pb = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  const int64_t nblk = (D + kLanes - 1) / kLanes;
  at::parallel_for(0, B * nblk, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> wt(K * kLanes), bt(kLanes);
    for (int64_t p = begin; p < end; ++p) {
      const int64_t b = p / nblk, d0 = (p % nblk) * kLanes, nv = std::min(kLanes, D - d0);
      block_params(pw, pb, K, d0, nv, wt.data(), bt.data());
      auto f = nv == kLanes ? conv_fwd_block<true> : conv_fwd_block<false>;
      f(rx.row0(b) + d0, rx.step(), ro.row0(b) + d0, ro.step(), wt.data(), bt.data(),
        ph == nullptr ? nullptr : ph + b * (K - 1) * D + d0, D, L, K, nv);
    }
  });
}

std::vector<at::Tensor> conv_silu_bwd(const at::Tensor& x, const at::Tensor& weight,
                                      const c10::optional<at::Tensor>& bias, const at::Tensor& g,
                                      bool reverse) {
  using namespace sb;
  TORCH_CHECK(x.dim() == 3, "conv_silu: x must be (B, L, D), got ", x.sizes());
  const int64_t B = x.size(0), L = x.size(1), D = x.size(2), K = weight.size(-1);
  check_params(weight, bias, D);
  const Rows rx = rows_of(x, "x", B, L, D, reverse), rg = rows_of(g, "g", B, L, D, reverse);
  const float* pw = weight.data_ptr<float>();
  const float* pb = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  const int64_t nblk = (D + kLanes - 1) / kLanes;
  // Per-batch partial sums (double), reduced over the batch at the end.
  auto part = at::zeros({B, D, K + 1}, weight.options().dtype(at::kDouble));
  double* pp = part.data_ptr<double>();
  at::parallel_for(0, B * nblk, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> wt(K * kLanes), bt(kLanes), xw(K * kLanes), gsw(K * kLanes);
    std::vector<float> fw((K + 1) * kLanes);
    std::vector<double> acc((K + 1) * kLanes);
    for (int64_t p = begin; p < end; ++p) {
      const int64_t b = p / nblk, d0 = (p % nblk) * kLanes, nv = std::min(kLanes, D - d0);
      block_params(pw, pb, K, d0, nv, wt.data(), bt.data());
      std::fill(acc.begin(), acc.end(), 0.0);
      auto f = nv == kLanes ? (K == 4 ? conv_bwd_block<4, true> : conv_bwd_block<0, true>)
                            : (K == 4 ? conv_bwd_block<4, false> : conv_bwd_block<0, false>);
      f(rx.row0(b) + d0, rx.step(), rg.row0(b) + d0, rg.step(), wt.data(), bt.data(),
        acc.data(), acc.data() + K * kLanes, xw.data(), gsw.data(), fw.data(), L, K, nv);
      for (int64_t c = 0; c < nv; ++c)
        for (int64_t k = 0; k <= K; ++k) pp[(b * D + d0 + c) * (K + 1) + k] = acc[k * kLanes + c];
    }
  });
  auto tot = part.sum(0).to(at::kFloat);  // (D, K + 1)
  auto gw = tot.narrow(1, 0, K).contiguous();
  auto gb = tot.select(1, K).contiguous();
  return {gw, gb};
}
