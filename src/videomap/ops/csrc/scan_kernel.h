// The scan template of the CPU selective scan: per-thread scratch, the tiles and prefetching, the task
// runner, and Scan<V, NT> with its chunked forward and checkpointed backward. See selective_scan_cpu.cpp
// for the design.
#pragma once

#include "scan_simd.h"

namespace {

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

// A channels-last operand: element (batch b, position t, channel c) at p[b * sb + t * sl + c].
template <typename T>
struct Strided {
  T* p;
  int64_t sb, sl;
  T* at(int64_t b, int64_t t) const { return p + b * sb + t * sl; }
};

// The channels-last forward (inference): u, delta, z, out (B, L, E) and B, C (B, L, G, N) read and written in
// place, no states or checkpoints kept.
template <typename S, typename In = S>
struct LastArgs {
  Strided<const In> u, delta, z, B, C;  // z.p may be null
  const S *A, *D, *bias;
  Strided<In> out;
  S scale;          // out = scale * y, ...
  bool accumulate;  // ... or out += scale * y
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
  // GCC 12's mod/ref analysis deletes __builtin_prefetch calls in this position; the asm survives. Into L1
  // (t0), not only L2: the tile loads of the next block then wait less (fwd 4-10% faster on an Intel Xeon).
  asm volatile("prefetcht0 %0" : : "m"(*static_cast<const char*>(q)));
#else
  __builtin_prefetch(q, 0, 3);
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

