// fastconv::_conv1x1_cuda: the 1x1 convolution (and its grouped form: outs[j] receives the next
// outs[j].size(1) rows of the [sum Co, Ci] weight) on a CUDA device.
//
// Paths (decided per out by plan_conv, csrc/cuda_plan.h; fastconv::_cuda_plan reports them):
//   cutlass_sm90 / cutlass_sm80: the CUTLASS implicit-GEMM kernels of csrc/cuda/cutlass_sm90_conv.cu
//                 and csrc/cuda/cutlass_sm80_conv.cu with a 1x1 filter (a GEMM; epilogue bias +
//                 residual + ReLU through out's strides). DenseNet's pre-activation prologue
//                 relu?(x*scale+shift) cannot be fused into a TMA operand load (TMA writes shared
//                 memory directly, no register pass; the 2.x kernels' cp.async likewise), so it
//                 runs as a fused CUDA kernel that writes a channels_last temporary in x's dtype
//                 (already subsampled by the stride); the GEMM then runs at stride 1.
//   direct:       a tiled SIMT GEMM (64x64 tiles, fp32 accumulation, fp64 for double) reading x,
//                 weight and out through their strides with the prologue and epilogue fused: any
//                 layout, dtype and alignment. The correctness baseline and fallback.
#include "cuda_plan_tensors.h"
#include "cutlass_conv.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

namespace fastconv {
namespace {

constexpr int BM = 64, BN = 64, BK = 16, kThreads = 256;

template <typename scalar_t, typename acc_t>
struct Gemm1x1Params {
  const scalar_t* x;
  int64_t xs[4];
  const scalar_t* w;  // rows of this out: w[co * wr + ci * wc]
  int64_t wr, wc;
  const scalar_t* bias;  // [co] with stride bs, or null
  int64_t bs;
  const scalar_t* scale;  // prologue, or null
  const scalar_t* shift;
  int64_t ss, hs;
  bool in_relu, relu;
  const scalar_t* res;
  int64_t rs[4];
  scalar_t* out;
  int64_t os[4];
  int64_t n, ci, co, oh, ow, m;  // m = n * oh * ow
  int64_t sh, sw;
};

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads, 2) conv1x1_simt_kernel(Gemm1x1Params<scalar_t, acc_t> p) {
  __shared__ acc_t As[BK][BM];
  __shared__ acc_t Bs[BK][BN];
  const int t = threadIdx.x;
  const int tx = t % 16, ty = t / 16;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * BM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * BN;
  const int64_t hw = p.oh * p.ow;
  // The 4 A rows and 4 B rows this thread loads (k = t % 16 fastest: channels_last x coalesces).
  const int lk = t % BK;
  int64_t a_off[4];
  bool a_ok[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t m = m0 + t / BK + 16 * i;
    a_ok[i] = m < p.m;
    const int64_t mm = a_ok[i] ? m : 0;
    const int64_t nb = mm / hw, r = mm % hw, oh = r / p.ow, ow = r % p.ow;
    a_off[i] = nb * p.xs[0] + oh * p.sh * p.xs[2] + ow * p.sw * p.xs[3];
  }
  acc_t acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = acc_t(0);

  for (int64_t k0 = 0; k0 < p.ci; k0 += BK) {
    const int64_t k = k0 + lk;
    const bool k_ok = k < p.ci;
    acc_t sc = acc_t(1), sf = acc_t(0);
    if (k_ok && p.scale) sc = static_cast<acc_t>(p.scale[k * p.ss]);
    if (k_ok && p.shift) sf = static_cast<acc_t>(p.shift[k * p.hs]);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      acc_t v = acc_t(0);
      if (a_ok[i] && k_ok) {
        v = static_cast<acc_t>(p.x[a_off[i] + k * p.xs[1]]);
        if (p.scale || p.shift) v = v * sc + sf;
        if (p.in_relu && v < acc_t(0)) v = acc_t(0);
      }
      As[lk][t / BK + 16 * i] = v;
      const int64_t co = n0 + t / BK + 16 * i;
      Bs[lk][t / BK + 16 * i] = (co < p.co && k_ok) ? static_cast<acc_t>(p.w[co * p.wr + k * p.wc]) : acc_t(0);
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      acc_t a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        a[i] = As[kk][ty * 4 + i];
        b[i] = Bs[kk][tx + 16 * i];
      }
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
    }
    __syncthreads();
  }
  // Epilogue: columns tx + 16 j (neighbouring threads, neighbouring channels: channels_last out coalesces).
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t m = m0 + ty * 4 + i;
    if (m >= p.m) continue;
    const int64_t nb = m / hw, r = m % hw, oh = r / p.ow, ow = r % p.ow;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t co = n0 + tx + 16 * j;
      if (co >= p.co) continue;
      acc_t v = acc[i][j];
      if (p.bias) v += static_cast<acc_t>(p.bias[co * p.bs]);
      if (p.res) v += static_cast<acc_t>(p.res[nb * p.rs[0] + co * p.rs[1] + oh * p.rs[2] + ow * p.rs[3]]);
      if (p.relu && v < acc_t(0)) v = acc_t(0);  // NaN stays NaN
      p.out[nb * p.os[0] + co * p.os[1] + oh * p.os[2] + ow * p.os[3]] = static_cast<scalar_t>(v);
    }
  }
}

