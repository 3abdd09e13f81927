// fastconv::_conv2d_winograd_cpu: out = relu?(conv2d(x, w, 3x3, stride 1) + bias + residual) on the
// CPU by Winograd's minimal filtering F(2x2, 3x3), for float32 channels_last input.
//
// Why: on ResNet's 3x3 stride-1 layers oneDNN's direct convolution already runs near the
// machine's GEMM peak, so the only way to be faster is fewer multiplications. F(2x2, 3x3) computes
// each 2x2 output tile from a 4x4 input tile with 16 multiply-accumulates per (input, output)
// channel pair instead of 36: 2.25x fewer FLOPs, at the price of the tile transforms and a
// little precision (the transforms' additions; well within float32 tolerances).
//
//   U[e][c][k] = (G g[k][c] G^T)[e]        e = (i, j) in 4x4; made once per weight (Python caches
//                                           it: fastconv/ops/_weight_cache.py), passed in as u
//   V[e][t][c] = (B^T d[t][c] B)[e]         d = the 4x4 input patch of output tile t
//   M[e][t][k] = sum_c V[e][t][c] U[e][c][k]   16 GEMMs (BLAS)
//   y[t][k]    = A^T M[.][t][k] A  (2x2) + bias[k] (+ residual), ReLU, one rounding into out
// with B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1], G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1],
// A^T = [1 1 1 0; 0 1 -1 -1].
//
// Schedule: output tiles of the whole batch are cut into blocks of Tb tiles; each thread takes
// whole blocks: transforms its input tiles into V (vectors over the contiguous channels), runs the
// 16 GEMMs with single-threaded BLAS (inside at::parallel_for MKL does not spawn threads), and
// transforms M straight into out with the epilogue fused. Tb keeps V and M of one block near 1 MiB
// (L2), but at least 64 tiles so the GEMMs stay efficient, and the blocks are spread over the
// threads. Padding is arbitrary (zeros outside x); out/residual may have any strides.
#include "cpu/cpu_kernel_util.h"

#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/mm_cpu_dispatch.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace fastconv {
namespace {

constexpr const char* kOp = "fastconv::_conv2d_winograd_cpu: ";

struct Geometry {
  int64_t n, c, h, w, k, oh, ow, pt, pl;
  int64_t th, tw;  // tiles per image: rows, columns
};

// The transforms are element-wise over channels: vectorized, and compiled for AVX-512 and AVX2 as
// well as the baseline (torch's extension flags target plain x86-64; the CPU picks at load time).
// (x86-64 with GCC or Clang on ELF only: elsewhere, e.g. aarch64 or MSVC, one baseline build.)
#if defined(__x86_64__) && defined(__ELF__) && (defined(__GNUC__) || defined(__clang__))
#define FASTCONV_SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FASTCONV_SIMD_CLONES
#endif

// V[e * vs + c] for one tile: the 16 transformed values of each channel, from 16 rows of C
// contiguous floats (d[r * 4 + s] points at x[n, :, iy0 + r, ix0 + s], or at zeros outside x).
FASTCONV_SIMD_CLONES
void input_transform(const float* const* d, int64_t C, float* __restrict__ v, int64_t vs) {
  const float *__restrict__ d00 = d[0], *__restrict__ d01 = d[1], *__restrict__ d02 = d[2], *__restrict__ d03 = d[3];
  const float *__restrict__ d10 = d[4], *__restrict__ d11 = d[5], *__restrict__ d12 = d[6], *__restrict__ d13 = d[7];
  const float *__restrict__ d20 = d[8], *__restrict__ d21 = d[9], *__restrict__ d22 = d[10], *__restrict__ d23 = d[11];
  const float *__restrict__ d30 = d[12], *__restrict__ d31 = d[13], *__restrict__ d32 = d[14], *__restrict__ d33 = d[15];
  float* __restrict__ v0 = v;
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) {
    // rows: B^T d (row r of u from rows of d)
    const float u00 = d00[c] - d20[c], u01 = d01[c] - d21[c], u02 = d02[c] - d22[c], u03 = d03[c] - d23[c];
    const float u10 = d10[c] + d20[c], u11 = d11[c] + d21[c], u12 = d12[c] + d22[c], u13 = d13[c] + d23[c];
    const float u20 = d20[c] - d10[c], u21 = d21[c] - d11[c], u22 = d22[c] - d12[c], u23 = d23[c] - d13[c];
    const float u30 = d10[c] - d30[c], u31 = d11[c] - d31[c], u32 = d12[c] - d32[c], u33 = d13[c] - d33[c];
    // columns: (B^T d) B
    v0[0 * vs + c] = u00 - u02;  v0[1 * vs + c] = u01 + u02;  v0[2 * vs + c] = u02 - u01;  v0[3 * vs + c] = u01 - u03;
    v0[4 * vs + c] = u10 - u12;  v0[5 * vs + c] = u11 + u12;  v0[6 * vs + c] = u12 - u11;  v0[7 * vs + c] = u11 - u13;
    v0[8 * vs + c] = u20 - u22;  v0[9 * vs + c] = u21 + u22;  v0[10 * vs + c] = u22 - u21; v0[11 * vs + c] = u21 - u23;
    v0[12 * vs + c] = u30 - u32; v0[13 * vs + c] = u31 + u32; v0[14 * vs + c] = u32 - u31; v0[15 * vs + c] = u31 - u33;
  }
}

