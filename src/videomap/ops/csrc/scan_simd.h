// SIMD helpers of the CPU selective scan: the 16-lane vector types (portable template, AVX-512, AVX2 + FMA)
// with the same operations on each, the exp/log1p polynomials, and the math both the forward and the
// backward use. Which variant the fp32 path uses is fixed at compile time by the ISA macros below. See
// selective_scan_cpu.cpp for the design.
#pragma once

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

// Instruction-set variant, fixed at compile time by the target flags (scan_cpu.py passes -march=native,
// -march=x86-64-v3 or -march=x86-64-v4): AVX-512 (F, BW, VL), else AVX2 with FMA, else the portable
// 16-lane template below. VIDEOMAP_SCAN_GENERIC forces the portable one.
#if !defined(VIDEOMAP_SCAN_GENERIC) && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define VM_SCAN_AVX512 1
#define VM_SCAN_AVX2 0
#elif !defined(VIDEOMAP_SCAN_GENERIC) && defined(__AVX2__) && defined(__FMA__)
#define VM_SCAN_AVX512 0
#define VM_SCAN_AVX2 1
#else
#define VM_SCAN_AVX512 0
#define VM_SCAN_AVX2 0
#endif
#if VM_SCAN_AVX512 || VM_SCAN_AVX2
#include <immintrin.h>
#endif

