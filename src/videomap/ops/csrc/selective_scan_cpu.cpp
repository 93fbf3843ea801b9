// Fused CPU selective scan (forward and backward) for real A.
//
//   delta'_t = softplus(delta_t + delta_bias)          (bias and softplus optional)
//   h_t      = exp(delta'_t * A) * h_{t-1} + delta'_t * B_t * u_t
//   y_t      = sum_n C_t[n] h_t[n] + D * u_t
//   out_t    = y_t * silu(z_t)                         (when z is given)
//
// Layout and vectorisation. The recurrence is sequential in time but independent across channels, so one
// SIMD vector holds 16 channels (one lane each; one AVX-512 register, or two AVX2 registers) of one batch
// element, and the N states of such a
// 16-channel block stay in registers along the sequence. (Parallel-in-time formulations are slower than
// this loop on CPU, and the cheap chunked ones overflow in fp32.) u, delta, z and out are (B, E, L), so
// each 64-step chunk of a block goes through a small tile: 16 rows read contiguously along L and transposed
// in registers so that step t is one vector. B and C are (B, G, N, L) and shared by all channels of a
// group, so a block never straddles two groups (blocks are cut inside each group, with zeroed tail lanes)
// and B_t[n], C_t[n] are broadcast scalars. exp is a vector polynomial because it dominates the cost.
//
// Work split. The blocks of one (batch, group) are cut into P ranges, P fixed by the shape alone; a task
// is one range, and it walks its blocks chunk-major (for each chunk, every block in turn, each block's
// state parked in a small buffer in between), so that a chunk's B/C tiles are loaded once per task. Threads
// take tasks from a shared counter. The inputs of the next block-chunk are prefetched while the current
// one computes.
//
// Reverse scans. With `reverse`, step t of the recurrence reads and writes position L - 1 - t: each chunk
// loads the mirrored positions and reverses its tiles in cache, so no flipped copy of any input or output
// is made, in the forward or in the backward.
//
// Checkpointing. The forward saves each block's state at the start of every chunk, a (B, ceil(L/64), E, N)
// tensor: memory stays O(B*E*L), never O(B*E*N*L). The backward walks the chunks from last to first; for
// each block it recomputes the chunk's 64 states and decays from the checkpoint (with the forward's own
// step function, so bit-identical), keeps them in a per-thread buffer, then walks the chunk backwards
// carrying dL/dh in registers.
//
// Reductions, deterministic and without atomics. dB and dC sum over the channels of a group: each task adds
// its blocks' lane products into one per-chunk buffer, reduces the 16 lanes with a transposing add tree
// whose output is 16 consecutive steps (a contiguous store), and writes its own slice of a
// (B, G, P, N, L) buffer; the P slices are summed in a fixed order at the end. dA, dD and ddelta_bias
// accumulate per lane over time and come back per batch element, summed over the batch by the caller.

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

// Per-thread scratch, kept between calls: fresh large allocations cost page faults on every call.
template <typename S>
struct Arena {
  S* base;
  size_t used = 0;
  explicit Arena(size_t count) {
    thread_local std::vector<char> storage;
    const size_t bytes = count * sizeof(S) + 64 * 16;
    if (storage.size() < bytes) storage.resize(bytes);
    base = reinterpret_cast<S*>((reinterpret_cast<uintptr_t>(storage.data()) + 63) & ~uintptr_t(63));
  }
  S* take(size_t count) {  // 64-byte aligned slices
    S* p = base + used;
    used += (count + 15) & ~size_t(15);
    return p;
  }
};

struct Shape {
  int64_t batch, E, L, G, N, Eg, nblk, K;
  bool softplus;
  bool reverse = false;  // step t reads and writes position L - 1 - t
};

// In: the element type of the time-indexed tensors (S, or bf16 in the fp32 scan).
template <typename S, typename In = S>
struct FwdArgs {
  const In *u, *delta;
  const S* A;
  const In *B, *C;
  const S* D;
  const In* z;
  const S *bias, *init;
  In* out;
  S *last, *ckpt;
  S scale;          // out = scale * y, ...
  bool accumulate;  // ... or out += scale * y, adding to what out holds
};

template <typename S>
struct BwdArgs {
  const S *u, *delta, *A, *B, *C, *D, *z, *bias, *ckpt, *dout, *dlast;
  S *du, *ddelta, *dA, *dBp, *dCp, *dD, *dz, *dbias, *dinit;  // dA, dD, dbias: per batch element
  int64_t P;                                                 // block ranges per group (dB/dC slices)
  S* out;  // optional: the forward's output y_t * silu(z_t), recomputed on the way (z required)
};

// V whose lane c is p[c * stride] (c < nl), 0 elsewhere.
template <class V>
inline V gather_lanes(const typename V::T* p, int64_t stride, int nl) {
  alignas(64) typename V::T tmp[W];
  for (int c = 0; c < W; ++c) tmp[c] = c < nl ? p[c * stride] : typename V::T(0);
  return V::load(tmp);
}
template <class V>
inline void scatter_lanes(V v, typename V::T* p, int64_t stride, int nl) {
  alignas(64) typename V::T tmp[W];
  v.store(tmp);
  for (int c = 0; c < nl; ++c) p[c * stride] = tmp[c];
}

// Rows of a (.., rows, L) tensor that the next unit of work will read: prefetched a few lines per step so
// that the tile loads hit the cache instead of waiting on memory.
template <typename S>
struct Rows {
  const S* p;
  int64_t ld;
  int nrows;
};
inline void prefetch_line(const void* q) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  // GCC 12's mod/ref analysis deletes __builtin_prefetch calls in this position; the asm survives
  asm volatile("prefetcht1 %0" : : "m"(*static_cast<const char*>(q)));
#else
  __builtin_prefetch(q, 0, 2);