// The 2x2 outputs y[p][k] of one tile from its 16 GEMM rows (m[e * ms + k]): A^T M A + bias.
FASTCONV_SIMD_CLONES
void output_transform(const float* __restrict__ m, int64_t ms, const float* __restrict__ bias, int64_t K,
                      float* __restrict__ y0, float* __restrict__ y1, float* __restrict__ y2, float* __restrict__ y3) {
#pragma omp simd
  for (int64_t k = 0; k < K; ++k) {
    float s0[4], s1[4];
    for (int j = 0; j < 4; ++j) {  // A^T M: rows
      const float m0 = m[(0 * 4 + j) * ms + k], m1 = m[(1 * 4 + j) * ms + k];
      const float m2 = m[(2 * 4 + j) * ms + k], m3 = m[(3 * 4 + j) * ms + k];
      s0[j] = m0 + m1 + m2;
      s1[j] = m1 - m2 - m3;
    }
    const float b = bias[k];
    y0[k] = s0[0] + s0[1] + s0[2] + b;
    y1[k] = s0[1] - s0[2] - s0[3] + b;
    y2[k] = s1[0] + s1[1] + s1[2] + b;
    y3[k] = s1[1] - s1[2] - s1[3] + b;
  }
}

// out[k * os] = relu?(y[k] + residual[k * rs]) (residual may be null); NaN stays NaN, as torch.relu.
FASTCONV_SIMD_CLONES
void store(const float* __restrict__ y, const float* __restrict__ q, int64_t rs, bool relu, int64_t K,
           float* __restrict__ o, int64_t os) {
  if (os == 1 && (q == nullptr || rs == 1)) {
    if (q) {
#pragma omp simd
      for (int64_t k = 0; k < K; ++k) {
        const float v = y[k] + q[k];
        o[k] = (relu && v < 0.0f) ? 0.0f : v;
      }
    } else {
#pragma omp simd
      for (int64_t k = 0; k < K; ++k) o[k] = (relu && y[k] < 0.0f) ? 0.0f : y[k];
    }
    return;
  }
  for (int64_t k = 0; k < K; ++k) {
    const float v = q ? y[k] + q[k * rs] : y[k];
    o[k * os] = (relu && v < 0.0f) ? 0.0f : v;
  }
}

