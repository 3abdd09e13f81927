// fastconv::_max_pool2d_cuda and fastconv::_dense_concat_cuda: plain CUDA, bandwidth-bound.
//
// Both take a 16-byte vectorized path when channels are innermost (channels_last, or a channel
// slice of an NHWC buffer) with 16-byte aligned pointers and strides: each thread moves 16 bytes
// of consecutive channels, neighbouring threads neighbouring vectors (coalesced). Otherwise a
// scalar path walks any strides. All offsets are int64 (tensors past 2^31 elements), launches go
// to the current stream under a device guard and every launch is checked.
//
// max_pool2d semantics are those of _max_pool2d_cpu / PyTorch: windows clipped to the input, a
// value replaces the running max when larger or NaN (NaN propagates, the first of equal maxima
// stays), an all-padding window gives -inf; half/bfloat16 compared in float (exact).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>

namespace fastconv {
namespace {

constexpr int kThreads = 256;

unsigned grid_for(int64_t work) {
  // Enough blocks to fill the device several times; grid-stride loops cover the rest.
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>((work + kThreads - 1) / kThreads, sms * 32)));
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// ------------------------------------------------------------------------------------------------
// max_pool2d

struct PoolGeom {
  int64_t N, C, H, W, OH, OW;
  int kh, kw, sh, sw, ph, pw, dh, dw;
  int64_t xs[4], ys[4];
};

template <typename acc_t>
__device__ __forceinline__ acc_t max_step(acc_t running, acc_t v) {
  return (v > running || v != v) ? v : running;
}

// Channels innermost: one thread per (output pixel, 16-byte channel vector).
template <typename scalar_t>
__global__ void max_pool2d_vec_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, PoolGeom g,
                                      int64_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int V = 16 / sizeof(scalar_t);
  const int64_t cv = g.C / V;
  const int64_t step = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += step) {
    const int64_t c = (idx % cv) * V;
    const int64_t pix = idx / cv;
    const int64_t ow = pix % g.OW, oh = (pix / g.OW) % g.OH, n = pix / (g.OW * g.OH);
    acc_t acc[V];
#pragma unroll
    for (int i = 0; i < V; ++i) acc[i] = -std::numeric_limits<acc_t>::infinity();
    const scalar_t* xn = x + n * g.xs[0] + c;
    for (int a = 0; a < g.kh; ++a) {
      const int64_t ih = oh * g.sh - g.ph + static_cast<int64_t>(a) * g.dh;
      if (ih < 0 || ih >= g.H) continue;
      for (int b = 0; b < g.kw; ++b) {
        const int64_t iw = ow * g.sw - g.pw + static_cast<int64_t>(b) * g.dw;
        if (iw < 0 || iw >= g.W) continue;
        const uint4 raw = *reinterpret_cast<const uint4*>(xn + ih * g.xs[2] + iw * g.xs[3]);
        const scalar_t* v = reinterpret_cast<const scalar_t*>(&raw);
#pragma unroll
        for (int i = 0; i < V; ++i) acc[i] = max_step(acc[i], static_cast<acc_t>(v[i]));
      }
    }
    __align__(16) scalar_t o[V];
#pragma unroll
    for (int i = 0; i < V; ++i) o[i] = static_cast<scalar_t>(acc[i]);
    // One 16-byte store. Written in PTX: NVVM splits a uint4 store of converted values into
    // per-element stores (st.global.f32 x4), which the SASS test would catch.
    uint32_t words[4];
    memcpy(words, o, 16);
    scalar_t* dst = y + n * g.ys[0] + c + oh * g.ys[2] + ow * g.ys[3];
    asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(__cvta_generic_to_global(dst)), "r"(words[0]), "r"(words[1]),
                 "r"(words[2]), "r"(words[3])
                 : "memory");
  }
}

// Any strides: one thread per output element, in the output's memory order (channels fastest
// when out is channels_last, width fastest otherwise) so that writes coalesce.
template <typename scalar_t>
__global__ void max_pool2d_any_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, PoolGeom g,
                                      int64_t total, bool c_fastest) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t step = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += step) {
    int64_t n, c, oh, ow;
    if (c_fastest) {
      c = idx % g.C; ow = (idx / g.C) % g.OW; oh = (idx / (g.C * g.OW)) % g.OH; n = idx / (g.C * g.OW * g.OH);
    } else {
      ow = idx % g.OW; oh = (idx / g.OW) % g.OH; c = (idx / (g.OW * g.OH)) % g.C; n = idx / (g.OW * g.OH * g.C);
    }
    acc_t acc = -std::numeric_limits<acc_t>::infinity();
    const scalar_t* xc = x + n * g.xs[0] + c * g.xs[1];
    for (int a = 0; a < g.kh; ++a) {
      const int64_t ih = oh * g.sh - g.ph + static_cast<int64_t>(a) * g.dh;
      if (ih < 0 || ih >= g.H) continue;
      for (int b = 0; b < g.kw; ++b) {
        const int64_t iw = ow * g.sw - g.pw + static_cast<int64_t>(b) * g.dw;
        if (iw < 0 || iw >= g.W) continue;
        acc = max_step(acc, static_cast<acc_t>(xc[ih * g.xs[2] + iw * g.xs[3]]));
      }
    }
    y[n * g.ys[0] + c * g.ys[1] + oh * g.ys[2] + ow * g.ys[3]] = static_cast<scalar_t>(acc);
  }
}

