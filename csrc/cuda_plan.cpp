// fastconv::_cuda_plan: the CUDA backend's dispatch decision for a conv2d_relu / conv1x1 problem,
// as a string ("cutlass_sm90", "cutlass_sm80" or "direct: <reason>"). Registered as a catch-all kernel, so it
// runs on CPU and meta tensors too: tests check the rules without a GPU (csrc/cuda_plan.h).
#include "cuda_plan_tensors.h"

#include <ATen/Context.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#if defined(FASTCONV_WITH_CUDA)
#include <ATen/cuda/CUDAContext.h>
#endif

namespace fastconv {
namespace {

std::string cuda_plan(c10::string_view op, const at::Tensor& x, const at::Tensor& weight,
                      const c10::optional<at::Tensor>& residual, const at::Tensor& out, at::IntArrayRef stride,
                      at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, bool prologue, int64_t cc,
                      c10::optional<bool> allow_tf32, c10::optional<bool> built_sm90a,
                      c10::optional<int64_t> sm80_mode, c10::optional<bool> sm90_tf32) {
  const bool is_1x1 = op == "conv1x1";
  TORCH_CHECK(is_1x1 || op == "conv2d_relu", "_cuda_plan: op must be 'conv2d_relu' or 'conv1x1', got ", op);
  TORCH_CHECK(x.dim() == 4 && out.dim() == 4, "_cuda_plan: x and out must be 4-D");
  TORCH_CHECK(weight.dim() == (is_1x1 ? 2 : 4), "_cuda_plan: weight must be ", is_1x1 ? "2" : "4", "-D for ", op);
  TORCH_CHECK(!residual.has_value() || residual->dim() == 4, "_cuda_plan: residual must be 4-D");
  if (cc < 0) {
#if defined(FASTCONV_WITH_CUDA)
    TORCH_CHECK(x.is_cuda(), "_cuda_plan: cc=-1 (the tensor's device) needs a CUDA tensor; pass cc explicitly");
    const auto* prop = at::cuda::getDeviceProperties(x.device().index());
    cc = prop->major * 10 + prop->minor;
#else
    TORCH_CHECK(false, "_cuda_plan: cc=-1 needs a CUDA build; pass cc explicitly");
#endif
  }
  const bool tf32 = allow_tf32.has_value() ? *allow_tf32 : conv_allows_tf32();
  const bool built = built_sm90a.has_value() ? *built_sm90a : kBuiltSm90a;
  const int sm80 = sm80_mode.has_value() ? static_cast<int>(*sm80_mode) : sm80_mode_from_env();
  TORCH_CHECK(sm80 >= 0 && sm80 <= 2, "_cuda_plan: sm80_mode must be 0 (off), 1 (on) or 2 (force), got ", sm80);
  const ConvPlanInput in = plan_input(is_1x1, x, weight, residual, out, stride, padding, dilation, groups, prologue,
                                      static_cast<int>(cc), tf32, built, sm80,
                                      sm90_tf32.has_value() ? *sm90_tf32 : sm90_tf32_from_env());
  return plan_conv(in).str();
}

}  // namespace
}  // namespace fastconv

TORCH_LIBRARY_FRAGMENT(fastconv, m) {
  m.def(
      "_cuda_plan(str op, Tensor x, Tensor weight, Tensor? residual, Tensor out, int[] stride, int[] padding, "
      "int[] dilation, int groups, bool prologue=False, int cc=-1, bool? allow_tf32=None, bool? built_sm90a=None, "
      "int? sm80_mode=None, bool? sm90_tf32=None) -> str",
      &fastconv::cuda_plan);
}
