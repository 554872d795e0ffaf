// pijax CPU kernels behind jax.ffi: row dot products ("matvec"; a prompt's tokens in register tiles, cpu_tiles.inc)
// and the predictor-gated sparse FFN for a few tokens, reading f32, f16, bf16 or int8 (per-row f32 scale) weights
// and computing in f32.
//
// Why a kernel: XLA:CPU runs f16/bf16 dot products ~12x slower than f32 and has no fused int8-dequantizing dot,
// and a sparse FFN in XLA has to copy the gathered rows before its products. Here every weight row is read once,
// converted in registers, and rows the predictor did not select are never touched. For ReLU-family FFNs a
// selected neuron whose gate (or, without a gate, up) product is <= 0 has an exactly-zero output, so its up and
// down_t rows are skipped too.
//
// Built by pijax/kernels/build.py with the system g++ (-O3 -march=native); AVX-512 code where the compiler
// targets it, else AVX2 + FMA, else plain loops (cpu_rows.inc). Threads: a small persistent pool (the caller plus n-1 workers that spin
// briefly, then sleep), so that a decode step's ~150 calls do not each pay a thread wake-up.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <sched.h>
#include <sys/mman.h>
#include <mutex>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

// PIJAX_ISA: 2 = AVX-512 (16 lanes), 1 = AVX2 + FMA + F16C (8 lanes), 0 = scalar loops.
#if defined(__AVX512F__)
#include <immintrin.h>
#define PIJAX_ISA 2
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define PIJAX_ISA 1
#else
#define PIJAX_ISA 0
#endif

namespace ffi = xla::ffi;

