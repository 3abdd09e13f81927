// fastconv::_max_pool2d_cpu: F.max_pool2d's exact values, one read of x and one write of out.
//
// Semantics (those of PyTorch's CPU kernel, so results are bit-identical): every window is
// clipped to the input (padding never wins), scanned row by row, and a value replaces the running
// max when it is larger or NaN. So a NaN makes the output NaN (the last NaN in scan order), among
// equal maxima (+0/-0) the first is kept, and an all-padding window gives -inf. Half and bfloat16
// are compared in float32, which is exact: the max is one of the inputs.
//
// x and out may have any strides (channels_last, channel slices of NCHW/NHWC buffers); all index
// arithmetic is int64, so tensors with more than 2^31 elements work.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

namespace fastconv {
namespace {

struct Pool {
  int64_t N, C, H, W, OH, OW;
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
  int64_t xs[4], ys[4];  // element strides of x and out (N, C, H, W)
};

// One step of PyTorch's scan; written without branches so the loops around it vectorize.
template <typename acc_t>
inline acc_t max_step(acc_t running, acc_t v) {
  return (v > running || v != v) ? v : running;
}

// The extension is compiled for baseline x86-64 (SSE2). The innermost loops below are cloned for
// AVX2 and AVX-512 and the best clone is picked once, at load time (GCC/Clang function
// multiversioning), so a wheel built anywhere runs the widest vectors the machine has.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FASTCONV_SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FASTCONV_SIMD_CLONES
#endif

// acc[c] = max_step(acc[c], src[c]) over n contiguous channels.
template <typename scalar_t, typename acc_t>
inline void channel_update(acc_t* acc, const scalar_t* src, int64_t n) {
  for (int64_t c = 0; c < n; ++c) acc[c] = max_step(acc[c], static_cast<acc_t>(src[c]));
}
FASTCONV_SIMD_CLONES void channel_update_f32(float* acc, const float* src, int64_t n) { channel_update(acc, src, n); }
FASTCONV_SIMD_CLONES void channel_update_f64(double* acc, const double* src, int64_t n) { channel_update(acc, src, n); }
FASTCONV_SIMD_CLONES void channel_update_f16(float* acc, const c10::Half* src, int64_t n) { channel_update(acc, src, n); }
FASTCONV_SIMD_CLONES void channel_update_bf16(float* acc, const c10::BFloat16* src, int64_t n) {
  channel_update(acc, src, n);
}
inline void update_channels(float* acc, const float* src, int64_t n) { channel_update_f32(acc, src, n); }
inline void update_channels(double* acc, const double* src, int64_t n) { channel_update_f64(acc, src, n); }
inline void update_channels(float* acc, const c10::Half* src, int64_t n) { channel_update_f16(acc, src, n); }
inline void update_channels(float* acc, const c10::BFloat16* src, int64_t n) { channel_update_bf16(acc, src, n); }

// Channels innermost in x (channels_last, or a channel slice of an NHWC buffer): one task per
// output pixel; channels in chunks whose running max lives in a small local array, so the inner
// loop runs over contiguous channels and vectorizes.
template <typename scalar_t>
void pool_channels_inner(const scalar_t* x, scalar_t* y, const Pool& p) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t kChunk = 64;
  const int64_t pixels = p.N * p.OH * p.OW;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, p.C * p.kh * p.kw));
  at::parallel_for(0, pixels, grain, [&](int64_t begin, int64_t end) {
    acc_t acc[kChunk];
    for (int64_t i = begin; i < end; ++i) {
      const int64_t ow = i % p.OW, oh = (i / p.OW) % p.OH, n = i / (p.OW * p.OH);
      const scalar_t* xn = x + n * p.xs[0];
      scalar_t* yp = y + n * p.ys[0] + oh * p.ys[2] + ow * p.ys[3];
      for (int64_t c0 = 0; c0 < p.C; c0 += kChunk) {
        const int64_t cb = std::min(kChunk, p.C - c0);
        for (int64_t c = 0; c < cb; ++c) acc[c] = -std::numeric_limits<acc_t>::infinity();
        for (int64_t a = 0; a < p.kh; ++a) {
          const int64_t ih = oh * p.sh - p.ph + a * p.dh;
          if (ih < 0 || ih >= p.H) continue;
          for (int64_t b = 0; b < p.kw; ++b) {
            const int64_t iw = ow * p.sw - p.pw + b * p.dw;
            if (iw < 0 || iw >= p.W) continue;
            const scalar_t* src = xn + ih * p.xs[2] + iw * p.xs[3] + c0;  // xs[1] == 1 here
            update_channels(acc, src, cb);
          }
        }
        if (p.ys[1] == 1) {
          for (int64_t c = 0; c < cb; ++c) yp[c0 + c] = static_cast<scalar_t>(acc[c]);
        } else {
          for (int64_t c = 0; c < cb; ++c) yp[(c0 + c) * p.ys[1]] = static_cast<scalar_t>(acc[c]);
        }
      }
    }
  });
}