#endif
}
template <typename S>
inline void prefetch_step(const Rows<S>* sets, int nsets, int t) {
  static_assert(TCH * sizeof(S) >= 64, "a chunk row spans whole cache lines");
  constexpr int lines = TCH * static_cast<int>(sizeof(S)) / 64;  // cache lines per row of a chunk
  constexpr int total = W * lines;                               // lines per set and chunk
  const int first = t * total / TCH, end = (t + 1) * total / TCH;  // this step's share of them
#pragma GCC unroll 2
  for (int idx = first; idx < end; ++idx) {
    const int row = idx / lines, line = idx % lines;
    for (int i = 0; i < nsets; ++i)
      if (row < sets[i].nrows)
        prefetch_line(sets[i].p + row * sets[i].ld + line * (64 / static_cast<int>(sizeof(S))));
  }
}

// Runs worker(next_task) on every thread, each worker pulling task indices until none is left. Tasks are
// handed out dynamically rather than cut in fixed shares, so that a thread slowed by other work on a
// shared machine does not hold the others up; each task writes only its own outputs, so results do not
// depend on which thread ran it.
template <class Worker>
void run_tasks(int64_t ntask, const Worker& worker) {
  if (ntask <= 0) return;
  std::atomic<int64_t> next{0};
  const auto take = [&]() { return next.fetch_add(1, std::memory_order_relaxed); };
  const int64_t nworkers = std::min<int64_t>(ntask, at::get_num_threads());
  at::parallel_for(0, nworkers, 1, [&](int64_t, int64_t) { worker(take, ntask); });
}

// A task owns a range of blocks of one (batch, group) and walks them chunk-major: for each 64-step chunk,
// every block in turn, each block's state carried in a small buffer between its chunks. B/C tiles are then
// loaded once per chunk for all the task's blocks, and the backward's dB/dC lane products of all its blocks
// accumulate into one buffer that is reduced once per chunk.
template <class V, int NT>
struct Scan {
  using S = typename V::T;
  using Tile = TileOps<S>;
  static constexpr int VS = NT * W;  // scalars in NT vectors

  struct Task {
    int64_t b, g, bg, pr, blo, nb;
  };
  static Task task_of(const Shape& s, int64_t P, int64_t task) {
    Task t;
    t.pr = task % P;
    t.bg = task / P;
    t.g = t.bg % s.G;
    t.b = t.bg / s.G;
    t.blo = t.pr * s.nblk / P;
    t.nb = (t.pr + 1) * s.nblk / P - t.blo;
    return t;
  }
  static int64_t first_channel(const Shape& s, const Task& tk, int64_t i) { return tk.g * s.Eg + (tk.blo + i) * W; }
  static int lanes(const Shape& s, const Task& tk, int64_t i) {
    return static_cast<int>(std::min<int64_t>(W, s.Eg - (tk.blo + i) * W));
  }

  // Reverse scans. The recurrence always runs over steps 0, 1, ... and chunk k holds steps [k*64, k*64 + T),
  // so states and checkpoints are laid out as for a forward scan of the flipped sequence. Step t lives at
  // position L - 1 - t: a chunk reads the mirrored range of positions and reverses its tiles in cache.
  static int64_t chunk_start(const Shape& s, int64_t t0, int64_t T) { return s.reverse ? s.L - t0 - T : t0; }
  static void flip_steps(S* tile, int T, int width) {
    for (int a = 0, b = T - 1; a < b; ++a, --b)
      for (int i = 0; i < width; ++i) std::swap(tile[a * width + i], tile[b * width + i]);
  }
  // Loads chunk [t0, t0 + T)'s B and C tiles for all the task's blocks, in scan order; returns the position
  // of the chunk's first stored step (where its u/delta/z rows start too).
  template <typename In>
  static int64_t load_bc_chunk(const Shape& s, const In* Bsrc, const In* Csrc, int64_t t0, int T, S* Bt, S* Ct) {
    const int64_t c0 = chunk_start(s, t0, T);
    Tile::tile_in(Bsrc + c0, s.L, static_cast<int>(s.N), NT / W, T, Bt, NT);
    Tile::tile_in(Csrc + c0, s.L, static_cast<int>(s.N), NT / W, T, Ct, NT);
    if (s.reverse) {
      flip_steps(Bt, T, NT);
      flip_steps(Ct, T, NT);
    }
    return c0;
  }

  // (.., E, N) arrays (A, states, checkpoints): buf[n * 16 + c] = src[c * N + n] for the block's lanes,
  // 0 for absent lanes and padded n; and back.
  static void load_rows(const S* src, const Shape& s, int nl, S* buf) {
    for (int i = 0; i < VS; ++i) buf[i] = S(0);
    Tile::tile_in(src, s.N, nl, 1, static_cast<int>(s.N), buf, W);
  }
  static void store_rows(const S* buf, const Shape& s, int nl, S* dst) {
    Tile::tile_out(buf, nl, static_cast<int>(s.N), dst, s.N);
  }

  // delta tile -> delta' (bias, softplus) in place; optionally d delta'/d(delta + bias) into grad.
  static void prep_delta(S* dtt, int T, V bias, bool use_softplus, S* grad) {
    for (int t = 0; t < T; ++t) {
      const V x = V::load(dtt + t * W) + bias;
      if (use_softplus) {
        V value, g;
        softplus(x, &value, grad ? &g : nullptr);
        value.store(dtt + t * W);
        if (grad) g.store(grad + t * W);
      } else {
        x.store(dtt + t * W);
      }
    }
  }

