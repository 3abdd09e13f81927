// fastconv::_conv2d_relu_cuda: out = relu?(conv2d(x, weight) + bias + residual) on a CUDA device.
//
// Dispatch (csrc/cuda_plan.h, reported by fastconv::_cuda_plan): float16/bfloat16 channels_last
// problems with groups == 1 and 16-byte alignment run the CUTLASS 3.x SM90 implicit-GEMM kernel
// (csrc/cuda/cutlass_sm90_conv.cu) on a compute-capability-9.0 device, or, when
// FASTCONV_CUTLASS_SM80 enables them, the CUTLASS 2.x kernels (csrc/cuda/cutlass_sm80_conv.cu,
// fp32 through TF32 as well, and the 3-channel stems zero-padded to 4 channels) on 8.x and for
// what the SM90 kernel refuses (fp32 on Hopper takes the SM90 TF32 kernel first when
// FASTCONV_CUTLASS_SM90_TF32 enables it); everything else (NCHW input, groups, float64, exact
// float32) runs the direct kernel below.
//
// The direct kernel is the CORRECTNESS BASELINE of the cuda backend, not its fast path: a direct convolution
// with one thread per output element, fp32 accumulation (fp64 for double), every tensor read and
// written through its own strides with 64-bit offsets, so any layout (NCHW, channels_last, a
// channel slice of a larger buffer as out=) is handled by the same code. The CUTLASS implicit-GEMM
// kernels (SM90 TMA/wgmma, SM80 tensor-op; DESIGN §4) replace it for the shapes they support and
// are tested against it.
#include "conv2d_relu_common.h"
#include "cuda_plan_tensors.h"
#include "cutlass_conv.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

namespace fastconv {
namespace {

struct Strides4 {
  int64_t s0, s1, s2, s3;
};

inline Strides4 strides_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

template <typename scalar_t, typename acc_t>
__global__ void conv2d_relu_direct_kernel(const scalar_t* __restrict__ x, Strides4 xs, const scalar_t* __restrict__ w,
                                          Strides4 ws, const scalar_t* __restrict__ bias, int64_t bias_stride,
                                          const scalar_t* __restrict__ res, Strides4 rs, scalar_t* __restrict__ out,
                                          Strides4 os, Conv2dGeometry g, bool relu, int64_t total) {
  // Grid-stride loop over the output elements in (n, co, oh, ow) order; 64-bit throughout so
  // outputs with more than 2^31 elements index correctly.
  const int64_t step = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += step) {
    const int64_t ow = idx % g.ow;
    const int64_t oh = (idx / g.ow) % g.oh;
    const int64_t co = (idx / (g.ow * g.oh)) % g.co;
    const int64_t n = idx / (g.ow * g.oh * g.co);
    const int64_t grp = co / g.cog;
    acc_t acc = bias ? static_cast<acc_t>(bias[co * bias_stride]) : acc_t(0);
    const scalar_t* xn = x + n * xs.s0 + grp * g.cg * xs.s1;
    const scalar_t* wc = w + co * ws.s0;
    for (int64_t ci = 0; ci < g.cg; ++ci) {
      for (int64_t kh = 0; kh < g.kh; ++kh) {
        const int64_t ih = oh * g.sh - g.pt + kh * g.dh;
        if (ih < 0 || ih >= g.h) continue;
        for (int64_t kw = 0; kw < g.kw; ++kw) {
          const int64_t iw = ow * g.sw - g.pl + kw * g.dw;
          if (iw < 0 || iw >= g.w) continue;
          acc += static_cast<acc_t>(xn[ci * xs.s1 + ih * xs.s2 + iw * xs.s3]) *
                 static_cast<acc_t>(wc[ci * ws.s1 + kh * ws.s2 + kw * ws.s3]);
        }
      }
    }
    if (res) acc += static_cast<acc_t>(res[n * rs.s0 + co * rs.s1 + oh * rs.s2 + ow * rs.s3]);
    if (relu && acc < acc_t(0)) acc = acc_t(0);  // NaN stays NaN, as torch.relu
    out[n * os.s0 + co * os.s1 + oh * os.s2 + ow * os.s3] = static_cast<scalar_t>(acc);  // one rounding
  }
}

void run_cutlass(const ConvPlan& plan, const at::Tensor& x, const at::Tensor& weight,
                 const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual,
                 const Conv2dGeometry& g, at::IntArrayRef padding, bool relu, const at::Tensor& out) {
  const int64_t pad[4] = {padding[0], padding[1], padding[2], padding[3]};
  const int64_t stride[2] = {g.sh, g.sw}, dil[2] = {g.dh, g.dw};
  const CutlassConvArgs a =
      cutlass_args(plan, cutlass_operands(plan, x, weight, bias), residual, out, pad, stride, dil, relu);
  run_cutlass_conv(plan.path, a, out);
}

void conv2d_relu_cuda(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                      const std::optional<at::Tensor>& residual, at::IntArrayRef stride, at::IntArrayRef padding,
                      at::IntArrayRef dilation, int64_t groups, bool relu, const at::Tensor& out) {
  const Conv2dGeometry g = check_conv2d_relu_args("fastconv::_conv2d_relu_cuda", x, weight, bias, residual, stride,
                                                  padding, dilation, groups, out, c10::DeviceType::CUDA);
  if (out.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  const auto* prop = at::cuda::getCurrentDeviceProperties();
  const ConvPlan plan = plan_conv(plan_input(false, x, weight, residual, out, stride, padding, dilation, groups, false,
                                             prop->major * 10 + prop->minor, conv_allows_tf32(),
                                             kBuiltSm90a, sm80_mode_from_env(), sm90_tf32_from_env()));
  if (plan.path != "direct") {
    run_cutlass(plan, x, weight, bias, residual, g, padding, relu, out);
    return;
  }
  const bool has_bias = bias.has_value() && bias->defined();
  const bool has_res = residual.has_value() && residual->defined();
  const Strides4 zero{0, 0, 0, 0};
  const int64_t total = out.numel();
  constexpr int threads = 256;
  // Enough blocks to fill the device several times over; the grid-stride loop covers the rest.
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const unsigned blocks = static_cast<unsigned>(std::max<int64_t>(1, std::min((total + threads - 1) / threads, sms * 32)));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, x.scalar_type(),
                                  "fastconv::_conv2d_relu_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;  // float for half/bfloat16/float, double for double
    conv2d_relu_direct_kernel<scalar_t, acc_t><<<blocks, threads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), strides_of(x), weight.const_data_ptr<scalar_t>(), strides_of(weight),
        has_bias ? bias->const_data_ptr<scalar_t>() : nullptr, has_bias ? bias->stride(0) : 0,
        has_res ? residual->const_data_ptr<scalar_t>() : nullptr, has_res ? strides_of(*residual) : zero,
        out.data_ptr<scalar_t>(), strides_of(out), g, relu, total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace
}  // namespace fastconv

TORCH_LIBRARY_IMPL(fastconv, CUDA, m) { m.impl("_conv2d_relu_cuda", &fastconv::conv2d_relu_cuda); }
