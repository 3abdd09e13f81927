// fastconv::_conv2d_relu_cpu: out = relu?(conv2d(x, weight) + bias + residual), on the CPU.
//
// Implicit GEMM, tile by tile. The output pixels of the whole batch, M = N*OH*OW, are cut into
// tiles of P pixels (a tile may span images, so late layers with 7x7 maps still get wide GEMMs).
// For each (tile, group) task one thread
//   1. packs the tile's im2col operand into a small per-thread buffer sized to stay in L2,
//   2. multiplies it with the group's weights by a BLAS GEMM (at::cpu::mm_out on from_blob views:
//      MKL where torch has it; inside at::parallel_for MKL runs single-threaded),
//   3. writes the GEMM result back through out's strides with the epilogue fused: + bias,
//      + residual, ReLU, and one rounding to out's dtype (fp16/bf16 compute in fp32).
// Two operand layouts, picked from x's memory format:
//   NCHW:          col[k][p], k = (ci, kh, kw): rows are runs of one input row (memcpy for
//                  stride 1); C[cog][p] = W[cog][k] @ col[k][p].
//   channels_last: col[p][k], k = (kh, kw, ci): each (pixel, tap) is a contiguous copy of the
//                  group's channels; C[p][cog] = col[p][k] @ W'[k][cog], W' = weight permuted to
//                  (kh, kw, ci) and read transposed (free when the weight is channels_last).
//                  1x1 stride-1 unpadded convs skip packing: x itself is the [pixels, C] matrix.
// All index arithmetic is int64_t.
#include "conv2d_relu_common.h"
#include "cpu/cpu_kernel_util.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm_cpu_dispatch.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace fastconv {
namespace {

// Byte budget of one task's im2col buffer. The default keeps col (plus MKL's packed panels) in a
// core's L2 (2 MiB on the CI machine). FASTCONV_CPU_TILE_BYTES overrides it, read on every call
// (a getenv is noise next to a conv) so benchmarks can tune it and tests can force tiny tiles
// that cross rows and images.
int64_t tile_bytes() {
  const char* env = std::getenv("FASTCONV_CPU_TILE_BYTES");
  const int64_t v = env ? std::atoll(env) : 0;
  return v > 0 ? v : int64_t(768) * 1024;
}

// A run of consecutive output pixels of one tile that share (n, oh): ow in [ow0, ow1); j0 is the
// run's first column in the tile. Walking runs avoids a division per pixel.
struct Run {
  int64_t n, oh, ow0, ow1, j0;
};

void tile_runs(const Conv2dGeometry& g, int64_t p0, int64_t p1, std::vector<Run>& runs) {
  runs.clear();
  const int64_t hw = g.oh * g.ow;
  int64_t p = p0;
  while (p < p1) {
    const int64_t n = p / hw, r = p % hw, oh = r / g.ow, ow = r % g.ow;
    const int64_t len = std::min(g.ow - ow, p1 - p);
    runs.push_back({n, oh, ow, ow + len, p - p0});
    p += len;
  }
}

template <typename T>
struct Strided4 {
  T* data;
  int64_t s0, s1, s2, s3;
  explicit Strided4(const at::Tensor& t)
      : data(t.data_ptr<std::remove_const_t<T>>()), s0(t.stride(0)), s1(t.stride(1)), s2(t.stride(2)),
        s3(t.stride(3)) {}
};

// NCHW packing: col[k * P + j] for k = (ci, kh, kw) of group grp, j the tile column.
template <typename acc_t>
void pack_nchw(const Conv2dGeometry& g, const Strided4<const acc_t>& x, int64_t grp, const std::vector<Run>& runs,
               int64_t P, acc_t* col) {
  for (int64_t ci = 0; ci < g.cg; ++ci) {
    const acc_t* xc = x.data + (grp * g.cg + ci) * x.s1;
    for (int64_t kh = 0; kh < g.kh; ++kh) {
      for (int64_t kw = 0; kw < g.kw; ++kw) {
        acc_t* row = col + ((ci * g.kh + kh) * g.kw + kw) * P;
        // iw = ow * sw + woff is inside [0, W) exactly for ow in [lo, hi).
        const int64_t woff = kw * g.dw - g.pl;
        const int64_t lo = woff >= 0 ? 0 : ceil_div(-woff, g.sw);
        const int64_t hi = (g.w - 1 - woff) < 0 ? 0 : (g.w - 1 - woff) / g.sw + 1;
        for (const Run& r : runs) {
          acc_t* dst = row + r.j0 - r.ow0;  // indexed by ow
          const int64_t ih = r.oh * g.sh - g.pt + kh * g.dh;
          if (ih < 0 || ih >= g.h) {
            std::fill(dst + r.ow0, dst + r.ow1, acc_t(0));
            continue;
          }
          const int64_t a = std::min(std::max(r.ow0, lo), r.ow1);
          const int64_t b = std::max(std::min(r.ow1, hi), a);
          std::fill(dst + r.ow0, dst + a, acc_t(0));
          std::fill(dst + b, dst + r.ow1, acc_t(0));
          const acc_t* src = xc + r.n * x.s0 + ih * x.s2;
          if (g.sw * x.s3 == 1) {
            std::memcpy(dst + a, src + a + woff, sizeof(acc_t) * (b - a));
          } else {
            const int64_t step = g.sw * x.s3;
            const acc_t* s = src + (a * g.sw + woff) * x.s3;
            for (int64_t ow = a; ow < b; ++ow, s += step) dst[ow] = *s;
          }
        }
      }
    }
  }
}

// channels_last packing: col[j * K + (kh * KW + kw) * cg + ci].
template <typename acc_t>
void pack_nhwc(const Conv2dGeometry& g, const Strided4<const acc_t>& x, int64_t grp, const std::vector<Run>& runs,
               acc_t* col) {
  const int64_t K = g.k();
  const int64_t cg = g.cg;
  const acc_t* xg = x.data + grp * cg * x.s1;
  for (const Run& r : runs) {
    for (int64_t ow = r.ow0; ow < r.ow1; ++ow) {
      acc_t* dst = col + (r.j0 + ow - r.ow0) * K;
      for (int64_t kh = 0; kh < g.kh; ++kh) {
        const int64_t ih = r.oh * g.sh - g.pt + kh * g.dh;
        acc_t* drow = dst + kh * g.kw * cg;
        if (ih < 0 || ih >= g.h) {
          std::fill(drow, drow + g.kw * cg, acc_t(0));
          continue;
        }
        const acc_t* srow = xg + r.n * x.s0 + ih * x.s2;
        for (int64_t kw = 0; kw < g.kw; ++kw) {
          const int64_t iw = ow * g.sw - g.pl + kw * g.dw;
          acc_t* d = drow + kw * cg;
          if (iw < 0 || iw >= g.w) {
            std::fill(d, d + cg, acc_t(0));
          } else if (x.s1 == 1) {
            std::memcpy(d, srow + iw * x.s3, sizeof(acc_t) * cg);
          } else {
            const acc_t* s = srow + iw * x.s3;
            for (int64_t ci = 0; ci < cg; ++ci) d[ci] = s[ci * x.s1];
          }
        }
      }
    }
  }
}

template <typename scalar_t, typename acc_t>
inline acc_t epilogue(acc_t v, const scalar_t* res, bool relu) {
  if (res) v += static_cast<acc_t>(*res);
  return (relu && v < acc_t(0)) ? acc_t(0) : v;  // NaN stays NaN, as torch.relu
}

// Write-back of C[co][j] (NCHW operand layout).
template <typename scalar_t, typename acc_t>
void store_nchw(const Conv2dGeometry& g, const acc_t* cbuf, int64_t P, const acc_t* bias, int64_t grp,
                const std::vector<Run>& runs, const Strided4<const scalar_t>* res, const Strided4<scalar_t>& out,
                bool relu) {
  for (int64_t co = 0; co < g.cog; ++co) {
    const int64_t oc = grp * g.cog + co;
    const acc_t b = bias[oc];
    const acc_t* crow = cbuf + co * P;
    for (const Run& r : runs) {
      const acc_t* c = crow + r.j0 - r.ow0;
      scalar_t* o = out.data + r.n * out.s0 + oc * out.s1 + r.oh * out.s2;
      if (res) {
        const scalar_t* q = res->data + r.n * res->s0 + oc * res->s1 + r.oh * res->s2;
        for (int64_t ow = r.ow0; ow < r.ow1; ++ow)
          o[ow * out.s3] = static_cast<scalar_t>(epilogue<scalar_t, acc_t>(c[ow] + b, q + ow * res->s3, relu));
      } else if (out.s3 == 1) {
        for (int64_t ow = r.ow0; ow < r.ow1; ++ow) {  // unit stride: vectorizes
          acc_t v = c[ow] + b;
          o[ow] = static_cast<scalar_t>((relu && v < acc_t(0)) ? acc_t(0) : v);
        }
      } else {
        for (int64_t ow = r.ow0; ow < r.ow1; ++ow)
          o[ow * out.s3] = static_cast<scalar_t>(epilogue<scalar_t, acc_t>(c[ow] + b, nullptr, relu));
      }
    }
  }
}

// Write-back of C[j][co] (channels_last operand layout).
template <typename scalar_t, typename acc_t>
void store_nhwc(const Conv2dGeometry& g, const acc_t* cbuf, const acc_t* bias, int64_t grp,
                const std::vector<Run>& runs, const Strided4<const scalar_t>* res, const Strided4<scalar_t>& out,
                bool relu) {
  const int64_t cog = g.cog;
  const acc_t* bg = bias + grp * cog;
  for (const Run& r : runs) {
    for (int64_t ow = r.ow0; ow < r.ow1; ++ow) {
      const acc_t* c = cbuf + (r.j0 + ow - r.ow0) * cog;
      scalar_t* o = out.data + r.n * out.s0 + r.oh * out.s2 + ow * out.s3 + grp * cog * out.s1;
      if (res) {
        const scalar_t* q = res->data + r.n * res->s0 + r.oh * res->s2 + ow * res->s3 + grp * cog * res->s1;
        if (out.s1 == 1 && res->s1 == 1) {
          for (int64_t co = 0; co < cog; ++co) {
            acc_t v = c[co] + bg[co] + static_cast<acc_t>(q[co]);
            o[co] = static_cast<scalar_t>((relu && v < acc_t(0)) ? acc_t(0) : v);
          }
        } else {
          for (int64_t co = 0; co < cog; ++co)
            o[co * out.s1] =
                static_cast<scalar_t>(epilogue<scalar_t, acc_t>(c[co] + bg[co], q + co * res->s1, relu));
        }
      } else if (out.s1 == 1) {
        for (int64_t co = 0; co < cog; ++co) {
          acc_t v = c[co] + bg[co];
          o[co] = static_cast<scalar_t>((relu && v < acc_t(0)) ? acc_t(0) : v);
        }
      } else {
        for (int64_t co = 0; co < cog; ++co)
          o[co * out.s1] = static_cast<scalar_t>(epilogue<scalar_t, acc_t>(c[co] + bg[co], nullptr, relu));
      }
    }
  }
}

template <typename scalar_t>
void conv2d_relu_impl(const Conv2dGeometry& g, const at::Tensor& x, const at::Tensor& weight,
                      const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual, bool relu,
                      const at::Tensor& out) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;