  // One step of the recurrence for a 16-channel block; shared by the forward and the backward's recompute
  // so both produce the same bits. Record: keep the decays and the new states, and add dy * h_t (dC's lane
  // products) into pc (Fresh: store instead of add).
  template <bool Record, bool Fresh>
  static inline void step(V* h, const V* Ac, V dt, V dtu, const S* Bn, S* a_out, S* h_out, V dy, S* pc) {
#pragma GCC unroll 16
    for (int n = 0; n < NT; ++n) {
      const V a = decay(dt, Ac[n]);
      h[n] = vfma(a, h[n], dtu * V::set1(Bn[n]));
      if (Record) {
        a.store(a_out + n * W);
        h[n].store(h_out + n * W);
        (Fresh ? dy * h[n] : vfma(dy, h[n], V::load(pc + n * W))).store(pc + n * W);
      }
    }
  }
  static inline V readout(const V* h, const S* Cn) {
    V y0 = V::zero(), y1 = V::zero(), y2 = V::zero(), y3 = V::zero();  // short dependency chains
#pragma GCC unroll 16
    for (int n = 0; n < NT; n += 4) {
      y0 = vfma(h[n], V::set1(Cn[n]), y0);
      y1 = vfma(h[n + 1], V::set1(Cn[n + 1]), y1);
      y2 = vfma(h[n + 2], V::set1(Cn[n + 2]), y2);
      y3 = vfma(h[n + 3], V::set1(Cn[n + 3]), y3);
    }
    return (y0 + y1) + (y2 + y3);
  }

  // Per-block constants into the arena: A (Av), decay coefficients (Ac), D, delta_bias.
  static void block_consts(const Shape& s, const S* A, const S* D, const S* bias, int64_t e0, int nl, S* Av,
                           S* Ac, S* Dv, S* biasv) {
    load_rows(A + e0 * s.N, s, nl, Ac);
    for (int n = 0; n < NT; ++n) {
      const V a = V::load(Ac + n * W);
      if (Av) a.store(Av + n * W);
      decay_coef(a).store(Ac + n * W);
    }
    (D ? gather_lanes<V>(D + e0, 1, nl) : V::zero()).store(Dv);
    (bias ? gather_lanes<V>(bias + e0, 1, nl) : V::zero()).store(biasv);
  }

  template <typename In>
  static void forward(const Shape& s, const FwdArgs<S, In>& p, int64_t P) {
    const int64_t maxnb = (s.nblk + P - 1) / P;
    run_tasks(s.batch * s.G * P, [&](const auto& take, int64_t ntask) {
      Arena<S> arena(4 * TCH * W + 2 * TCH * NT + maxnb * (2 * VS + 2 * W) + 16 * 16);
      S* ut = arena.take(TCH * W);
      S* dtt = arena.take(TCH * W);
      S* zt = arena.take(TCH * W);
      S* yt = arena.take(TCH * W);
      S* Bt = arena.take(TCH * NT);
      S* Ct = arena.take(TCH * NT);
      S* Acs = arena.take(maxnb * VS);
      S* hst = arena.take(maxnb * VS);
      S* Ds = arena.take(maxnb * W);
      S* biass = arena.take(maxnb * W);
      for (int64_t task = take(); task < ntask; task = take()) {
        const Task tk = task_of(s, P, task);
        for (int64_t i = 0; i < tk.nb; ++i) {
          const int64_t e0 = first_channel(s, tk, i);
          const int nl = lanes(s, tk, i);
          block_consts(s, p.A, p.D, p.bias, e0, nl, nullptr, Acs + i * VS, Ds + i * W, biass + i * W);
          if (p.init) load_rows(p.init + (tk.b * s.E + e0) * s.N, s, nl, hst + i * VS);
          else for (int n = 0; n < VS; ++n) hst[i * VS + n] = S(0);
        }
        const In* Bsrc = p.B + tk.bg * s.N * s.L;
        const In* Csrc = p.C + tk.bg * s.N * s.L;
        const V scale = V::set1(p.scale);
        const bool scaled = p.scale != S(1);
        for (int64_t k = 0; k < s.K; ++k) {
          const int64_t t0 = k * TCH;
          const int T = static_cast<int>(std::min<int64_t>(TCH, s.L - t0));
          const int64_t c0 = load_bc_chunk(s, Bsrc, Csrc, t0, T, Bt, Ct);
          for (int64_t i = 0; i < tk.nb; ++i) {
            const int64_t e0 = first_channel(s, tk, i);
            const int nl = lanes(s, tk, i);
            const int64_t row0 = (tk.b * s.E + e0) * s.L;
            V h[NT], Ac[NT];
#pragma GCC unroll 16
            for (int n = 0; n < NT; ++n) {
              h[n] = V::load(hst + i * VS + n * W);
              Ac[n] = V::load(Acs + i * VS + n * W);
            }
            const V Dv = V::load(Ds + i * W);
            if (p.ckpt) store_rows(hst + i * VS, s, nl, p.ckpt + ((tk.b * s.K + k) * s.E + e0) * s.N);
            Tile::tile_in(p.u + row0 + c0, s.L, nl, 1, T, ut, W);
            Tile::tile_in(p.delta + row0 + c0, s.L, nl, 1, T, dtt, W);
            if (p.z) Tile::tile_in(p.z + row0 + c0, s.L, nl, 1, T, zt, W);
            if (s.reverse) {
              flip_steps(ut, T, W);
              flip_steps(dtt, T, W);
              if (p.z) flip_steps(zt, T, W);
            }
            prep_delta(dtt, T, V::load(biass + i * W), s.softplus, nullptr);

            // what the next unit of work reads
            Rows<In> next[5];
            int nsets = 0;
            {
              const bool last_blk = i + 1 == tk.nb;
              const int64_t ni = last_blk ? 0 : i + 1, nt0 = last_blk ? t0 + TCH : t0;
              if (nt0 < s.L) {
                const int64_t nc0 = chunk_start(s, nt0, std::min<int64_t>(TCH, s.L - nt0));
                const int64_t nrow0 = (tk.b * s.E + first_channel(s, tk, ni)) * s.L + nc0;
                const int nnl = lanes(s, tk, ni);
                next[nsets++] = {p.u + nrow0, s.L, nnl};
                next[nsets++] = {p.delta + nrow0, s.L, nnl};
                if (p.z) next[nsets++] = {p.z + nrow0, s.L, nnl};
                if (last_blk) {
                  next[nsets++] = {Bsrc + nc0, s.L, static_cast<int>(std::min<int64_t>(W, s.N))};
                  next[nsets++] = {Csrc + nc0, s.L, static_cast<int>(std::min<int64_t>(W, s.N))};
                }
              }
            }

            for (int t = 0; t < T; ++t) {
              prefetch_step(next, nsets, t);
              const V dt = V::load(dtt + t * W), uv = V::load(ut + t * W);
              step<false, false>(h, Ac, dt, dt * uv, Bt + t * NT, nullptr, nullptr, dt, nullptr);
              V y = readout(h, Ct + t * NT);
              if (p.D) y = vfma(uv, Dv, y);
              if (p.z) {
                const V zv = V::load(zt + t * W);
                y = y * (zv * sigmoid(zv));
              }
              if (scaled) y = y * scale;
              y.store(yt + t * W);
            }
            if (s.reverse) flip_steps(yt, T, W);
            if (p.accumulate) {  // in position order now; zt is free again
              Tile::tile_in(p.out + row0 + c0, s.L, nl, 1, T, zt, W);
              for (int t = 0; t < T; ++t) (V::load(yt + t * W) + V::load(zt + t * W)).store(yt + t * W);
            }
            Tile::tile_out(yt, nl, T, p.out + row0 + c0, s.L);
#pragma GCC unroll 16
            for (int n = 0; n < NT; ++n) h[n].store(hst + i * VS + n * W);
          }
        }
        for (int64_t i = 0; i < tk.nb; ++i)
          store_rows(hst + i * VS, s, lanes(s, tk, i), p.last + (tk.b * s.E + first_channel(s, tk, i)) * s.N);
      }
    });
  }