namespace {

constexpr int W = 16;    // channels per block = lanes per vector
constexpr int TCH = 64;  // steps per chunk = checkpoint interval

constexpr float kLog2eF = 1.44269504088896340736f;
// ln 2 = kLn2Hi + kLn2Lo with few bits in kLn2Hi, so that k * kLn2Hi is exact for |k| < 2^12
constexpr float kLn2Hi = 0.693145751953125f;
constexpr float kLn2Lo = 1.42860682030941723212e-6f;

// ---------------------------------------------------------------------------------------------------
// Portable vector of 16 lanes (fp64 path, and fp32 on machines without AVX-512). Plain loops that the
// compiler vectorises for whatever the target offers.
// ---------------------------------------------------------------------------------------------------
// Lane loops stay loops (no early full unrolling) so that the vectoriser turns each into vector code.
#if defined(__GNUC__) && !defined(__clang__)
#define VM_LANES(i) _Pragma("GCC unroll 1") for (int i = 0; i < W; ++i)
#else
#define VM_LANES(i) for (int i = 0; i < W; ++i)
#endif

template <typename S>
struct VG {
  using T = S;
  alignas(64) S v[W];
  static VG zero() { VG r; VM_LANES(i) r.v[i] = S(0); return r; }
  static VG set1(S x) { VG r; VM_LANES(i) r.v[i] = x; return r; }
  static VG load(const S* p) { VG r; VM_LANES(i) r.v[i] = p[i]; return r; }
  void store(S* p) const { VM_LANES(i) p[i] = v[i]; }
};
template <typename S> inline VG<S> operator+(const VG<S>& a, const VG<S>& b) {
  VG<S> r; VM_LANES(i) r.v[i] = a.v[i] + b.v[i]; return r;
}
template <typename S> inline VG<S> operator-(const VG<S>& a, const VG<S>& b) {
  VG<S> r; VM_LANES(i) r.v[i] = a.v[i] - b.v[i]; return r;
}
template <typename S> inline VG<S> operator*(const VG<S>& a, const VG<S>& b) {
  VG<S> r; VM_LANES(i) r.v[i] = a.v[i] * b.v[i]; return r;
}
template <typename S> inline VG<S> operator/(const VG<S>& a, const VG<S>& b) {
  VG<S> r; VM_LANES(i) r.v[i] = a.v[i] / b.v[i]; return r;
}
template <typename S> inline VG<S> vfma(const VG<S>& a, const VG<S>& b, const VG<S>& c) {
  VG<S> r; VM_LANES(i) r.v[i] = a.v[i] * b.v[i] + c.v[i]; return r;
}
// lanes where x > thr take a, the others (NaN included) take b
template <typename S> inline VG<S> select_gt(const VG<S>& x, S thr, const VG<S>& a, const VG<S>& b) {
  VG<S> r; VM_LANES(i) r.v[i] = x.v[i] > thr ? a.v[i] : b.v[i]; return r;
}

// 2^x for fp32: x = k + f with k = round(x) and |f| <= 1/2 (f is exact), 2^f by a degree-6 polynomial
// fitted for minimal relative error on [-1/2, 1/2] (7.9e-8 evaluated in fp32, as good as the degree-7
// Taylor series with one multiply-add less), 2^k from exponent bits in two halves so that k in [-160, 130]
// never leaves the normal range. Written as separate simple loops (rounding by the 1.5 * 2^23 trick rather than
// floor) so that the compiler vectorises each of them.
constexpr float kE1 = 6.931471825e-01f, kE2 = 2.402264625e-01f, kE3 = 5.550328642e-02f, kE4 = 9.618489072e-03f,
                kE5 = 1.339993207e-03f, kE6 = 1.534580806e-04f;
constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: (x + kRound) - kRound rounds |x| < 2^22 to an integer

inline float exp2_poly(float f) {
  float q = kE6;
  q = q * f + kE5;
  q = q * f + kE4;
  q = q * f + kE3;
  q = q * f + kE2;
  q = q * f + kE1;
  return q * f + 1.0f;
}
// p * 2^k for integral k in [-160, 130] (0 for NaN k, whose p is NaN anyway)
inline VG<float> scale_pow2(const float* p, const float* kf) {
  alignas(64) int32_t b1[W], b2[W];
  VM_LANES(i) {
    const int32_t k = static_cast<int32_t>(kf[i] == kf[i] ? kf[i] : 0.0f), k1 = k >> 1, k2 = k - k1;
    b1[i] = (k1 + 127) * (1 << 23);
    b2[i] = (k2 + 127) * (1 << 23);
  }
  alignas(64) float s1[W], s2[W];
  std::memcpy(s1, b1, sizeof(s1));
  std::memcpy(s2, b2, sizeof(s2));
  VG<float> r;
  VM_LANES(i) r.v[i] = p[i] * s1[i] * s2[i];
  return r;
}
inline VG<float> vexp2(const VG<float>& x) {
  alignas(64) float p[W], kf[W];
  VM_LANES(i) {
    float xi = x.v[i] < -160.0f ? -160.0f : x.v[i];  // comparisons let NaN through
    xi = xi > 130.0f ? 130.0f : xi;
    const float k = (xi + kRound) - kRound;
    p[i] = exp2_poly(xi - k);
    kf[i] = k;
  }
  return scale_pow2(p, kf);
}
// e^x with the reduction done in base e (r = x - k ln2 in two exact steps) so that large |x| keep full
// relative accuracy; the decay instead folds log2(e) into A (one rounding more, one multiply less).
inline VG<float> vexp(const VG<float>& x) {
  alignas(64) float p[W], kf[W];
  VM_LANES(i) {
    float xi = x.v[i] < -104.0f ? -104.0f : x.v[i];
    xi = xi > 89.0f ? 89.0f : xi;
    const float k = (xi * kLog2eF + kRound) - kRound;
    const float r = (xi - k * kLn2Hi) - k * kLn2Lo;
    p[i] = exp2_poly(r * kLog2eF);
    kf[i] = k;
  }
  return scale_pow2(p, kf);
}
inline VG<double> vexp(const VG<double>& x) { VG<double> r; VM_LANES(i) r.v[i] = std::exp(x.v[i]); return r; }
inline VG<double> vlog1p01(const VG<double>& x) { VG<double> r; VM_LANES(i) r.v[i] = std::log1p(x.v[i]); return r; }
// log1p(e) for e in [0, 1]: 2 atanh(s), s = e / (2 + e) in [0, 1/3], series up to s^15 (see the AVX-512 twin)
inline VG<float> vlog1p01(const VG<float>& e) {
  VG<float> r;
  VM_LANES(i) {
    const float s = e.v[i] / (e.v[i] + 2.0f), s2 = s * s;
    float p = 1.0f / 15.0f;
    p = p * s2 + 1.0f / 13.0f;
    p = p * s2 + 1.0f / 11.0f;
    p = p * s2 + 1.0f / 9.0f;
    p = p * s2 + 1.0f / 7.0f;
    p = p * s2 + 1.0f / 5.0f;
    p = p * s2 + 1.0f / 3.0f;
    p = p * s2 + 1.0f;
    r.v[i] = (s + s) * p;
  }
  return r;
}
template <typename S> inline VG<S> vabs(const VG<S>& x) { VG<S> r; VM_LANES(i) r.v[i] = std::abs(x.v[i]); return r; }
template <typename S> inline VG<S> vmax(const VG<S>& a, const VG<S>& b) {
  VG<S> r; VM_LANES(i) r.v[i] = a.v[i] > b.v[i] ? a.v[i] : b.v[i]; return r;
}
template <typename S> inline VG<S> select_nonneg(const VG<S>& x, const VG<S>& a, const VG<S>& b) {
  VG<S> r; VM_LANES(i) r.v[i] = x.v[i] >= S(0) ? a.v[i] : b.v[i]; return r;
}

// Time-indexed tensors (u, delta, z, B, C, out) may be bfloat16 in the fp32 forward: the tiles convert on
// the way in (exactly) and out (rounded to nearest even), the state and all arithmetic stay fp32.
using bf16 = at::BFloat16;

template <typename S>
struct TileOps {
  // dst[t * dst_ld + 16 * grp + r] = src[(16 * grp + r) * ld + t] for rows < nrows, 0 for rows >= nrows.
  template <typename In>
  static void tile_in(const In* src, int64_t ld, int nrows, int ngroups, int ncols, S* dst, int dst_ld) {
    for (int grp = 0; grp < ngroups; ++grp)
      for (int r = 0; r < W; ++r) {
        const int row = grp * W + r;
        S* d = dst + grp * W + r;
        if (row < nrows) {
          const In* s = src + row * ld;
          for (int t = 0; t < ncols; ++t) d[t * dst_ld] = static_cast<S>(s[t]);
        } else {
          for (int t = 0; t < ncols; ++t) d[t * dst_ld] = S(0);
        }
      }
  }
  // dst[r * ld + t] = src[t * 16 + r] for rows < nrows.
  template <typename Out>
  static void tile_out(const S* src, int nrows, int ncols, Out* dst, int64_t ld) {
    for (int r = 0; r < nrows; ++r)
      for (int t = 0; t < ncols; ++t) dst[r * ld + t] = static_cast<Out>(src[t * W + r]);
  }
  // dst[i] = sum over the lanes of the vector at src + i * stride, for i < ncols.
  static void reduce_rows(const S* src, int64_t stride, int ncols, S* dst) {
    for (int i = 0; i < ncols; ++i) {
      const S* p = src + i * stride;
      S s = 0;
      for (int c = 0; c < W; ++c) s += p[c];
      dst[i] = s;
    }
  }
};

// Lanes [0, nl) of a vector from and to nl consecutive values (16 channels of one position of a channels-last
// tensor), converting from and to the tensor's element type; absent lanes read 0 and are not written.
template <class V>
struct LaneIO;
template <typename S>
struct LaneIO<VG<S>> {
  template <typename In>
  static VG<S> load(const In* p, int nl) {
    VG<S> r;
    for (int i = 0; i < W; ++i) r.v[i] = i < nl ? static_cast<S>(p[i]) : S(0);
    return r;
  }
  template <typename Out>
  static void store(Out* p, int nl, const VG<S>& v) {
    for (int i = 0; i < nl; ++i) p[i] = static_cast<Out>(v.v[i]);
  }
};

#if VM_SCAN_AVX512
// ---------------------------------------------------------------------------------------------------
// AVX-512 fp32 vector.
// ---------------------------------------------------------------------------------------------------
struct VF {
  using T = float;
  __m512 v;
  static VF zero() { return {_mm512_setzero_ps()}; }
  static VF set1(float x) { return {_mm512_set1_ps(x)}; }
  static VF load(const float* p) { return {_mm512_load_ps(p)}; }
  void store(float* p) const { _mm512_store_ps(p, v); }
};
inline VF operator+(VF a, VF b) { return {_mm512_add_ps(a.v, b.v)}; }
inline VF operator-(VF a, VF b) { return {_mm512_sub_ps(a.v, b.v)}; }
inline VF operator*(VF a, VF b) { return {_mm512_mul_ps(a.v, b.v)}; }
inline VF operator/(VF a, VF b) { return {_mm512_div_ps(a.v, b.v)}; }
inline VF vfma(VF a, VF b, VF c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
inline VF select_gt(VF x, float thr, VF a, VF b) {
  return {_mm512_mask_blend_ps(_mm512_cmp_ps_mask(x.v, _mm512_set1_ps(thr), _CMP_GT_OQ), b.v, a.v)};
}

inline __m512 exp2_poly(__m512 f) {
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(kE6), f, _mm512_set1_ps(kE5));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kE4));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kE3));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kE2));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kE1));
  return _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
}
// For finite x, k = round(x) and f = x - k are exact and scalef saturates to 0 or inf by itself, so only
// x = -inf needs the clamp (it would give -inf - -inf = NaN); x = +inf gives NaN where exp would give inf.
inline VF vexp2(VF xv) {
  // max returns its second operand when one is NaN: x second so that NaN propagates
  const __m512 x = _mm512_max_ps(_mm512_set1_ps(-160.0f), xv.v);
  const __m512 k = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  return {_mm512_scalef_ps(exp2_poly(_mm512_sub_ps(x, k)), k)};
}
// e^x with the reduction in base e, as the portable twin above
inline VF vexp(VF xv) {
  __m512 x = _mm512_max_ps(_mm512_set1_ps(-104.0f), xv.v);
  x = _mm512_min_ps(_mm512_set1_ps(89.0f), x);
  const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2eF)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(kLn2Hi), x);
  r = _mm512_fnmadd_ps(k, _mm512_set1_ps(kLn2Lo), r);
  return {_mm512_scalef_ps(exp2_poly(_mm512_mul_ps(r, _mm512_set1_ps(kLog2eF))), k)};
}