void max_pool2d_cuda(const at::Tensor& x, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                     at::IntArrayRef padding, at::IntArrayRef dilation, const at::Tensor& out) {
  const char* op = "fastconv::_max_pool2d_cuda: ";
  TORCH_CHECK(x.is_cuda() && out.is_cuda() && x.device() == out.device(), op,
              "x and out must be CUDA tensors on one device, got ", x.device(), " and ", out.device());
  TORCH_CHECK(x.dim() == 4 && out.dim() == 4, op, "x and out must be 4-D, got ", x.sizes(), " and ", out.sizes());
  TORCH_CHECK(x.scalar_type() == out.scalar_type(), op, "out has dtype ", out.scalar_type(), " but x has ",
              x.scalar_type());
  TORCH_CHECK(out.size(0) == x.size(0) && out.size(1) == x.size(1), op,
              "out must have x's batch and channels, got ", out.sizes(), " for x ", x.sizes());
  TORCH_CHECK(kernel_size.size() == 2 && stride.size() == 2 && padding.size() == 2 && dilation.size() == 2, op,
              "kernel_size, stride, padding and dilation must have 2 elements");
  for (int i = 0; i < 2; ++i) {
    TORCH_CHECK(kernel_size[i] > 0 && stride[i] > 0 && dilation[i] > 0 && padding[i] >= 0, op,
                "kernel_size, stride and dilation must be positive and padding non-negative");
    TORCH_CHECK(kernel_size[i] <= INT32_MAX && stride[i] <= INT32_MAX && dilation[i] <= INT32_MAX &&
                    padding[i] <= INT32_MAX, op, "window parameters must fit in 32 bits");
  }
  at::assert_no_internal_overlap(out);
  at::assert_no_overlap(out, x);
  if (out.numel() == 0) return;
  TORCH_CHECK(x.size(2) > 0 && x.size(3) > 0, op, "x has an empty spatial dimension ", x.sizes());
  const c10::cuda::CUDAGuard guard(x.device());
  PoolGeom g{x.size(0), x.size(1), x.size(2), x.size(3), out.size(2), out.size(3),
             static_cast<int>(kernel_size[0]), static_cast<int>(kernel_size[1]), static_cast<int>(stride[0]),
             static_cast<int>(stride[1]), static_cast<int>(padding[0]), static_cast<int>(padding[1]),
             static_cast<int>(dilation[0]), static_cast<int>(dilation[1]),
             {x.stride(0), x.stride(1), x.stride(2), x.stride(3)},
             {out.stride(0), out.stride(1), out.stride(2), out.stride(3)}};
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "_max_pool2d_cuda", [&] {
    constexpr int64_t V = 16 / sizeof(scalar_t);
    const scalar_t* xd = x.const_data_ptr<scalar_t>();
    scalar_t* yd = out.mutable_data_ptr<scalar_t>();
    bool vec = g.xs[1] == 1 && g.ys[1] == 1 && g.C % V == 0 && aligned16(xd) && aligned16(yd);
    for (int d : {0, 2, 3}) vec = vec && g.xs[d] % V == 0 && g.ys[d] % V == 0;
    if (vec) {
      const int64_t total = g.N * g.OH * g.OW * (g.C / V);
      max_pool2d_vec_kernel<scalar_t><<<grid_for(total), kThreads, 0, stream>>>(xd, yd, g, total);
    } else {
      const int64_t total = out.numel();
      const bool c_fastest = g.ys[1] < g.ys[3];
      max_pool2d_any_kernel<scalar_t><<<grid_for(total), kThreads, 0, stream>>>(xd, yd, g, total, c_fastest);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// ------------------------------------------------------------------------------------------------
// dense_concat: each feature copied once into its channel slice of out.

struct Copy4 {
  int64_t size[4];     // in the loop order (outermost first); the last is the fastest
  int64_t ss[4], ds[4];
};

// Source and destination element offsets of flat index idx (loop order, last dimension fastest).
__device__ __forceinline__ void copy4_offsets(const Copy4& g, int64_t idx, int64_t& so, int64_t& doff) {
  so = doff = 0;
#pragma unroll
  for (int d = 3; d >= 0; --d) {
    const int64_t i = idx % g.size[d];
    idx /= g.size[d];
    so += i * g.ss[d];
    doff += i * g.ds[d];
  }
}

template <typename scalar_t>
__global__ void copy4d_kernel(const scalar_t* __restrict__ src, scalar_t* __restrict__ dst, Copy4 g, int64_t total) {
  const int64_t step = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += step) {
    int64_t so, doff;
    copy4_offsets(g, idx, so, doff);
    dst[doff] = src[so];
  }
}

// Channels innermost in both: 16-byte vectors along C; g.size[3] counts vectors, strides in elements.
__global__ void copy4d_vec_kernel(const char* __restrict__ src, char* __restrict__ dst, Copy4 g, int64_t total,
                                  int esize) {
  const int64_t step = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += step) {
    int64_t so, doff;
    copy4_offsets(g, idx, so, doff);
    *reinterpret_cast<uint4*>(dst + doff * esize) = *reinterpret_cast<const uint4*>(src + so * esize);
  }
}

void copy_feature(const at::Tensor& f, const at::Tensor& dst, cudaStream_t stream) {
  if (dst.numel() == 0) return;
  const int64_t es = dst.element_size();
  const int64_t V = 16 / es;
  const bool c_inner = f.stride(1) == 1 && dst.stride(1) == 1;
  bool vec = c_inner && dst.size(1) % V == 0 && aligned16(f.const_data_ptr()) && aligned16(dst.const_data_ptr());
  for (int d : {0, 2, 3}) vec = vec && f.stride(d) % V == 0 && dst.stride(d) % V == 0;
  Copy4 g;
  if (vec) {
    const int order[4] = {0, 2, 3, 1};  // n, h, w, c-vectors
    for (int i = 0; i < 4; ++i) {
      g.size[i] = dst.size(order[i]);
      g.ss[i] = f.stride(order[i]);
      g.ds[i] = dst.stride(order[i]);
    }
    g.size[3] /= V;
    g.ss[3] = V;
    g.ds[3] = V;
    const int64_t total = g.size[0] * g.size[1] * g.size[2] * g.size[3];
    copy4d_vec_kernel<<<grid_for(total), kThreads, 0, stream>>>(static_cast<const char*>(f.const_data_ptr()),
                                                                 static_cast<char*>(dst.data_ptr()), g, total,
                                                                 static_cast<int>(es));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  // Loop order by the destination's strides, largest first (innermost = its fastest dimension).
  int order[4] = {0, 1, 2, 3};
  std::stable_sort(order, order + 4, [&](int a, int b) { return dst.stride(a) > dst.stride(b); });
  for (int i = 0; i < 4; ++i) {
    g.size[i] = dst.size(order[i]);
    g.ss[i] = f.stride(order[i]);
    g.ds[i] = dst.stride(order[i]);
  }
  const int64_t total = dst.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dst.scalar_type(), "_dense_concat_cuda", [&] {
    copy4d_kernel<scalar_t><<<grid_for(total), kThreads, 0, stream>>>(f.const_data_ptr<scalar_t>(),
                                                                       dst.mutable_data_ptr<scalar_t>(), g, total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void dense_concat_cuda(at::TensorList features, const at::Tensor& out) {
  const char* op = "fastconv::_dense_concat_cuda: ";
  TORCH_CHECK(out.dim() == 4 && out.is_cuda(), op, "out must be a 4-D CUDA tensor");
  at::assert_no_internal_overlap(out);
  int64_t c = 0;
  for (const auto& f : features) {
    TORCH_CHECK(f.dim() == 4 && f.device() == out.device() && f.scalar_type() == out.scalar_type(), op,
                "every feature must be a 4-D tensor of out's dtype on out's device");
    TORCH_CHECK(f.size(0) == out.size(0) && f.size(2) == out.size(2) && f.size(3) == out.size(3), op,
                "feature shape ", f.sizes(), " does not match out ", out.sizes());
    TORCH_CHECK(c + f.size(1) <= out.size(1), op, "features have more channels than out");
    at::assert_no_overlap(out, f);
    c += f.size(1);
  }
  TORCH_CHECK(c == out.size(1), op, "features have ", c, " channels but out has ", out.size(1));
  if (out.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(out.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  c = 0;
  for (const auto& f : features) {
    copy_feature(f, out.narrow(1, c, f.size(1)), stream);
    c += f.size(1);
  }
}

}  // namespace
}  // namespace fastconv

TORCH_LIBRARY_IMPL(fastconv, CUDA, m) {
  m.impl("_max_pool2d_cuda", &fastconv::max_pool2d_cuda);
  m.impl("_dense_concat_cuda", &fastconv::dense_concat_cuda);
}