  // Recompute one chunk of one block from its checkpoint h0: decays and states into as/hs, dL/dy into dyt
  // (from dL/dout), dL/dz into dzt, dC's lane products into pc, and (when p.out) the output into yt.
  template <bool Fresh>
  static void recompute(const BwdArgs<S>& p, int T, const V* Ac, V Dv, const S* ut, const S* dtt, const S* zt,
                        const S* Bt, const S* Ct, const S* h0, S* dyt, S* dzt, S* yt, S* as, S* hs, S* pc,
                        const Rows<S>* next, int nsets) {
    V h[NT];
#pragma GCC unroll 16
    for (int n = 0; n < NT; ++n) h[n] = V::load(h0 + n * W);
    for (int t = 0; t < T; ++t) {
      prefetch_step(next, nsets, t);
      const V dt = V::load(dtt + t * W), uv = V::load(ut + t * W), g = V::load(dyt + t * W);
      V dy = g, zv = V::zero(), sg = V::zero();
      if (p.z) {
        zv = V::load(zt + t * W);
        sg = sigmoid(zv);
        dy = g * (zv * sg);
        dy.store(dyt + t * W);
      }
      step<true, Fresh>(h, Ac, dt, dt * uv, Bt + t * NT, as + t * VS, hs + t * VS, dy, pc + t * VS);
      if (p.z) {
        V y = readout(h, Ct + t * NT);
        if (p.D) y = vfma(uv, Dv, y);
        (g * y * (sg * vfma(zv, V::set1(1) - sg, V::set1(1)))).store(dzt + t * W);
        if (p.out) (y * (zv * sg)).store(yt + t * W);
      }
    }
  }

  // Walk one chunk backwards carrying dL/dh (dh) and accumulating dA per lane; dB's lane products into pb.
  template <bool Fresh>
  static void walk(const BwdArgs<S>& p, bool softplus, int T, const V* Av, V Dv, const S* ut, const S* dtt,
                   const S* sgt, const S* dyt, const S* Bt, const S* Ct, const S* h0, const S* as, const S* hs,
                   S* pB, S* dut, S* ddt, V* dh, V* dA, V& dD, V& dbias) {
    for (int t = T - 1; t >= 0; --t) {
      const V dy = V::load(dyt + t * W), dt = V::load(dtt + t * W), uv = V::load(ut + t * W);
      const V dtu = dt * uv;
      const S* hp = t ? hs + (t - 1) * VS : h0;
      const S* at = as + t * VS;
      const S* Bn = Bt + t * NT;
      const S* Cn = Ct + t * NT;
      S* pb = pB + t * VS;
      V sB0 = V::zero(), sB1 = V::zero(), sA0 = V::zero(), sA1 = V::zero();
#pragma GCC unroll 16
      for (int n = 0; n < NT; n += 2) {
        V d0 = vfma(dy, V::set1(Cn[n]), dh[n]);
        V d1 = vfma(dy, V::set1(Cn[n + 1]), dh[n + 1]);
        (Fresh ? d0 * dtu : vfma(d0, dtu, V::load(pb + n * W))).store(pb + n * W);
        (Fresh ? d1 * dtu : vfma(d1, dtu, V::load(pb + (n + 1) * W))).store(pb + (n + 1) * W);
        sB0 = vfma(d0, V::set1(Bn[n]), sB0);
        sB1 = vfma(d1, V::set1(Bn[n + 1]), sB1);
        d0 = d0 * V::load(at + n * W);
        d1 = d1 * V::load(at + (n + 1) * W);
        const V g0 = d0 * V::load(hp + n * W);  // dL/d(delta' A) for state n
        const V g1 = d1 * V::load(hp + (n + 1) * W);
        dA[n] = vfma(g0, dt, dA[n]);
        dA[n + 1] = vfma(g1, dt, dA[n + 1]);
        sA0 = vfma(g0, Av[n], sA0);
        sA1 = vfma(g1, Av[n + 1], sA1);
        dh[n] = d0;
        dh[n + 1] = d1;
      }
      const V sB = sB0 + sB1;
      V gdt = vfma(sB, uv, sA0 + sA1);
      V du = sB * dt;
      if (p.D) {
        du = vfma(dy, Dv, du);
        dD = vfma(dy, uv, dD);
      }
      if (softplus) gdt = gdt * V::load(sgt + t * W);
      dbias = dbias + gdt;
      du.store(dut + t * W);
      gdt.store(ddt + t * W);
    }
  }

