// Depthwise causal 1-D convolution over (B, E, L) rows, forward and backward, for the CPU.
//
//   causal:   out[t] = bias + sum_k w[k] * x[t - (K-1) + k]      (zeros before t = 0)
//   reverse:  out[t] = bias + sum_k w[k] * x[t + (K-1) - k]      (zeros after t = L-1)
//
// "reverse" is the causal conv of the time-flipped row, flipped back, computed without the two flips. Every
// (batch, channel) row is independent and contiguous, so rows are spread over threads and each row is
// swept once per tap with a unit-stride inner loop the compiler vectorises. The activation is left to the
// caller: keeping the kernel linear keeps its backward a pair of convolutions.
//
// bfloat16 rows (the forward under bf16 autocast) are widened into a per-thread fp32 row, convolved there
// with fp32 weights and bias, and rounded once on the way out: no fp32 copy of the whole tensor is made.
//
// The channels-last forward (inference) reads x as (B, L, E) with channels contiguous, e.g. the x half of
// in_proj's (B, L, 2E) output in place, and writes (B, L, E): each output vector is 16 channels of one
// position, the taps are vector multiply-adds in the same order as the row kernel's, and SiLU is applied
// on the way out.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "scan_simd.h"

namespace {

// out[t] += w * in[t + shift] for every t with 0 <= t + shift < n.
template <typename T>
inline void axpy_shifted(T* out, const T* in, T w, int64_t n, int64_t shift) {
  const int64_t begin = std::max<int64_t>(0, -shift);
  const int64_t end = std::min<int64_t>(n, n - shift);
  for (int64_t t = begin; t < end; ++t) out[t] += w * in[t + shift];
}

// sum_t a[t] * b[t + shift] over the valid range.
template <typename T>
inline T dot_shifted(const T* a, const T* b, int64_t n, int64_t shift) {
  const int64_t begin = std::max<int64_t>(0, -shift);
  const int64_t end = std::min<int64_t>(n, n - shift);
  T acc = 0;
  for (int64_t t = begin; t < end; ++t) acc += a[t] * b[t + shift];
  return acc;
}

// Tap k reads x[t + shift(k)].
inline int64_t tap_shift(int64_t k, int64_t width, bool reverse) {
  return reverse ? (width - 1 - k) : (k - (width - 1));
}

void check(const torch::Tensor& x, const torch::Tensor& w) {
  TORCH_CHECK(x.dim() == 3 && x.is_contiguous(), "causal_conv1d: x must be a contiguous (B, E, L) tensor");
  TORCH_CHECK(w.dim() == 2 && w.is_contiguous() && w.size(0) == x.size(1),
              "causal_conv1d: weight must be a contiguous (E, K) tensor");
  const auto compute = x.scalar_type() == at::kBFloat16 ? at::kFloat : x.scalar_type();
  TORCH_CHECK(w.scalar_type() == compute, "causal_conv1d: weight must be ", compute, " for ", x.scalar_type(),
              " input, got ", w.scalar_type());
}

// One (batch, channel) row of the forward in T: o = bias + sum_k w[k] * in shifted.
template <typename T>
inline void conv_row(const T* in, const T* w, T b, int64_t length, int64_t width, bool reverse, T* o) {
  for (int64_t t = 0; t < length; ++t) o[t] = b;
  for (int64_t k = 0; k < width; ++k) axpy_shifted(o, in, w[k], length, tap_shift(k, width, reverse));
}

void conv_fwd_bf16(const torch::Tensor& x, const torch::Tensor& w, const c10::optional<torch::Tensor>& bias,
                   bool reverse, torch::Tensor& out) {
  const int64_t channels = x.size(1), length = x.size(2), width = w.size(1);
  const at::BFloat16* xp = x.data_ptr<at::BFloat16>();
  const float* wp = w.data_ptr<float>();
  const float* bp = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  at::BFloat16* op = out.data_ptr<at::BFloat16>();
  at::parallel_for(0, x.size(0) * channels, 1, [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> rows;  // widened input row, then the fp32 result; reused across calls
    if (rows.size() < static_cast<size_t>(2 * length)) rows.resize(2 * length);
    float* in = rows.data();
    float* acc = in + length;
    for (int64_t row = begin; row < end; ++row) {
      const int64_t e = row % channels;
      const at::BFloat16* src = xp + row * length;
      for (int64_t t = 0; t < length; ++t) in[t] = static_cast<float>(src[t]);
      conv_row(in, wp + e * width, bp ? bp[e] : 0.0f, length, width, reverse, acc);
      at::BFloat16* dst = op + row * length;
      for (int64_t t = 0; t < length; ++t) dst[t] = static_cast<at::BFloat16>(acc[t]);
    }
  });
}

#if VM_SCAN_AVX512 || VM_SCAN_AVX2
using VFloat = VF;
#else
using VFloat = VG<float>;
#endif

// x (B, L, E) at x[b * sb + t * sl + e] -> out (B, L, E) contiguous; wt is the weight as (K, E), S the compute
// type. Tasks are runs of 64 positions; each position sweeps all channels, 16 at a time.
template <class V, typename In>
void conv_last(const In* x, int64_t sb, int64_t sl, int64_t batch, int64_t length, int64_t channels,
               const typename V::T* wt, const typename V::T* bias, int64_t width, bool apply_silu, bool reverse,
               In* out) {
  using IO = LaneIO<V>;
  constexpr int64_t run = 64;
  const int64_t runs = (length + run - 1) / run;
  at::parallel_for(0, batch * runs, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / runs, t0 = task % runs * run, t1 = std::min(length, t0 + run);
      for (int64_t t = t0; t < t1; ++t) {
        for (int64_t e0 = 0; e0 < channels; e0 += W) {
          const int nl = static_cast<int>(std::min<int64_t>(W, channels - e0));
          V acc = bias ? IO::load(bias + e0, nl) : V::zero();
          for (int64_t k = 0; k < width; ++k) {
            const int64_t src = t + tap_shift(k, width, reverse);
            if (src < 0 || src >= length) continue;
            acc = vfma(IO::load(wt + k * channels + e0, nl), IO::load(x + b * sb + src * sl + e0, nl), acc);
          }
          if (apply_silu) acc = acc * sigmoid(acc);
          IO::store(out + (b * length + t) * channels + e0, nl, acc);
        }
      }
    }
  });
}

}  // namespace