void winograd_impl(const Geometry& g, const at::Tensor& x, const at::Tensor& u, const float* bias,
                   const at::Tensor* residual, bool relu, const at::Tensor& out) {
  const int64_t C = g.c, K = g.k;
  const int64_t T = g.n * g.th * g.tw;
  const int64_t nthreads = std::max<int64_t>(1, at::get_num_threads());
  // (64 to 512 tiles per block measured within noise of each other on ResNet-50's layers)
  int64_t Tb = std::max<int64_t>(64, (int64_t(1) << 20) / (16 * (C + K) * int64_t(sizeof(float))));
  Tb = std::min(Tb, ceil_div(T, nthreads));  // every thread gets work
  Tb = std::max<int64_t>(1, Tb);
  const int64_t nblocks = ceil_div(T, Tb);

  const float* xp = x.const_data_ptr<float>();
  const int64_t xs0 = x.stride(0), xs2 = x.stride(2), xs3 = x.stride(3);  // x.stride(1) == 1
  const float* up = u.const_data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t os0 = out.stride(0), os1 = out.stride(1), os2 = out.stride(2), os3 = out.stride(3);
  const float* rp = residual ? residual->const_data_ptr<float>() : nullptr;
  const int64_t rs0 = residual ? residual->stride(0) : 0, rs1 = residual ? residual->stride(1) : 0;
  const int64_t rs2 = residual ? residual->stride(2) : 0, rs3 = residual ? residual->stride(3) : 0;

  at::parallel_for(0, nblocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> zeros(C, 0.0f);
    std::vector<float> vbuf(16 * Tb * C), mbuf(16 * Tb * K), ybuf(4 * K);
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t t0 = blk * Tb, nt = std::min(Tb, T - t0);
      // 1. input tiles -> V[e][t][c] (row stride C, matrix stride Tb * C)
      for (int64_t t = 0; t < nt; ++t) {
        const int64_t tile = t0 + t, nimg = tile / (g.th * g.tw), r = tile % (g.th * g.tw);
        const int64_t iy0 = (r / g.tw) * 2 - g.pt, ix0 = (r % g.tw) * 2 - g.pl;
        const float* d[16];
        for (int rr = 0; rr < 4; ++rr) {
          const int64_t iy = iy0 + rr;
          for (int s = 0; s < 4; ++s) {
            const int64_t ix = ix0 + s;
            d[rr * 4 + s] = (iy >= 0 && iy < g.h && ix >= 0 && ix < g.w) ? xp + nimg * xs0 + iy * xs2 + ix * xs3
                                                                           : zeros.data();
          }
        }
        input_transform(d, C, vbuf.data() + t * C, Tb * C);
      }
      // 2. the 16 GEMMs: M[e] (nt x K) = V[e] (nt x C) @ U[e] (C x K)
      for (int e = 0; e < 16; ++e) {
        at::Tensor m = matrix<float>(mbuf.data() + e * Tb * K, nt, K, K, 1);
        at::cpu::mm_out(m, matrix<float>(vbuf.data() + e * Tb * C, nt, C, C, 1),
                        matrix<float>(up + e * C * K, C, K, K, 1));
      }
      // 3. output transform A^T M A + bias, then residual and ReLU into out
      for (int64_t t = 0; t < nt; ++t) {
        const int64_t tile = t0 + t, nimg = tile / (g.th * g.tw), r = tile % (g.th * g.tw);
        const int64_t oy0 = (r / g.tw) * 2, ox0 = (r % g.tw) * 2;
        output_transform(mbuf.data() + t * K, Tb * K, bias, K, ybuf.data(), ybuf.data() + K, ybuf.data() + 2 * K,
                         ybuf.data() + 3 * K);
        for (int p = 0; p < 4; ++p) {
          const int64_t oy = oy0 + p / 2, ox = ox0 + p % 2;
          if (oy >= g.oh || ox >= g.ow) continue;  // the last row/column of an odd-sized output
          const float* q = rp ? rp + nimg * rs0 + oy * rs2 + ox * rs3 : nullptr;
          store(ybuf.data() + p * K, q, rs1, relu, K, op + nimg * os0 + oy * os2 + ox * os3, os1);
        }
      }
    }
  });
}

