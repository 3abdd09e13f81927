// fastconv::_conv2d_winograd_cpu: out = relu?(conv2d(x, w, 3x3, stride 1) + bias + residual) on the
// CPU by Winograd's minimal filtering F(m x m, 3x3), m = 2 or 4, for float32 channels_last input.
//
// Why: on ResNet's 3x3 stride-1 layers oneDNN's direct convolution already runs near the
// machine's GEMM peak, so the only way to be faster is fewer multiplications. F(m x m, 3x3)
// computes each m x m output tile from an a x a input tile (a = m + 2) with a^2 multiply-
// accumulates per (input, output) channel pair instead of 9 m^2: F(2x2) 16 for 4 outputs (2.25x
// fewer), F(4x4) 36 for 16 (4x fewer), at the price of the tile transforms and some precision (the
// transforms' additions and their larger constants for m = 4; relative errors ~3e-7 and ~2e-6
// against fp64, both within float32 tolerances).
//
//   U[e][c][k] = (G g[k][c] G^T)[e]        e = (i, j) in a x a; made once per weight (Python caches
//                                           it: fastconv/ops/_weight_cache.py), passed in as u; its
//                                           first dimension, a^2 = 16 or 36, selects m
//   V[e][t][c] = (B^T d[t][c] B)[e]         d = the a x a input patch of output tile t
//   M[e][t][k] = sum_c V[e][t][c] U[e][c][k]   a^2 GEMMs (BLAS)
//   y[t][k]    = A^T M[.][t][k] A  (m x m) + bias[k] (+ residual), ReLU, one rounding into out
// F(2x2, 3x3): B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1], G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1],
//   A^T = [1 1 1 0; 0 1 -1 -1].
// F(4x4, 3x3) (Lavin & Gray's points 0, +-1, +-2): B^T = [4 0 -5 0 1 0; 0 -4 -4 1 1 0;
//   0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0; 0 4 0 -5 0 1], G = [1/4 0 0; -1/6 -1/6 -1/6;
//   -1/6 1/6 -1/6; 1/24 1/12 1/6; 1/24 -1/12 1/6; 0 0 1], A^T = [1 1 1 1 1 0; 0 1 -1 2 -2 0;
//   0 1 1 4 4 0; 0 1 -1 8 -8 1].
//
// Schedule: output tiles of the whole batch are cut into blocks of Tb tiles; each thread takes
// whole blocks: transforms its input tiles into V (vectors over the contiguous channels), runs the
// a^2 GEMMs with single-threaded BLAS (inside at::parallel_for MKL does not spawn threads), and
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
// Returns a value that is 0 when the tile's inputs are all finite (x * 0 is 0 exactly for finite x),
// NaN otherwise. (Finite inputs whose transforms overflow are caught on the outputs: all_finite.)
FASTCONV_SIMD_CLONES
float input_transform_2(const float* const* d, int64_t C, float* __restrict__ v, int64_t vs) {
  const float *__restrict__ d00 = d[0], *__restrict__ d01 = d[1], *__restrict__ d02 = d[2], *__restrict__ d03 = d[3];
  const float *__restrict__ d10 = d[4], *__restrict__ d11 = d[5], *__restrict__ d12 = d[6], *__restrict__ d13 = d[7];
  const float *__restrict__ d20 = d[8], *__restrict__ d21 = d[9], *__restrict__ d22 = d[10], *__restrict__ d23 = d[11];
  const float *__restrict__ d30 = d[12], *__restrict__ d31 = d[13], *__restrict__ d32 = d[14], *__restrict__ d33 = d[15];
  float* __restrict__ v0 = v;
  float z = 0.0f;
#pragma omp simd reduction(+ : z)
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
    // rows u0 (d rows 0 and 2), u1 (row 1) and u3 (row 3) hold every input once or twice
    z += ((u00 + u01 + u02 + u03) + (u10 + u11 + u12 + u13) + (u30 + u31 + u32 + u33)) * 0.0f;
  }
  return z;
}