namespace {

#include "cpu_pool.inc"

#include "cpu_rows.inc"

#include "cpu_tiles.inc"

// ---------------------------------------------------------------- rows_dot: y[m, n] = scale[n] * <w[n], x[m]>

template <Fmt F>
void rows_dot_range(const float* x, int64_t m_tokens, int64_t d, const void* w, const float* scale, int64_t n,
                    int64_t r0, int64_t r1, float* y) {
  if (m_tokens > 1) {  // the same sums, each row read once for all tokens
    rows_dot_tiled<F>(x, m_tokens, d, w, scale, n, r0, r1, y);
    return;
  }
  constexpr int K = 4;
  for (int64_t m = 0; m < m_tokens; ++m) {
    const float* xm = x + m * d;
    float* ym = y + m * n;
    int64_t r = r0;
    for (; r + K <= r1; r += K) {
      const void* rows[K];
      const void* next[K];
      int n_next = 0;
      for (int k = 0; k < K; ++k) rows[k] = row_ptr<F>(w, r + k, d);
      for (int64_t q = r + 2 * K; q < std::min(r1, r + 3 * K); ++q) next[n_next++] = row_ptr<F>(w, q, d);
      dot_rows<F, K>(rows, xm, d, ym + r, next, n_next);
    }
    for (; r < r1; ++r) {
      const void* rows[1] = {row_ptr<F>(w, r, d)};
      dot_rows<F, 1>(rows, xm, d, ym + r);
    }
    if (scale != nullptr)
      for (int64_t q = r0; q < r1; ++q) ym[q] *= scale[q];
  }
}

Fmt fmt_of(ffi::DataType t, bool* ok) {
  *ok = true;
  switch (t) {
    case ffi::DataType::F32:
      return Fmt::kF32;
    case ffi::DataType::F16:
      return Fmt::kF16;
    case ffi::DataType::BF16:
      return Fmt::kBF16;
    case ffi::DataType::S8:
      return Fmt::kI8;
    default:
      *ok = false;
      return Fmt::kF32;
  }
}

template <typename Fn>
void dispatch_fmt(Fmt f, Fn&& fn) {
  switch (f) {
    case Fmt::kF32:
      fn(std::integral_constant<Fmt, Fmt::kF32>{});
      break;
    case Fmt::kF16:
      fn(std::integral_constant<Fmt, Fmt::kF16>{});
      break;
    case Fmt::kBF16:
      fn(std::integral_constant<Fmt, Fmt::kBF16>{});
      break;
    case Fmt::kI8:
      fn(std::integral_constant<Fmt, Fmt::kI8>{});
      break;
  }
}

ffi::Error RowsDotImpl(ffi::Buffer<ffi::F32> x, ffi::AnyBuffer w, ffi::Buffer<ffi::F32> scale,
                       ffi::ResultBuffer<ffi::F32> y) {
  auto wd = w.dimensions();
  auto xd = x.dimensions();
  if (wd.size() != 2 || xd.size() != 2 || xd[1] != wd[1])
    return ffi::Error::InvalidArgument("pijax_rows_dot: x must be [M, D] and w [N, D]");
  bool ok;
  Fmt f = fmt_of(w.element_type(), &ok);
  if (!ok) return ffi::Error::InvalidArgument("pijax_rows_dot: weights must be f32, f16, bf16 or int8");
  const int64_t m = xd[0], d = xd[1], n = wd[0];
  const bool scaled = f == Fmt::kI8;
  if (scaled && scale.element_count() != size_t(n))
    return ffi::Error::InvalidArgument("pijax_rows_dot: int8 weights need one scale per row");
  const float* xp = x.typed_data();
  const float* sp = scaled ? scale.typed_data() : nullptr;
  const void* wp = w.untyped_data();
  float* yp = y->typed_data();
  // Small products are not worth waking the pool for.
  const bool parallel = double(n) * double(d) * double(m) >= 65536.0;
  dispatch_fmt(f, [&](auto tag) {
    constexpr Fmt F = decltype(tag)::value;
    if (!parallel) {
      rows_dot_range<F>(xp, m, d, wp, sp, n, 0, n, yp);
      return;
    }
    // Chunks of whole 16-row blocks (parts never share a cache line of y), about 8 per thread.
    const int64_t blocks = (n + 15) / 16;
    const int64_t per = std::max<int64_t>(1, blocks / (8 * pool().size()));
    const int n_chunks = int((blocks + per - 1) / per);
    pool().run(n_chunks, [&](int c) {
      const int64_t r0 = std::min(n, c * per * 16), r1 = std::min(n, (c + 1) * per * 16);
      if (r0 < r1) rows_dot_range<F>(xp, m, d, wp, sp, n, r0, r1, yp);
    });
  });
  return ffi::Error::Success();
}

// y[m, d] = a[m, f] @ (scale * w)[f, d]: the dense FFN's down projection for a prompt's tokens, threads over
// column ranges (each computes its columns over every row in one fixed order: no partial sums to add up).
ffi::Error RowsTDotImpl(ffi::Buffer<ffi::F32> a, ffi::AnyBuffer w, ffi::Buffer<ffi::F32> scale,
                        ffi::ResultBuffer<ffi::F32> y) {
  auto wd = w.dimensions();
  auto ad = a.dimensions();
  if (wd.size() != 2 || ad.size() != 2 || ad[1] != wd[0])
    return ffi::Error::InvalidArgument("pijax_rows_tdot: a must be [M, F] and w [F, D]");
  bool ok;
  Fmt fm = fmt_of(w.element_type(), &ok);
  if (!ok) return ffi::Error::InvalidArgument("pijax_rows_tdot: weights must be f32, f16, bf16 or int8");
  const int64_t m = ad[0], f = ad[1], d = wd[1];
  const bool scaled = fm == Fmt::kI8;
  if (scaled && scale.element_count() != size_t(f))
    return ffi::Error::InvalidArgument("pijax_rows_tdot: int8 weights need one scale per row");
  const float* ap = a.typed_data();
  const float* sp = scaled ? scale.typed_data() : nullptr;
  const void* wp = w.untyped_data();
  float* yp = y->typed_data();
  // Column ranges of whole 64-byte lines of y, about 4 per thread.
  const int64_t lines = (d + 15) / 16;
  const int64_t per = std::max<int64_t>(1, lines / (4 * pool().size()));
  const int n_chunks = int((lines + per - 1) / per);
  dispatch_fmt(fm, [&](auto tag) {
    constexpr Fmt F = decltype(tag)::value;
    pool().run(n_chunks, [&](int c) {
      const int64_t c0 = std::min(d, c * per * 16), c1 = std::min(d, (c + 1) * per * 16);
      if (c0 < c1) rows_tdot_cols<F>(ap, m, f, wp, sp, d, c0, c1, yp);
    });
  });
  return ffi::Error::Success();
}

// ---------------------------------------------------------------- sparse FFN

enum Act : int32_t { kSilu = 0, kRelu = 1, kDRelu = 2 };

// Row chunks of one sparse FFN call (each with its own accumulator): enough for two or more threads to balance
// when one of them starts late, few enough that the accumulators stay cheap to add up.
constexpr int64_t kFfnChunks = 8;

inline float silu(float v) { return v / (1.0f + std::exp(-v)); }

struct FfnArgs {
  const float* x;  // [D]
  int64_t d;
  const void *up, *gate, *down;  // [F, D] each; gate may be null
  const float *s_up, *s_gate, *s_down;  // per-row scales (int8) or null
  int32_t act;
  bool skip;  // skip rows whose output is exactly zero (ReLU kinds); false: read every selected row in full
  const float* g = nullptr;  // this token's gate products of every row, precomputed (cpu_cats.inc); null: read gate
};

// The "first" product decides for ReLU kinds whether a row contributes at all: gate, or up without a gate.
// Without zero-skipping (SiLU, or skip off) the gate and up rows of a neuron are read in one pass; the down_t
// rows are added K at a time (one load and store of the accumulator per K rows, K streams in flight). Every
// row's products are summed in the same order either way, so the result does not depend on these choices.
template <Fmt F>
void ffn_rows(const FfnArgs& a, const int32_t* rows, int64_t n_rows, float* acc) {
  constexpr int B = 32, K = 4;
  const bool has_gate = a.gate != nullptr;
  const void* first = has_gate ? a.gate : a.up;
  const float* s_first = has_gate ? a.s_gate : a.s_up;
  const bool skip_first = a.skip && a.act != kSilu;
  const bool fused = has_gate && !skip_first && a.g == nullptr;
  float v1[B], v2[B], coef[B];
  int32_t keep[B], live[B];
  for (int64_t b0 = 0; b0 < n_rows; b0 += B) {
    const int64_t nb = std::min<int64_t>(B, n_rows - b0);
    const int32_t* rb = rows + b0;
    int64_t j = 0;
    if (fused) {
      for (; j + K <= nb; j += K) {
        const void* p[2 * K];
        const void* nx[2 * K];
        float o[2 * K];
        int n_next = 0;
        for (int k = 0; k < K; ++k) {
          p[k] = row_ptr<F>(a.gate, rb[j + k], a.d);
          p[K + k] = row_ptr<F>(a.up, rb[j + k], a.d);
        }
        for (int64_t k = b0 + j + 2 * K; k < std::min(n_rows, b0 + j + 3 * K); ++k) {
          nx[n_next++] = row_ptr<F>(a.gate, rows[k], a.d);
          nx[n_next++] = row_ptr<F>(a.up, rows[k], a.d);
        }
        dot_rows<F, 2 * K>(p, a.x, a.d, o, nx, n_next);
        for (int k = 0; k < K; ++k) {
          v1[j + k] = o[k];
          v2[j + k] = o[K + k];
        }
      }
      for (; j < nb; ++j) {
        const void* p[2] = {row_ptr<F>(a.gate, rb[j], a.d), row_ptr<F>(a.up, rb[j], a.d)};
        float o[2];
        dot_rows<F, 2>(p, a.x, a.d, o);
        v1[j] = o[0];
        v2[j] = o[1];
      }
    } else if (a.g != nullptr) {
      for (; j < nb; ++j) v1[j] = a.g[rb[j]];
    } else {
      for (; j + K <= nb; j += K) {
        const void* p[K];
        const void* nx[K];
        const int n_next = row_group<F, K>(first, rows, b0 + j, n_rows, 2 * K, a.d, p, nx);
        dot_rows<F, K>(p, a.x, a.d, v1 + j, nx, n_next);
      }
      for (; j < nb; ++j) {
        const void* p[1] = {row_ptr<F>(first, rb[j], a.d)};
        dot_rows<F, 1>(p, a.x, a.d, v1 + j);
      }
    }
    int nk = 0;  // compaction keeps v2 aligned when fused: nothing is dropped then
    for (int64_t q = 0; q < nb; ++q) {
      if (s_first && a.g == nullptr) v1[q] *= s_first[rb[q]];
      if (!skip_first || v1[q] > 0.0f) {
        v1[nk] = v1[q];
        keep[nk++] = rb[q];
      }
    }
    if (has_gate && !fused) {  // the up products of the rows still alive
      for (int k = 0; k < std::min(nk, K); ++k) prefetch_head<F>(a.up, keep[k], a.d);
      int q = 0;
      for (; q + K <= nk; q += K) {
        const void* p[K];
        const void* nx[K];
        const int n_next = row_group<F, K>(a.up, keep, q, nk, K, a.d, p, nx);
        dot_rows<F, K>(p, a.x, a.d, v2 + q, nx, n_next);
      }
      for (; q < nk; ++q) {
        const void* p[1] = {row_ptr<F>(a.up, keep[q], a.d)};
        dot_rows<F, 1>(p, a.x, a.d, v2 + q);
      }
    }
    int nl = 0;  // the rows with a nonzero output (all of them without skipping), and their coefficients
    for (int q = 0; q < nk; ++q) {
      const int32_t r = keep[q];
      float out;
      if (has_gate) {
        float u = a.s_up ? v2[q] * a.s_up[r] : v2[q];
        float g = v1[q];
        out = a.act == kSilu ? silu(g) * u : std::max(g, 0.0f) * (a.act == kRelu ? u : std::max(u, 0.0f));
      } else {
        out = a.act == kSilu ? silu(v1[q]) : std::max(v1[q], 0.0f);
      }
      if (out == 0.0f && a.skip) continue;
      coef[nl] = a.s_down ? out * a.s_down[r] : out;
      live[nl++] = r;
    }
    if (nl > 0) prefetch_head<F>(a.down, live[0], a.d);
    int q = 0;
    for (; q + K <= nl; q += K) {
      const void* p[K];
      const void* nx[K];
      const int n_next = row_group<F, K>(a.down, live, q, nl, K, a.d, p, nx);
      axpy_rows<F, K>(acc, coef + q, p, a.d, nx, n_next);
    }
    for (; q < nl; ++q) {
      const void* p[1] = {row_ptr<F>(a.down, live[q], a.d)};
      axpy_rows<F, 1>(acc, coef + q, p, a.d, nullptr, 0);
    }
  }
}

// The selected neurons of one token: logit >= thr, at most `cap` of them (the top-scoring, ties to the lower
// index, as jax.lax.top_k), ascending. dense: every neuron.
int64_t select_rows(const float* logits, int64_t f, float thr, int64_t cap, bool dense, std::vector<int32_t>* out) {
  out->clear();
  if (dense) {
    out->resize(f);
    for (int64_t i = 0; i < f; ++i) (*out)[i] = int32_t(i);
    return f;
  }
  for (int64_t i = 0; i < f; ++i)
    if (logits[i] >= thr) out->push_back(int32_t(i));
  if (int64_t(out->size()) > cap) {
    auto better = [logits](int32_t p, int32_t q) { return logits[p] > logits[q] || (logits[p] == logits[q] && p < q); };
    std::nth_element(out->begin(), out->begin() + cap, out->end(), better);
    out->resize(cap);
    std::sort(out->begin(), out->end());
  }
  return int64_t(out->size());
}

ffi::Error SparseFfnImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> logits, ffi::AnyBuffer up,
                         ffi::AnyBuffer gate, ffi::AnyBuffer down, ffi::Buffer<ffi::F32> s_up,
                         ffi::Buffer<ffi::F32> s_gate, ffi::Buffer<ffi::F32> s_down, ffi::ResultBuffer<ffi::F32> y,
                         ffi::ResultBuffer<ffi::S32> n_sel, float threshold, int64_t capacity, int32_t act,
                         int32_t has_gate, int32_t dense, int32_t skip) {
  auto xd = x.dimensions();
  auto wd = up.dimensions();
  if (xd.size() != 2 || wd.size() != 2 || wd[1] != xd[1])
    return ffi::Error::InvalidArgument("pijax_sparse_ffn: x must be [M, D] and the weights [F, D]");
  const int64_t m = xd[0], d = xd[1], f = wd[0];
  if (!dense && (logits.dimensions().size() != 2 || logits.dimensions()[0] != m || logits.dimensions()[1] != f))
    return ffi::Error::InvalidArgument("pijax_sparse_ffn: logits must be [M, F]");
  if (up.element_type() != down.element_type() || (has_gate && gate.element_type() != up.element_type()))
    return ffi::Error::InvalidArgument("pijax_sparse_ffn: up, gate and down_t must share one dtype");
  bool ok;
  Fmt fm = fmt_of(up.element_type(), &ok);
  if (!ok) return ffi::Error::InvalidArgument("pijax_sparse_ffn: weights must be f32, f16, bf16 or int8");
  const bool scaled = fm == Fmt::kI8;
  if (scaled && (s_up.element_count() != size_t(f) || s_down.element_count() != size_t(f) ||
                 (has_gate && s_gate.element_count() != size_t(f))))
    return ffi::Error::InvalidArgument("pijax_sparse_ffn: int8 weights need one scale per row");
  FfnArgs a{nullptr, d, up.untyped_data(), has_gate ? gate.untyped_data() : nullptr, down.untyped_data(),
            scaled ? s_up.typed_data() : nullptr, scaled && has_gate ? s_gate.typed_data() : nullptr,
            scaled ? s_down.typed_data() : nullptr, act, skip != 0};
  Pool& p = pool();
  static thread_local std::vector<int32_t> sel;
  static thread_local std::vector<float> parts;
  float* yp = y->typed_data();
  int32_t* np = n_sel->typed_data();
  for (int64_t t = 0; t < m; ++t) {
    a.x = x.typed_data() + t * d;
    const int64_t k = select_rows(dense ? nullptr : logits.typed_data() + t * f, f, threshold, capacity, dense != 0, &sel);
    np[t] = int32_t(k);
    // A fixed number of chunks, each summing its rows into its own accumulator, added up in chunk order: the
    // result does not depend on which thread ran which chunk.
    const int n_chunks = k * d < 32768 ? 1 : int(std::min<int64_t>(kFfnChunks, (k + 15) / 16));
    parts.assign(size_t(n_chunks) * size_t(d), 0.0f);
    const int32_t* rows = sel.data();
    float* pp = parts.data();
    dispatch_fmt(fm, [&](auto tag) {
      constexpr Fmt F = decltype(tag)::value;
      p.run(n_chunks, [&](int c) {
        const int64_t r0 = k * c / n_chunks, r1 = k * (c + 1) / n_chunks;
        if (r0 < r1) ffn_rows<F>(a, rows + r0, r1 - r0, pp + int64_t(c) * d);
      });
    });
    float* yt = yp + t * d;
    std::copy(pp, pp + d, yt);
    for (int c = 1; c < n_chunks; ++c)
      for (int64_t i = 0; i < d; ++i) yt[i] += pp[int64_t(c) * d + i];
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(PijaxRowsDot, RowsDotImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(PijaxRowsTDot, RowsTDotImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(PijaxSparseFfn, SparseFfnImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Attr<float>("threshold")
                                  .Attr<int64_t>("capacity")
                                  .Attr<int32_t>("act")
                                  .Attr<int32_t>("has_gate")
                                  .Attr<int32_t>("dense")
                                  .Attr<int32_t>("skip"));

#include "cpu_quant.inc"

extern "C" {
// Threads the kernels use (the caller included); returns the count in effect.
int pijax_set_threads(int n) {
  if (n >= 1 && n != pool().size()) pool().resize(n);
  return pool().size();
}
int pijax_isa() { return PIJAX_ISA; }

// Bytes at the head of each gathered row that are prefetched one row group ahead (0: none).
int64_t pijax_set_prefetch(int64_t n) {
  if (n >= 0) g_prefetch_bytes = n;
  return g_prefetch_bytes;
}

// Back [p, p + n) with transparent huge pages (2 MiB): a sparse step reads rows scattered over GBs of weights, and
// with 4 KiB pages nearly every row start is a TLB miss. MADV_HUGEPAGE marks the range, MADV_COLLAPSE (Linux 6.1+)
// rebuilds what is already resident. Returns 0 when both succeeded, 1 when only the first did, -1 otherwise.
int pijax_hugepages(void* p, size_t n) {
  const uintptr_t huge = uintptr_t(2) << 20;
  uintptr_t lo = (reinterpret_cast<uintptr_t>(p) + huge - 1) & ~(huge - 1);
  uintptr_t hi = (reinterpret_cast<uintptr_t>(p) + n) & ~(huge - 1);
  if (hi <= lo) return -1;
  if (madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE) != 0) return -1;
#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif
  return madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_COLLAPSE) == 0 ? 0 : 1;
}
}

#include "cpu_bandwidth.inc"

#include "cpu_fused.inc"

#include "cpu_attention.inc"

#include "cpu_cats.inc"