torch::Tensor causal_conv1d_fwd_last(torch::Tensor x, torch::Tensor w, c10::optional<torch::Tensor> bias, bool silu,
                                     bool reverse) {
  TORCH_CHECK(x.dim() == 3 && (x.stride(2) == 1 || x.size(2) == 1),
              "causal_conv1d: the channels-last x must be (B, L, E) with contiguous channels, got strides ",
              x.strides());
  TORCH_CHECK(w.dim() == 2 && w.size(0) == x.size(2), "causal_conv1d: weight must be (E, K) for x (B, L, E)");
  const auto compute = x.scalar_type() == at::kBFloat16 ? at::kFloat : x.scalar_type();
  TORCH_CHECK(compute == at::kFloat || compute == at::kDouble,
              "causal_conv1d: float32, float64 or bfloat16 only, got ", x.scalar_type());
  TORCH_CHECK(w.scalar_type() == compute, "causal_conv1d: weight must be ", compute, " for ", x.scalar_type(),
              " input, got ", w.scalar_type());
  const int64_t batch = x.size(0), length = x.size(1), channels = x.size(2), width = w.size(1);
  const torch::Tensor wt = w.t().contiguous();  // (K, E): the taps of 16 channels are one vector
  const c10::optional<torch::Tensor> b = bias.has_value() ? c10::optional<torch::Tensor>(bias->contiguous()) : bias;
  auto out = torch::empty({batch, length, channels}, x.options());
  if (x.scalar_type() == at::kDouble) {
    conv_last<VG<double>>(x.data_ptr<double>(), x.stride(0), x.stride(1), batch, length, channels,
                          wt.data_ptr<double>(), b ? b->data_ptr<double>() : nullptr, width, silu, reverse,
                          out.data_ptr<double>());
  } else if (x.scalar_type() == at::kBFloat16) {
    conv_last<VFloat>(x.data_ptr<at::BFloat16>(), x.stride(0), x.stride(1), batch, length, channels,
                      wt.data_ptr<float>(), b ? b->data_ptr<float>() : nullptr, width, silu, reverse,
                      out.data_ptr<at::BFloat16>());
  } else {
    conv_last<VFloat>(x.data_ptr<float>(), x.stride(0), x.stride(1), batch, length, channels, wt.data_ptr<float>(),
                      b ? b->data_ptr<float>() : nullptr, width, silu, reverse, out.data_ptr<float>());
  }
  return out;
}