  static void backward(const Shape& s, const BwdArgs<S>& p) {
    const int64_t P = p.P;
    const int64_t maxnb = (s.nblk + P - 1) / P;
    run_tasks(s.batch * s.G * P, [&](const auto& take, int64_t ntask) {
      Arena<S> arena(9 * TCH * W + 2 * TCH * NT + 4 * TCH * VS + VS + maxnb * (4 * VS + 4 * W) + 16 * 32);
      S* ut = arena.take(TCH * W);
      S* dtt = arena.take(TCH * W);
      S* sgt = arena.take(TCH * W);  // softplus derivative
      S* zt = arena.take(TCH * W);
      S* dyt = arena.take(TCH * W);  // dL/dout, then dL/dy
      S* dzt = arena.take(TCH * W);
      S* dut = arena.take(TCH * W);
      S* ddt = arena.take(TCH * W);
      S* yt = arena.take(TCH * W);  // the recomputed output, when asked for
      S* Bt = arena.take(TCH * NT);
      S* Ct = arena.take(TCH * NT);
      S* hs = arena.take(TCH * VS);  // states h_t of the chunk
      S* as = arena.take(TCH * VS);  // decays exp(delta'_t A)
      S* pB = arena.take(TCH * VS);  // lane products for dB, summed over the task's blocks
      S* pC = arena.take(TCH * VS);  // lane products for dC, summed over the task's blocks
      S* h0 = arena.take(VS);        // the chunk's starting state
      S* Avs = arena.take(maxnb * VS);
      S* Acs = arena.take(maxnb * VS);
      S* dhs = arena.take(maxnb * VS);
      S* dAs = arena.take(maxnb * VS);
      S* Ds = arena.take(maxnb * W);
      S* biass = arena.take(maxnb * W);
      S* dDs = arena.take(maxnb * W);
      S* dbiass = arena.take(maxnb * W);
      for (int64_t task = take(); task < ntask; task = take()) {
        const Task tk = task_of(s, P, task);
        for (int64_t i = 0; i < tk.nb; ++i) {
          const int64_t e0 = first_channel(s, tk, i);
          const int nl = lanes(s, tk, i);
          block_consts(s, p.A, p.D, p.bias, e0, nl, Avs + i * VS, Acs + i * VS, Ds + i * W, biass + i * W);
          if (p.dlast) load_rows(p.dlast + (tk.b * s.E + e0) * s.N, s, nl, dhs + i * VS);
          else for (int n = 0; n < VS; ++n) dhs[i * VS + n] = S(0);
          for (int n = 0; n < VS; ++n) dAs[i * VS + n] = S(0);
          V::zero().store(dDs + i * W);
          V::zero().store(dbiass + i * W);
        }
        const S* Bsrc = p.B + tk.bg * s.N * s.L;
        const S* Csrc = p.C + tk.bg * s.N * s.L;
        S* dBrow = p.dBp ? p.dBp + (tk.bg * P + tk.pr) * s.N * s.L : nullptr;
        S* dCrow = p.dCp ? p.dCp + (tk.bg * P + tk.pr) * s.N * s.L : nullptr;
        for (int64_t k = s.K - 1; k >= 0; --k) {
          const int64_t t0 = k * TCH;
          const int T = static_cast<int>(std::min<int64_t>(TCH, s.L - t0));
          const int64_t c0 = load_bc_chunk(s, Bsrc, Csrc, t0, T, Bt, Ct);
          for (int64_t i = 0; i < tk.nb; ++i) {
            const int64_t e0 = first_channel(s, tk, i);
            const int nl = lanes(s, tk, i);
            const int64_t row0 = (tk.b * s.E + e0) * s.L;
            V Ac[NT], Av[NT], dh[NT], dA[NT];
#pragma GCC unroll 16
            for (int n = 0; n < NT; ++n) {
              Ac[n] = V::load(Acs + i * VS + n * W);
              Av[n] = V::load(Avs + i * VS + n * W);
              dh[n] = V::load(dhs + i * VS + n * W);
              dA[n] = V::load(dAs + i * VS + n * W);
            }
            const V Dv = V::load(Ds + i * W);
            V dD = V::load(dDs + i * W), dbias = V::load(dbiass + i * W);

            Tile::tile_in(p.u + row0 + c0, s.L, nl, 1, T, ut, W);
            Tile::tile_in(p.delta + row0 + c0, s.L, nl, 1, T, dtt, W);
            if (p.z) Tile::tile_in(p.z + row0 + c0, s.L, nl, 1, T, zt, W);
            Tile::tile_in(p.dout ? p.dout + row0 + c0 : nullptr, s.L, p.dout ? nl : 0, 1, T, dyt, W);
            if (s.reverse) {
              flip_steps(ut, T, W);
              flip_steps(dtt, T, W);
              if (p.z) flip_steps(zt, T, W);
              if (p.dout) flip_steps(dyt, T, W);
            }
            prep_delta(dtt, T, V::load(biass + i * W), s.softplus, sgt);
            load_rows(p.ckpt + ((tk.b * s.K + k) * s.E + e0) * s.N, s, nl, h0);

            Rows<S> next[6];
            int nsets = 0;
            {
              const bool last_blk = i + 1 == tk.nb;
              const int64_t ni = last_blk ? 0 : i + 1, nt0 = last_blk ? t0 - TCH : t0;
              if (nt0 >= 0) {
                const int64_t nc0 = chunk_start(s, nt0, std::min<int64_t>(TCH, s.L - nt0));
                const int64_t nrow0 = (tk.b * s.E + first_channel(s, tk, ni)) * s.L + nc0;
                const int nnl = lanes(s, tk, ni);
                next[nsets++] = {p.u + nrow0, s.L, nnl};
                next[nsets++] = {p.delta + nrow0, s.L, nnl};
                if (p.z) next[nsets++] = {p.z + nrow0, s.L, nnl};
                if (p.dout) next[nsets++] = {p.dout + nrow0, s.L, nnl};
                if (last_blk) {
                  next[nsets++] = {Bsrc + nc0, s.L, static_cast<int>(std::min<int64_t>(W, s.N))};
                  next[nsets++] = {Csrc + nc0, s.L, static_cast<int>(std::min<int64_t>(W, s.N))};
                }
              }
            }

            if (i == 0) {
              recompute<true>(p, T, Ac, Dv, ut, dtt, zt, Bt, Ct, h0, dyt, dzt, yt, as, hs, pC, next, nsets);
              walk<true>(p, s.softplus, T, Av, Dv, ut, dtt, sgt, dyt, Bt, Ct, h0, as, hs, pB, dut, ddt, dh, dA, dD,
                         dbias);
            } else {
              recompute<false>(p, T, Ac, Dv, ut, dtt, zt, Bt, Ct, h0, dyt, dzt, yt, as, hs, pC, next, nsets);
              walk<false>(p, s.softplus, T, Av, Dv, ut, dtt, sgt, dyt, Bt, Ct, h0, as, hs, pB, dut, ddt, dh, dA, dD,
                          dbias);
            }
            if (s.reverse) {
              flip_steps(dut, T, W);
              flip_steps(ddt, T, W);
              if (p.z) flip_steps(dzt, T, W);
              if (p.out) flip_steps(yt, T, W);
            }
            Tile::tile_out(dut, nl, T, p.du + row0 + c0, s.L);
            Tile::tile_out(ddt, nl, T, p.ddelta + row0 + c0, s.L);
            if (p.z) Tile::tile_out(dzt, nl, T, p.dz + row0 + c0, s.L);
            if (p.out) Tile::tile_out(yt, nl, T, p.out + row0 + c0, s.L);
#pragma GCC unroll 16
            for (int n = 0; n < NT; ++n) {
              dh[n].store(dhs + i * VS + n * W);
              dA[n].store(dAs + i * VS + n * W);
            }
            dD.store(dDs + i * W);
            dbias.store(dbiass + i * W);
          }
          if (s.reverse) {  // the lane products in position order, as the rows are written
            if (dBrow) flip_steps(pB, T, VS);
            if (dCrow) flip_steps(pC, T, VS);
          }
          for (int j = 0; j < T; j += W) {
            const int nc = std::min(W, T - j);
            for (int n = 0; n < s.N; ++n) {
              if (dBrow) Tile::reduce_rows(pB + (j * NT + n) * W, VS, nc, dBrow + n * s.L + c0 + j);
              if (dCrow) Tile::reduce_rows(pC + (j * NT + n) * W, VS, nc, dCrow + n * s.L + c0 + j);
            }
          }
        }
        for (int64_t i = 0; i < tk.nb; ++i) {
          const int64_t e0 = first_channel(s, tk, i);
          const int nl = lanes(s, tk, i);
          if (p.dinit) store_rows(dhs + i * VS, s, nl, p.dinit + (tk.b * s.E + e0) * s.N);
          store_rows(dAs + i * VS, s, nl, p.dA + (tk.b * s.E + e0) * s.N);
          if (p.dD) scatter_lanes<V>(V::load(dDs + i * W), p.dD + tk.b * s.E + e0, 1, nl);
          if (p.dbias) scatter_lanes<V>(V::load(dbiass + i * W), p.dbias + tk.b * s.E + e0, 1, nl);
        }
      }
    });
  }
};

