// Depthwise 3x3 convolution (stride 1, padding 1) of channel-last maps, forward and backward, for
// vmamba's CPU kernels (SS2D's convolution). oneDNN's depthwise convolution costs tens of
// microseconds per call whatever the size, and its backward several times its forward: on the
// small maps of a batch-1 VMamba that is several times this kernel's time (docs/cpu.md,
// "Depthwise convolutions").
//
// Layout: x (B, H, Wd, C) contiguous, channels innermost, so the W channels of a vector are the
// lanes of one load; the taps k (9, C), tap-major (row i, column j at i * 3 + j).
//
// Forward: parallel over output rows; per row and channel vector the nine taps stay in registers
// and PB neighbouring outputs are computed together, each input vector loaded once per kernel row
// for all of them. The input gradient is the same computation with the taps flipped. The weight
// gradient (and the bias gradient) is parallel over channel vectors, each summing over every
// pixel of the batch in a fixed order, so it does not depend on the thread count.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>
#include <tuple>

#include "vec.h"

namespace {

using namespace vmamba_cpu;

#if defined(__AVX512F__)
constexpr int PB = 4;  // outputs per register block along a row (32 vector registers)
#else
constexpr int PB = 2;  // 16 or fewer vector registers: 9 taps, PB sums and PB + 2 inputs must fit
#endif

struct Map {
  int64_t B, H, Wd, C;
};

// One output vector (channels c..c+W of pixel (h, w) of image xb), every tap bounds-checked.
static inline vf edge_pixel(const float* xb, const float* k, vf acc, int64_t h, int64_t w, const Map& m, int64_t c) {
  for (int i = 0; i < 3; ++i) {
    const int64_t hh = h + i - 1;
    if (hh < 0 || hh >= m.H) continue;
    for (int j = 0; j < 3; ++j) {
      const int64_t ww = w + j - 1;
      if (ww >= 0 && ww < m.Wd) acc += loadu(xb + (hh * m.Wd + ww) * m.C + c) * loadu(k + (i * 3 + j) * m.C + c);
    }
  }
  return acc;
}

// y = depthwise 3x3 of x with taps k, plus bias (may be null).
void conv_rows(const float* x, const float* k, const float* bias, float* y, const Map& m) {
  const int64_t C = m.C, Wd = m.Wd, CV = C / W * W;
  at::parallel_for(0, m.B * m.H, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / m.H, h = r % m.H;
      const float* xb = x + b * m.H * Wd * C;
      float* yrow = y + r * Wd * C;
      const int i0 = h == 0 ? 1 : 0, i1 = h == m.H - 1 ? 2 : 3;  // kernel rows inside the map
      for (int64_t c = 0; c < CV; c += W) {
        vf kv[9];
        for (int t = 0; t < 9; ++t) kv[t] = loadu(k + t * C + c);
        const vf bv = bias ? loadu(bias + c) : vset(0.f);
        storeu(yrow + c, edge_pixel(xb, k, bv, h, 0, m, c));
        int64_t w = 1;
        for (; w + PB < Wd; w += PB) {  // outputs w .. w + PB - 1 have both neighbours
          vf acc[PB];
          for (int p = 0; p < PB; ++p) acc[p] = bv;
          for (int i = i0; i < i1; ++i) {
            const float* xr = xb + ((h + i - 1) * Wd + (w - 1)) * C + c;
            vf xs[PB + 2];
#pragma GCC unroll 6
            for (int q = 0; q < PB + 2; ++q) xs[q] = loadu(xr + q * C);
#pragma GCC unroll 4
            for (int p = 0; p < PB; ++p)
              acc[p] += xs[p] * kv[i * 3] + xs[p + 1] * kv[i * 3 + 1] + xs[p + 2] * kv[i * 3 + 2];
          }
          for (int p = 0; p < PB; ++p) storeu(yrow + (w + p) * C + c, acc[p]);
        }
        for (; w < Wd; ++w) storeu(yrow + w * C + c, edge_pixel(xb, k, bv, h, w, m, c));
      }
      for (int64_t c = CV; c < C; ++c)  // channels after the last full vector
        for (int64_t w = 0; w < Wd; ++w) {
          float acc = bias ? bias[c] : 0.f;
          for (int i = i0; i < i1; ++i)
            for (int j = 0; j < 3; ++j) {
              const int64_t ww = w + j - 1;
              if (ww >= 0 && ww < Wd) acc += xb[((h + i - 1) * Wd + ww) * C + c] * k[(i * 3 + j) * C + c];
            }
          yrow[w * C + c] = acc;
        }
    }
  });
}