// temp[n, oh, ow, c] (channels_last, contiguous) = relu?(x[n, c, oh*sh, ow*sw] * scale[c] + shift[c]).
template <typename scalar_t>
__global__ void prologue_kernel(const scalar_t* __restrict__ x, Gemm1x1Params<scalar_t, float> p,
                                scalar_t* __restrict__ y, int64_t total) {
  const int64_t step = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += step) {
    const int64_t c = idx % p.ci, pix = idx / p.ci;
    const int64_t ow = pix % p.ow, oh = (pix / p.ow) % p.oh, n = pix / (p.ow * p.oh);
    float v = static_cast<float>(x[n * p.xs[0] + c * p.xs[1] + oh * p.sh * p.xs[2] + ow * p.sw * p.xs[3]]);
    if (p.scale) v *= static_cast<float>(p.scale[c * p.ss]);
    if (p.shift) v += static_cast<float>(p.shift[c * p.hs]);
    if (p.in_relu && v < 0.f) v = 0.f;
    y[idx] = static_cast<scalar_t>(v);
  }
}

unsigned grid_for(int64_t work) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>((work + kThreads - 1) / kThreads, sms * 32)));
}

void conv1x1_cuda(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                  const c10::optional<at::Tensor>& residual, const c10::optional<at::Tensor>& in_scale,
                  const c10::optional<at::Tensor>& in_shift, bool in_relu, at::IntArrayRef stride, bool relu,
                  at::TensorList outs_list) {
  const char* op = "fastconv::_conv1x1_cuda: ";
  TORCH_CHECK(x.dim() == 4 && x.is_cuda(), op, "x must be a 4-D CUDA tensor, got ", x.sizes(), " on ", x.device());
  const auto dt = x.scalar_type();
  TORCH_CHECK(dt == at::kHalf || dt == at::kBFloat16 || dt == at::kFloat || dt == at::kDouble, op,
              "x must be float16, bfloat16, float32 or float64, got ", dt);
  auto same = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.device() == x.device() && t.scalar_type() == dt, op, name, " must be on ", x.device(),
                " with dtype ", dt, ", got ", t.device(), " ", t.scalar_type());
  };
  TORCH_CHECK(weight.dim() == 2, op, "weight must be 2-D [C_out, C_in], got ", weight.sizes());
  same(weight, "weight");
  TORCH_CHECK(weight.size(1) == x.size(1), op, "weight has ", weight.size(1), " input channels but x has ",
              x.size(1));
  TORCH_CHECK(stride.size() == 2 && stride[0] > 0 && stride[1] > 0, op, "stride must be two positive ints");
  const int64_t n = x.size(0), ci = x.size(1), h = x.size(2), w = x.size(3), co_total = weight.size(0);
  const int64_t oh = h == 0 ? 0 : (h - 1) / stride[0] + 1, ow = w == 0 ? 0 : (w - 1) / stride[1] + 1;
  auto check_vec = [&](const c10::optional<at::Tensor>& t, const char* name, int64_t len) {
    if (!t.has_value()) return;
    same(*t, name);
    TORCH_CHECK(t->dim() == 1 && t->size(0) == len, op, name, " must be 1-D with ", len, " elements, got ",
                t->sizes());
  };
  check_vec(bias, "bias", co_total);
  check_vec(in_scale, "in_scale", ci);
  check_vec(in_shift, "in_shift", ci);
  TORCH_CHECK(!outs_list.empty(), op, "outs must hold at least one tensor");
  std::vector<at::Tensor> outs(outs_list.begin(), outs_list.end());
  int64_t co_sum = 0;
  for (size_t j = 0; j < outs.size(); ++j) {
    const auto& o = outs[j];
    TORCH_CHECK(o.dim() == 4, op, "outs[", j, "] must be 4-D");
    same(o, "outs[j]");
    TORCH_CHECK(o.size(0) == n && o.size(2) == oh && o.size(3) == ow, op, "outs[", j, "] has shape ", o.sizes(),
                " but the output is [", n, ", C, ", oh, ", ", ow, "]");
    co_sum += o.size(1);
    if (o.numel() == 0) continue;
    at::assert_no_internal_overlap(o);
    at::assert_no_overlap(o, x);
    at::assert_no_overlap(o, weight);
    if (residual.has_value()) at::assert_no_overlap(o, *residual);
    for (size_t k = 0; k < j; ++k) {
      if (outs[k].numel() > 0) at::assert_no_overlap(o, outs[k]);
    }
  }
  TORCH_CHECK(co_sum == co_total, op, "outs have ", co_sum, " channels in all but weight has ", co_total, " rows");
  if (residual.has_value()) {
    TORCH_CHECK(outs.size() == 1, op, "residual needs exactly one out, got ", outs.size());
    same(*residual, "residual");
    TORCH_CHECK(residual->sizes() == outs[0].sizes(), op, "residual must have the output's shape ",
                outs[0].sizes(), ", got ", residual->sizes());
  }
  if (n == 0 || oh == 0 || ow == 0 || co_total == 0) return;

  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const auto* prop = at::cuda::getCurrentDeviceProperties();
  const int cc = prop->major * 10 + prop->minor;
  const bool prologue = in_scale.has_value() || in_shift.has_value() || in_relu;
  const bool tf32 = conv_allows_tf32();
  const int sm80_mode = sm80_mode_from_env();
  const bool sm90_tf32 = sm90_tf32_from_env();

  at::Tensor temp;  // the prologue's output, made once for all outs that take the CUTLASS path
  int64_t c0 = 0;
  for (size_t j = 0; j < outs.size(); ++j) {
    const at::Tensor& o = outs[j];
    const int64_t cj = o.size(1);
    if (cj == 0) continue;
    const at::Tensor wj = weight.narrow(0, c0, cj);
    const c10::optional<at::Tensor> bj = bias.has_value() ? c10::optional<at::Tensor>(bias->narrow(0, c0, cj))
                                                          : c10::nullopt;
    const ConvPlan plan = plan_conv(plan_input(true, x, wj, residual, o, stride, {}, {}, 1, prologue, cc, tf32,
                                               kBuiltSm90a, sm80_mode, sm90_tf32));
    if (plan.path != "direct") {
      at::Tensor src = x;
      int64_t s0 = stride[0], s1 = stride[1];
      if (plan.prologue_temp) {
        if (!temp.defined()) {
          temp = prologue_temp(x, oh, ow);
          AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dt, "_conv1x1_cuda_prologue", [&] {
            Gemm1x1Params<scalar_t, float> p{};
            p.xs[0] = x.stride(0); p.xs[1] = x.stride(1); p.xs[2] = x.stride(2); p.xs[3] = x.stride(3);
            p.scale = in_scale.has_value() ? in_scale->const_data_ptr<scalar_t>() : nullptr;
            p.shift = in_shift.has_value() ? in_shift->const_data_ptr<scalar_t>() : nullptr;
            p.ss = in_scale.has_value() ? in_scale->stride(0) : 0;
            p.hs = in_shift.has_value() ? in_shift->stride(0) : 0;
            p.in_relu = in_relu;
            p.ci = ci; p.oh = oh; p.ow = ow; p.sh = s0; p.sw = s1;
            const int64_t total = temp.numel();
            prologue_kernel<scalar_t><<<grid_for(total), kThreads, 0, stream>>>(
                x.const_data_ptr<scalar_t>(), p, temp.mutable_data_ptr<scalar_t>(), total);
            C10_CUDA_KERNEL_LAUNCH_CHECK();
          });
        }
        src = temp;
        s0 = s1 = 1;
      }
      const int64_t pad[4] = {0, 0, 0, 0}, gemm_stride[2] = {s0, s1}, dil[2] = {1, 1};
      const CutlassConvArgs a =
          cutlass_args(plan, cutlass_operands(plan, src, wj, bj), residual, o, pad, gemm_stride, dil, relu);
      run_cutlass_conv(plan.path, a, o);
    } else {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dt, "_conv1x1_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        Gemm1x1Params<scalar_t, acc_t> p{};
        p.x = x.const_data_ptr<scalar_t>();
        for (int d = 0; d < 4; ++d) p.xs[d] = x.stride(d);
        p.w = wj.const_data_ptr<scalar_t>();
        p.wr = wj.stride(0); p.wc = wj.stride(1);
        p.bias = bj.has_value() ? bj->const_data_ptr<scalar_t>() : nullptr;
        p.bs = bj.has_value() ? bj->stride(0) : 0;
        p.scale = in_scale.has_value() ? in_scale->const_data_ptr<scalar_t>() : nullptr;
        p.shift = in_shift.has_value() ? in_shift->const_data_ptr<scalar_t>() : nullptr;
        p.ss = in_scale.has_value() ? in_scale->stride(0) : 0;
        p.hs = in_shift.has_value() ? in_shift->stride(0) : 0;
        p.in_relu = in_relu; p.relu = relu;
        p.res = residual.has_value() ? residual->const_data_ptr<scalar_t>() : nullptr;
        for (int d = 0; d < 4; ++d) p.rs[d] = residual.has_value() ? residual->stride(d) : 0;
        p.out = o.mutable_data_ptr<scalar_t>();
        for (int d = 0; d < 4; ++d) p.os[d] = o.stride(d);
        p.n = n; p.ci = ci; p.co = cj; p.oh = oh; p.ow = ow; p.m = n * oh * ow;
        p.sh = stride[0]; p.sw = stride[1];
        const int64_t gx = (p.m + BM - 1) / BM, gy = (cj + BN - 1) / BN;
        TORCH_CHECK(gx <= INT32_MAX && gy <= 65535, op, "problem too large for the SIMT kernel's grid");
        conv1x1_simt_kernel<scalar_t, acc_t><<<dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy)), kThreads,
                                                0, stream>>>(p);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }
    c0 += cj;
  }
}

}  // namespace
}  // namespace fastconv

TORCH_LIBRARY_IMPL(fastconv, CUDA, m) { m.impl("_conv1x1_cuda", &fastconv::conv1x1_cuda); }