// ---------------------------------------------------------------------------------------------------
// Host side.
// ---------------------------------------------------------------------------------------------------
template <typename S> struct VecFor { using type = VG<S>; };
#if VM_SCAN_AVX512 || VM_SCAN_AVX2
template <> struct VecFor<float> { using type = VF; };
#endif

template <typename S, template <class, int> class Fn, typename... Args>
void dispatch_n(int64_t N, Args&&... args) {
  using V = typename VecFor<S>::type;
  if (N <= 16) Fn<V, 16>::run(std::forward<Args>(args)...);
  else if (N <= 32) Fn<V, 32>::run(std::forward<Args>(args)...);
  else Fn<V, 64>::run(std::forward<Args>(args)...);
}
template <class V, int NT> struct RunFwd {
  template <typename... A> static void run(A&&... a) { Scan<V, NT>::forward(std::forward<A>(a)...); }
};
template <class V, int NT> struct RunBwd {
  template <typename... A> static void run(A&&... a) { Scan<V, NT>::backward(std::forward<A>(a)...); }
};

template <typename S> const S* ptr_or_null(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t->data_ptr<S>() : nullptr;
}

void check_tensor(const at::Tensor& t, const char* name, at::ScalarType dtype, at::IntArrayRef shape) {
  TORCH_CHECK(t.device().is_cpu(), "selective_scan_cpu: `", name, "` must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == dtype, "selective_scan_cpu: `", name, "` has dtype ", t.scalar_type(),
              ", expected ", dtype);
  TORCH_CHECK(t.is_contiguous(), "selective_scan_cpu: `", name, "` must be contiguous");
  TORCH_CHECK(t.sizes() == shape, "selective_scan_cpu: `", name, "` must have shape ", shape, ", got ", t.sizes());
}
void check_opt(const std::optional<at::Tensor>& t, const char* name, at::ScalarType dtype, at::IntArrayRef shape) {
  if (t.has_value() && t->defined()) check_tensor(*t, name, dtype, shape);
}
// The dtype of A, D, delta_bias and the states: u's, except float32 for bfloat16 time series.
at::ScalarType state_dtype(const at::Tensor& u) {
  return u.scalar_type() == at::kBFloat16 ? at::kFloat : u.scalar_type();
}

