// Internal helpers shared by mamba_scan_fwd.cpp and mamba_scan_bwd.cpp.
//
// Authors
// -------
//  * sb_mamba developers

#pragma once

#include <vector>

#include "kernels.h"
#include "sb_math.h"

namespace sb {

// Row pointers of one (batch, channel block) task, in processing order: row i
// of a tensor starts at ptr + i * stride (strides are negative in reverse).
// Channel tensors point at the block's first channel; xd at channel 0 of
// [dt_low (R) | B (S) | C (S)].
struct ScanRows {
  int64_t L;
  const float* u;
  int64_t su;
  const float* z;
  int64_t sz;
  const float* xd;
  int64_t sxd;
  float* y;  // forward output (may alias u)
  int64_t sy;
  const float* gy;
  int64_t sgy;
  float* gu;
  int64_t sgu;
  float* gz;
  int64_t sgz;
};

// Per-block parameters in lane-major layout, zero padded to kLanes channels:
// Wt [R][kLanes] (w_dt transposed), At [S][kLanes], bias and Dv [kLanes].
struct ScanBlock {
  int64_t d0 = 0, nv = 0, R = 0, S = 0;
  std::vector<float> Wt, At, bias, Dv;
  void prepare(const float* w_dt, const float* dt_bias, const float* A, const float* D,
               int64_t d0, int64_t nv, int64_t R, int64_t S);
};

// Checks the shapes of the scan's parameters and of xdbl (B, L, R + 2S).
void check_scan_args(const at::Tensor& xdbl, const at::Tensor& w_dt, const at::Tensor& dt_bias,
                     const at::Tensor& A, const at::Tensor& D, int64_t B, int64_t L,
                     int64_t Dm, int64_t chunk);

}  // namespace sb