// Whether y[0..n) holds no NaN or Inf: a tile whose finite inputs overflowed in the transforms
// (values near FLT_MAX: F(4x4)'s input transform scales by up to 100) or met a non-finite
// transformed weight comes out NaN or Inf where a direct conv may not.
FASTCONV_SIMD_CLONES
bool all_finite(const float* __restrict__ y, int64_t n) {
  float z = 0.0f;
#pragma omp simd reduction(+ : z)
  for (int64_t i = 0; i < n; ++i) z += y[i] * 0.0f;
  return z == 0.0f;
}

// The 2x2 outputs y[p * K + k] of one tile from its 16 GEMM rows (m[e * ms + k]): A^T M A + bias.
FASTCONV_SIMD_CLONES
void output_transform_2(const float* __restrict__ m, int64_t ms, const float* __restrict__ bias, int64_t K,
                        float* __restrict__ y) {
  float* __restrict__ y0 = y;
  float* __restrict__ y1 = y + K;
  float* __restrict__ y2 = y + 2 * K;
  float* __restrict__ y3 = y + 3 * K;
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

// F(4x4, 3x3)'s 1-D transforms, B^T (6 -> 6) and A^T (6 -> 4); the 2-D transforms apply them
// along the tile's columns, then along its rows, on chunks of kLanes channels (vectorized over the
// lanes: whole-tile temporaries per channel would not fit in registers).
constexpr int kLanes = 16;

inline void bt6(float d0, float d1, float d2, float d3, float d4, float d5, float& o0, float& o1, float& o2,
                float& o3, float& o4, float& o5) {
  const float a = d4 - d2, b = d3 - d1;
  o0 = 4.0f * d0 - 5.0f * d2 + d4;
  o1 = (d3 + d4) - 4.0f * (d1 + d2);
  o2 = (d4 - d3) + 4.0f * (d1 - d2);
  o3 = a + 2.0f * b;
  o4 = a - 2.0f * b;
  o5 = 4.0f * d1 - 5.0f * d3 + d5;
}

inline void at6(float m0, float m1, float m2, float m3, float m4, float m5, float& o0, float& o1, float& o2,
                float& o3) {
  const float a = m1 + m2, b = m1 - m2, c = m3 + m4, d = m3 - m4;
  o0 = m0 + a + c;
  o1 = b + 2.0f * d;
  o2 = a + 4.0f * c;
  o3 = b + 8.0f * d + m5;
}

// V[e * vs + c] for one F(4x4) tile: the 36 transformed values of each channel, from 36 rows of C
// contiguous floats (d[r * 6 + s] points at x[n, :, iy0 + r, ix0 + s], or at zeros outside x).
// Returns 0 when the tile's inputs are all finite, as input_transform_2.
FASTCONV_SIMD_CLONES
float input_transform_4(const float* const* d, int64_t C, float* __restrict__ v, int64_t vs) {
  alignas(64) float t[36][kLanes];  // B^T d: t[i * 6 + s]
  float z = 0.0f;
  for (int64_t c0 = 0; c0 < C; c0 += kLanes) {
    const int64_t n = std::min<int64_t>(kLanes, C - c0);
    for (int s = 0; s < 6; ++s) {
      const float *__restrict__ p0 = d[s] + c0, *__restrict__ p1 = d[6 + s] + c0, *__restrict__ p2 = d[12 + s] + c0;
      const float *__restrict__ p3 = d[18 + s] + c0, *__restrict__ p4 = d[24 + s] + c0, *__restrict__ p5 = d[30 + s] + c0;
#pragma omp simd reduction(+ : z)
      for (int64_t l = 0; l < n; ++l) {
        bt6(p0[l], p1[l], p2[l], p3[l], p4[l], p5[l], t[s][l], t[6 + s][l], t[12 + s][l], t[18 + s][l], t[24 + s][l],
            t[30 + s][l]);
        z += ((p0[l] + p1[l]) + (p2[l] + p3[l]) + (p4[l] + p5[l])) * 0.0f;
      }
    }
    for (int i = 0; i < 6; ++i) {  // (B^T d) B: row i of t -> v[(i * 6 + j) * vs]
      float* __restrict__ o = v + i * 6 * vs + c0;
#pragma omp simd
      for (int64_t l = 0; l < n; ++l) {
        bt6(t[i * 6][l], t[i * 6 + 1][l], t[i * 6 + 2][l], t[i * 6 + 3][l], t[i * 6 + 4][l], t[i * 6 + 5][l], o[l],
            o[vs + l], o[2 * vs + l], o[3 * vs + l], o[4 * vs + l], o[5 * vs + l]);
      }
    }
  }
  return z;
}

// The 4x4 outputs y[p * K + k] of one tile from its 36 GEMM rows (m[e * ms + k]): A^T M A + bias.
FASTCONV_SIMD_CLONES
void output_transform_4(const float* __restrict__ m, int64_t ms, const float* __restrict__ bias, int64_t K,
                        float* __restrict__ y) {
  alignas(64) float t[24][kLanes];  // A^T M: t[i * 6 + j]
  for (int64_t k0 = 0; k0 < K; k0 += kLanes) {
    const int64_t n = std::min<int64_t>(kLanes, K - k0);
    for (int j = 0; j < 6; ++j) {
      const float* __restrict__ q = m + j * ms + k0;
#pragma omp simd
      for (int64_t l = 0; l < n; ++l) {
        at6(q[l], q[6 * ms + l], q[12 * ms + l], q[18 * ms + l], q[24 * ms + l], q[30 * ms + l], t[j][l],
            t[6 + j][l], t[12 + j][l], t[18 + j][l]);
      }
    }
    for (int i = 0; i < 4; ++i) {  // (A^T M) A + bias: row i of t -> y[(i * 4 + j) * K]
      float* __restrict__ o = y + i * 4 * K + k0;
      const float* __restrict__ b = bias + k0;
#pragma omp simd
      for (int64_t l = 0; l < n; ++l) {
        float o0, o1, o2, o3;
        at6(t[i * 6][l], t[i * 6 + 1][l], t[i * 6 + 2][l], t[i * 6 + 3][l], t[i * 6 + 4][l], t[i * 6 + 5][l], o0, o1,
            o2, o3);
        o[l] = o0 + b[l];
        o[K + l] = o1 + b[l];
        o[2 * K + l] = o2 + b[l];
        o[3 * K + l] = o3 + b[l];
      }
    }
  }
}

// The transforms of F(m x m, 3x3): input tile a x a = (m + 2) x (m + 2).
template <int M>
struct Transforms;
template <>
struct Transforms<2> {
  static float input(const float* const* d, int64_t C, float* v, int64_t vs) { return input_transform_2(d, C, v, vs); }
  static void output(const float* m, int64_t ms, const float* bias, int64_t K, float* y) {
    output_transform_2(m, ms, bias, K, y);
  }
};
template <>
struct Transforms<4> {
  static float input(const float* const* d, int64_t C, float* v, int64_t vs) { return input_transform_4(d, C, v, vs); }
  static void output(const float* m, int64_t ms, const float* bias, int64_t K, float* y) {
    output_transform_4(m, ms, bias, K, y);
  }
};

// The original 3x3 weight, for the tiles whose input is not all finite: the transforms combine a
// tile's inputs with +-1, 2, 4, 5 (Inf - Inf = NaN, NaN * 0 = NaN), so a NaN or Inf would reach
// outputs it does not touch in a direct conv, or turn an Inf result into NaN. Such tiles, and
// those whose outputs come out non-finite from finite inputs (an overflow inside the transforms),
// are computed directly from the weight instead: the same products as a direct conv.
struct DirectWeight {
  const float* p = nullptr;  // w[k * s0 + c * s1 + r * s2 + s * s3], or null: no fallback
  int64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
};

// y[p * K + k] for the m x m outputs of one tile at (oy0, ox0) of image nimg, computed directly:
// bias + sum over (r, s, c) of x * w, skipping taps in the padding. Accumulated in float64 (these
// tiles are few): products of floats are exact there and sums of values near FLT_MAX do not
// overflow, so a finite true result comes out finite (a float32 sum could meet +Inf and -Inf),
// and a NaN or Inf input reaches exactly the outputs it reaches in a direct conv.
void direct_tile(const Geometry& g, int m, const float* xp, int64_t xs0, int64_t xs2, int64_t xs3, int64_t nimg,
                 int64_t oy0, int64_t ox0, const DirectWeight& w, const float* bias, float* y) {
  const int64_t C = g.c, K = g.k;
  std::vector<double> sum(K);
  for (int p = 0; p < m * m; ++p) {
    const int64_t oy = oy0 + p / m, ox = ox0 + p % m;
    float* yp = y + p * K;
    for (int64_t k = 0; k < K; ++k) sum[k] = bias[k];
    if (oy < g.oh && ox < g.ow) {  // (else an unused output of the tile's last row/column)
      for (int r = 0; r < 3; ++r) {
        const int64_t iy = oy - g.pt + r;
        if (iy < 0 || iy >= g.h) continue;
        for (int s = 0; s < 3; ++s) {
          const int64_t ix = ox - g.pl + s;
          if (ix < 0 || ix >= g.w) continue;
          const float* xr = xp + nimg * xs0 + iy * xs2 + ix * xs3;
          for (int64_t k = 0; k < K; ++k) {
            const float* wk = w.p + k * w.s0 + r * w.s2 + s * w.s3;
            double acc = 0.0;
            for (int64_t c = 0; c < C; ++c) acc += double(xr[c]) * double(wk[c * w.s1]);
            sum[k] += acc;
          }
        }
      }
    }
    for (int64_t k = 0; k < K; ++k) yp[k] = float(sum[k]);
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

template <int M>
void winograd_impl(const Geometry& g, const at::Tensor& x, const at::Tensor& u, const float* bias,
                   const at::Tensor* residual, bool relu, const at::Tensor& out, const DirectWeight& wd) {
  constexpr int A = M + 2, E = A * A;  // input tile side, GEMM count
  const int64_t C = g.c, K = g.k;
  const int64_t T = g.n * g.th * g.tw;
  const int64_t nthreads = std::max<int64_t>(1, at::get_num_threads());
  // (64 to 512 tiles per block measured within noise of each other on ResNet-50's layers)
  int64_t Tb = std::max<int64_t>(64, (int64_t(1) << 20) / (E * (C + K) * int64_t(sizeof(float))));
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
    std::vector<float> vbuf(E * Tb * C), mbuf(E * Tb * K), ybuf(M * M * K);
    std::vector<char> direct(Tb, 0);  // tiles with a non-finite input or output: computed directly (wd)
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t t0 = blk * Tb, nt = std::min(Tb, T - t0);
      // 1. input tiles -> V[e][t][c] (row stride C, matrix stride Tb * C)
      for (int64_t t = 0; t < nt; ++t) {
        const int64_t tile = t0 + t, nimg = tile / (g.th * g.tw), r = tile % (g.th * g.tw);
        const int64_t iy0 = (r / g.tw) * M - g.pt, ix0 = (r % g.tw) * M - g.pl;
        const float* d[E];
        for (int rr = 0; rr < A; ++rr) {
          const int64_t iy = iy0 + rr;
          for (int s = 0; s < A; ++s) {
            const int64_t ix = ix0 + s;
            d[rr * A + s] = (iy >= 0 && iy < g.h && ix >= 0 && ix < g.w) ? xp + nimg * xs0 + iy * xs2 + ix * xs3
                                                                         : zeros.data();
          }
        }
        const float nonfinite = Transforms<M>::input(d, C, vbuf.data() + t * C, Tb * C);
        direct[t] = wd.p != nullptr && nonfinite != 0.0f;
      }
      // 2. the a^2 GEMMs: M[e] (nt x K) = V[e] (nt x C) @ U[e] (C x K)
      for (int e = 0; e < E; ++e) {
        at::Tensor m = matrix<float>(mbuf.data() + e * Tb * K, nt, K, K, 1);
        at::cpu::mm_out(m, matrix<float>(vbuf.data() + e * Tb * C, nt, C, C, 1),
                        matrix<float>(up + e * C * K, C, K, K, 1));
      }
      // 3. output transform A^T M A + bias, then residual and ReLU into out
      for (int64_t t = 0; t < nt; ++t) {
        const int64_t tile = t0 + t, nimg = tile / (g.th * g.tw), r = tile % (g.th * g.tw);
        const int64_t oy0 = (r / g.tw) * M, ox0 = (r % g.tw) * M;
        if (!direct[t]) {
          Transforms<M>::output(mbuf.data() + t * K, Tb * K, bias, K, ybuf.data());
          // (a true result beyond FLT_MAX is recomputed too, and comes out Inf again)
          direct[t] = wd.p != nullptr && !all_finite(ybuf.data(), M * M * K);
        }
        if (direct[t]) direct_tile(g, M, xp, xs0, xs2, xs3, nimg, oy0, ox0, wd, bias, ybuf.data());
        for (int p = 0; p < M * M; ++p) {
          const int64_t oy = oy0 + p / M, ox = ox0 + p % M;
          if (oy >= g.oh || ox >= g.ow) continue;  // the last tile row/column of an output not a multiple of m
          const float* q = rp ? rp + nimg * rs0 + oy * rs2 + ox * rs3 : nullptr;
          store(ybuf.data() + p * K, q, rs1, relu, K, op + nimg * os0 + oy * os2 + ox * os3, os1);
        }
      }
    }
  });
}