// acc[ow] = max_step(acc[ow], row[(ow * stride + offset) * step]) for ow in [lo, hi). Stride and
// step are template constants in the common cases so the loop compiles to (strided) vector loads.
template <int64_t kStride, int64_t kStep, typename scalar_t, typename acc_t>
inline void row_update(acc_t* acc, const scalar_t* row, int64_t lo, int64_t hi, int64_t stride, int64_t step,
                       int64_t offset) {
  const int64_t s = kStride > 0 ? kStride : stride;
  const int64_t e = kStep > 0 ? kStep : step;
  for (int64_t ow = lo; ow < hi; ++ow) acc[ow] = max_step(acc[ow], static_cast<acc_t>(row[(ow * s + offset) * e]));
}

// Any other layout (NCHW, strided views): one task per output row (n, c, oh); the running max of
// the whole row is kept in a buffer and updated once per window tap (a, b), a over rows then b
// over columns, so each output still sees its window in PyTorch's scan order, while the inner
// loop runs along W.
template <typename scalar_t>
void pool_rows(const scalar_t* x, scalar_t* y, const Pool& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t rows = p.N * p.C * p.OH;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, p.OW * p.kh * p.kw));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buffer(p.OW);
    acc_t* acc = buffer.data();
    for (int64_t r = begin; r < end; ++r) {
      const int64_t oh = r % p.OH, c = (r / p.OH) % p.C, n = r / (p.OH * p.C);
      std::fill(acc, acc + p.OW, -std::numeric_limits<acc_t>::infinity());
      for (int64_t a = 0; a < p.kh; ++a) {
        const int64_t ih = oh * p.sh - p.ph + a * p.dh;
        if (ih < 0 || ih >= p.H) continue;
        const scalar_t* row = x + n * p.xs[0] + c * p.xs[1] + ih * p.xs[2];
        for (int64_t b = 0; b < p.kw; ++b) {
          // iw = ow * sw + offset must lie in [0, W): ow in [lo, hi)
          const int64_t offset = b * p.dw - p.pw;
          const int64_t lo = offset >= 0 ? 0 : (-offset + p.sw - 1) / p.sw;
          const int64_t hi = p.W - 1 - offset < 0 ? 0 : std::min(p.OW, (p.W - 1 - offset) / p.sw + 1);
          if (p.xs[3] == 1 && p.sw == 1) {
            row_update<1, 1>(acc, row, lo, hi, 1, 1, offset);
          } else if (p.xs[3] == 1 && p.sw == 2) {
            row_update<2, 1>(acc, row, lo, hi, 2, 1, offset);
          } else {
            row_update<0, 0>(acc, row, lo, hi, p.sw, p.xs[3], offset);
          }
        }
      }
      scalar_t* out_row = y + n * p.ys[0] + c * p.ys[1] + oh * p.ys[2];
      if (p.ys[3] == 1) {
        for (int64_t ow = 0; ow < p.OW; ++ow) out_row[ow] = static_cast<scalar_t>(acc[ow]);
      } else {
        for (int64_t ow = 0; ow < p.OW; ++ow) out_row[ow * p.ys[3]] = static_cast<scalar_t>(acc[ow]);
      }
    }
  });
}