Shape make_shape(const at::Tensor& u, const at::Tensor& A, const at::Tensor& B, bool softplus) {
  TORCH_CHECK(u.dim() == 3, "selective_scan_cpu: `u` must be (B, E, L)");
  TORCH_CHECK(u.scalar_type() == at::kFloat || u.scalar_type() == at::kDouble || u.scalar_type() == at::kBFloat16,
              "selective_scan_cpu: only float32, float64 and (forward) bfloat16 are supported, got ",
              u.scalar_type());
  TORCH_CHECK(A.dim() == 2 && B.dim() == 4, "selective_scan_cpu: A must be (E, N) and B, C (B, G, N, L)");
  Shape s;
  s.batch = u.size(0);
  s.E = u.size(1);
  s.L = u.size(2);
  s.N = A.size(1);
  s.G = B.size(1);
  TORCH_CHECK(s.N >= 1 && s.N <= 64, "selective_scan_cpu: d_state N must be in [1, 64], got ", s.N);
  TORCH_CHECK(s.G >= 1 && s.E % s.G == 0, "selective_scan_cpu: E=", s.E, " is not divisible by G=", s.G);
  s.Eg = s.E / s.G;
  s.nblk = (s.Eg + W - 1) / W;
  s.K = (s.L + TCH - 1) / TCH;
  s.softplus = softplus;
  return s;
}

void check_inputs(const Shape& s, const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                  const at::Tensor& B, const at::Tensor& C, const std::optional<at::Tensor>& D,
                  const std::optional<at::Tensor>& z, const std::optional<at::Tensor>& bias) {
  const at::ScalarType time = u.scalar_type(), state = state_dtype(u);
  check_tensor(u, "u", time, {s.batch, s.E, s.L});
  check_tensor(delta, "delta", time, {s.batch, s.E, s.L});
  check_tensor(A, "A", state, {s.E, s.N});
  check_tensor(B, "B", time, {s.batch, s.G, s.N, s.L});
  check_tensor(C, "C", time, {s.batch, s.G, s.N, s.L});
  check_opt(D, "D", state, {s.E});
  check_opt(z, "z", time, {s.batch, s.E, s.L});
  check_opt(bias, "delta_bias", state, {s.E});
}

// How many ranges the blocks of a (batch, group) are cut into: enough independent tasks for the threads,
// several blocks per range so that per-chunk work is shared (B/C tiles; in the backward also the dB/dC
// reductions, hence more blocks there), and not so many that tasks get too coarse to balance. A function
// of the shape alone, so that results do not depend on the thread count.
int64_t block_ranges(const Shape& s, int64_t min_blocks) {
  const int64_t want_tasks = 16, max_blocks = 12;
  const int64_t rows = std::max<int64_t>(1, s.batch * s.G);
  const int64_t by_tasks = (want_tasks + rows - 1) / rows;
  const int64_t by_size = std::max<int64_t>(1, s.nblk / min_blocks);
  const int64_t at_least = (s.nblk + max_blocks - 1) / max_blocks;
  return std::max<int64_t>({int64_t(1), at_least, std::min(by_tasks, by_size)});
}

std::vector<at::Tensor> scan_fwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                 const at::Tensor& B, const at::Tensor& C, const std::optional<at::Tensor>& D,
                                 const std::optional<at::Tensor>& z, const std::optional<at::Tensor>& bias,
                                 const std::optional<at::Tensor>& init, bool softplus, bool save_checkpoints,
                                 bool reverse, const std::optional<at::Tensor>& out_buffer, double scale,
                                 bool accumulate) {
  Shape s = make_shape(u, A, B, softplus);
  s.reverse = reverse;
  check_inputs(s, u, delta, A, B, C, D, z, bias);
  const at::ScalarType state = state_dtype(u);
  check_opt(init, "initial_state", state, {s.batch, s.E, s.N});
  check_opt(out_buffer, "out", u.scalar_type(), {s.batch, s.E, s.L});
  const bool given = out_buffer.has_value() && out_buffer->defined();
  TORCH_CHECK(given || !accumulate, "selective_scan_cpu: accumulating needs an `out` tensor");
  at::Tensor out = given ? *out_buffer : at::empty_like(u);
  auto state_opts = u.options().dtype(state);
  at::Tensor last = at::empty({s.batch, s.E, s.N}, state_opts);
  at::Tensor ckpt = at::empty({save_checkpoints ? s.batch : 0, s.K, s.E, s.N}, state_opts);
  const int64_t P = block_ranges(s, 3);
  if (u.scalar_type() == at::kBFloat16) {
    FwdArgs<float, bf16> a{u.data_ptr<bf16>(), delta.data_ptr<bf16>(), A.data_ptr<float>(), B.data_ptr<bf16>(),
                           C.data_ptr<bf16>(), ptr_or_null<float>(D), ptr_or_null<bf16>(z), ptr_or_null<float>(bias),
                           ptr_or_null<float>(init), out.data_ptr<bf16>(), last.data_ptr<float>(),
                           save_checkpoints ? ckpt.data_ptr<float>() : nullptr, static_cast<float>(scale), accumulate};
    dispatch_n<float, RunFwd>(s.N, s, a, P);
    return {out, last, ckpt};
  }
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_cpu_fwd", [&] {
    FwdArgs<scalar_t> a{u.data_ptr<scalar_t>(), delta.data_ptr<scalar_t>(), A.data_ptr<scalar_t>(),
                        B.data_ptr<scalar_t>(), C.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(D),
                        ptr_or_null<scalar_t>(z), ptr_or_null<scalar_t>(bias), ptr_or_null<scalar_t>(init),
                        out.data_ptr<scalar_t>(), last.data_ptr<scalar_t>(),
                        save_checkpoints ? ckpt.data_ptr<scalar_t>() : nullptr, static_cast<scalar_t>(scale),
                        accumulate};
    dispatch_n<scalar_t, RunFwd>(s.N, s, a, P);
  });
  return {out, last, ckpt};
}

// Sum the P slices (batch, G, P, N, L) into (batch, G, N, L) in a fixed order.
template <typename S>
void sum_slices(const S* part, S* out, int64_t rows_bg, int64_t P, int64_t N, int64_t L) {
  at::parallel_for(0, rows_bg * N, 16, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const int64_t bg = r / N, n = r % N;
      S* o = out + r * L;
      const S* src = part + (bg * P * N + n) * L;
      std::memcpy(o, src, sizeof(S) * L);
      for (int64_t q = 1; q < P; ++q) {
        const S* sq = src + q * N * L;
        for (int64_t t = 0; t < L; ++t) o[t] += sq[t];
      }
    }
  });
}