// log1p(e) for e in [0, 1] (softplus evaluates it at e = exp(-|x|)): 2 atanh(s) with s = e / (2 + e) in
// [0, 1/3], by its series up to s^15 (truncation below 1.3e-9 relative).
inline VF vlog1p01(VF e) {
  const __m512 s = _mm512_div_ps(e.v, _mm512_add_ps(e.v, _mm512_set1_ps(2.0f)));
  const __m512 s2 = _mm512_mul_ps(s, s);
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(1.0f / 15.0f), s2, _mm512_set1_ps(1.0f / 13.0f));
  p = _mm512_fmadd_ps(p, s2, _mm512_set1_ps(1.0f / 11.0f));
  p = _mm512_fmadd_ps(p, s2, _mm512_set1_ps(1.0f / 9.0f));
  p = _mm512_fmadd_ps(p, s2, _mm512_set1_ps(1.0f / 7.0f));
  p = _mm512_fmadd_ps(p, s2, _mm512_set1_ps(1.0f / 5.0f));
  p = _mm512_fmadd_ps(p, s2, _mm512_set1_ps(1.0f / 3.0f));
  p = _mm512_fmadd_ps(p, s2, _mm512_set1_ps(1.0f));
  return {_mm512_mul_ps(_mm512_add_ps(s, s), p)};
}
inline VF vabs(VF x) { return {_mm512_abs_ps(x.v)}; }
inline VF vmax(VF a, VF b) { return {_mm512_max_ps(a.v, b.v)}; }
// lanes where x >= 0 take a, the others b
inline VF select_nonneg(VF x, VF a, VF b) {
  return {_mm512_mask_blend_ps(_mm512_cmp_ps_mask(x.v, _mm512_setzero_ps(), _CMP_GE_OQ), b.v, a.v)};
}

