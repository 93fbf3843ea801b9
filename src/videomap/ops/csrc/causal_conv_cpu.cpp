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

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

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

}  // namespace

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