void conv2d_winograd_cpu(const at::Tensor& x, const at::Tensor& u, const std::optional<at::Tensor>& bias,
                         const std::optional<at::Tensor>& residual, at::IntArrayRef padding, bool relu,
                         const at::Tensor& out) {
  TORCH_CHECK(x.device().is_cpu() && u.device().is_cpu() && out.device().is_cpu(), kOp, "CPU tensors only");
  TORCH_CHECK(x.scalar_type() == at::kFloat && u.scalar_type() == at::kFloat && out.scalar_type() == at::kFloat,
              kOp, "float32 only, got x ", x.scalar_type(), ", u ", u.scalar_type(), ", out ", out.scalar_type());
  TORCH_CHECK(x.dim() == 4, kOp, "x must be 4-D [N, C, H, W], got ", x.sizes());
  TORCH_CHECK(x.stride(1) == 1 || x.size(1) == 1, kOp, "x must be channels_last (channel stride 1), got strides ",
              x.strides());
  TORCH_CHECK(u.dim() == 3 && u.size(0) == 16 && u.size(1) == x.size(1) && u.is_contiguous(), kOp,
              "u must be the contiguous [16, C_in, C_out] Winograd weight of C_in = ", x.size(1), ", got ", u.sizes());
  TORCH_CHECK(padding.size() == 4, kOp, "padding must be [top, bottom, left, right]");
  for (int64_t p : padding) TORCH_CHECK(p >= 0, kOp, "padding must be non-negative, got ", padding);
  Geometry g{};
  g.n = x.size(0); g.c = x.size(1); g.h = x.size(2); g.w = x.size(3); g.k = u.size(2);
  g.pt = padding[0]; g.pl = padding[2];
  g.oh = g.h + padding[0] + padding[1] - 2;
  g.ow = g.w + padding[2] + padding[3] - 2;
  TORCH_CHECK(g.oh >= 1 && g.ow >= 1, kOp, "the padded input is smaller than the 3x3 filter");
  TORCH_CHECK(out.dim() == 4 && out.size(0) == g.n && out.size(1) == g.k && out.size(2) == g.oh &&
                  out.size(3) == g.ow, kOp, "out must be [", g.n, ", ", g.k, ", ", g.oh, ", ", g.ow, "], got ",
              out.sizes());
  const bool has_bias = bias.has_value() && bias->defined();
  if (has_bias) {
    TORCH_CHECK(bias->device().is_cpu() && bias->scalar_type() == at::kFloat && bias->dim() == 1 &&
                    bias->size(0) == g.k, kOp, "bias must be a float32 CPU vector of ", g.k);
  }
  const bool has_res = residual.has_value() && residual->defined();
  if (has_res) {
    TORCH_CHECK(residual->device().is_cpu() && residual->scalar_type() == at::kFloat &&
                    residual->sizes() == out.sizes(), kOp, "residual must be a float32 CPU tensor shaped like out");
  }
  // Writes must not race with each other or clobber inputs still being read.
  at::assert_no_internal_overlap(out);
  at::assert_no_overlap(out, x);
  at::assert_no_overlap(out, u);
  if (has_bias) at::assert_no_overlap(out, *bias);
  if (has_res) at::assert_no_overlap(out, *residual);
  if (out.numel() == 0) return;
  const at::Tensor bvec = has_bias ? bias->contiguous() : at::zeros({g.k}, x.options());
  g.th = ceil_div(g.oh, 2);
  g.tw = ceil_div(g.ow, 2);
  winograd_impl(g, x, u, bvec.const_data_ptr<float>(), has_res ? &*residual : nullptr, relu, out);
}

}  // namespace
}  // namespace fastconv

TORCH_LIBRARY_IMPL(fastconv, CPU, m) { m.impl("_conv2d_winograd_cpu", &fastconv::conv2d_winograd_cpu); }