inline __mmask16 col_mask(int ncols) { return ncols >= W ? __mmask16(0xFFFF) : __mmask16((1u << ncols) - 1u); }

// In-register transpose of a 16x16 fp32 block: r[i][j] -> r[j][i].
__attribute__((always_inline)) inline void transpose16(__m512 r[W]) {
  __m512 t[W];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  __m512 s[W];  // s[4g + j]: 128-bit lane q holds column 4q + j of rows 4g..4g+3
#pragma GCC unroll 4
  for (int g = 0; g < 4; ++g) {
    const __m512d a = _mm512_castps_pd(t[4 * g]), b = _mm512_castps_pd(t[4 * g + 1]);
    const __m512d c = _mm512_castps_pd(t[4 * g + 2]), d = _mm512_castps_pd(t[4 * g + 3]);
    s[4 * g + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    s[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    s[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    s[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {
    const __m512 x = _mm512_shuffle_f32x4(s[j], s[4 + j], _MM_SHUFFLE(2, 0, 2, 0));
    const __m512 y = _mm512_shuffle_f32x4(s[j], s[4 + j], _MM_SHUFFLE(3, 1, 3, 1));
    const __m512 z = _mm512_shuffle_f32x4(s[8 + j], s[12 + j], _MM_SHUFFLE(2, 0, 2, 0));
    const __m512 w = _mm512_shuffle_f32x4(s[8 + j], s[12 + j], _MM_SHUFFLE(3, 1, 3, 1));
    r[0 + j] = _mm512_shuffle_f32x4(x, z, _MM_SHUFFLE(2, 0, 2, 0));
    r[8 + j] = _mm512_shuffle_f32x4(x, z, _MM_SHUFFLE(3, 1, 3, 1));
    r[4 + j] = _mm512_shuffle_f32x4(y, w, _MM_SHUFFLE(2, 0, 2, 0));
    r[12 + j] = _mm512_shuffle_f32x4(y, w, _MM_SHUFFLE(3, 1, 3, 1));
  }
}

// Up to 16 consecutive values (mask mk) as fp32, and back; bf16 <-> fp32 is a 16-bit shift, the way out
// rounding to nearest even (NaN kept quiet) as torch's conversion does.
inline __m512 load16(const float* p, __mmask16 mk) { return _mm512_maskz_loadu_ps(mk, p); }
inline __m512 load16(const bf16* p, __mmask16 mk) {
  const __m256i h = _mm256_maskz_loadu_epi16(mk, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
inline void store16(float* p, __mmask16 mk, __m512 v) { _mm512_mask_storeu_ps(p, mk, v); }
inline void store16(bf16* p, __mmask16 mk, __m512 v) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
  r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
  _mm256_mask_storeu_epi16(p, mk, _mm512_cvtepi32_epi16(r));
}

template <>
struct LaneIO<VF> {
  template <typename In>
  static VF load(const In* p, int nl) { return {load16(p, col_mask(nl))}; }
  template <typename Out>
  static void store(Out* p, int nl, VF v) { store16(p, col_mask(nl), v.v); }
};

// Every loop below has a constant trip count so that the 16 vectors stay in registers.
template <>
struct TileOps<float> {
  template <typename In>
  static void tile_in(const In* src, int64_t ld, int nrows, int ngroups, int ncols, float* dst, int dst_ld) {
    for (int grp = 0; grp < ngroups; ++grp) {
      for (int c0 = 0; c0 < ncols; c0 += W) {
        const __mmask16 mk = col_mask(ncols - c0);
        __m512 r[W];
#pragma GCC unroll 16
        for (int i = 0; i < W; ++i) {
          const int row = grp * W + i;
          r[i] = row < nrows ? load16(src + row * ld + c0, mk) : _mm512_setzero_ps();
        }
        transpose16(r);
        // whole 16-column blocks: a tile holds TCH columns, so the columns past ncols are scratch
#pragma GCC unroll 16
        for (int j = 0; j < W; ++j) _mm512_store_ps(dst + (c0 + j) * dst_ld + grp * W, r[j]);
      }
    }
  }
  template <typename Out>
  static void tile_out(const float* src, int nrows, int ncols, Out* dst, int64_t ld) {
    for (int c0 = 0; c0 < ncols; c0 += W) {
      const __mmask16 mk = col_mask(ncols - c0);
      __m512 r[W];
#pragma GCC unroll 16
      for (int j = 0; j < W; ++j) r[j] = _mm512_load_ps(src + (c0 + j) * W);
      transpose16(r);
#pragma GCC unroll 16
      for (int i = 0; i < W; ++i)
        if (i < nrows) store16(dst + i * ld + c0, mk, r[i]);
    }
  }
  // Transposing add tree: 16 vectors -> one vector of their 16 lane sums. Each level adds pairs as
  // blend(x, y) + swap(blend(y, x)), one shuffle per add. Vector i = src[i * stride] goes to output lane i.
  static void reduce_rows(const float* src, int64_t stride, int ncols, float* dst) {
    __m512 v[W];
#pragma GCC unroll 16
    for (int m = 0; m < W; ++m) {
      // the tree sends input slot m to lane bitreverse(m): feed that slot with vector bitreverse(m)
      const int i = ((m & 1) << 3) | ((m & 2) << 1) | ((m & 4) >> 1) | ((m & 8) >> 3);
      v[m] = _mm512_load_ps(src + i * stride);
    }
    __m512 a[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) {
      const __m512 x = v[2 * i], y = v[2 * i + 1];
      const __m512 hi = _mm512_mask_blend_ps(0xFF00, y, x);
      a[i] = _mm512_add_ps(_mm512_mask_blend_ps(0xFF00, x, y), _mm512_shuffle_f32x4(hi, hi, _MM_SHUFFLE(1, 0, 3, 2)));
    }
    __m512 b[4];
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {
      const __m512 x = a[2 * i], y = a[2 * i + 1];
      const __m512 hi = _mm512_mask_blend_ps(0xF0F0, y, x);
      b[i] = _mm512_add_ps(_mm512_mask_blend_ps(0xF0F0, x, y), _mm512_shuffle_f32x4(hi, hi, _MM_SHUFFLE(2, 3, 0, 1)));
    }
    __m512 c[2];
#pragma GCC unroll 2
    for (int i = 0; i < 2; ++i) {
      const __m512 x = b[2 * i], y = b[2 * i + 1];
      const __m512 hi = _mm512_mask_blend_ps(0xCCCC, y, x);
      c[i] = _mm512_add_ps(_mm512_mask_blend_ps(0xCCCC, x, y), _mm512_permute_ps(hi, _MM_SHUFFLE(1, 0, 3, 2)));
    }
    const __m512 hi = _mm512_mask_blend_ps(0xAAAA, c[1], c[0]);
    const __m512 d =
        _mm512_add_ps(_mm512_mask_blend_ps(0xAAAA, c[0], c[1]), _mm512_permute_ps(hi, _MM_SHUFFLE(2, 3, 0, 1)));
    _mm512_mask_storeu_ps(dst, col_mask(ncols), d);
  }
};
#endif  // VM_SCAN_AVX512

#if VM_SCAN_AVX2
// ---------------------------------------------------------------------------------------------------
// AVX2 + FMA fp32 vector (x86-64-v3). A 16-lane value is two 8-lane registers, so blocks, tiles and
// checkpoints keep the 16-channel layout of the other variants; each operation is two instructions.
// ---------------------------------------------------------------------------------------------------
struct VF {
  using T = float;
  __m256 a, b;  // lanes 0-7 and 8-15
  static VF zero() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
  static VF set1(float x) { const __m256 v = _mm256_set1_ps(x); return {v, v}; }
  static VF load(const float* p) { return {_mm256_load_ps(p), _mm256_load_ps(p + 8)}; }
  void store(float* p) const { _mm256_store_ps(p, a); _mm256_store_ps(p + 8, b); }
};
inline VF operator+(VF x, VF y) { return {_mm256_add_ps(x.a, y.a), _mm256_add_ps(x.b, y.b)}; }
inline VF operator-(VF x, VF y) { return {_mm256_sub_ps(x.a, y.a), _mm256_sub_ps(x.b, y.b)}; }
inline VF operator*(VF x, VF y) { return {_mm256_mul_ps(x.a, y.a), _mm256_mul_ps(x.b, y.b)}; }
inline VF operator/(VF x, VF y) { return {_mm256_div_ps(x.a, y.a), _mm256_div_ps(x.b, y.b)}; }
inline VF vfma(VF x, VF y, VF c) { return {_mm256_fmadd_ps(x.a, y.a, c.a), _mm256_fmadd_ps(x.b, y.b, c.b)}; }
inline VF select_gt(VF x, float thr, VF p, VF q) {
  const __m256 t = _mm256_set1_ps(thr);
  return {_mm256_blendv_ps(q.a, p.a, _mm256_cmp_ps(x.a, t, _CMP_GT_OQ)),
          _mm256_blendv_ps(q.b, p.b, _mm256_cmp_ps(x.b, t, _CMP_GT_OQ))};
}

inline __m256 exp2_poly8(__m256 f) {
  __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(kE6), f, _mm256_set1_ps(kE5));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kE4));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kE3));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kE2));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kE1));
  return _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
}
// p * 2^k for integral k in [-160, 130]: AVX2 has no scalef, so 2^k is built from exponent bits in two
// halves that each stay in the normal range. A NaN k converts to INT_MIN; its p is NaN, so is the product.
inline __m256 scale_pow2_8(__m256 p, __m256 k) {
  const __m256i ki = _mm256_cvtps_epi32(k), k1 = _mm256_srai_epi32(ki, 1), k2 = _mm256_sub_epi32(ki, k1);
  const __m256i bias = _mm256_set1_epi32(127);
  const __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k1, bias), 23));
  const __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k2, bias), 23));
  return _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
}
// max/min return their second operand when one is NaN: x second so that NaN propagates
inline __m256 vexp2_8(__m256 x) {
  x = _mm256_min_ps(_mm256_set1_ps(130.0f), _mm256_max_ps(_mm256_set1_ps(-160.0f), x));
  const __m256 k = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  return scale_pow2_8(exp2_poly8(_mm256_sub_ps(x, k)), k);
}
// e^x with the reduction in base e, as the portable twin
inline __m256 vexp_8(__m256 x) {
  x = _mm256_min_ps(_mm256_set1_ps(89.0f), _mm256_max_ps(_mm256_set1_ps(-104.0f), x));
  const __m256 k = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(kLog2eF)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(kLn2Hi), x);
  r = _mm256_fnmadd_ps(k, _mm256_set1_ps(kLn2Lo), r);
  return scale_pow2_8(exp2_poly8(_mm256_mul_ps(r, _mm256_set1_ps(kLog2eF))), k);
}
inline VF vexp2(VF x) { return {vexp2_8(x.a), vexp2_8(x.b)}; }
inline VF vexp(VF x) { return {vexp_8(x.a), vexp_8(x.b)}; }
// log1p(e) for e in [0, 1], as the AVX-512 twin
inline __m256 vlog1p01_8(__m256 e) {
  const __m256 s = _mm256_div_ps(e, _mm256_add_ps(e, _mm256_set1_ps(2.0f)));
  const __m256 s2 = _mm256_mul_ps(s, s);
  __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(1.0f / 15.0f), s2, _mm256_set1_ps(1.0f / 13.0f));
  p = _mm256_fmadd_ps(p, s2, _mm256_set1_ps(1.0f / 11.0f));
  p = _mm256_fmadd_ps(p, s2, _mm256_set1_ps(1.0f / 9.0f));
  p = _mm256_fmadd_ps(p, s2, _mm256_set1_ps(1.0f / 7.0f));
  p = _mm256_fmadd_ps(p, s2, _mm256_set1_ps(1.0f / 5.0f));
  p = _mm256_fmadd_ps(p, s2, _mm256_set1_ps(1.0f / 3.0f));
  p = _mm256_fmadd_ps(p, s2, _mm256_set1_ps(1.0f));
  return _mm256_mul_ps(_mm256_add_ps(s, s), p);
}
inline VF vlog1p01(VF e) { return {vlog1p01_8(e.a), vlog1p01_8(e.b)}; }
inline VF vabs(VF x) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  return {_mm256_andnot_ps(sign, x.a), _mm256_andnot_ps(sign, x.b)};
}
inline VF vmax(VF x, VF y) { return {_mm256_max_ps(x.a, y.a), _mm256_max_ps(x.b, y.b)}; }
inline VF select_nonneg(VF x, VF p, VF q) {
  const __m256 z = _mm256_setzero_ps();
  return {_mm256_blendv_ps(q.a, p.a, _mm256_cmp_ps(x.a, z, _CMP_GE_OQ)),
          _mm256_blendv_ps(q.b, p.b, _mm256_cmp_ps(x.b, z, _CMP_GE_OQ))};
}