std::vector<at::Tensor> scan_bwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                 const at::Tensor& B, const at::Tensor& C, const std::optional<at::Tensor>& D,
                                 const std::optional<at::Tensor>& z, const std::optional<at::Tensor>& bias,
                                 const at::Tensor& ckpt, const std::optional<at::Tensor>& dout,
                                 const std::optional<at::Tensor>& dlast, bool softplus, bool want_dB, bool want_dC,
                                 bool want_dinit, bool want_out, bool reverse) {
  Shape s = make_shape(u, A, B, softplus);
  s.reverse = reverse;
  TORCH_CHECK(u.scalar_type() != at::kBFloat16, "selective_scan_cpu: the backward runs in float32 or float64");
  check_inputs(s, u, delta, A, B, C, D, z, bias);
  check_tensor(ckpt, "checkpoints", u.scalar_type(), {s.batch, s.K, s.E, s.N});
  check_opt(dout, "grad_out", u.scalar_type(), {s.batch, s.E, s.L});
  check_opt(dlast, "grad_last_state", u.scalar_type(), {s.batch, s.E, s.N});
  const bool hasD = D.has_value() && D->defined(), hasz = z.has_value() && z->defined();
  const bool hasbias = bias.has_value() && bias->defined();
  auto opts = u.options();
  at::Tensor du = at::empty_like(u), ddelta = at::empty_like(u);
  at::Tensor dA = at::empty({s.batch, s.E, s.N}, opts);
  at::Tensor dB = want_dB ? at::empty({s.batch, s.G, s.N, s.L}, opts) : at::Tensor();
  at::Tensor dC = want_dC ? at::empty({s.batch, s.G, s.N, s.L}, opts) : at::Tensor();
  at::Tensor dD = hasD ? at::empty({s.batch, s.E}, opts) : at::Tensor();
  at::Tensor dz = hasz ? at::empty_like(u) : at::Tensor();
  at::Tensor dbias = hasbias ? at::empty({s.batch, s.E}, opts) : at::Tensor();
  at::Tensor dinit = want_dinit ? at::empty({s.batch, s.E, s.N}, opts) : at::Tensor();
  TORCH_CHECK(!want_out || hasz, "selective_scan_cpu: the backward recomputes the output only for a gated scan (z)");
  at::Tensor out = want_out ? at::empty_like(u) : at::Tensor();
  const int64_t P = block_ranges(s, 6);
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_cpu_bwd", [&] {
    using S = scalar_t;
    thread_local std::vector<S> workspace;  // dB/dC slices when P > 1, reused across calls
    S* dBp = want_dB ? dB.data_ptr<S>() : nullptr;
    S* dCp = want_dC ? dC.data_ptr<S>() : nullptr;
    const int64_t slice = s.batch * s.G * P * s.N * s.L;
    if (P > 1 && (want_dB || want_dC)) {
      const size_t need = static_cast<size_t>(slice) * (int(want_dB) + int(want_dC));
      if (workspace.size() < need) workspace.resize(need);
      S* w = workspace.data();
      if (want_dB) { dBp = w; w += slice; }
      if (want_dC) dCp = w;
    }
    BwdArgs<S> a{u.data_ptr<S>(), delta.data_ptr<S>(), A.data_ptr<S>(), B.data_ptr<S>(), C.data_ptr<S>(),
                 ptr_or_null<S>(D), ptr_or_null<S>(z), ptr_or_null<S>(bias), ckpt.data_ptr<S>(),
                 ptr_or_null<S>(dout), ptr_or_null<S>(dlast),
                 du.data_ptr<S>(), ddelta.data_ptr<S>(), dA.data_ptr<S>(), dBp, dCp,
                 hasD ? dD.data_ptr<S>() : nullptr, hasz ? dz.data_ptr<S>() : nullptr,
                 hasbias ? dbias.data_ptr<S>() : nullptr, want_dinit ? dinit.data_ptr<S>() : nullptr, P,
                 want_out ? out.data_ptr<S>() : nullptr};
    dispatch_n<S, RunBwd>(s.N, s, a);
    if (P > 1) {
      if (want_dB) sum_slices<S>(dBp, dB.data_ptr<S>(), s.batch * s.G, P, s.N, s.L);
      if (want_dC) sum_slices<S>(dCp, dC.data_ptr<S>(), s.batch * s.G, P, s.N, s.L);
    }
  });
  return {du, ddelta, dA, dB, dC, dD, dz, dbias, dinit, out};
}

bool has_avx512() { return VM_SCAN_AVX512 != 0; }
// The fp32 path compiled in: "avx512", "avx2" or "generic" (the portable 16-lane template).
std::string isa() { return VM_SCAN_AVX512 ? "avx512" : VM_SCAN_AVX2 ? "avx2" : "generic"; }

}  // namespace

// Defined in causal_conv_cpu.cpp, built into the same extension.
torch::Tensor causal_conv1d_fwd(torch::Tensor x, torch::Tensor w, c10::optional<torch::Tensor> bias, bool reverse);
std::vector<torch::Tensor> causal_conv1d_bwd(torch::Tensor x, torch::Tensor w, torch::Tensor dout, bool reverse);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("causal_conv1d_fwd", &causal_conv1d_fwd, "depthwise causal conv1d over (B, E, L) rows");
  m.def("causal_conv1d_bwd", &causal_conv1d_bwd, "its backward: (dx, dweight, dbias)");
  m.def("fwd", &scan_fwd, "selective scan forward (optionally reversed in time): (out, last_state, checkpoints)");
  m.def("bwd", &scan_bwd,
        "selective scan backward: (du, ddelta, dA per batch, dB, dC, dD per batch, dz, ddelta_bias per batch, "
        "dinitial_state, the gated output when asked for)");
  m.def("has_avx512", &has_avx512, "whether the fp32 path was compiled with AVX-512");
  m.def("isa", &isa, "the instruction-set variant of the fp32 path: avx512, avx2 or generic");
}