  // Half inputs are widened once up front (O(input), small next to the conv's O(input * K)).
  // .to() keeps the strides of dense tensors, so channels_last stays channels_last.
  const at::Tensor xc = x.scalar_type() == acc_type ? x : x.to(acc_type);
  const bool cl = g.c > 1 ? xc.stride(1) == 1 : (out.stride(1) == 1 && g.co > 1);
  const at::Tensor wc = weight.to(acc_type);
  // Weight as a row-major [Co, K] matrix with K in the packing order; contiguous() is free when
  // the weight already has that layout (NCHW weight for NCHW, channels_last weight for NHWC).
  const at::Tensor wmat = cl ? wc.permute({0, 2, 3, 1}).contiguous() : wc.contiguous();
  const at::Tensor bvec = (bias.has_value() && bias->defined()) ? bias->to(acc_type).contiguous()
                                                               : at::zeros({g.co}, xc.options().dtype(acc_type));
  const bool has_res = residual.has_value() && residual->defined();

  const Strided4<const acc_t> xv(xc);
  const Strided4<scalar_t> ov(out);
  std::optional<Strided4<const scalar_t>> rv;
  if (has_res) rv.emplace(*residual);
  const acc_t* wptr = wmat.data_ptr<acc_t>();
  const acc_t* bptr = bvec.data_ptr<acc_t>();

