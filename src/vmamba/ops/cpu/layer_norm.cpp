// LayerNorm over the last dimension of a contiguous float32 tensor, forward and backward, for
// vmamba's CPU kernels. ATen's CPU kernel spends most of its time around rows of VMamba's sizes
// (C = 48 .. 1536): this one keeps a row in vectors from L1 and reduces with lane sums: 1.3-1.9x
// ATen's forward and mostly 1.3-2x its backward on the inputs the models send it (docs/cpu.md,
// "LayerNorm").
//
// Forward: y = (x - mean) * rstd * weight + bias per row, mean and rstd = 1 / sqrt(var + eps)
// (biased variance, two passes over the row: the mean, then the centred squares) returned for
// the backward, as ATen's native_layer_norm returns them. Parallel over rows.
//
// Backward, with xhat = (x - mean) * rstd and gw = dy * weight:
//   dx = rstd * (gw - mean_c(gw) - xhat * mean_c(gw * xhat)),
//   dweight = sum over rows of dy * xhat, dbias = sum over rows of dy.
// Rows are cut into blocks of ROWS; each block sums its rows' dweight / dbias into its own partial
// row and the partials are summed in block order, so results do not depend on the thread count.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <tuple>

#include "vec.h"

namespace {

using namespace vmamba_cpu;

constexpr int64_t ROWS = 16;  // rows per partial-sum block of the backward

void forward_row(const float* x, const float* w, const float* b, float* y, int64_t C, float eps, float& mean_out,
                 float& rstd_out) {
  const int64_t CV = C / W * W;
  vf s0 = vset(0.f), s1 = vset(0.f);
  int64_t c = 0;
  for (; c + 2 * W <= CV; c += 2 * W) {
    s0 += loadu(x + c);
    s1 += loadu(x + c + W);
  }
  for (; c < CV; c += W) s0 += loadu(x + c);
  float sum = lane_sum(s0 + s1);
  for (; c < C; ++c) sum += x[c];
  const float mean = sum / C;
  const vf m = vset(mean);
  vf q0 = vset(0.f), q1 = vset(0.f);
  for (c = 0; c + 2 * W <= CV; c += 2 * W) {
    const vf d0 = loadu(x + c) - m, d1 = loadu(x + c + W) - m;
    q0 += d0 * d0;
    q1 += d1 * d1;
  }
  for (; c < CV; c += W) {
    const vf d = loadu(x + c) - m;
    q0 += d * d;
  }
  float sq = lane_sum(q0 + q1);
  for (; c < C; ++c) sq += (x[c] - mean) * (x[c] - mean);
  const float rstd = 1.0f / std::sqrt(sq / C + eps);
  const vf r = vset(rstd);
  for (c = 0; c < CV; c += W) {
    vf v = (loadu(x + c) - m) * r;
    if (w) v *= loadu(w + c);
    if (b) v += loadu(b + c);
    storeu(y + c, v);
  }
  for (; c < C; ++c) {
    float v = (x[c] - mean) * rstd;
    if (w) v *= w[c];
    if (b) v += b[c];
    y[c] = v;
  }
  mean_out = mean;
  rstd_out = rstd;
}

// dx of one row (if dx), and its dy * xhat and dy added into the partial rows pw / pb (if pw).
void backward_row(const float* g, const float* x, float mean, float rstd, const float* w, float* dx, float* pw,
                  float* pb, int64_t C) {
  const int64_t CV = C / W * W;
  const vf m = vset(mean), r = vset(rstd);
  vf sa = vset(0.f), sb = vset(0.f);
  int64_t c = 0;
  for (; c < CV; c += W) {
    const vf gv = loadu(g + c), xh = (loadu(x + c) - m) * r;
    if (pw) {
      storeu(pw + c, loadu(pw + c) + gv * xh);
      storeu(pb + c, loadu(pb + c) + gv);
    }
    const vf gw = w ? gv * loadu(w + c) : gv;
    sa += gw;
    sb += gw * xh;
  }
  float a = lane_sum(sa), b = lane_sum(sb);
  for (; c < C; ++c) {
    const float xh = (x[c] - mean) * rstd, gw = w ? g[c] * w[c] : g[c];
    if (pw) {
      pw[c] += g[c] * xh;
      pb[c] += g[c];
    }
    a += gw;
    b += gw * xh;
  }
  if (!dx) return;
  const float ma = a / C, mb = b / C;
  const vf va = vset(ma), vb = vset(mb);
  for (c = 0; c < CV; c += W) {
    const vf gv = loadu(g + c), xh = (loadu(x + c) - m) * r;
    const vf gw = w ? gv * loadu(w + c) : gv;
    storeu(dx + c, r * (gw - va - xh * vb));
  }
  for (; c < C; ++c) {
    const float xh = (x[c] - mean) * rstd, gw = w ? g[c] * w[c] : g[c];
    dx[c] = rstd * (gw - ma - xh * mb);
  }
}

void check_param(const std::optional<at::Tensor>& t, int64_t C, const char* name) {
  if (!t) return;
  TORCH_CHECK(t->scalar_type() == at::kFloat && t->device().is_cpu() && t->is_contiguous() && t->dim() == 1 &&
                  t->size(0) == C,
              "vmamba layer_norm: ", name, " must be a contiguous float32 CPU tensor of shape (", C, "), got ",
              t->sizes(), " ", t->scalar_type());
}

int64_t check_rows(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.dim() >= 1 && x.scalar_type() == at::kFloat && x.device().is_cpu() && x.is_contiguous(),
              "vmamba layer_norm: ", name, " must be a contiguous float32 CPU tensor, got ", x.sizes(), " ",
              x.scalar_type());
  return x.size(-1);
}

