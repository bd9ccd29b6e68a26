// Shared helpers of the sb_mamba CPU kernels: runtime ISA dispatch, and
// branch-free, vectorisable float32 exp / log / softplus / sigmoid.
//
// Authors
// -------
//  * sb_mamba developers

#pragma once

#include <cstdint>
#include <cstring>
#include <limits>

// Runtime ISA dispatch (GCC ifunc): the hot loops are compiled for AVX-512,
// AVX2+FMA and baseline x86-64, and the loader picks the best one for the
// running CPU. This keeps the binary portable (no -march=native).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define SB_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SB_CLONES
#endif
#define SB_INLINE inline __attribute__((always_inline))

namespace sb {

SB_INLINE uint32_t f2u(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
SB_INLINE float u2f(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

// Branch-free expf (Cephes range reduction + minimax polynomial), relative
// error ~1e-7 over the normal range. exp(x) = 2^n * exp(r) with
// n = round(x / ln2), |r| <= ln2 / 2. Results below FLT_MIN flush to 0,
// overflow gives +inf, and NaN propagates (every comparison with NaN is false).
SB_INLINE float fast_expf(float x) {
  const float hi = 88.72283f, lo = -87.33654f;
  float xc = x > hi ? hi : x;
  xc = xc < lo ? lo : xc;
  const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float t = xc * 1.44269504088896341f + shifter;
  const float fn = t - shifter;
  const int32_t n = static_cast<int32_t>(f2u(t) - f2u(shifter));
  float r = xc - fn * 0.693359375f;   // ln2 split in two for exact reduction
  r = r - fn * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  // 2^n as two factors so that n = 128 (x close to hi) does not overflow.
  const int32_t n1 = n >> 1, n2 = n - n1;
  float res = p * u2f(static_cast<uint32_t>(n1 + 127) << 23)
                * u2f(static_cast<uint32_t>(n2 + 127) << 23);
  res = x < lo ? 0.0f : res;
  res = x > hi ? std::numeric_limits<float>::infinity() : res;
  return res;
}

// exp(x) for x <= 0, the scan's decay exp(delta * A) (delta >= 0, A < 0),
// in 12 instructions instead of fast_expf's ~25: no overflow handling (valid
// for x <= 88; larger arguments never occur here), arguments below -87 are
// clamped there (the decay is then ~1e-38 instead of 0: no trace of the state
// is left either way), and a degree-5 polynomial with exact constant and
// linear terms (relative error <= 2e-7, ~1e-9 near x = 0, where decays close
// to 1 compound over many steps). NaN propagates. The bias 127 of the
// exponent is folded into the rounding shifter, so 2^n is one shift of t.
SB_INLINE float fast_exp_nonpos(float x) {
  const float xc = x < -87.0f ? -87.0f : x;
  const float shifter = 12583039.0f;  // 1.5 * 2^23 + 127
  const float t = xc * 1.44269504088896341f + shifter;
  const float fn = t - shifter;  // n = round(x / ln2), in [-126, 127]
  float r = xc - fn * 0.693359375f;
  r = r - fn * -2.12194440e-4f;
  float p = 8.3125643e-3f;
  p = p * r + 4.1890025e-2f;
  p = p * r + 1.6667114e-1f;
  p = p * r + 4.9999234e-1f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  return p * u2f(f2u(t) << 23);  // low bits of t's mantissa: n + 127
}

// Branch-free logf for finite x >= 1 (Cephes: x = m * 2^e, m in
// [sqrt(1/2), sqrt(2)), log(m) by a minimax polynomial), relative error ~1e-7.
SB_INLINE float fast_logf_ge1(float x) {
  const uint32_t ix = f2u(x);
  int32_t e = static_cast<int32_t>((ix >> 23) & 0xff) - 126;  // m in [0.5, 1)
  float m = u2f((ix & 0x007fffffu) | 0x3f000000u);
  const bool small = m < 0.707106781186547524f;
  e = small ? e - 1 : e;
  m = small ? m + m : m;
  const float f = m - 1.0f, z = f * f;
  float p = 7.0376836292e-2f;
  p = p * f - 1.1514610310e-1f;
  p = p * f + 1.1676998740e-1f;
  p = p * f - 1.2420140846e-1f;
  p = p * f + 1.4249322787e-1f;
  p = p * f - 1.6668057665e-1f;
  p = p * f + 2.0000714765e-1f;
  p = p * f - 2.4999993993e-1f;
  p = p * f + 3.3333331174e-1f;
  const float fe = static_cast<float>(e);
  float y = p * f * z + fe * -2.12194440e-4f - 0.5f * z;
  return f + y + fe * 0.693359375f;
}

// softplus(v) as torch's (beta 1, threshold 20): v if v > 20 else
// log1p(exp(v)); log1p(e) = log(1 + e) * e / ((1 + e) - 1) is exact to a few
// ulps even when 1 + e rounds (Goldberg). Also returns softplus'(v) (the
// sigmoid, or 1 above the threshold) in *dsp.
SB_INLINE float softplus_d(float v, float* dsp) {
  const float e = fast_expf(v), w = 1.0f + e;
  const float den = w - 1.0f;
  const float lp = den == 0.0f ? e : fast_logf_ge1(w) * (e / (den == 0.0f ? 1.0f : den));
  *dsp = v > 20.0f ? 1.0f : e / w;
  return v > 20.0f ? v : lp;
}

SB_INLINE float softplus(float v) {
  float unused;
  return softplus_d(v, &unused);
}

SB_INLINE float sigmoid(float z) { return 1.0f / (1.0f + fast_expf(-z)); }

// Software prefetch (no fault on any address). The kernels walk time-major
// tensors one row per step with a large stride, which the hardware
// prefetchers do not follow: without it every row is a cache miss.
constexpr int64_t kPrefetch = 8;  // steps ahead
// p[off], computed on integers: the address may lie outside the tensor.
SB_INLINE const void* addr(const float* p, int64_t off) {
  return reinterpret_cast<const void*>(reinterpret_cast<uintptr_t>(p) +
                                       static_cast<uintptr_t>(off) * sizeof(float));
}
SB_INLINE void prefetch(const float* p, int64_t off) { __builtin_prefetch(addr(p, off), 0, 3); }
SB_INLINE void prefetch_w(const float* p, int64_t off) { __builtin_prefetch(addr(p, off), 1, 3); }

// Lanes per channel block: one AVX-512 register of float32 (two AVX2 ones).
constexpr int64_t kLanes = 16;

// Copies nv <= kLanes floats into a full lane array, zero padding the rest.
SB_INLINE void load_lanes(float* __restrict__ dst, const float* src, int64_t nv) {
  for (int64_t k = 0; k < kLanes; ++k) dst[k] = k < nv ? src[k] : 0.0f;
}

SB_INLINE void store_lanes(float* dst, const float* __restrict__ src, int64_t nv) {
  for (int64_t k = 0; k < nv; ++k) dst[k] = src[k];
}

}  // namespace sb
