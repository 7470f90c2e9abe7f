// Fused CPU selective scan (Mamba's S6) for vmamba: forward and backward, plain and cross-scan.
//
// Layout of the work: one work item = (batch, group, block of W channels); the W channels of a
// block are the W lanes of a SIMD vector (W = 16 with AVX-512, 8 with AVX2, 4 otherwise), so the
// state h[n] of every lane lives in registers (N vectors) and the scan needs no horizontal
// reduction in the forward: B_t[n] and C_t[n] are shared by the channels of a group and are
// broadcast. Time is cut into chunks of T steps; per chunk the inputs are gathered into small
// transposed tiles (time x lane, fp32), which is also where the dtype conversion, the step-size
// bias/softplus and (cross-scan variant) the scan order of the 2D map happen.
//
// Backward: the forward saves the state entering every chunk ((L / T) * N floats per channel);
// the backward walks the chunks in reverse, recomputes the T states of a chunk from its saved
// entering state into a tile, then runs the adjoint recurrence backwards through the chunk.
// Per-channel parameter gradients (dA, dD, d delta_bias) and per-group ones (dB, dC, summed over
// the channels of a group) are written per item into separate partial buffers and summed by the
// caller in a fixed order, so results are deterministic whatever the thread count.
//
// Arithmetic is fp32 throughout; inputs may be fp32, bf16 or fp16.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_strided.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__AVX__)
#include <immintrin.h>
#endif
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "vec.h"