// Lanes [0, n) of an 8-lane mask for maskload/maskstore.
inline __m256i lane_mask8(int n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
// Up to 8 consecutive values as fp32, and back (bf16 as in the AVX-512 twin: shift in, round to nearest
// even out). AVX2 has no 16-bit masked moves: partial bf16 rows go through a small buffer.
inline __m256 load8(const float* p, int n) {
  return n >= 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, lane_mask8(n));
}
inline __m256 load8(const bf16* p, int n) {
  alignas(16) uint16_t tmp[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  const void* src = p;
  if (n < 8) {
    std::memcpy(tmp, p, sizeof(uint16_t) * n);
    src = tmp;
  }
  const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(static_cast<const __m128i*>(src)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}
inline void store8(float* p, int n, __m256 v) {
  if (n >= 8) _mm256_storeu_ps(p, v);
  else _mm256_maskstore_ps(p, lane_mask8(n), v);
}
inline void store8(bf16* p, int n, __m256 v) {
  const __m256i bits = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF))), 16);
  r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC0), _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
  // 32 -> 16 bits: packus works per 128-bit half, the permute gathers both halves' results
  const __m128i h = _mm256_castsi256_si128(_mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0xD8));
  if (n >= 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), h);
  } else {
    alignas(16) uint16_t tmp[8];
    _mm_store_si128(reinterpret_cast<__m128i*>(tmp), h);
    std::memcpy(p, tmp, sizeof(uint16_t) * n);
  }
}

