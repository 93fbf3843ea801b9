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
//
// Files. scan_simd.h: the vector types and their math; scan_kernel.h: the Scan template (forward and
// backward); this file: the host side (checks, shapes, dispatch); bindings.cpp: the Python module.

#include "scan_host.h"
#include "scan_kernel.h"

namespace {

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
template <class V, int NT> struct RunFwdLast {
  template <typename... A> static void run(A&&... a) { Scan<V, NT>::forward_last(std::forward<A>(a)...); }
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

Shape shape_of(int64_t batch, int64_t E, int64_t L, int64_t N, int64_t G, bool softplus) {
  TORCH_CHECK(N >= 1 && N <= 64, "selective_scan_cpu: d_state N must be in [1, 64], got ", N);
  TORCH_CHECK(G >= 1 && E % G == 0, "selective_scan_cpu: E=", E, " is not divisible by G=", G);
  Shape s;
  s.batch = batch;
  s.E = E;
  s.L = L;
  s.N = N;
  s.G = G;
  s.Eg = E / G;
  s.nblk = (s.Eg + W - 1) / W;
  s.K = (L + TCH - 1) / TCH;
  s.softplus = softplus;
  return s;
}

Shape make_shape(const at::Tensor& u, const at::Tensor& A, const at::Tensor& B, bool softplus) {
  TORCH_CHECK(u.dim() == 3, "selective_scan_cpu: `u` must be (B, E, L)");
  TORCH_CHECK(u.scalar_type() == at::kFloat || u.scalar_type() == at::kDouble || u.scalar_type() == at::kBFloat16,
              "selective_scan_cpu: only float32, float64 and (forward) bfloat16 are supported, got ",
              u.scalar_type());
  TORCH_CHECK(A.dim() == 2 && B.dim() == 4, "selective_scan_cpu: A must be (E, N) and B, C (B, G, N, L)");
  return shape_of(u.size(0), u.size(1), u.size(2), A.size(1), B.size(1), softplus);
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

}  // namespace

namespace videomap_scan {

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

// A (B, L, C) operand of the channels-last forward: channels contiguous, any batch and position strides.
void check_last(const at::Tensor& t, const char* name, at::ScalarType dtype, at::IntArrayRef shape) {
  TORCH_CHECK(t.device().is_cpu(), "selective_scan_cpu: `", name, "` must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == dtype, "selective_scan_cpu: `", name, "` has dtype ", t.scalar_type(),
              ", expected ", dtype);
  TORCH_CHECK(t.sizes() == shape, "selective_scan_cpu: `", name, "` must have shape ", shape, ", got ", t.sizes());
  TORCH_CHECK(t.stride(-1) == 1 || t.size(-1) == 1, "selective_scan_cpu: `", name,
              "` must have contiguous channels (last stride 1), got strides ", t.strides());
  if (t.dim() == 4)
    TORCH_CHECK(t.stride(2) == t.size(3) || t.size(2) == 1, "selective_scan_cpu: `", name,
                "`'s groups must be contiguous (stride(2) == N), got strides ", t.strides());
}
template <typename T>
Strided<T> strided(const at::Tensor& t) {
  return {static_cast<T*>(t.data_ptr()), t.stride(0), t.stride(1)};
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

at::Tensor scan_fwd_last(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                         const at::Tensor& C, const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
                         const std::optional<at::Tensor>& bias, bool softplus, bool reverse,
                         const std::optional<at::Tensor>& out_buffer, double scale, bool accumulate) {
  TORCH_CHECK(u.dim() == 3 && A.dim() == 2 && B.dim() == 4,
              "selective_scan_cpu: the channels-last forward takes u (B, L, E), A (E, N), B and C (B, L, G, N)");
  const at::ScalarType time = u.scalar_type(), state = state_dtype(u);
  TORCH_CHECK(time == at::kFloat || time == at::kDouble || time == at::kBFloat16,
              "selective_scan_cpu: only float32, float64 and bfloat16 are supported, got ", time);
  Shape s = shape_of(u.size(0), u.size(2), u.size(1), A.size(1), B.size(2), softplus);
  s.reverse = reverse;
  check_last(u, "u", time, {s.batch, s.L, s.E});
  check_last(delta, "delta", time, {s.batch, s.L, s.E});
  check_tensor(A, "A", state, {s.E, s.N});
  check_last(B, "B", time, {s.batch, s.L, s.G, s.N});
  check_last(C, "C", time, {s.batch, s.L, s.G, s.N});
  check_opt(D, "D", state, {s.E});
  check_opt(bias, "delta_bias", state, {s.E});
  const bool hasz = z.has_value() && z->defined();
  if (hasz) check_last(*z, "z", time, {s.batch, s.L, s.E});
  const bool given = out_buffer.has_value() && out_buffer->defined();
  TORCH_CHECK(given || !accumulate, "selective_scan_cpu: accumulating needs an `out` tensor");
  if (given) check_last(*out_buffer, "out", time, {s.batch, s.L, s.E});
  at::Tensor out = given ? *out_buffer : at::empty({s.batch, s.L, s.E}, u.options());
  const int64_t P = block_ranges(s, 3);
  const auto run = [&](auto time_tag, auto state_tag) {
    using In = decltype(time_tag);
    using S = decltype(state_tag);
    LastArgs<S, In> a{strided<const In>(u), strided<const In>(delta),
                      hasz ? strided<const In>(*z) : Strided<const In>{nullptr, 0, 0},
                      strided<const In>(B), strided<const In>(C), A.data_ptr<S>(), ptr_or_null<S>(D),
                      ptr_or_null<S>(bias), strided<In>(out), static_cast<S>(scale), accumulate};
    dispatch_n<S, RunFwdLast>(s.N, s, a, P);
  };
  if (time == at::kBFloat16) run(bf16(), float());
  else if (time == at::kFloat) run(float(), float());
  else run(double(), double());
  return out;
}

bool has_avx512() { return VM_SCAN_AVX512 != 0; }
// The fp32 path compiled in: "avx512", "avx2" or "generic" (the portable 16-lane template).
std::string isa() { return VM_SCAN_AVX512 ? "avx512" : VM_SCAN_AVX2 ? "avx2" : "generic"; }

}  // namespace videomap_scan
