// Declarations of the sb_mamba CPU kernels (bound to Python in bindings.cpp).
//
// selective_scan_cpu.cpp: the plain selective scan in mamba-ssm's
// (batch, dim, L) layout, used by selective_scan(backend="cpu_kernel").
//
// mamba_conv.cpp, mamba_scan_fwd.cpp, mamba_scan_bwd.cpp: the fused inner
// path of a Mamba mixer in the time-major (batch, L, channels) layout that
// nn.Linear produces, so no transpose is ever needed:
//   xc  = silu(causal_depthwise_conv(x) + conv_bias)         (conv_silu_*)
//   dt  = softplus(dt_low @ W_dt^T + dt_bias)                (mamba_scan_*)
//   y   = (scan(xc, dt, A, B, C) + D * xc) * silu(z)
// with x, z the halves of in_proj's output and [dt_low | B | C] = x_proj(xc).
// `reverse` runs the sequence backwards in time (the anti-causal conv and a
// reverse-time scan), which is what BiMamba's backward stack computes on the
// flipped input, without any flip copy.
//
// Authors
// -------
//  * sb_mamba developers

#pragma once

#include <torch/extension.h>

#include <vector>

// selective_scan_cpu.cpp
std::vector<at::Tensor> scan_fwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                 const at::Tensor& Bt, const at::Tensor& Ct, int64_t chunk,
                                 const c10::optional<at::Tensor>& x0);
std::vector<at::Tensor> scan_bwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                 const at::Tensor& Bt, const at::Tensor& Ct, const at::Tensor& ckpt,
                                 const at::Tensor& gy, int64_t chunk);

// mamba_conv.cpp
void conv_silu_fwd(const at::Tensor& x, const at::Tensor& weight,
                   const c10::optional<at::Tensor>& bias, const at::Tensor& out, bool reverse,
                   const c10::optional<at::Tensor>& hist);
std::vector<at::Tensor> conv_silu_bwd(const at::Tensor& x, const at::Tensor& weight,
                                      const c10::optional<at::Tensor>& bias, const at::Tensor& g,
                                      bool reverse);

// mamba_scan_fwd.cpp
at::Tensor mamba_scan_fwd(const at::Tensor& u, const at::Tensor& z, const at::Tensor& xdbl,
                          const at::Tensor& w_dt, const at::Tensor& dt_bias, const at::Tensor& A,
                          const at::Tensor& D, const at::Tensor& y, bool reverse, int64_t chunk,
                          bool save_ckpt, const c10::optional<at::Tensor>& state);

// mamba_scan_bwd.cpp
std::vector<at::Tensor> mamba_scan_bwd(const at::Tensor& u, const at::Tensor& z,
                                       const at::Tensor& xdbl, const at::Tensor& w_dt,
                                       const at::Tensor& dt_bias, const at::Tensor& A,
                                       const at::Tensor& D, const at::Tensor& ckpt,
                                       const at::Tensor& gy, const at::Tensor& gu,
                                       const at::Tensor& gz, const at::Tensor& gxdbl,
                                       bool reverse, int64_t chunk);

namespace sb {

// A [B, L, C] float32 CPU tensor whose channels are contiguous (any batch and
// time strides, e.g. a channel slice of in_proj's output). Row i of batch b,
// in processing order (reversed in time when `reverse`), starts at
// row0(b) + i * step.
struct Rows {
  float* p;
  int64_t sb, sl, L;
  bool reverse;
  float* row0(int64_t b) const { return p + b * sb + (reverse ? (L - 1) * sl : 0); }
  int64_t step() const { return reverse ? -sl : sl; }
};

Rows rows_of(const at::Tensor& t, const char* name, int64_t B, int64_t L, int64_t C,
             bool reverse);

}  // namespace sb