  // The rows the next unit of work reads, for prefetch_step: the next block of this chunk, or, after the
  // task's last block, its first block of the next chunk in walking order (`step` +1: the forward's
  // ascending chunks; -1: the backward's descending ones), whose B/C tiles are then loaded too. `dout` is
  // the backward's incoming gradient (nullptr in the forward). Returns the number of row sets, at most 6.
  template <typename In>
  static int next_rows(const Shape& s, const Task& tk, int64_t i, int64_t t0, int step, const In* u,
                       const In* delta, const In* z, const In* dout, const In* Bsrc, const In* Csrc,
                       Rows<In>* next) {
    const bool last_blk = i + 1 == tk.nb;
    const int64_t ni = last_blk ? 0 : i + 1, nt0 = last_blk ? t0 + step * TCH : t0;
    if (nt0 < 0 || nt0 >= s.L) return 0;
    const int64_t nc0 = chunk_start(s, nt0, std::min<int64_t>(TCH, s.L - nt0));
    const int64_t nrow0 = (tk.b * s.E + first_channel(s, tk, ni)) * s.L + nc0;
    const int nnl = lanes(s, tk, ni);
    int nsets = 0;
    next[nsets++] = {u + nrow0, s.L, nnl};
    next[nsets++] = {delta + nrow0, s.L, nnl};
    if (z) next[nsets++] = {z + nrow0, s.L, nnl};
    if (dout) next[nsets++] = {dout + nrow0, s.L, nnl};
    if (last_blk) {
      next[nsets++] = {Bsrc + nc0, s.L, static_cast<int>(std::min<int64_t>(W, s.N))};
      next[nsets++] = {Csrc + nc0, s.L, static_cast<int>(std::min<int64_t>(W, s.N))};
    }
    return nsets;
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

  // The forwards' per-task set-up: each block's constants and starting state (init, else 0) into the arena.
  static void start_blocks(const Shape& s, const Task& tk, const S* A, const S* D, const S* bias, const S* init,
                           S* Acs, S* hst, S* Ds, S* biass) {
    for (int64_t i = 0; i < tk.nb; ++i) {
      const int64_t e0 = first_channel(s, tk, i);
      const int nl = lanes(s, tk, i);
      block_consts(s, A, D, bias, e0, nl, nullptr, Acs + i * VS, Ds + i * W, biass + i * W);
      if (init) load_rows(init + (tk.b * s.E + e0) * s.N, s, nl, hst + i * VS);
      else for (int n = 0; n < VS; ++n) hst[i * VS + n] = S(0);
    }
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
        start_blocks(s, tk, p.A, p.D, p.bias, p.init, Acs, hst, Ds, biass);
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
            Rows<In> next[6];
            const int nsets = next_rows<In>(s, tk, i, t0, +1, p.u, p.delta, p.z, nullptr, Bsrc, Csrc, next);

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

  // Channels-last forward: step t of a 16-channel block is one (masked) vector load of 16 consecutive
  // channels of position t, so nothing is transposed. Per block and chunk, a first pass over the chunk's
  // steps turns delta into delta' (bias, softplus) and z into the gate silu(z) in small buffers: those
  // steps are independent, so their long latency chains overlap, where inside the recurrence they would
  // stall it. B and C are copied once per chunk into zero-padded (T, NT) tiles shared by the task's blocks.
  // The arithmetic is `forward`'s, in the same order, so the outputs are the same bits.
  template <typename In>
  static void forward_last(const Shape& s, const LastArgs<S, In>& p, int64_t P) {
    using IO = LaneIO<V>;
    const int64_t maxnb = (s.nblk + P - 1) / P;
    const auto position = [&](int64_t t) { return s.reverse ? s.L - 1 - t : t; };
    run_tasks(s.batch * s.G * P, [&](const auto& take, int64_t ntask) {
      Arena<S> arena(3 * TCH * W + 2 * TCH * NT + maxnb * (2 * VS + 2 * W) + 16 * 8);
      S* ut = arena.take(TCH * W);
      S* dtt = arena.take(TCH * W);
      S* gt = arena.take(TCH * W);
      S* Bt = arena.take(TCH * NT);
      S* Ct = arena.take(TCH * NT);
      S* Acs = arena.take(maxnb * VS);
      S* hst = arena.take(maxnb * VS);
      S* Ds = arena.take(maxnb * W);
      S* biass = arena.take(maxnb * W);
      for (int64_t task = take(); task < ntask; task = take()) {
        const Task tk = task_of(s, P, task);
        start_blocks(s, tk, p.A, p.D, p.bias, nullptr, Acs, hst, Ds, biass);
        const V scale = V::set1(p.scale);
        const bool scaled = p.scale != S(1);
        for (int64_t k = 0; k < s.K; ++k) {
          const int64_t t0 = k * TCH;
          const int T = static_cast<int>(std::min<int64_t>(TCH, s.L - t0));
          for (int t = 0; t < T; ++t) {
            const int64_t pos = position(t0 + t);
            const In* Bp = p.B.at(tk.b, pos) + tk.g * s.N;
            const In* Cp = p.C.at(tk.b, pos) + tk.g * s.N;
            for (int n = 0; n < NT; ++n) {
              Bt[t * NT + n] = n < s.N ? static_cast<S>(Bp[n]) : S(0);
              Ct[t * NT + n] = n < s.N ? static_cast<S>(Cp[n]) : S(0);
            }
          }
          for (int64_t i = 0; i < tk.nb; ++i) {
            const int64_t e0 = first_channel(s, tk, i);
            const int nl = lanes(s, tk, i);
            for (int t = 0; t < T; ++t) {
              const int64_t pos = position(t0 + t);
              IO::load(p.delta.at(tk.b, pos) + e0, nl).store(dtt + t * W);
              IO::load(p.u.at(tk.b, pos) + e0, nl).store(ut + t * W);
              if (p.z.p) {
                const V zv = IO::load(p.z.at(tk.b, pos) + e0, nl);
                (zv * sigmoid(zv)).store(gt + t * W);
              }
            }
            prep_delta(dtt, T, V::load(biass + i * W), s.softplus, nullptr);  // as `forward` does
            // the next unit of work (the next block of this chunk, or the first of the next chunk), whose
            // lines are prefetched one per operand and step while this one computes
            const bool last_blk = i + 1 == tk.nb;
            const int64_t ne0 = first_channel(s, tk, last_blk ? 0 : i + 1), nt0 = last_blk ? t0 + TCH : t0;
            const int nT = static_cast<int>(std::max<int64_t>(0, std::min<int64_t>(TCH, s.L - nt0)));
            V h[NT], Ac[NT];
#pragma GCC unroll 16
            for (int n = 0; n < NT; ++n) {
              h[n] = V::load(hst + i * VS + n * W);
              Ac[n] = V::load(Acs + i * VS + n * W);
            }
            const V Dv = V::load(Ds + i * W);
            for (int t = 0; t < T; ++t) {
              if (t < nT) {
                const int64_t npos = position(nt0 + t);
                prefetch_line(p.u.at(tk.b, npos) + ne0);
                prefetch_line(p.delta.at(tk.b, npos) + ne0);
                if (p.z.p) prefetch_line(p.z.at(tk.b, npos) + ne0);
                if (p.accumulate) prefetch_line(p.out.at(tk.b, npos) + ne0);
              }
              const V dt = V::load(dtt + t * W), uv = V::load(ut + t * W);
              step<false, false>(h, Ac, dt, dt * uv, Bt + t * NT, nullptr, nullptr, dt, nullptr);
              V y = readout(h, Ct + t * NT);
              if (p.D) y = vfma(uv, Dv, y);
              if (p.z.p) y = y * V::load(gt + t * W);
              if (scaled) y = y * scale;
              In* o = p.out.at(tk.b, position(t0 + t)) + e0;
              if (p.accumulate) y = y + IO::load(o, nl);
              IO::store(o, nl, y);
            }
#pragma GCC unroll 16
            for (int n = 0; n < NT; ++n) h[n].store(hst + i * VS + n * W);
          }
        }
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
            const int nsets = next_rows<S>(s, tk, i, t0, -1, p.u, p.delta, p.z, p.dout, Bsrc, Csrc, next);

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

}  // namespace