void conv2d_winograd_cpu(const at::Tensor& x, const at::Tensor& u, const std::optional<at::Tensor>& bias,
                         const std::optional<at::Tensor>& residual, at::IntArrayRef padding, bool relu,
                         const at::Tensor& out, const std::optional<at::Tensor>& weight) {
  TORCH_CHECK(x.device().is_cpu() && u.device().is_cpu() && out.device().is_cpu(), kOp, "CPU tensors only");
  TORCH_CHECK(x.scalar_type() == at::kFloat && u.scalar_type() == at::kFloat && out.scalar_type() == at::kFloat,
              kOp, "float32 only, got x ", x.scalar_type(), ", u ", u.scalar_type(), ", out ", out.scalar_type());
  TORCH_CHECK(x.dim() == 4, kOp, "x must be 4-D [N, C, H, W], got ", x.sizes());
  TORCH_CHECK(x.stride(1) == 1 || x.size(1) == 1, kOp, "x must be channels_last (channel stride 1), got strides ",
              x.strides());
  TORCH_CHECK(u.dim() == 3 && (u.size(0) == 16 || u.size(0) == 36) && u.size(1) == x.size(1) && u.is_contiguous(),
              kOp, "u must be the contiguous [16 or 36, C_in, C_out] Winograd weight (F(2x2) or F(4x4)) of C_in = ",
              x.size(1), ", got ", u.sizes());
  const int m = u.size(0) == 16 ? 2 : 4;
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
  DirectWeight wd;
  if (weight.has_value() && weight->defined()) {
    TORCH_CHECK(weight->device().is_cpu() && weight->scalar_type() == at::kFloat && weight->dim() == 4 &&
                    weight->size(0) == g.k && weight->size(1) == g.c && weight->size(2) == 3 && weight->size(3) == 3,
                kOp, "weight must be the float32 CPU [", g.k, ", ", g.c, ", 3, 3] weight u was made from, got ",
                weight->sizes());
    wd = DirectWeight{weight->const_data_ptr<float>(), weight->stride(0), weight->stride(1), weight->stride(2),
                      weight->stride(3)};
    at::assert_no_overlap(out, *weight);
  }
  // Writes must not race with each other or clobber inputs still being read.
  at::assert_no_internal_overlap(out);
  at::assert_no_overlap(out, x);
  at::assert_no_overlap(out, u);
  if (has_bias) at::assert_no_overlap(out, *bias);
  if (has_res) at::assert_no_overlap(out, *residual);
  if (out.numel() == 0) return;
  const at::Tensor bvec = has_bias ? bias->contiguous() : at::zeros({g.k}, x.options());
  g.th = ceil_div(g.oh, m);
  g.tw = ceil_div(g.ow, m);
  const at::Tensor* res = has_res ? &*residual : nullptr;
  if (m == 2) {
    winograd_impl<2>(g, x, u, bvec.const_data_ptr<float>(), res, relu, out, wd);
  } else {
    winograd_impl<4>(g, x, u, bvec.const_data_ptr<float>(), res, relu, out, wd);
  }
}

}  // namespace
}  // namespace fastconv

TORCH_LIBRARY_IMPL(fastconv, CPU, m) { m.impl("_conv2d_winograd_cpu", &fastconv::conv2d_winograd_cpu); }