// dk (9, C) = sum over the batch's pixels of dy times the shifted x; db (C) = sum of dy (if db).
void weight_grad(const float* dy, const float* x, float* dk, float* db, const Map& m) {
  const int64_t C = m.C, Wd = m.Wd, H = m.H;
  at::parallel_for(0, (C + W - 1) / W, 1, [&](int64_t v0, int64_t v1) {
    for (int64_t v = v0; v < v1; ++v) {
      const int64_t c = v * W;
      if (c + W > C) {  // the channels after the last full vector, one at a time
        for (int64_t cc = c; cc < C; ++cc) {
          float acc[9] = {0.f};
          float accb = 0.f;
          for (int64_t b = 0; b < m.B; ++b)
            for (int64_t h = 0; h < H; ++h)
              for (int64_t w = 0; w < Wd; ++w) {
                const float g = dy[((b * H + h) * Wd + w) * C + cc];
                accb += g;
                for (int i = 0; i < 3; ++i)
                  for (int j = 0; j < 3; ++j) {
                    const int64_t hh = h + i - 1, ww = w + j - 1;
                    if (hh >= 0 && hh < H && ww >= 0 && ww < Wd) acc[i * 3 + j] += g * x[((b * H + hh) * Wd + ww) * C + cc];
                  }
              }
          for (int t = 0; t < 9; ++t) dk[t * C + cc] = acc[t];
          if (db) db[cc] = accb;
        }
        continue;
      }
      vf acc[9];
      for (int t = 0; t < 9; ++t) acc[t] = vset(0.f);
      vf accb = vset(0.f);
      for (int64_t b = 0; b < m.B; ++b)
        for (int64_t h = 0; h < H; ++h) {
          const int i0 = h == 0 ? 1 : 0, i1 = h == H - 1 ? 2 : 3;
          const float* grow = dy + (b * H + h) * Wd * C + c;
          const float* xb = x + b * H * Wd * C + c;
          auto edge = [&](int64_t w) {
            const vf g = loadu(grow + w * C);
            accb += g;
            for (int i = i0; i < i1; ++i)
              for (int j = 0; j < 3; ++j) {
                const int64_t ww = w + j - 1;
                if (ww >= 0 && ww < Wd) acc[i * 3 + j] += g * loadu(xb + ((h + i - 1) * Wd + ww) * C);
              }
          };
          edge(0);
          int64_t w = 1;
          for (; w + PB < Wd; w += PB) {
            vf g[PB];
#pragma GCC unroll 4
            for (int p = 0; p < PB; ++p) {
              g[p] = loadu(grow + (w + p) * C);
              accb += g[p];
            }
            for (int i = i0; i < i1; ++i) {
              const float* xr = xb + ((h + i - 1) * Wd + (w - 1)) * C;
              vf xs[PB + 2];
#pragma GCC unroll 6
              for (int q = 0; q < PB + 2; ++q) xs[q] = loadu(xr + q * C);
              vf a0 = acc[i * 3], a1 = acc[i * 3 + 1], a2 = acc[i * 3 + 2];
#pragma GCC unroll 4
              for (int p = 0; p < PB; ++p) {
                a0 += g[p] * xs[p];
                a1 += g[p] * xs[p + 1];
                a2 += g[p] * xs[p + 2];
              }
              acc[i * 3] = a0;
              acc[i * 3 + 1] = a1;
              acc[i * 3 + 2] = a2;
            }
          }
          for (; w < Wd; ++w) edge(w);
        }
      for (int t = 0; t < 9; ++t) storeu(dk + t * C + c, acc[t]);
      if (db) storeu(db + c, accb);
    }
  });
}

Map check_map(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == at::kFloat && x.device().is_cpu() && x.is_contiguous(),
              "vmamba depthwise conv: ", name, " must be a contiguous (B, H, W, C) float32 CPU tensor, got ",
              x.sizes(), " ", x.scalar_type());
  return Map{x.size(0), x.size(1), x.size(2), x.size(3)};
}

void check_vector(const at::Tensor& t, int64_t rows, int64_t C, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.device().is_cpu() && t.is_contiguous() &&
                  t.numel() == rows * C && t.size(-1) == C,
              "vmamba depthwise conv: ", name, " must be a contiguous float32 CPU tensor of ", rows * C,
              " values, last dimension ", C, ", got ", t.sizes());
}

// x (B, H, W, C), taps (9, C), bias (C) or None -> y (B, H, W, C)
at::Tensor depthwise3x3(const at::Tensor& x, const at::Tensor& taps, const std::optional<at::Tensor>& bias) {
  const Map m = check_map(x, "x");
  check_vector(taps, 9, m.C, "taps");
  if (bias) check_vector(*bias, 1, m.C, "bias");
  at::Tensor y = at::empty(x.sizes(), x.options());
  if (x.numel() > 0)
    conv_rows(x.data_ptr<float>(), taps.data_ptr<float>(), bias ? bias->data_ptr<float>() : nullptr,
              y.data_ptr<float>(), m);
  return y;
}

// dy, x (B, H, W, C) -> (d taps (9, C), d bias (C) if need_bias else an undefined tensor)
std::tuple<at::Tensor, at::Tensor> depthwise3x3_weight_grad(const at::Tensor& dy, const at::Tensor& x, bool need_bias) {
  const Map m = check_map(x, "x");
  check_map(dy, "dy");
  TORCH_CHECK(dy.sizes() == x.sizes(), "vmamba depthwise conv: dy ", dy.sizes(), " and x ", x.sizes(), " differ");
  at::Tensor dk = at::empty({9, m.C}, x.options());
  at::Tensor db = need_bias ? at::empty({m.C}, x.options()) : at::Tensor();
  if (x.numel() > 0) {
    weight_grad(dy.data_ptr<float>(), x.data_ptr<float>(), dk.data_ptr<float>(), need_bias ? db.data_ptr<float>() : nullptr, m);
  } else {
    dk.zero_();
    if (need_bias) db.zero_();
  }
  return {dk, db};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(vmamba_cpu_kernel, m) {
  m.def("depthwise3x3", &depthwise3x3);
  m.def("depthwise3x3_weight_grad", &depthwise3x3_weight_grad);
}