namespace {

using vmamba_cpu::W;
using vmamba_cpu::vf;
using vmamba_cpu::vi;
using vmamba_cpu::vset;
using vmamba_cpu::lane_sum;
using vmamba_cpu::loadu;

#ifndef VMAMBA_MAXN
#error "VMAMBA_MAXN (the largest d_state) is set by the build in vmamba/ops/scan_cpu.py (MAX_STATE)"
#endif
constexpr int T = 32;      // time steps per chunk (= interval of the saved states)
constexpr int MAXN = VMAMBA_MAXN;  // largest state size (of the generic, non-specialised path)
constexpr int SB = 4;      // channel blocks per backward super-block, unless the problem has few (see sb)
constexpr int64_t FEW_ITEMS = 4;  // fewer super-blocks of SB than this (batch * G * ceil(blocks / SB)): sb = 1

#if defined(__AVX512F__)
static inline vf vmax(vf a, vf b) { return (vf)_mm512_max_ps((__m512)a, (__m512)b); }
static inline vf vmin(vf a, vf b) { return (vf)_mm512_min_ps((__m512)a, (__m512)b); }
#else
// A NaN in a is kept: the clamps of vexp2 and softplus's max(x, 0) must not turn a NaN step size
// into a number (the AVX-512 exp has no clamps, so its NaN reaches the sum regardless).
static inline vf vmax(vf a, vf b) { return a < b ? b : a; }  // one compare: false for a NaN a
static inline vf vmin(vf a, vf b) { return a > b ? b : a; }
#endif
static inline float* lanes(vf& v) { return reinterpret_cast<float*>(&v); }
static inline const float* lanes(const vf& v) { return reinterpret_cast<const float*>(&v); }

constexpr float LOG2E = 1.44269504088896341f;
constexpr float LN2 = 0.693147180559945309f;

// 2^t: t = n + r with n = round(t), r in [-1/2, 1/2]; 2^r by a degree-5 minimax polynomial
// (relative error 1.4e-7). With AVX-512, vscalefps applies 2^n and handles overflow/underflow
// (to inf / 0) without clamping.
static inline vf vexp2(vf t) {
#if defined(__AVX512F__)
  const __m512 x = (__m512)t;
  const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 r = _mm512_sub_ps(x, n);
  __m512 p = _mm512_set1_ps(1.3276472455e-3f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(9.6755418926e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.5507130921e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(2.4022120237e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(6.9314694405e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0000001192e+00f));
  return (vf)_mm512_scalef_ps(p, n);
#else
  t = vmin(vmax(t, vset(-126.0f)), vset(127.0f));
  const vf n = (t + 12582912.0f) - 12582912.0f;  // round to nearest
  const vf r = t - n;
  vf p = vset(1.3276472455e-3f);
  p = p * r + 9.6755418926e-3f;
  p = p * r + 5.5507130921e-2f;
  p = p * r + 2.4022120237e-1f;
  p = p * r + 6.9314694405e-1f;
  p = p * r + 1.0000001192e+00f;
  const vi ni = __builtin_convertvector(n, vi);
  return p * (vf)((ni + 127) << 23);
#endif
}


// The decay 2^(dt * a) of the recurrence, the kernel's innermost operation (once per state element
// and step). With AVX-512 it takes 8 instructions instead of vexp2's 10 uops: a magic-number add
// rounds x = dt * a to a multiple of 1/32 (k + j/32, no vrndscaleps), the 32-entry table 2^(j/32)
// is one vpermt2ps over two registers indexed by the low bits of that sum, the remainder
// r = x - (k + j/32) (|r| <= 1/64, from one FMA so the product is not rounded first) needs only a
// degree-2 polynomial, and vscalefps applies 2^k (exact 0 / inf on under/overflow). Relative error
// <= 2.2e-7 (minimax polynomial 5.3e-8 plus the roundings of the table and the products).
#if defined(__AVX512F__)
struct Exp2Table {
  __m512 lo, hi;
  Exp2Table() {
    alignas(64) float t[32];
    for (int j = 0; j < 32; ++j) t[j] = static_cast<float>(std::exp2(j / 32.0));
    lo = _mm512_load_ps(t);
    hi = _mm512_load_ps(t + 16);
  }
};

const Exp2Table kExp2Table;

template <bool InRange = false>
static inline vf vexp2_mul(vf dt, vf a) {
  const __m512 magic = _mm512_set1_ps(393216.0f);  // 1.5 * 2^18: its ulp is 1/32
  const __m512 d = (__m512)dt, m = (__m512)a;
  const __m512 s = _mm512_fmadd_ps(d, m, magic);
  const __m512 k = _mm512_sub_ps(s, magic);
  const __m512 r = _mm512_fmsub_ps(d, m, k);
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(0.2402265f), r, _mm512_set1_ps(0.69315733f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  const __m512 tj = _mm512_permutex2var_ps(kExp2Table.lo, _mm512_castps_si512(s), kExp2Table.hi);
  return (vf)_mm512_scalef_ps(_mm512_mul_ps(p, tj), k);
}
#elif defined(__AVX2__) && defined(__FMA__)
// AVX2 + FMA: the same scheme with an 8-entry table (one vpermps reads it, indexed by the low 3 bits
// of the magic-number sum), so x = dt * a is rounded to a multiple of 1/8, |r| <= 1/16 and a
// degree-3 polynomial (relative error 2.7e-8) is enough. Without vscalefps, 2^k goes into the
// exponent bits by an integer add: the sum s = magic + x holds 8k + j in its low mantissa bits, so
// (bits(s) << 20) = (k << 23) + (j << 20), and the table entries are stored less j << 20. For that
// add not to wrap, s is clamped to k in [-126, 127] first (x < -126: the clamped r makes the result
// subnormal, flushed to 0 as the kernel runs with FTZ; x >= 128: the polynomial overflows to inf).
// NaN propagates (the constant is the first operand of max/min). 13 instructions against the
// generic path's 15, and a shorter dependency chain. Relative error <= 1.5e-7.
struct Exp2Table {
  __m256i t;
  Exp2Table() {
    alignas(32) int32_t v[8];
    for (int j = 0; j < 8; ++j) {
      const float e = static_cast<float>(std::exp2(j / 8.0));
      std::memcpy(&v[j], &e, 4);
      v[j] -= j << 20;
    }
    t = _mm256_load_si256(reinterpret_cast<const __m256i*>(v));
  }
};

const Exp2Table kExp2Table;

// InRange: the caller knows |dt * a| <= 126 (see in_exp_range), so the three clamps, which would
// change nothing, are left out (10 instructions; the result is the same to the bit).
template <bool InRange = false>
static inline vf vexp2_mul(vf dt, vf a) {
  const __m256 magic = _mm256_set1_ps(1572864.0f);  // 1.5 * 2^20: its ulp is 1/8
  const __m256 d = (__m256)dt, m = (__m256)a;
  __m256 s = _mm256_fmadd_ps(d, m, magic);
  if (!InRange)
    s = _mm256_min_ps(_mm256_set1_ps(1572864.0f + 127.0f), _mm256_max_ps(_mm256_set1_ps(1572864.0f - 126.0f), s));
  const __m256 k = _mm256_sub_ps(s, magic);
  __m256 r = _mm256_fmsub_ps(d, m, k);
  if (!InRange) r = _mm256_max_ps(_mm256_set1_ps(-0.0625f), r);
  __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(0.0554962158203125f), r, _mm256_set1_ps(0.2402576208114624f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.6931472420692444f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i sb = _mm256_castps_si256(s);
  const __m256i tj = _mm256_permutevar8x32_epi32(kExp2Table.t, sb);
  const __m256 scale = _mm256_castsi256_ps(_mm256_add_epi32(tj, _mm256_slli_epi32(sb, 20)));
  return (vf)_mm256_mul_ps(p, scale);
}
#else
template <bool InRange = false>
static inline vf vexp2_mul(vf dt, vf a) { return vexp2(dt * a); }
#endif

// Only the AVX2 decay exp has a cheaper in-range form; elsewhere the check would buy nothing.
#if defined(__AVX2__) && defined(__FMA__) && !defined(__AVX512F__)
constexpr bool kRangedExp = true;
#else
constexpr bool kRangedExp = false;
#endif

// The fast decay path vexp2_mul<true> needs |dt * a| <= 126 in every lane. exp_limit gives per lane
// 126 / max_n |a_n| (inf for padding lanes, NaN for a NaN a), in_exp_range checks a chunk's step
// sizes against it: false if any |dt| exceeds it or is NaN, and that chunk takes the clamped path.
static inline vf exp_limit(const vf* Av, int N) {
  vf amax = vf{};
  for (int n = 0; n < N; ++n) {
    const vf a = Av[n] < 0.0f ? -Av[n] : Av[n];
    amax = (a > amax || a != a) ? a : amax;  // keeps a NaN
  }
  return 126.0f / amax;
}

static inline bool in_exp_range(const vf* dt, int tc, vf lim) {
  vi ok = vi{} - 1;
  for (int j = 0; j < tc; ++j) ok &= (dt[j] <= lim) & (-dt[j] <= lim);
  for (int w = 0; w < W; ++w)
    if (ok[w] != -1) return false;
  return true;
}

// Runs f(std::true_type) (vexp2_mul<true> allowed) when the chunk's step sizes pass the check,
// else f(std::false_type); builds without the ranged exp always take the latter.
template <typename F>
static inline void with_exp_range(const vf* dt, int tc, vf lim, F&& f) {
  if (kRangedExp && in_exp_range(dt, tc, lim))
    f(std::true_type{});
  else
    f(std::false_type{});
}

static inline vf vexp(vf x) {
#if defined(__AVX2__) && defined(__FMA__) && !defined(__AVX512F__)
  return vexp2_mul(x, vset(LOG2E));
#else
  return vexp2(x * LOG2E);
#endif
}

// log1p(e) for e in [0, 1] as e * q(e), q of degree 8 (a near-minimax fit of log1p(e) / e on [0, 1],
// relative error 3e-8 in exact arithmetic, 2.2e-7 evaluated in fp32). One FMA chain: no range
// reduction, no division, and the relative accuracy holds down to e -> 0 (softplus of very
// negative x, where the result is e itself).
static inline vf vlog1p_01(vf e) {
  vf q = vset(5.232738331e-03f);
  q = q * e - 2.950541489e-02f;
  q = q * e + 7.822623849e-02f;
  q = q * e - 1.366327107e-01f;
  q = q * e + 1.910601854e-01f;
  q = q * e - 2.484298497e-01f;
  q = q * e + 3.331909776e-01f;
  q = q * e - 4.999949336e-01f;
  q = q * e + 9.999999404e-01f;
  return q * e;
}

static inline vf vneg_abs(vf x) { return x < 0.0f ? x : -x; }

// 1 / v to 2^-14 (AVX-512) or 1.5 * 2^-12 (AVX) relative error; exact division otherwise.
static inline vf vrcp_approx(vf v) {
#if defined(__AVX512F__)
  return (vf)_mm512_rcp14_ps((__m512)v);
#elif defined(__AVX__)
  return (vf)_mm256_rcp_ps((__m256)v);
#else
  return 1.0f / v;
#endif
}

// softplus(x) = max(x, 0) + log1p(exp(-|x|)) (relative error <= 4e-7).
static inline vf vsoftplus(vf x) {
  const vf e = vexp2_mul(vneg_abs(x), vset(LOG2E));
  return vmax(x, vset(0.0f)) + vlog1p_01(e);
}

// 1 / v: the approximate reciprocal refined by one Newton step (relative error ~1e-8 from rcp14,
// ~1.4e-7 from the 12-bit AVX estimate; no division).
static inline vf vrcp(vf v) {
  const vf r = vrcp_approx(v);
#if defined(__AVX512F__) || defined(__AVX__)
  return r * (2.0f - v * r);
#else
  return r;
#endif
}

static inline vf vsigmoid(vf x) {
  vf e = vexp(vneg_abs(x));
  vf s = vrcp(1.0f + e);
  return x >= 0.0f ? s : e * s;
}

// softplus(x) and its derivative sigmoid(x) (the backward needs both), sharing exp(-|x|).
static inline vf vsoftplus_sigmoid(vf x, vf& sig) {
  const vf e = vexp2_mul(vneg_abs(x), vset(LOG2E));
  const vf r = vrcp(1.0f + e);
  sig = x >= 0.0f ? r : e * r;
  return vmax(x, vset(0.0f)) + vlog1p_01(e);
}

template <typename S> static inline float to_f(S v) { return static_cast<float>(v); }

// Where scan step t of direction k reads the (row-major) map of H x Wd pixels.
// mode 0: plain sequence; 1: cross2d; 2: unidi; 3: bidi.
static inline int64_t pixel(int mode, int k, int64_t t, int64_t L, int64_t H, int64_t Wd) {
  switch (mode) {
    case 1:
      if (k >= 2) t = L - 1 - t;
      if (k & 1) return (t % H) * Wd + t / H;
      return t;
    case 3:
      return k >= 2 ? L - 1 - t : t;
    default:
      return t;
  }
}

struct Problem {
  int64_t batch, K, Dch, G, L, N, H, Wd, nblk, nsb, nchunks;
  int64_t sb;          // blocks per backward super-block (its dB/dC partial rows are summed in block order)
  int mode;
  int dtype;  // of u, delta, z: 0 fp32, 1 bf16, 2 fp16
  int64_t su[3], sd[4], sz[3];  // element strides: u, z (batch, channel, pixel); delta (batch, direction, channel, pixel)
  bool softplus, has_D, has_bias, has_z, save, cross;
  bool y_cl;           // cross: y, dout and du channel-last, (batch, L, Dch) memory, as a channel-last x
  const void* u;       // plain: (batch, Dch, L); cross: x (batch, Dch, H, W)
  const void* delta;   // (batch, K * Dch, L), pixel layout for cross; null when projected (dts)
  // cross only, the step sizes projected in the kernel (delta of direction k, channel c at pixel p
  // = sum_r dtw[k, c, r] * dts[b, k, r, p]): the low-rank inputs, any strides, u's dtype
  const void* dts;
  int64_t sdt[4];      // element strides of dts: batch, direction, rank, pixel
  const float* dtw;    // (K, Dch, R) fp32, any strides (SS2D stores it as (K, R, Dch) memory)
  int64_t sw[3];       // element strides of dtw: direction, channel, rank
  int R;
  const void* z;       // plain only: (batch, Dch, L)
  const float* A;      // (K * Dch, N)
  const float* Dv;     // (K * Dch)
  const float* bias;   // (K * Dch)
  const float* Bt;     // (batch, K * G, L, N), scan order
  const float* Ct;
  // forward outputs
  float* y;            // plain: (batch, Dch, L); cross: (batch, Dch, L) or (y_cl) (batch, L, Dch), direction 0 writes, the others add
  float* last;         // (batch, K * Dch, N)
  float* states;       // (batch, K, G * nblk, nchunks, N, W)
  // backward
  const float* dout;   // like y
  const float* dlast;  // (batch, K * Dch, N) or null
  float* du;           // like u (fp32; channel-last when y_cl); for cross written by direction 0, added to by the others
  float* ddelta;       // like delta (fp32): (batch, K * Dch, L), or delta's strides sd when dd_cl
  bool dd_cl;          // ddelta has delta's channel-last strides (channel stride 1)
  float* dz;           // like z (fp32)
  float* dAp;          // (batch, K * Dch, N)
  float* dDp;          // (batch, K * Dch)
  float* dbiasp;       // (batch, K * Dch)
  float* dBp;          // (batch, K * G, nsb, L, N)
  float* dCp;
};

struct Lanes {
  int64_t c0;  // first channel (within a direction) of the block
  int nl;      // valid lanes
};

// In-register transpose of a W x W block (rows r[0..W-1]) by log2(W) stages of 2x2 block swaps.
template <int d, int... I>
static inline vf swap_lo(vf a, vf b, std::integer_sequence<int, I...>) {
  return __builtin_shufflevector(a, b, ((I & d) ? (I - d + W) : I)...);
}
template <int d, int... I>
static inline vf swap_hi(vf a, vf b, std::integer_sequence<int, I...>) {
  return __builtin_shufflevector(a, b, ((I & d) ? (I + W) : (I + d))...);
}
template <int d>
__attribute__((always_inline)) static inline void transpose_stage(vf* r) {
  if constexpr (d >= 1) {
    constexpr auto seq = std::make_integer_sequence<int, W>{};
    for (int i = 0; i < W; ++i) {
      if (i & d) continue;
      const vf a = r[i], b = r[i + d];
      r[i] = swap_lo<d>(a, b, seq);
      r[i + d] = swap_hi<d>(a, b, seq);
    }
    transpose_stage<d / 2>(r);
  }
}
__attribute__((always_inline)) static inline void transpose(vf* r) { transpose_stage<W / 2>(r); }

template <typename S>
static inline vf load_row(const S* p) {
  if constexpr (std::is_same_v<S, float>) {
    vf v;
    std::memcpy(&v, p, sizeof v);
    return v;
  } else {
    vf v;
    float* l = lanes(v);
    for (int i = 0; i < W; ++i) l[i] = static_cast<float>(p[i]);
    return v;
  }
}

// Is the chunk's pixel sequence contiguous and increasing (plain scans, row-major directions)?
static inline bool contiguous(const int64_t* pidx, int tc) {
  for (int j = 1; j < tc; ++j)
    if (pidx[j] != pidx[0] + j) return false;
  return tc > 1;
}

// Fast tile load for full blocks of W lanes and contiguous pixels: W x W transposes in registers.
template <typename S>
static inline int load_tile_fast(vf* tile, const S* base, int64_t stride_c, int64_t p0, int tc) {
  int j0 = 0;
  for (; j0 + W <= tc; j0 += W) {
    vf r[W];
    for (int w = 0; w < W; ++w) {
      const S* row = base + w * stride_c + p0 + j0;
      // software prefetch of the same rows one chunk ahead (forward) or behind (backward)
      __builtin_prefetch(row + T);
      __builtin_prefetch(row - T);
      r[w] = load_row(row);
    }
    transpose(r);
    for (int i = 0; i < W; ++i) tile[j0 + i] = r[i];
  }
  return j0;
}

template <typename S>
static inline void load_tile_t(vf* tile, const S* base, int64_t stride_c, int64_t stride_p, const int64_t* pidx,
                               int tc, int nl) {
  if (nl == W && stride_c == 1) {  // channels contiguous (channel-last memory): one vector per step, any order
    for (int j = 0; j < tc; ++j) tile[j] = load_row(base + pidx[j] * stride_p);
    return;
  }
  int j0 = 0;
  if (nl == W && stride_p == 1 && contiguous(pidx, tc)) j0 = load_tile_fast(tile, base, stride_c, pidx[0], tc);
  for (int j = j0; j < tc; ++j) tile[j] = vf{};
  for (int w = 0; w < nl; ++w) {
    const S* p = base + w * stride_c;
    for (int j = j0; j < tc; ++j) lanes(tile[j])[w] = to_f(p[pidx[j] * stride_p]);
  }
}

// Gather tile[j][w] = base[offset + w * stride_c + pidx[j] * stride_p] (as fp32) for the valid lanes; 0 elsewhere.
static inline void load_tile(vf* tile, const void* base, int dtype, int64_t offset, int64_t stride_c,
                             int64_t stride_p, const int64_t* pidx, int tc, int nl) {
  switch (dtype) {
    case 1: load_tile_t(tile, static_cast<const c10::BFloat16*>(base) + offset, stride_c, stride_p, pidx, tc, nl); break;
    case 2: load_tile_t(tile, static_cast<const c10::Half*>(base) + offset, stride_c, stride_p, pidx, tc, nl); break;
    default: load_tile_t(tile, static_cast<const float*>(base) + offset, stride_c, stride_p, pidx, tc, nl);
  }
}

// Store one vector that nothing reads back soon (outputs, saved states) with a non-temporal store
// where the address allows: a full cache line written without first reading it from memory (the
// read-for-ownership doubled the memory traffic of the strided output tiles). The kernel threads
// fence these stores before they finish (KernelThreadScope).
static inline void stream_row(float* p, vf v) {
#if defined(__AVX512F__)
  if ((reinterpret_cast<uintptr_t>(p) & 63) == 0) {
    _mm512_stream_ps(p, (__m512)v);
    return;
  }
#elif defined(__AVX__)
  if ((reinterpret_cast<uintptr_t>(p) & 31) == 0) {
    _mm256_stream_ps(p, (__m256)v);
    return;
  }
#endif
  std::memcpy(p, &v, sizeof v);
}

static inline void store_tile(float* base, int64_t stride_c, const int64_t* pidx, const vf* tile, int tc, int nl,
                              bool accumulate) {
  int j0 = 0;
  if (nl == W && contiguous(pidx, tc)) {
    for (; j0 + W <= tc; j0 += W) {
      vf r[W];
      for (int i = 0; i < W; ++i) r[i] = tile[j0 + i];
      transpose(r);
      for (int w = 0; w < W; ++w) {
        float* p = base + w * stride_c + pidx[0] + j0;
        vf v = r[w];
        if (accumulate) {
          vf o;
          std::memcpy(&o, p, sizeof o);
          v = v + o;
          std::memcpy(p, &v, sizeof v);
        } else {
          stream_row(p, v);
        }
      }
    }
  }
  if (j0 >= tc) return;
  pidx += j0;
  tile += j0;
  tc -= j0;
  for (int w = 0; w < nl; ++w) {
    float* p = base + w * stride_c;
    if (accumulate) {
      for (int j = 0; j < tc; ++j) p[pidx[j]] += lanes(tile[j])[w];
    } else {
      for (int j = 0; j < tc; ++j) p[pidx[j]] = lanes(tile[j])[w];
    }
  }
}

// dt tile from the raw delta tile: + bias, softplus, zero on padding lanes; optionally sigmoid.
static inline void step_tile(vf* dt, vf* sig, int tc, vf bias, vf mask, bool softplus) {
  for (int j = 0; j < tc; ++j) {
    vf x = dt[j] + bias;
    if (softplus) {
      x = sig ? vsoftplus_sigmoid(x, sig[j]) : vsoftplus(x);
    }
    dt[j] = x * mask;
  }
}

// ---- step sizes projected in the kernel (P.dtw): one broadcast FMA per rank and step, four steps
// at a time so that the four sums are independent chains; ranks summed in order (deterministic).
constexpr int MAXR = 64;

static inline void load_proj_weights(const Problem& P, int64_t sc0, int nl, vf* Wv) {
  // a block's channels are those of one direction: sc0 = k * Dch + c0 with c0 + nl <= Dch
  const int64_t k = sc0 / P.Dch, c0 = sc0 - k * P.Dch;
  const float* w0 = P.dtw + k * P.sw[0] + c0 * P.sw[1];
  for (int r = 0; r < P.R; ++r) {
    const float* wr = w0 + r * P.sw[2];
    if (nl == W && P.sw[1] == 1) {  // SS2D's layout: the block's channels are adjacent
      Wv[r] = loadu(wr);
      continue;
    }
    Wv[r] = vf{};
    for (int w = 0; w < nl; ++w) lanes(Wv[r])[w] = wr[w * P.sw[1]];
  }
}

template <typename S>
static void project_tile_t(vf* dt, const S* base, int64_t stride_r, int64_t stride_p, const int64_t* pidx, int tc,
                           const vf* Wv, int R) {
  int j = 0;
  for (; j + 4 <= tc; j += 4) {
    const S *p0 = base + pidx[j] * stride_p, *p1 = base + pidx[j + 1] * stride_p;
    const S *p2 = base + pidx[j + 2] * stride_p, *p3 = base + pidx[j + 3] * stride_p;
    vf a0 = vf{}, a1 = vf{}, a2 = vf{}, a3 = vf{};
    for (int r = 0; r < R; ++r) {
      const int64_t o = r * stride_r;
      a0 = a0 + Wv[r] * to_f(p0[o]);
      a1 = a1 + Wv[r] * to_f(p1[o]);
      a2 = a2 + Wv[r] * to_f(p2[o]);
      a3 = a3 + Wv[r] * to_f(p3[o]);
    }
    dt[j] = a0;
    dt[j + 1] = a1;
    dt[j + 2] = a2;
    dt[j + 3] = a3;
  }
  for (; j < tc; ++j) {
    const S* p = base + pidx[j] * stride_p;
    vf a = vf{};
    for (int r = 0; r < R; ++r) a = a + Wv[r] * to_f(p[r * stride_r]);
    dt[j] = a;
  }
}

// The raw step sizes of direction k at the tc pixels pidx, projected from dts.
static inline void project_tile(vf* dt, const Problem& P, int64_t b, int k, const int64_t* pidx, int tc,
                                const vf* Wv) {
  const int64_t off = b * P.sdt[0] + k * P.sdt[1];
  switch (P.dtype) {
    case 1: project_tile_t(dt, static_cast<const c10::BFloat16*>(P.dts) + off, P.sdt[2], P.sdt[3], pidx, tc, Wv, P.R); break;
    case 2: project_tile_t(dt, static_cast<const c10::Half*>(P.dts) + off, P.sdt[2], P.sdt[3], pidx, tc, Wv, P.R); break;
    default: project_tile_t(dt, static_cast<const float*>(P.dts) + off, P.sdt[2], P.sdt[3], pidx, tc, Wv, P.R);
  }
}

static inline void load_lane_params(const Problem& P, int64_t sc0, int nl, vf* Av, vf& Dl, vf& bl, vf& mask) {
  const int64_t N = P.N;
  for (int n = 0; n < N; ++n) Av[n] = vf{};
  Dl = vf{};
  bl = vf{};
  mask = vf{};
  for (int w = 0; w < nl; ++w) {
    for (int n = 0; n < N; ++n) lanes(Av[n])[w] = P.A[(sc0 + w) * N + n] * LOG2E;  // exp(dt A) = 2^(dt A log2e)
    if (P.has_D) lanes(Dl)[w] = P.Dv[sc0 + w];
    if (P.has_bias) lanes(bl)[w] = P.bias[sc0 + w];
    lanes(mask)[w] = 1.0f;
  }
}

// ---- the column-major directions of cross2d through a transposed copy
//
// Directions 1 and 3 of cross2d walk the H x Wd map column by column. Read in place, every step
// touches one float of a different cache line per channel, and those lines are reused only one
// whole column later: with a power-of-two row length (256 floats at 1024 px) the lines of a column
// fall into a few cache sets, so L1 and L2 thrash. Instead the item's W channels of the map are
// first copied into column-major order, T[c * H + r] = (the W lanes of pixel (r, c)), by reading
// the map row by row (contiguous runs of W pixels per channel, W x W register transposes, the
// rows of a cache line together); the scan then streams through that copy forwards (direction 1)
// or backwards (direction 3), and the outputs go back the same way at the end.
constexpr int RP = sizeof(vf) >= 64 ? 1 : static_cast<int>(64 / sizeof(vf));  // rows per pass: one line

template <typename S>
static void map_to_columns_t(vf* dst, const S* base, int64_t stride_c, int64_t stride_p, int64_t H, int64_t Wd,
                             int nl) {
  for (int64_t r0 = 0; r0 < H; r0 += RP) {
    const int rows = static_cast<int>(std::min<int64_t>(RP, H - r0));
    int64_t c = 0;
    if (nl == W && stride_c == 1) {  // channels contiguous (channel-last map): one vector per pixel
      for (; c < Wd; ++c)
        for (int i = 0; i < rows; ++i) dst[c * H + r0 + i] = load_row(base + ((r0 + i) * Wd + c) * stride_p);
      continue;
    }
    if (nl == W && stride_p == 1) {
      for (; c + W <= Wd; c += W) {
        for (int i = 0; i < rows; ++i) {
          vf v[W];
          for (int w = 0; w < W; ++w) v[w] = load_row(base + w * stride_c + (r0 + i) * Wd + c);
          transpose(v);
          for (int q = 0; q < W; ++q) dst[(c + q) * H + r0 + i] = v[q];
        }
      }
    }
    for (; c < Wd; ++c) {
      for (int i = 0; i < rows; ++i) {
        vf v = vf{};
        for (int w = 0; w < nl; ++w) lanes(v)[w] = to_f(base[w * stride_c + ((r0 + i) * Wd + c) * stride_p]);
        dst[c * H + r0 + i] = v;
      }
    }
  }
}

static void map_to_columns(vf* dst, const void* base, int dtype, int64_t offset, int64_t stride_c, int64_t stride_p,
                           int64_t H, int64_t Wd, int nl) {
  switch (dtype) {
    case 1: map_to_columns_t(dst, static_cast<const c10::BFloat16*>(base) + offset, stride_c, stride_p, H, Wd, nl); break;
    case 2: map_to_columns_t(dst, static_cast<const c10::Half*>(base) + offset, stride_c, stride_p, H, Wd, nl); break;
    default: map_to_columns_t(dst, static_cast<const float*>(base) + offset, stride_c, stride_p, H, Wd, nl);
  }
}

// The inverse, into a contiguous fp32 map of the nl channels (channel stride stride_c):
// out[w * stride_c + r * Wd + c] (+)= lanes(src[c * H + r])[w].
// The nl valid lanes of v to (or added to) p[0..nl): one step's channels of a channel-last map.
static inline void store_lanes(float* p, const vf& v, int nl, bool accumulate = false) {
  if (nl == W) {
    vf o = v;
    if (accumulate) {
      vf prev;
      std::memcpy(&prev, p, sizeof prev);
      o = o + prev;
    }
    std::memcpy(p, &o, sizeof o);
    return;
  }
  const float* l = lanes(v);
  for (int w = 0; w < nl; ++w) p[w] = accumulate ? p[w] + l[w] : l[w];
}

// A column-major copy src[c * H + r] (as map_to_columns makes) back into a channel-last map:
// the lanes of pixel (r, c) to (or added to) out[(r * Wd + c) * stride_p].
static void columns_to_channel_last(float* out, int64_t stride_p, const vf* src, int64_t H, int64_t Wd, int nl,
                                    bool accumulate = false) {
  for (int64_t c = 0; c < Wd; ++c)
    for (int64_t r = 0; r < H; ++r) store_lanes(out + (r * Wd + c) * stride_p, src[c * H + r], nl, accumulate);
}

static void columns_to_map(float* out, int64_t stride_c, const vf* src, int64_t H, int64_t Wd, int nl,
                           bool accumulate) {
  for (int64_t r0 = 0; r0 < H; r0 += RP) {
    const int rows = static_cast<int>(std::min<int64_t>(RP, H - r0));
    int64_t c = 0;
    if (nl == W) {
      for (; c + W <= Wd; c += W) {
        for (int i = 0; i < rows; ++i) {
          vf v[W];
          for (int q = 0; q < W; ++q) v[q] = src[(c + q) * H + r0 + i];
          transpose(v);
          for (int w = 0; w < W; ++w) {
            float* o = out + w * stride_c + (r0 + i) * Wd + c;
            if (accumulate) {
              vf prev;
              std::memcpy(&prev, o, sizeof prev);
              v[w] = v[w] + prev;
            }
            std::memcpy(o, &v[w], sizeof v[w]);
          }
        }
      }
    }
    for (; c < Wd; ++c) {
      for (int i = 0; i < rows; ++i) {
        const float* l = lanes(src[c * H + r0 + i]);
        for (int w = 0; w < nl; ++w) {
          float& o = out[w * stride_c + (r0 + i) * Wd + c];
          o = accumulate ? o + l[w] : l[w];
        }
      }
    }
  }
}

// Position in the column-major copy of scan step t of direction k (1: forwards, 3: backwards).
static inline int64_t column_index(int k, int64_t t, int64_t L) { return k == 3 ? L - 1 - t : t; }

// Does direction k of this problem go through the column-major copy?
static inline bool by_columns(const Problem& P, int k) { return P.mode == 1 && (k & 1) && P.H > 1 && P.Wd > 1; }

template <int NS>
void forward_item(const Problem& P, int64_t b, int64_t g, int64_t blk, std::vector<vf>& stage) {
  const int N = NS ? NS : static_cast<int>(P.N);
  const int64_t L = P.L, dg = P.Dch / P.G;
  const int64_t c0 = g * dg + blk * W;
  const int nl = static_cast<int>(std::min<int64_t>(W, dg - blk * W));
  vf dt_t[T], u_t[T], y_t[T];
  int64_t pidx[T];
  vf Av[NS ? NS : MAXN];
  vf h[NS ? NS : MAXN];
  vf Wv[MAXR];
  const int64_t u_b = b * P.Dch * L;
  vf *xc = nullptr, *dc = nullptr, *yc = nullptr;  // column-major copies of x, delta_k and y
  if (by_columns(P, 1)) {
    stage.resize(static_cast<size_t>(3 * L));
    xc = stage.data();
    dc = xc + L;
    yc = dc + L;
    map_to_columns(xc, P.u, P.dtype, b * P.su[0] + c0 * P.su[1], P.su[1], P.su[2], P.H, P.Wd, nl);
  }
  for (int k = 0; k < P.K; ++k) {
    const int64_t sc0 = k * P.Dch + c0;  // first scan channel of the block
    const bool cols = by_columns(P, k);
    vf Dl, bl, mask;
    load_lane_params(P, sc0, nl, Av, Dl, bl, mask);
    const vf lim = kRangedExp ? exp_limit(Av, N) : vf{};
    if (P.dtw) load_proj_weights(P, sc0, nl, Wv);
    if (cols && !P.dtw) map_to_columns(dc, P.delta, P.dtype, b * P.sd[0] + k * P.sd[1] + c0 * P.sd[2], P.sd[2], P.sd[3], P.H, P.Wd, nl);
#pragma GCC unroll 16
    for (int n = 0; n < N; ++n) h[n] = vf{};
    const float* Bk = P.Bt + ((b * P.K + k) * P.G + g) * L * N;
    const float* Ck = P.Ct + ((b * P.K + k) * P.G + g) * L * N;
    float* st = P.save ? P.states + (((b * P.K + k) * P.G * P.nblk + g * P.nblk + blk) * P.nchunks) * N * W : nullptr;
    for (int64_t ci = 0; ci < P.nchunks; ++ci) {
      const int64_t t0 = ci * T;
      const int tc = static_cast<int>(std::min<int64_t>(T, L - t0));
      if (st) {
        for (int n = 0; n < N; ++n) stream_row(st + (ci * N + n) * W, h[n]);
      }
      if (cols) {
        for (int j = 0; j < tc; ++j) {
          const int64_t i = column_index(k, t0 + j, L);
          u_t[j] = xc[i];
          if (!P.dtw) dt_t[j] = dc[i];
        }
      } else {
        for (int j = 0; j < tc; ++j) pidx[j] = pixel(P.mode, k, t0 + j, L, P.H, P.Wd);
        load_tile(u_t, P.u, P.dtype, b * P.su[0] + c0 * P.su[1], P.su[1], P.su[2], pidx, tc, nl);
        if (!P.dtw)
          load_tile(dt_t, P.delta, P.dtype, b * P.sd[0] + k * P.sd[1] + c0 * P.sd[2], P.sd[2], P.sd[3], pidx, tc, nl);
      }
      if (P.dtw) {
        if (cols)
          for (int j = 0; j < tc; ++j) pidx[j] = pixel(P.mode, k, t0 + j, L, P.H, P.Wd);
        project_tile(dt_t, P, b, k, pidx, tc, Wv);
      }
      step_tile(dt_t, nullptr, tc, bl, mask, P.softplus);
      auto scan_chunk = [&](auto in_range) __attribute__((always_inline)) {
        constexpr bool R = decltype(in_range)::value;
        const float* Bj = Bk + t0 * N;
        const float* Cj = Ck + t0 * N;
        for (int j = 0; j < tc; ++j, Bj += N, Cj += N) {
          const vf dt = dt_t[j];
          const vf dtu = dt * u_t[j];
          vf y0 = vf{}, y1 = vf{};
#pragma GCC unroll 16
          for (int n = 0; n < N; n += 2) {
            const vf dA0 = vexp2_mul<R>(dt, Av[n]);
            h[n] = dA0 * h[n] + dtu * Bj[n];
            y0 = y0 + h[n] * Cj[n];
            if (n + 1 < N) {
              const vf dA1 = vexp2_mul<R>(dt, Av[n + 1]);
              h[n + 1] = dA1 * h[n + 1] + dtu * Bj[n + 1];
              y1 = y1 + h[n + 1] * Cj[n + 1];
            }
          }
          y_t[j] = y0 + y1 + Dl * u_t[j];
        }
      };
      with_exp_range(dt_t, tc, lim, scan_chunk);
      if (P.has_z) {
        vf z_t[T];
        load_tile(z_t, P.z, P.dtype, b * P.sz[0] + c0 * P.sz[1], P.sz[1], P.sz[2], pidx, tc, nl);
        for (int j = 0; j < tc; ++j) y_t[j] = y_t[j] * (z_t[j] * vsigmoid(z_t[j]));
      }
      if (cols) {  // direction 1 starts the column-major output, direction 3 adds to it
        for (int j = 0; j < tc; ++j) {
          const int64_t i = column_index(k, t0 + j, L);
          yc[i] = k == 1 ? y_t[j] : yc[i] + y_t[j];
        }
      } else if (P.y_cl) {  // one vector store (direction 0) or add per step into the pixel's channels
        float* yb = P.y + u_b + c0;
        for (int j = 0; j < tc; ++j) store_lanes(yb + pidx[j] * P.Dch, y_t[j], nl, k != 0);
      } else {  // direction 0 (row-major, never by columns) writes y, the others add to it
        store_tile(P.y + u_b + c0 * L, L, pidx, y_t, tc, nl, P.cross && k != 0);
      }
    }
    if (P.last) {
      for (int w = 0; w < nl; ++w)
        for (int n = 0; n < N; ++n) P.last[(b * P.K * P.Dch + sc0 + w) * N + n] = lanes(h[n])[w];
    }
  }
  if (yc && P.y_cl)
    columns_to_channel_last(P.y + u_b + c0, P.Dch, yc, P.H, P.Wd, nl, true);
  else if (yc)
    columns_to_map(P.y + u_b + c0 * L, L, yc, P.H, P.Wd, nl, true);
}

#if defined(__AVX512F__)
// The dB and dC rows of a step sum 16 x 16 products over the lanes: a transpose-add tree of 4
// levels. pair_dot is level 1 fused with the products x * s: lanes 0-7 of the result hold 8 partial
// sums of x0 * s, lanes 8-15 those of x1 * s (s_lo = s[0..7] twice, s_hi = s[8..15] twice), so the
// 16 products are never formed one by one (53 instructions per row instead of 61).
static inline vf pair_dot(vf x0, vf x1, vf s_lo, vf s_hi) {
  const vf lo = __builtin_shufflevector(x0, x1, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);
  const vf hi = __builtin_shufflevector(x0, x1, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  return lo * s_lo + hi * s_hi;
}
static inline vf tree2(vf a, vf b) {  // 4 partials each of 4 sums
  const vf lo = __builtin_shufflevector(a, b, 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27);
  const vf hi = __builtin_shufflevector(a, b, 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
  return lo + hi;
}
static inline vf tree3(vf a, vf b) {  // 2 partials each of 8 sums
  const vf lo = __builtin_shufflevector(a, b, 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29);
  const vf hi = __builtin_shufflevector(a, b, 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31);
  return lo + hi;
}
static inline vf tree4(vf a, vf b) {  // the 16 sums
  const vf lo = __builtin_shufflevector(a, b, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const vf hi = __builtin_shufflevector(a, b, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  return lo + hi;
}
#endif

#if defined(__AVX512F__)
// s[0..7] twice and s[8..15] twice: the factors of pair_dot.
static inline void halves(vf s, vf& s_lo, vf& s_hi) {
  s_lo = __builtin_shufflevector(s, s, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7);
  s_hi = __builtin_shufflevector(s, s, 8, 9, 10, 11, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15);
}

// Levels 1-2 for four consecutive state indices.
static inline vf quad_dot(vf x0, vf x1, vf x2, vf x3, vf s_lo, vf s_hi) {
  return tree2(pair_dot(x0, x1, s_lo, s_hi), pair_dot(x2, x3, s_lo, s_hi));
}

// Levels 3-4 from the four level-2 vectors; out[0..15] (+)= the 16 sums.
static inline void tree_store(const vf* c, float* out, bool acc) {
  vf r = tree4(tree3(c[0], c[1]), tree3(c[2], c[3]));
  if (acc) {
    vf o;
    std::memcpy(&o, out, sizeof o);
    r = r + o;
  }
  std::memcpy(out, &r, sizeof r);
}
#endif

#if defined(__AVX__) && !defined(__AVX512F__)
// The 8 lane sums of 8 vectors at once, (sum of v[0], ..., sum of v[7]): three levels of
// horizontal adds and one 128-bit swap, 9 instructions instead of 8 x 7 scalar adds.
static inline vf hsum8(const vf* v) {
  const __m256 t0 = _mm256_hadd_ps((__m256)v[0], (__m256)v[1]);
  const __m256 t1 = _mm256_hadd_ps((__m256)v[2], (__m256)v[3]);
  const __m256 t2 = _mm256_hadd_ps((__m256)v[4], (__m256)v[5]);
  const __m256 t3 = _mm256_hadd_ps((__m256)v[6], (__m256)v[7]);
  const __m256 u0 = _mm256_hadd_ps(t0, t1);  // lanes 0-3: halves 0-3 of v[0..3]; 4-7: halves 4-7
  const __m256 u1 = _mm256_hadd_ps(t2, t3);
  return (vf)_mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}
#endif

// One step's row of dB or dC: out[n] (+)= sum over the lanes (channels) of x[n] * s, n < N.
template <int NS>
static inline void lane_dot(const vf* x, vf s, float* out, int N, bool acc) {
#if defined(__AVX512F__)
  if constexpr (NS == 16 && W == 16) {
    vf s_lo, s_hi, c[4];
    halves(s, s_lo, s_hi);
    for (int i = 0; i < 4; ++i) c[i] = quad_dot(x[4 * i], x[4 * i + 1], x[4 * i + 2], x[4 * i + 3], s_lo, s_hi);
    tree_store(c, out, acc);
    return;
  }
#elif defined(__AVX__)
  if constexpr (W == 8) {
    int n0 = 0;
    for (; n0 + 8 <= N; n0 += 8) {
      vf p[8];
      for (int i = 0; i < 8; ++i) p[i] = x[n0 + i] * s;
      vf r = hsum8(p);
      if (acc) {
        vf o;
        std::memcpy(&o, out + n0, sizeof o);
        r = r + o;
      }
      std::memcpy(out + n0, &r, sizeof r);
    }
    for (int n = n0; n < N; ++n) {
      const float v = lane_sum(x[n] * s);
      out[n] = acc ? out[n] + v : v;
    }
    return;
  }
#endif
  for (int n = 0; n < N; ++n) {
    const float v = lane_sum(x[n] * s);
    out[n] = acc ? out[n] + v : v;
  }
}

// Backward of one block of W channels, chunk by chunk in reverse:
//   1. recompute the chunk's states from the saved entering state, keeping exp(dt A) and the state
//      entering each step, and (the state being in registers) the dC row of each step;
//   2. the adjoint recurrence backwards through the chunk: du, d delta, the dB row of each step,
//      and the dA / dD / d delta_bias accumulators.
template <int NS>
void backward_item(const Problem& P, int64_t b, int64_t g, int64_t blk, std::vector<vf>& buf,
                   std::vector<vf>& stage) {
  const int N = NS ? NS : static_cast<int>(P.N);
  const int64_t L = P.L, dg = P.Dch / P.G;
  const int64_t c0 = g * dg + blk * W;
  const int nl = static_cast<int>(std::min<int64_t>(W, dg - blk * W));
  vf dt_t[T], sg_t[T], u_t[T], z_t[T], do_t[T], dy_t[T], ys_t[T], du_t[T], dd_t[T], dz_t[T];
  int64_t pidx[T];
  vf Av[NS ? NS : MAXN], h0[NS ? NS : MAXN], dh[NS ? NS : MAXN];
  vf Wv[MAXR];
  buf.resize(static_cast<size_t>(2 * T + 1) * N);
  vf* as = buf.data();          // [T][N] exp(dt A) of step j
  vf* hps = as + T * N;         // [T][N] state entering step j
  vf* dA_acc = hps + T * N;     // [N] running sum of dA over the chunks
  const int64_t u_b = b * P.Dch * L;
  // column-major copies of x, dy, delta_k (overwritten by d delta_k) and du
  vf *xc = nullptr, *dyc = nullptr, *dc = nullptr, *duc = nullptr;
  if (by_columns(P, 1)) {
    stage.resize(static_cast<size_t>(4 * L));
    xc = stage.data();
    dyc = xc + L;
    dc = dyc + L;
    duc = dc + L;
    map_to_columns(xc, P.u, P.dtype, b * P.su[0] + c0 * P.su[1], P.su[1], P.su[2], P.H, P.Wd, nl);
    if (P.y_cl)
      map_to_columns(dyc, P.dout, 0, u_b + c0, 1, P.Dch, P.H, P.Wd, nl);
    else
      map_to_columns(dyc, P.dout, 0, u_b + c0 * L, L, 1, P.H, P.Wd, nl);
  }
  for (int k = 0; k < P.K; ++k) {
    const int64_t sc0 = k * P.Dch + c0;
    const bool cols = by_columns(P, k);
    vf Dl, bl, mask;
    load_lane_params(P, sc0, nl, Av, Dl, bl, mask);
    const vf lim = kRangedExp ? exp_limit(Av, N) : vf{};
    if (P.dtw) load_proj_weights(P, sc0, nl, Wv);
    if (cols && !P.dtw) map_to_columns(dc, P.delta, P.dtype, b * P.sd[0] + k * P.sd[1] + c0 * P.sd[2], P.sd[2], P.sd[3], P.H, P.Wd, nl);
    for (int n = 0; n < N; ++n) {
      dh[n] = vf{};
      dA_acc[n] = vf{};
    }
    if (P.dlast) {
      for (int w = 0; w < nl; ++w)
        for (int n = 0; n < N; ++n) lanes(dh[n])[w] = P.dlast[(b * P.K * P.Dch + sc0 + w) * N + n];
    }
    vf dD_acc = vf{}, db_acc = vf{};
    const float* Bk = P.Bt + ((b * P.K + k) * P.G + g) * L * N;
    const float* Ck = P.Ct + ((b * P.K + k) * P.G + g) * L * N;
    const int64_t d_b = (b * P.K * P.Dch + sc0) * L;
    const float* st = P.states + (((b * P.K + k) * P.G * P.nblk + g * P.nblk + blk) * P.nchunks) * N * W;
    // dB/dC partial sums of this block's super-block (sb blocks, summed in order: deterministic)
    const bool acc = blk % P.sb != 0;
    float* dBo = P.dBp + (((b * P.K + k) * P.G + g) * P.nsb + blk / P.sb) * L * N;
    float* dCo = P.dCp + (((b * P.K + k) * P.G + g) * P.nsb + blk / P.sb) * L * N;
    for (int64_t ci = P.nchunks - 1; ci >= 0; --ci) {
      const int64_t t0 = ci * T;
      const int tc = static_cast<int>(std::min<int64_t>(T, L - t0));
      std::memcpy(h0, st + ci * N * W, sizeof(vf) * N);
      if (cols) {
        for (int j = 0; j < tc; ++j) {
          const int64_t i = column_index(k, t0 + j, L);
          u_t[j] = xc[i];
          if (!P.dtw) dt_t[j] = dc[i];
          dy_t[j] = dyc[i];
        }
      } else {
        for (int j = 0; j < tc; ++j) pidx[j] = pixel(P.mode, k, t0 + j, L, P.H, P.Wd);
        load_tile(u_t, P.u, P.dtype, b * P.su[0] + c0 * P.su[1], P.su[1], P.su[2], pidx, tc, nl);
        if (!P.dtw)
          load_tile(dt_t, P.delta, P.dtype, b * P.sd[0] + k * P.sd[1] + c0 * P.sd[2], P.sd[2], P.sd[3], pidx, tc, nl);
        if (P.y_cl)
          load_tile(dy_t, P.dout, 0, u_b + c0, 1, P.Dch, pidx, tc, nl);
        else
          load_tile(dy_t, P.dout, 0, u_b + c0 * L, L, 1, pidx, tc, nl);
      }
      if (P.dtw) {
        if (cols)
          for (int j = 0; j < tc; ++j) pidx[j] = pixel(P.mode, k, t0 + j, L, P.H, P.Wd);
        project_tile(dt_t, P, b, k, pidx, tc, Wv);
      }
      step_tile(dt_t, sg_t, tc, bl, mask, P.softplus);
      if (P.has_z) {  // dy := gradient of the output before the gate y * silu(z)
        load_tile(z_t, P.z, P.dtype, b * P.sz[0] + c0 * P.sz[1], P.sz[1], P.sz[2], pidx, tc, nl);
        for (int j = 0; j < tc; ++j) {
          const vf zz = z_t[j], sg = vsigmoid(zz);
          do_t[j] = dy_t[j] * (sg * (1.0f + zz * (1.0f - sg)));  // times y: dz (after the recompute)
          dy_t[j] = dy_t[j] * zz * sg;
        }
      }
      const float* B0 = Bk + t0 * N;
      const float* C0 = Ck + t0 * N;
      // 1. recompute the chunk's states; dC
      auto recompute_chunk = [&](auto in_range) __attribute__((always_inline)) {
        constexpr bool R = decltype(in_range)::value;
        vf h[NS ? NS : MAXN];
        for (int n = 0; n < N; ++n) h[n] = h0[n];
        const float* Bj = B0;
        const float* Cj = C0;
        for (int j = 0; j < tc; ++j, Bj += N, Cj += N) {
          const vf dt = dt_t[j];
          const vf dtu = dt * u_t[j];
          vf* aj = as + j * N;
          vf* hpj = hps + j * N;
          vf y = vf{};
#pragma GCC unroll 16
          for (int n = 0; n < N; ++n) {
            const vf a = vexp2_mul<R>(dt, Av[n]);
            aj[n] = a;
            hpj[n] = h[n];
            h[n] = a * h[n] + dtu * Bj[n];
            if (P.has_z) y = y + h[n] * Cj[n];
          }
          if (P.has_z) ys_t[j] = y + Dl * u_t[j];
          lane_dot<NS>(h, dy_t[j], dCo + (t0 + j) * N, N, acc);
        }
      };
      with_exp_range(dt_t, tc, lim, recompute_chunk);
      if (P.has_z) {
        for (int j = 0; j < tc; ++j) dz_t[j] = do_t[j] * ys_t[j];
      }
      // 2. adjoint recurrence backwards through the chunk
      for (int j = tc - 1; j >= 0; --j) {
        const float* Bj = B0 + j * N;
        const float* Cj = C0 + j * N;
        const vf dt = dt_t[j], u = u_t[j], dy = dy_t[j];
        const vf* aj = as + j * N;
        const vf* hpj = hps + j * N;
        dD_acc = dD_acc + dy * u;
        const vf dtu = dt * u;
        vf sB0 = vf{}, sB1 = vf{}, qa0 = vf{}, qa1 = vf{};  // two partial sums each: shorter dependency chains
        // One state index: d = dL/dh_j (before the decay), the adjoint carried to step j - 1, the dA terms.
        auto adjoint = [&](int n) __attribute__((always_inline)) {
          const vf d = dh[n] + dy * Cj[n];
          ((n & 1) ? sB1 : sB0) += d * Bj[n];
          dh[n] = d * aj[n];
          const vf q = dh[n] * hpj[n];  // d * exp(dt A) * h_prev: the gradient of dt * A
          ((n & 1) ? qa1 : qa0) += q * Av[n];
          dA_acc[n] = dA_acc[n] + q * dt;
          return d;
        };
#if defined(__AVX512F__)
        if constexpr (NS == 16 && W == 16) {
          // the dB row folded in four states at a time, so the d's never leave registers
          vf s_lo, s_hi, c[4];
          halves(dtu, s_lo, s_hi);
#pragma GCC unroll 4
          for (int i = 0; i < 4; ++i) {
            const vf d0 = adjoint(4 * i), d1 = adjoint(4 * i + 1), d2 = adjoint(4 * i + 2), d3 = adjoint(4 * i + 3);
            c[i] = quad_dot(d0, d1, d2, d3, s_lo, s_hi);
          }
          tree_store(c, dBo + (t0 + j) * N, acc);
        } else
#endif
        {
          vf d[NS ? NS : MAXN];
#pragma GCC unroll 16
          for (int n = 0; n < N; ++n) d[n] = adjoint(n);
          lane_dot<NS>(d, dtu, dBo + (t0 + j) * N, N, acc);
        }
        const vf sB = sB0 + sB1, qa = qa0 + qa1;
        du_t[j] = dt * sB + Dl * dy;
        vf ddt = qa * LN2 + u * sB;  // Av holds A * log2e
        if (P.softplus) ddt = ddt * sg_t[j];
        ddt = ddt * mask;
        dd_t[j] = ddt;
        db_acc = db_acc + ddt;
      }
      if (cols) {  // du: direction 1 starts the column-major sum, direction 3 adds to it
        for (int j = 0; j < tc; ++j) {
          const int64_t i = column_index(k, t0 + j, L);
          duc[i] = k == 1 ? du_t[j] : duc[i] + du_t[j];
          dc[i] = dd_t[j];
        }
      } else {
        if (P.y_cl) {  // du channel-last, as y: direction 0 writes, the others add
          float* dub = P.du + u_b + c0;
          for (int j = 0; j < tc; ++j) store_lanes(dub + pidx[j] * P.Dch, du_t[j], nl, k != 0);
        } else {
          store_tile(P.du + u_b + c0 * L, L, pidx, du_t, tc, nl, P.cross && k != 0);  // as y in the forward
        }
        if (P.dd_cl) {  // one vector store per step, in delta's own layout
          float* ddk = P.ddelta + b * P.sd[0] + k * P.sd[1] + c0;
          for (int j = 0; j < tc; ++j) store_lanes(ddk + pidx[j] * P.sd[3], dd_t[j], nl);
        } else {
          store_tile(P.ddelta + d_b, L, pidx, dd_t, tc, nl, false);
        }
        if (P.has_z) store_tile(P.dz + u_b + c0 * L, L, pidx, dz_t, tc, nl, false);
      }
    }
    if (cols && P.dd_cl)
      columns_to_channel_last(P.ddelta + b * P.sd[0] + k * P.sd[1] + c0, P.sd[3], dc, P.H, P.Wd, nl);
    else if (cols)
      columns_to_map(P.ddelta + d_b, L, dc, P.H, P.Wd, nl, false);
    for (int w = 0; w < nl; ++w) {
      const int64_t c = b * P.K * P.Dch + sc0 + w;
      for (int n = 0; n < N; ++n) P.dAp[c * N + n] = lanes(dA_acc[n])[w];
      P.dDp[c] = lanes(dD_acc)[w];
      P.dbiasp[c] = lanes(db_acc)[w];
    }
  }
  if (duc && P.y_cl)
    columns_to_channel_last(P.du + u_b + c0, P.Dch, duc, P.H, P.Wd, nl, true);
  else if (duc)
    columns_to_map(P.du + u_b + c0 * L, L, duc, P.H, P.Wd, nl, true);
}

// What every kernel thread sets up around its work. Subnormal floats (below 1.2e-38) cost a
// microcode assist of ~100 cycles per operation on x86: a decay exp(dt * A) under ~e^-87 (a large
// step times a strongly negative A, not rare in trained models) made the whole scan 27x slower.
// So while the thread works they are flushed to zero (FTZ, and DAZ for subnormal inputs), values
// that small being zero at the precision of the result; the caller's mode is restored after.
// On the way out, a fence makes the non-temporal stores (stream_row) visible to the caller.
struct KernelThreadScope {
#if defined(__SSE2__)
  unsigned int saved = _mm_getcsr();
  KernelThreadScope() { _mm_setcsr(saved | 0x8040u); }
  ~KernelThreadScope() {
    _mm_sfence();
    _mm_setcsr(saved);
  }
#endif
};

// Forward work items are single channel blocks: each channel's scan is independent, so any split
// gives the same bits, and at batch 1 a stage of 6 or 12 blocks divides evenly over the threads
// (super-blocks of 4 left one of two threads idle for a third of the stage).
void run_forward(const Problem& P) {
  const int64_t items = P.batch * P.G * P.nblk;
  at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
    const KernelThreadScope scope;
    std::vector<vf> stage;
    for (int64_t bi = begin; bi < end; ++bi) {
      const int64_t b = bi / (P.G * P.nblk), g = (bi / P.nblk) % P.G, blk = bi % P.nblk;
      switch (P.N) {
        case 1: forward_item<1>(P, b, g, blk, stage); break;
        case 2: forward_item<2>(P, b, g, blk, stage); break;
        case 4: forward_item<4>(P, b, g, blk, stage); break;
        case 8: forward_item<8>(P, b, g, blk, stage); break;
        case 16: forward_item<16>(P, b, g, blk, stage); break;
        default: forward_item<0>(P, b, g, blk, stage);
      }
    }
  });
}

// Backward work items are super-blocks of sb channel blocks run in order (their dB/dC rows go to
// one partial); sb depends on the shapes only, never on the thread count (see make_problem).
void run_backward(const Problem& P) {
  const int64_t items = P.batch * P.G * P.nsb;
  at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
    const KernelThreadScope scope;
    std::vector<vf> buf, stage;
    for (int64_t bi = begin * P.sb; bi < end * P.sb; ++bi) {  // the blocks of super-blocks [begin, end), in order
      const int64_t sbi = bi / P.sb, b = sbi / (P.G * P.nsb), g = (sbi / P.nsb) % P.G;
      const int64_t blk = (sbi % P.nsb) * P.sb + bi % P.sb;
      if (blk >= P.nblk) continue;
      switch (P.N) {
        case 1: backward_item<1>(P, b, g, blk, buf, stage); break;
        case 2: backward_item<2>(P, b, g, blk, buf, stage); break;
        case 4: backward_item<4>(P, b, g, blk, buf, stage); break;
        case 8: backward_item<8>(P, b, g, blk, buf, stage); break;
        case 16: backward_item<16>(P, b, g, blk, buf, stage); break;
        default: backward_item<0>(P, b, g, blk, buf, stage);
      }
    }
  });
}

int dtype_id(at::ScalarType st) {
  switch (st) {
    case at::kFloat: return 0;
    case at::kBFloat16: return 1;
    case at::kHalf: return 2;
    default: TORCH_CHECK(false, "vmamba cpu scan: unsupported dtype ", st);
  }
  return 0;
}

const float* opt_ptr(const c10::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() && t->numel() ? t->data_ptr<float>() : nullptr;
}

// Fill the shape part of a Problem. u: plain (b, D, L) or cross (b, D, H, W); Bt: (b, K*G, L, N).
Problem make_problem(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bt,
                     const at::Tensor& Ct, const c10::optional<at::Tensor>& Dv,
                     const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& z, bool softplus,
                     int64_t K, int64_t mode, bool follow_layouts, const c10::optional<at::Tensor>& dtw) {
  TORCH_CHECK(A.is_contiguous() && Bt.is_contiguous() && Ct.is_contiguous(),
              "vmamba cpu scan: A, B, C must be contiguous");
  TORCH_CHECK(A.scalar_type() == at::kFloat && Bt.scalar_type() == at::kFloat && Ct.scalar_type() == at::kFloat,
              "vmamba cpu scan: A, B, C must be float32 here");
  TORCH_CHECK(delta.scalar_type() == u.scalar_type(), "vmamba cpu scan: delta must have u's dtype");
  Problem P{};
  P.cross = mode != 0;
  P.batch = u.size(0);
  P.Dch = u.size(1);
  if (P.cross) {
    P.H = u.size(2);
    P.Wd = u.size(3);
    P.L = P.H * P.Wd;
  } else {
    P.L = u.size(2);
    P.H = 1;
    P.Wd = P.L;
  }
  P.K = K;
  P.N = A.size(1);
  TORCH_CHECK(P.N >= 1 && P.N <= MAXN, "vmamba cpu scan: state size must be in [1, ", MAXN, "]");
  TORCH_CHECK(Bt.size(1) % K == 0, "vmamba cpu scan: bad group count");
  P.G = Bt.size(1) / K;
  TORCH_CHECK(P.Dch % P.G == 0, "vmamba cpu scan: groups must divide channels");
  P.nblk = (P.Dch / P.G + W - 1) / W;
  // Super-blocks of SB blocks keep the dB/dC partials (nsb rows of L x N per direction, written
  // and summed again) small; a problem with fewer than FEW_ITEMS of them (batch 1 at a stage of
  // 96 or 192 channels: 2 or 3) makes every block its own super-block, so that its backward, too,
  // splits evenly over two threads. With 4 to 7 super-blocks (batch 2 of those stages, batch 1 of
  // 384 channels) the 4x larger partials at N = 16 cost more than the split gains (measured).
  P.sb = P.batch * P.G * ((P.nblk + SB - 1) / SB) < FEW_ITEMS ? 1 : SB;
  P.nsb = (P.nblk + P.sb - 1) / P.sb;
  P.nchunks = (P.L + T - 1) / T;
  P.mode = static_cast<int>(mode);
  P.dtype = dtype_id(u.scalar_type());
  P.softplus = softplus;
  // u, delta, z may have any strides as long as the pixels of a 2D map flatten to one stride.
  P.u = u.data_ptr();
  P.delta = delta.data_ptr();
  if (P.cross) {
    TORCH_CHECK(u.dim() == 4 && delta.dim() == 5 && delta.size(1) == K, "vmamba cpu scan: bad cross-scan shapes");
    TORCH_CHECK((P.H == 1 || u.stride(2) == P.Wd * u.stride(3)) && (P.H == 1 || delta.stride(3) == P.Wd * delta.stride(4)),
                "vmamba cpu scan: the H and W dims of x and delta must be flattenable");
    P.su[0] = u.stride(0); P.su[1] = u.stride(1); P.su[2] = u.stride(3);
    if (dtw.has_value() && dtw->defined()) {  // delta holds the low-rank dts (batch, K, R, H, W)
      TORCH_CHECK(dtw->scalar_type() == at::kFloat && dtw->dim() == 3 && dtw->size(0) == K &&
                      dtw->size(1) == P.Dch && dtw->size(2) == delta.size(2) && dtw->size(2) >= 1 &&
                      dtw->size(2) <= MAXR,
                  "vmamba cpu scan: the step-size projection must be a float32 (K, D, R) tensor with "
                  "R = dts.size(2) in [1, ", MAXR, "]");
      P.dts = delta.data_ptr();
      P.delta = nullptr;
      P.dtw = dtw->data_ptr<float>();
      P.sw[0] = dtw->stride(0); P.sw[1] = dtw->stride(1); P.sw[2] = dtw->stride(2);
      P.R = static_cast<int>(dtw->size(2));
      P.sdt[0] = delta.stride(0); P.sdt[1] = delta.stride(1); P.sdt[2] = delta.stride(2); P.sdt[3] = delta.stride(4);
    } else {
      P.sd[0] = delta.stride(0); P.sd[1] = delta.stride(1); P.sd[2] = delta.stride(2); P.sd[3] = delta.stride(4);
    }
    P.y_cl = follow_layouts && u.is_contiguous(at::MemoryFormat::ChannelsLast);
  } else {
    TORCH_CHECK(u.dim() == 3 && delta.dim() == 3 && delta.sizes() == u.sizes(), "vmamba cpu scan: bad shapes");
    TORCH_CHECK(!(dtw.has_value() && dtw->defined()), "vmamba cpu scan: the step-size projection is for cross scans");
    P.su[0] = u.stride(0); P.su[1] = u.stride(1); P.su[2] = u.stride(2);
    P.sd[0] = delta.stride(0); P.sd[1] = 0; P.sd[2] = delta.stride(1); P.sd[3] = delta.stride(2);
  }
  P.A = A.data_ptr<float>();
  P.Bt = Bt.data_ptr<float>();
  P.Ct = Ct.data_ptr<float>();
  P.Dv = opt_ptr(Dv);
  P.bias = opt_ptr(bias);
  P.has_D = P.Dv != nullptr;
  P.has_bias = P.bias != nullptr;
  P.has_z = z.has_value() && z->defined() && z->numel();
  if (P.has_z) {
    TORCH_CHECK(!P.cross && z->sizes() == u.sizes() && z->scalar_type() == u.scalar_type(), "vmamba cpu scan: bad z");
    P.z = z->data_ptr();
    P.sz[0] = z->stride(0); P.sz[1] = z->stride(1); P.sz[2] = z->stride(2);
  }
  return P;
}

// Returns y (fp32; like u), last state (b, K*D, N), saved states (or empty).
std::vector<at::Tensor> forward(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                const at::Tensor& Bt, const at::Tensor& Ct, const c10::optional<at::Tensor>& Dv,
                                const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& z,
                                bool softplus, bool save, int64_t K, int64_t mode, bool follow_layouts,
                                const c10::optional<at::Tensor>& dtw) {
  Problem P = make_problem(u, delta, A, Bt, Ct, Dv, bias, z, softplus, K, mode, follow_layouts, dtw);
  auto f32 = u.options().dtype(at::kFloat);
  // not zero-filled: direction 0 of the cross scan writes every element before the others add
  at::Tensor y = P.y_cl ? at::empty(u.sizes(), f32, at::MemoryFormat::ChannelsLast) : at::empty(u.sizes(), f32);
  TORCH_CHECK(!P.y_cl || y.is_contiguous(at::MemoryFormat::ChannelsLast), "vmamba cpu scan: y is not channel-last");
  at::Tensor last = at::empty({P.batch, K * P.Dch, P.N}, f32);
  at::Tensor states = save ? at::empty({P.batch, K, P.G * P.nblk, P.nchunks, P.N, W}, f32) : at::empty({0}, f32);
  P.y = y.data_ptr<float>();
  P.last = last.data_ptr<float>();
  P.save = save;
  P.states = save ? states.data_ptr<float>() : nullptr;
  if (P.L > 0) {
    run_forward(P);
  } else {
    last.zero_();
  }
  return {y, last, states};
}

// Returns du (fp32, like u), ddelta (fp32, like delta), dA partials (b, K*D, N), dB/dC partials
// (b, K*G, nsb, L, N), dD/dbias partials (b, K*D), dz (fp32, like z, or empty).
std::vector<at::Tensor> backward(const at::Tensor& dout, const c10::optional<at::Tensor>& dlast, const at::Tensor& u,
                                 const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bt,
                                 const at::Tensor& Ct, const c10::optional<at::Tensor>& Dv,
                                 const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& z,
                                 const at::Tensor& states, bool softplus, int64_t K, int64_t mode,
                                 bool follow_layouts, const c10::optional<at::Tensor>& dtw) {
  Problem P = make_problem(u, delta, A, Bt, Ct, Dv, bias, z, softplus, K, mode, follow_layouts, dtw);
  TORCH_CHECK((P.y_cl ? dout.is_contiguous(at::MemoryFormat::ChannelsLast) : dout.is_contiguous()) &&
                  dout.scalar_type() == at::kFloat && dout.sizes() == u.sizes(),
              "vmamba cpu scan: dout must be a float32 tensor shaped like u, in y's layout (channel-last for a "
              "channel-last x)");
  auto f32 = u.options().dtype(at::kFloat);
  // written by direction 0 first, as y in the forward, and in y's layout: channel-last for a
  // channel-last x, so the gradient meets x's producer (SS2D's activation and depthwise conv) in
  // the layout of its saved input (a mixed-layout silu backward ran 6x slower)
  at::Tensor du = P.y_cl ? at::empty(u.sizes(), f32, at::MemoryFormat::ChannelsLast) : at::empty(u.sizes(), f32);
  // d delta of the fused cross scan in delta's own channel-last layout when delta has one (SS2D's
  // step sizes come out of their projection so): the autograd graph then takes it back to the
  // projection's output without a transposing copy.
  at::Tensor ddelta;
  if (P.dtw) {  // projected step sizes: d delta (batch, K, D, H, W) with (K, batch, H, W, D) memory, the
                // layout the projection's backward products read as (K, batch * L, D)
    ddelta = at::empty({K, P.batch, P.H, P.Wd, P.Dch}, f32).permute({1, 0, 4, 2, 3});
    P.sd[0] = ddelta.stride(0); P.sd[1] = ddelta.stride(1); P.sd[2] = 1; P.sd[3] = ddelta.stride(4);
    P.dd_cl = true;
  } else {
    P.dd_cl = P.cross && follow_layouts && P.sd[2] == 1 && delta.is_non_overlapping_and_dense();
    ddelta = P.dd_cl ? at::empty_strided(delta.sizes(), delta.strides(), f32) : at::empty(delta.sizes(), f32);
  }
  at::Tensor dz = P.has_z ? at::empty(u.sizes(), f32) : at::empty({0}, f32);
  at::Tensor dAp = at::empty({P.batch, K * P.Dch, P.N}, f32);
  at::Tensor dDp = at::empty({P.batch, K * P.Dch}, f32);
  at::Tensor dbp = at::empty({P.batch, K * P.Dch}, f32);
  at::Tensor dBp = at::empty({P.batch, K * P.G, P.nsb, P.L, P.N}, f32);
  at::Tensor dCp = at::empty({P.batch, K * P.G, P.nsb, P.L, P.N}, f32);
  if (P.L == 0) {
    dAp.zero_();
    dDp.zero_();
    dbp.zero_();
    return {du, ddelta, dAp, dBp, dCp, dDp, dbp, dz};
  }
  TORCH_CHECK(states.numel() == P.batch * K * P.G * P.nblk * P.nchunks * P.N * W,
              "vmamba cpu scan: saved states do not match the inputs");
  at::Tensor dl;
  if (dlast.has_value() && dlast->defined() && dlast->numel()) {
    dl = dlast->to(at::kFloat).contiguous();
    P.dlast = dl.data_ptr<float>();
  }
  P.states = states.data_ptr<float>();
  P.dout = dout.data_ptr<float>();
  P.du = du.data_ptr<float>();
  P.ddelta = ddelta.data_ptr<float>();
  P.dz = P.has_z ? dz.data_ptr<float>() : nullptr;
  P.dAp = dAp.data_ptr<float>();
  P.dDp = dDp.data_ptr<float>();
  P.dbiasp = dbp.data_ptr<float>();
  P.dBp = dBp.data_ptr<float>();
  P.dCp = dCp.data_ptr<float>();
  run_backward(P);
  return {du, ddelta, dAp, dBp, dCp, dDp, dbp, dz};
}

int64_t lanes_per_vector() { return W; }
int64_t chunk_steps() { return T; }
int64_t max_state() { return MAXN; }
bool built_with_openmp() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

}  // namespace

// Registered as plain torch ops (no pybind11, so the build only needs light headers); the Python
// side (scan_cpu.py) wraps them in the vmamba:: custom ops that carry the fake and autograd parts.
TORCH_LIBRARY(vmamba_cpu_kernel, m) {
  m.def("forward", &forward);
  m.def("backward", &backward);
  m.def("lanes", &lanes_per_vector);
  m.def("chunk", &chunk_steps);
  m.def("max_state", &max_state);
  m.def("openmp", &built_with_openmp);
}