torch::Tensor causal_conv1d_fwd(torch::Tensor x, torch::Tensor w, c10::optional<torch::Tensor> bias, bool reverse) {
  check(x, w);
  const int64_t batch = x.size(0), channels = x.size(1), length = x.size(2), width = w.size(1);
  auto out = torch::empty_like(x);
  if (x.scalar_type() == at::kBFloat16) {
    conv_fwd_bf16(x, w, bias, reverse, out);
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "causal_conv1d_fwd", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* wp = w.data_ptr<scalar_t>();
    const scalar_t* bp = bias.has_value() ? bias->data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, batch * channels, 1, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t e = row % channels;
        conv_row(xp + row * length, wp + e * width, bp ? bp[e] : scalar_t(0), length, width, reverse,
                 op + row * length);
      }
    });
  });
  return out;
}

// Returns dx (B, E, L), dweight (E, K), dbias (E,).
std::vector<torch::Tensor> causal_conv1d_bwd(torch::Tensor x, torch::Tensor w, torch::Tensor dout, bool reverse) {
  check(x, w);
  TORCH_CHECK(dout.sizes() == x.sizes() && dout.is_contiguous() && dout.scalar_type() == x.scalar_type(),
              "causal_conv1d: dout must match x");
  const int64_t batch = x.size(0), channels = x.size(1), length = x.size(2), width = w.size(1);
  auto dx = torch::empty_like(x);
  // Per-row partial sums, reduced over the batch afterwards in a fixed order: deterministic, no atomics.
  auto dw_rows = torch::empty({batch, channels, width}, x.options());
  auto db_rows = torch::empty({batch, channels}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "causal_conv1d_bwd", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* wp = w.data_ptr<scalar_t>();
    const scalar_t* gp = dout.data_ptr<scalar_t>();
    scalar_t* dxp = dx.data_ptr<scalar_t>();
    scalar_t* dwp = dw_rows.data_ptr<scalar_t>();
    scalar_t* dbp = db_rows.data_ptr<scalar_t>();
    at::parallel_for(0, batch * channels, 1, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t e = row % channels;
        const scalar_t* in = xp + row * length;
        const scalar_t* g = gp + row * length;
        scalar_t* d = dxp + row * length;
        for (int64_t t = 0; t < length; ++t) d[t] = 0;
        scalar_t db = 0;
        for (int64_t t = 0; t < length; ++t) db += g[t];
        dbp[row] = db;
        for (int64_t k = 0; k < width; ++k) {
          const int64_t shift = tap_shift(k, width, reverse);
          // out[t] uses x[t + shift]: so dx[s] += w * g[s - shift] and dw += g[t] * x[t + shift].
          axpy_shifted(d, g, wp[e * width + k], length, -shift);
          dwp[row * width + k] = dot_shifted(g, in, length, shift);
        }
      }
    });
  });
  return {dx, dw_rows.sum(0), db_rows.sum(0)};
}