// x (..., C), weight (C) or None, bias (C) or None -> (y like x, mean (rows), rstd (rows))
std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                                                         const std::optional<at::Tensor>& bias, double eps) {
  const int64_t C = check_rows(x, "x");
  check_param(weight, C, "weight");
  check_param(bias, C, "bias");
  const int64_t N = C > 0 ? x.numel() / C : 0;
  at::Tensor y = at::empty(x.sizes(), x.options());
  at::Tensor mean = at::empty({N}, x.options()), rstd = at::empty({N}, x.options());
  if (N == 0 || C == 0) return {y, mean, rstd};
  const float* xp = x.data_ptr<float>();
  const float* wp = weight ? weight->data_ptr<float>() : nullptr;
  const float* bp = bias ? bias->data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  float* mp = mean.data_ptr<float>();
  float* rp = rstd.data_ptr<float>();
  const float e = static_cast<float>(eps);
  at::parallel_for(0, N, std::max<int64_t>(1, 8192 / C), [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) forward_row(xp + i * C, wp, bp, yp + i * C, C, e, mp[i], rp[i]);
  });
  return {y, mean, rstd};
}

// dy, x (..., C), mean, rstd (rows), weight (C) or None -> (dx or undefined, dweight or undefined,
// dbias or undefined), as asked by need_dx / need_dweight / need_dbias
std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_backward(
    const at::Tensor& dy, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& rstd,
    const std::optional<at::Tensor>& weight, bool need_dx, bool need_dweight, bool need_dbias) {
  const int64_t C = check_rows(x, "x");
  check_rows(dy, "dy");
  TORCH_CHECK(dy.sizes() == x.sizes(), "vmamba layer_norm: dy ", dy.sizes(), " and x ", x.sizes(), " differ");
  check_param(weight, C, "weight");
  const int64_t N = C > 0 ? x.numel() / C : 0;
  TORCH_CHECK(mean.numel() == N && rstd.numel() == N && mean.is_contiguous() && rstd.is_contiguous() &&
                  mean.scalar_type() == at::kFloat && rstd.scalar_type() == at::kFloat,
              "vmamba layer_norm: mean and rstd must be contiguous float32 tensors of ", N, " values");
  at::Tensor dx = need_dx ? at::empty(x.sizes(), x.options()) : at::Tensor();
  const bool params = need_dweight || need_dbias;
  const int64_t blocks = (N + ROWS - 1) / ROWS;
  at::Tensor partial = params ? at::zeros({blocks, 2, C}, x.options()) : at::Tensor();
  if (N > 0 && C > 0 && (need_dx || params)) {
    const float* gp = dy.data_ptr<float>();
    const float* xp = x.data_ptr<float>();
    const float* mp = mean.data_ptr<float>();
    const float* rp = rstd.data_ptr<float>();
    const float* wp = weight ? weight->data_ptr<float>() : nullptr;
    float* dxp = need_dx ? dx.data_ptr<float>() : nullptr;
    float* pp = params ? partial.data_ptr<float>() : nullptr;
    at::parallel_for(0, blocks, std::max<int64_t>(1, 512 / (C * ROWS) + 1), [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) {
        float* pw = params ? pp + k * 2 * C : nullptr;
        for (int64_t i = k * ROWS; i < std::min(N, (k + 1) * ROWS); ++i)
          backward_row(gp + i * C, xp + i * C, mp[i], rp[i], wp, dxp ? dxp + i * C : nullptr, pw,
                       pw ? pw + C : nullptr, C);
      }
    });
  }
  at::Tensor dweight, dbias;
  if (params) {
    at::Tensor sums = partial.sum(0);  // block order: the same at every thread count
    if (need_dweight) dweight = sums[0];
    if (need_dbias) dbias = sums[1];
  }
  return {dx, dweight, dbias};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(vmamba_cpu_kernel, m) {
  m.def("layer_norm", &layer_norm);
  m.def("layer_norm_backward", &layer_norm_backward);
}