// PyTorch's pooling_output_shape (floor division; in ceil_mode the last window must start inside
// the input or the left padding).
int64_t pooled_size(int64_t size, int64_t k, int64_t s, int64_t p, int64_t d, bool ceil_mode) {
  const int64_t num = size + 2 * p - d * (k - 1) - 1 + (ceil_mode ? s - 1 : 0);
  int64_t out = (num >= 0 ? num / s : -((-num + s - 1) / s)) + 1;
  if (ceil_mode && (out - 1) * s >= size + p) --out;
  return out;
}

void max_pool2d_cpu(const at::Tensor& x, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                    at::IntArrayRef padding, at::IntArrayRef dilation, const at::Tensor& out) {
  // The public op validates everything with PyTorch's rules first; these checks keep a direct
  // call of this private op from reading or writing out of bounds.
  TORCH_CHECK(x.device().is_cpu() && out.device().is_cpu(), "_max_pool2d_cpu: x and out must be CPU tensors");
  TORCH_CHECK(x.dim() == 4 && out.dim() == 4, "_max_pool2d_cpu: x and out must be 4-D, got ", x.sizes(), " and ",
              out.sizes());
  TORCH_CHECK(x.scalar_type() == out.scalar_type(), "_max_pool2d_cpu: out has dtype ", out.scalar_type(),
              " but x has ", x.scalar_type());
  TORCH_CHECK(out.size(0) == x.size(0) && out.size(1) == x.size(1),
              "_max_pool2d_cpu: out must have x's batch and channels, got ", out.sizes(), " for x ", x.sizes());
  TORCH_CHECK(kernel_size.size() == 2 && stride.size() == 2 && padding.size() == 2 && dilation.size() == 2,
              "_max_pool2d_cpu: kernel_size, stride, padding and dilation must have 2 elements");
  for (int i = 0; i < 2; ++i) {
    TORCH_CHECK(kernel_size[i] > 0 && stride[i] > 0 && dilation[i] > 0 && padding[i] >= 0,
                "_max_pool2d_cpu: kernel_size, stride and dilation must be positive and padding non-negative");
  }
  at::assert_no_internal_overlap(out);  // parallel tasks would race on shared output elements
  at::assert_no_overlap(out, x);
  if (out.numel() == 0) return;
  TORCH_CHECK(x.size(2) > 0 && x.size(3) > 0, "_max_pool2d_cpu: x has an empty spatial dimension ", x.sizes());
  // out's spatial size must be PyTorch's pooled size, with or without ceil_mode (the caller resolved it)
  for (int i = 0; i < 2; ++i) {
    const int64_t size = x.size(2 + i), o = out.size(2 + i);
    if (o != pooled_size(size, kernel_size[i], stride[i], padding[i], dilation[i], false) &&
        o != pooled_size(size, kernel_size[i], stride[i], padding[i], dilation[i], true)) {
      TORCH_CHECK(false, "_max_pool2d_cpu: out has shape ", out.sizes(), ", which is not the pooled shape of x ",
                  x.sizes(), " for kernel_size ", kernel_size, ", stride ", stride, ", padding ", padding,
                  " and dilation ", dilation);
    }
  }

  Pool p{x.size(0), x.size(1), x.size(2), x.size(3), out.size(2), out.size(3),
         kernel_size[0], kernel_size[1], stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
         {x.stride(0), x.stride(1), x.stride(2), x.stride(3)},
         {out.stride(0), out.stride(1), out.stride(2), out.stride(3)}};
  // Channels innermost in x: pool over contiguous channel vectors. A single channel has no
  // channel axis worth vectorizing, so it takes the row path.
  const bool channels_inner = p.C > 1 && p.xs[1] == 1;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "_max_pool2d_cpu", [&] {
    const scalar_t* xd = x.const_data_ptr<scalar_t>();
    scalar_t* yd = out.mutable_data_ptr<scalar_t>();
    if (channels_inner) {
      pool_channels_inner(xd, yd, p);
    } else {
      pool_rows(xd, yd, p);
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, CPU, m) { m.impl("_max_pool2d_cpu", &max_pool2d_cpu); }

}  // namespace fastconv