  const int64_t K = g.k();
  const int64_t M = g.n * g.oh * g.ow;
  const bool pointwise = g.kh == 1 && g.kw == 1 && g.sh == 1 && g.sw == 1 && g.pt == 0 && g.pl == 0 &&
                         g.oh == g.h && g.ow == g.w;
  // channels_last 1x1: when pixels are evenly spaced across the batch, x is the [M, C] matrix.
  const bool direct_nhwc = cl && pointwise && xv.s1 == 1 && xv.s2 == g.w * xv.s3 && xv.s0 == g.h * xv.s2;
  // NCHW 1x1: x[n] is the [C, H*W] matrix of image n; used for tiles inside one image.
  const bool direct_nchw = !cl && pointwise && xv.s3 == 1 && xv.s2 == g.w;

  const int64_t nthreads = at::get_num_threads();
  const int64_t P_budget = tile_bytes() / int64_t(sizeof(acc_t)) / std::max<int64_t>(K, 1);

  // Schedule. "tiles" (the default, below) gives each thread whole (tile, group) GEMMs with
  // single-threaded BLAS: one synchronization per call, everything in L2 - right when there are
  // many pixels per weight. But each tile's GEMM re-reads (and BLAS re-packs) the group's whole
  // weight, so when the L2 budget allows only narrow tiles (K large: ResNet's 256- and
  // 512-channel 3x3s, 2.3 and 9.4 MB of weights) that traffic dominates; such layers get wide
  // tiles instead, one per thread (the col buffer then lives in L3).
  // "whole" (FASTCONV_CPU_SCHEDULE=whole) packs all M pixels in parallel, runs one GEMM per group
  // with BLAS's own threading and the epilogue in parallel. Single-core it costs the same as wide
  // tiles, but its three synchronizations per call made it 2x slower on the shared 2-core CI
  // machine (a descheduled thread stalls every barrier; benchmarks/RESULTS_cpu_conv.md), so it
  // is opt-in. FASTCONV_CPU_SCHEDULE=tiles keeps the L2-sized tiles even for heavy weights.
  const char* sched_env = std::getenv("FASTCONV_CPU_SCHEDULE");
  const std::string sched = sched_env ? sched_env : "";
  const bool whole = sched == "whole";
  const bool weight_heavy = sched != "tiles" && P_budget < 128 && P_budget < M;
  if (whole) {
    const auto opts = at::TensorOptions().dtype(acc_type);
    at::Tensor col_t = direct_nhwc ? at::Tensor() : at::empty({M * std::max<int64_t>(K, 1)}, opts);
    at::Tensor c_t = at::empty({M * g.cog}, opts);
    acc_t* col = direct_nhwc ? nullptr : col_t.data_ptr<acc_t>();
    acc_t* cbuf = c_t.data_ptr<acc_t>();
    const int64_t grain = 16;
    for (int64_t grp = 0; grp < g.groups; ++grp) {
      const acc_t* wg = wptr + grp * g.cog * K;
      at::Tensor c = cl ? matrix<acc_t>(cbuf, M, g.cog, g.cog, 1) : matrix<acc_t>(cbuf, g.cog, M, M, 1);
      if (K == 0) {
        c.zero_();
      } else {
        if (!direct_nhwc) {
          at::parallel_for(0, M, grain, [&](int64_t b, int64_t e) {
            std::vector<Run> runs;
            tile_runs(g, b, e, runs);
            if (cl) {
              pack_nhwc<acc_t>(g, xv, grp, runs, col + b * K);
            } else {
              pack_nchw<acc_t>(g, xv, grp, runs, M, col + b);
            }
          });
        }
        if (cl) {
          at::Tensor a = direct_nhwc ? matrix<acc_t>(xv.data + grp * g.cg, M, K, xv.s3, 1) : matrix<acc_t>(col, M, K, K, 1);
          at::cpu::mm_out(c, a, matrix<acc_t>(wg, K, g.cog, 1, K));
        } else {
          at::cpu::mm_out(c, matrix<acc_t>(wg, g.cog, K, K, 1), matrix<acc_t>(col, K, M, M, 1));
        }
      }
      at::parallel_for(0, M, grain, [&](int64_t b, int64_t e) {
        std::vector<Run> runs;
        tile_runs(g, b, e, runs);
        if (cl) {
          store_nhwc<scalar_t, acc_t>(g, cbuf + b * g.cog, bptr, grp, runs, rv ? &*rv : nullptr, ov, relu);
        } else {
          store_nchw<scalar_t, acc_t>(g, cbuf + b, M, bptr, grp, runs, rv ? &*rv : nullptr, ov, relu);
        }
      });
    }
    return;
  }