// In-register transpose of an 8x8 fp32 block: r[i][j] -> r[j][i].
__attribute__((always_inline)) inline void transpose8(__m256 r[8]) {
  __m256 t[8], s[8];
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
#pragma GCC unroll 2
  for (int g = 0; g < 2; ++g) {  // s[4g + j]: column j (low half) and j + 4 (high half) of rows 4g..4g+3
    s[4 * g + 0] = _mm256_shuffle_ps(t[4 * g], t[4 * g + 2], _MM_SHUFFLE(1, 0, 1, 0));
    s[4 * g + 1] = _mm256_shuffle_ps(t[4 * g], t[4 * g + 2], _MM_SHUFFLE(3, 2, 3, 2));
    s[4 * g + 2] = _mm256_shuffle_ps(t[4 * g + 1], t[4 * g + 3], _MM_SHUFFLE(1, 0, 1, 0));
    s[4 * g + 3] = _mm256_shuffle_ps(t[4 * g + 1], t[4 * g + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {
    r[j] = _mm256_permute2f128_ps(s[j], s[4 + j], 0x20);
    r[4 + j] = _mm256_permute2f128_ps(s[j], s[4 + j], 0x31);
  }
}

template <>
struct LaneIO<VF> {
  template <typename In>
  static VF load(const In* p, int nl) {
    return {load8(p, std::min(nl, 8)), nl > 8 ? load8(p + 8, nl - 8) : _mm256_setzero_ps()};
  }
  template <typename Out>
  static void store(Out* p, int nl, VF v) {
    store8(p, std::min(nl, 8), v.a);
    if (nl > 8) store8(p + 8, nl - 8, v.b);
  }
};

// The 16-row tiles as four 8x8 transposes.
template <>
struct TileOps<float> {
  template <typename In>
  static void tile_in(const In* src, int64_t ld, int nrows, int ngroups, int ncols, float* dst, int dst_ld) {
    for (int grp = 0; grp < ngroups; ++grp)
      for (int c0 = 0; c0 < ncols; c0 += 8) {
        const int nc = std::min(8, ncols - c0);
#pragma GCC unroll 2
        for (int half = 0; half < 2; ++half) {
          __m256 r[8];
#pragma GCC unroll 8
          for (int i = 0; i < 8; ++i) {
            const int row = grp * W + half * 8 + i;
            r[i] = row < nrows ? load8(src + row * ld + c0, nc) : _mm256_setzero_ps();
          }
          transpose8(r);
          // whole 8-column blocks: a tile holds TCH columns, so the columns past ncols are scratch
#pragma GCC unroll 8
          for (int j = 0; j < 8; ++j) _mm256_store_ps(dst + (c0 + j) * dst_ld + grp * W + half * 8, r[j]);
        }
      }
  }
  template <typename Out>
  static void tile_out(const float* src, int nrows, int ncols, Out* dst, int64_t ld) {
    for (int c0 = 0; c0 < ncols; c0 += 8) {
      const int nc = std::min(8, ncols - c0);
#pragma GCC unroll 2
      for (int half = 0; half < 2; ++half) {
        if (half * 8 >= nrows) break;
        __m256 r[8];
#pragma GCC unroll 8
        for (int j = 0; j < 8; ++j) r[j] = _mm256_load_ps(src + (c0 + j) * W + half * 8);
        transpose8(r);
#pragma GCC unroll 8
        for (int i = 0; i < 8; ++i)
          if (half * 8 + i < nrows) store8(dst + (half * 8 + i) * ld + c0, nc, r[i]);
      }
    }
  }
  // Lane sums of 16-lane vectors, 8 at a time: fold the two halves, then a horizontal-add tree whose
  // result holds the 8 sums in order.
  static void reduce_rows(const float* src, int64_t stride, int ncols, float* dst) {
    for (int i0 = 0; i0 < ncols; i0 += 8) {
      __m256 v[8];
#pragma GCC unroll 8
      for (int m = 0; m < 8; ++m) {
        const float* p = src + (i0 + m) * stride;
        v[m] = _mm256_add_ps(_mm256_load_ps(p), _mm256_load_ps(p + 8));
      }
      const __m256 h01 = _mm256_hadd_ps(v[0], v[1]), h23 = _mm256_hadd_ps(v[2], v[3]);
      const __m256 h45 = _mm256_hadd_ps(v[4], v[5]), h67 = _mm256_hadd_ps(v[6], v[7]);
      const __m256 q0 = _mm256_hadd_ps(h01, h23), q1 = _mm256_hadd_ps(h45, h67);
      const __m256 sum = _mm256_add_ps(_mm256_permute2f128_ps(q0, q1, 0x20), _mm256_permute2f128_ps(q0, q1, 0x31));
      store8(dst + i0, std::min(8, ncols - i0), sum);
    }
  }
};
#endif  // VM_SCAN_AVX2

// ---------------------------------------------------------------------------------------------------
// Shared math on either vector type.
// ---------------------------------------------------------------------------------------------------
// softplus as torch computes it (x above 20 passes through, else log1p(exp(x))), evaluated as
// max(x, 0) + log1p(exp(-|x|)) so that the exp never overflows; and its derivative exp(x) / (1 + exp(x))
// from the same exp(-|x|).
template <class V>
inline void softplus(V x, V* value, V* grad) {
  using T = typename V::T;
  const V e = vexp(V::zero() - vabs(x));
  *value = select_gt(x, T(20), x, vmax(x, V::zero()) + vlog1p01(e));
  if (grad) {
    const V r = V::set1(1) / (V::set1(1) + e);
    *grad = select_gt(x, T(20), V::set1(1), select_nonneg(x, r, e * r));
  }
}
template <class V>
inline V sigmoid(V x) {
  return V::set1(1) / (V::set1(1) + vexp(V::zero() - x));
}

// The decay exp(delta' A): fp32 folds log2(e) into A once per block and evaluates 2^(delta' A log2 e),
// saving a multiply per state; fp64 (tests, gradcheck) stays on std::exp.
inline VG<double> decay_coef(const VG<double>& A) { return A; }
inline VG<double> decay(const VG<double>& dt, const VG<double>& coef) { return vexp(dt * coef); }
inline VG<float> decay_coef(const VG<float>& A) { return A * VG<float>::set1(kLog2eF); }
inline VG<float> decay(const VG<float>& dt, const VG<float>& coef) { return vexp2(dt * coef); }
#if VM_SCAN_AVX512 || VM_SCAN_AVX2
inline VF decay_coef(VF A) { return A * VF::set1(kLog2eF); }
inline VF decay(VF dt, VF coef) { return vexp2(dt * coef); }
#endif

}  // namespace