  // Tile width P: the col buffer (K x P) fits the byte budget; at least 16 columns so the GEMM
  // stays efficient. With few tiles, round their count up to a multiple of the thread count so
  // no thread idles through the last round.
  int64_t P = std::min(std::max<int64_t>(16, P_budget), M);
  if (weight_heavy) {
    // one tile per thread (and group), as long as the col buffer stays within 16 MiB
    const int64_t cap = std::max<int64_t>(16, (int64_t(16) << 20) / int64_t(sizeof(acc_t)) / std::max<int64_t>(K, 1));
    P = std::min({std::max(P, ceil_div(M, nthreads)), cap, M});
  }
  int64_t ntiles = ceil_div(M, P);
  if (ntiles * g.groups < 8 * nthreads && ntiles * g.groups % nthreads != 0) {
    const int64_t tasks = ceil_div(ntiles * g.groups, nthreads) * nthreads;
    ntiles = std::min(M, ceil_div(tasks, g.groups));
    P = ceil_div(M, ntiles);
    ntiles = ceil_div(M, P);
  }
  const int64_t ntasks = ntiles * g.groups;

  at::parallel_for(0, ntasks, 1, [&](int64_t begin, int64_t end) {
    const auto opts = at::TensorOptions().dtype(acc_type);
    const bool need_col = !direct_nhwc;
    at::Tensor col_t = need_col ? at::empty({P * std::max<int64_t>(K, 1)}, opts) : at::Tensor();
    at::Tensor c_t = at::empty({P * g.cog}, opts);
    acc_t* col = need_col ? col_t.data_ptr<acc_t>() : nullptr;
    acc_t* cbuf = c_t.data_ptr<acc_t>();
    std::vector<Run> runs;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t tile = task / g.groups, grp = task % g.groups;
      const int64_t p0 = tile * P, p1 = std::min(M, p0 + P), np = p1 - p0;
      tile_runs(g, p0, p1, runs);
      const acc_t* wg = wptr + grp * g.cog * K;
      if (cl) {
        at::Tensor c = matrix<acc_t>(cbuf, np, g.cog, g.cog, 1);
        if (K == 0) {
          c.zero_();
        } else {
          at::Tensor a = direct_nhwc ? matrix<acc_t>(xv.data + p0 * xv.s3 + grp * g.cg, np, K, xv.s3, 1)
                                     : (pack_nhwc<acc_t>(g, xv, grp, runs, col), matrix<acc_t>(col, np, K, K, 1));
          at::cpu::mm_out(c, a, matrix<acc_t>(wg, K, g.cog, 1, K));
        }
        store_nhwc<scalar_t, acc_t>(g, cbuf, bptr, grp, runs, rv ? &*rv : nullptr, ov, relu);
      } else {
        at::Tensor c = matrix<acc_t>(cbuf, g.cog, np, np, 1);
        if (K == 0) {
          c.zero_();
        } else {
          at::Tensor b;
          if (direct_nchw && runs.front().n == runs.back().n) {
            const Run& r = runs.front();
            b = matrix<acc_t>(xv.data + r.n * xv.s0 + grp * g.cg * xv.s1 + r.oh * g.w + r.ow0, K, np, xv.s1, 1);
          } else {
            pack_nchw<acc_t>(g, xv, grp, runs, np, col);
            b = matrix<acc_t>(col, K, np, np, 1);
          }
          at::cpu::mm_out(c, matrix<acc_t>(wg, g.cog, K, K, 1), b);
        }
        store_nchw<scalar_t, acc_t>(g, cbuf, np, bptr, grp, runs, rv ? &*rv : nullptr, ov, relu);
      }
    }
  });
}

void conv2d_relu_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                     const std::optional<at::Tensor>& residual, at::IntArrayRef stride, at::IntArrayRef padding,
                     at::IntArrayRef dilation, int64_t groups, bool relu, const at::Tensor& out) {
  const Conv2dGeometry g = check_conv2d_relu_args("fastconv::_conv2d_relu_cpu", x, weight, bias, residual, stride,
                                                  padding, dilation, groups, out, c10::DeviceType::CPU);
  if (out.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, x.scalar_type(),
                                  "fastconv::_conv2d_relu_cpu",
                                  [&] { conv2d_relu_impl<scalar_t>(g, x, weight, bias, residual, relu, out); });
}

}  // namespace
}  // namespace fastconv

TORCH_LIBRARY_IMPL(fastconv, CPU, m) { m.impl("_conv2d_relu_cpu", &fastconv::conv2d_relu_cpu); }
