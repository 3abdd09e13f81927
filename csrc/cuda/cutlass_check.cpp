// fastconv::_cutlass_check: for one conv2d_relu / conv1x1 problem, the CUDA backend's plan and,
// when the plan names a CUTLASS kernel, whether that kernel's own host-side checks take the
// arguments the CUDA op would build: "<path>: ok", "<path>: refused: <why>" (either followed by the
// plan's notes in parentheses), or the direct plan's string. kernel= asks the named CUTLASS kernel
// even where the plan would not. Nothing is launched, so it runs on CPU and meta tensors: tests hold
// the dispatch rules (csrc/cuda_plan.h) against CUTLASS's can_implement without a GPU
// (tests/test_cutlass_check.py).
// Compiled only in CUDA builds (the CUTLASS argument types live in the .cu files).
#include "conv2d_relu_common.h"
#include "cutlass_conv.h"

#include <torch/library.h>

namespace fastconv {
namespace {

std::string cutlass_check(c10::string_view op, const at::Tensor& x, const at::Tensor& weight,
                          const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& residual,
                          const at::Tensor& out, at::IntArrayRef stride, at::IntArrayRef padding,
                          at::IntArrayRef dilation, bool prologue, bool relu, int64_t cc, bool allow_tf32,
                          int64_t sm80_mode, bool sm90_tf32, c10::optional<c10::string_view> kernel) {
  const bool is_1x1 = op == "conv1x1";
  TORCH_CHECK(is_1x1 || op == "conv2d_relu", "_cutlass_check: op must be 'conv2d_relu' or 'conv1x1', got ", op);
  TORCH_CHECK(sm80_mode >= 0 && sm80_mode <= 2, "_cutlass_check: sm80_mode must be 0, 1 or 2, got ", sm80_mode);
  TORCH_CHECK(!prologue || is_1x1, "_cutlass_check: a prologue belongs to conv1x1");
  int64_t pad[4] = {0, 0, 0, 0}, strd[2] = {1, 1}, dil[2] = {1, 1};
  if (is_1x1) {
    TORCH_CHECK(x.dim() == 4 && out.dim() == 4 && weight.dim() == 2, "_cutlass_check: conv1x1 takes 4-D x and out ",
                "and a 2-D weight");
    TORCH_CHECK(stride.size() == 2, "_cutlass_check: stride must have 2 elements");
    TORCH_CHECK(out.size(0) == x.size(0) && out.size(1) == weight.size(0) && weight.size(1) == x.size(1) &&
                    out.size(2) == (x.size(2) - 1) / stride[0] + 1 && out.size(3) == (x.size(3) - 1) / stride[1] + 1,
                "_cutlass_check: conv1x1 shapes disagree: x ", x.sizes(), ", weight ", weight.sizes(), ", out ",
                out.sizes(), ", stride ", stride);
    TORCH_CHECK(!residual.has_value() || residual->sizes() == out.sizes(), "_cutlass_check: residual must have ",
                "out's shape ", out.sizes());
    strd[0] = stride[0];
    strd[1] = stride[1];
  } else {
    const Conv2dGeometry g = check_conv2d_relu_args("fastconv::_cutlass_check", x, weight, bias, residual, stride,
                                                    padding, dilation, 1, out, x.device().type());
    for (int i = 0; i < 4; ++i) pad[i] = padding[i];
    strd[0] = g.sh; strd[1] = g.sw;
    dil[0] = g.dh; dil[1] = g.dw;
  }
  ConvPlan plan = plan_conv(plan_input(is_1x1, x, weight, residual, out, stride, padding, dilation, 1, prologue,
                                             static_cast<int>(cc), allow_tf32, kBuiltSm90a,
                                             static_cast<int>(sm80_mode), sm90_tf32));
  if (kernel.has_value()) {  // ask a kernel the plan did not pick (tests: can_implement's own refusals)
    TORCH_CHECK(*kernel == "cutlass_sm90" || *kernel == "cutlass_sm80",
                "_cutlass_check: kernel must be 'cutlass_sm90' or 'cutlass_sm80', got ", *kernel);
    if (plan.path == "direct") plan = ConvPlan{std::string(*kernel), "not the plan's choice (" + plan.reason + ")"};
    plan.path = std::string(*kernel);
  }
  if (plan.path == "direct") return plan.str();
  // What the CUDA ops do before launching (csrc/cuda/conv1x1_kernel.cu, conv2d_relu_kernel.cu):
  // conv1x1's prologue writes a channels_last temporary the GEMM then reads at stride 1.
  at::Tensor src = x;
  if (plan.prologue_temp) {
    src = prologue_temp(x, out.size(2), out.size(3));
    strd[0] = strd[1] = 1;
  }
  const CutlassConvArgs a = cutlass_args(plan, cutlass_operands(plan, src, weight, bias), residual, out, pad, strd,
                                         dil, relu);
  const std::string why = cutlass_can_implement(plan.path, a);
  return plan.path + (why.empty() ? ": ok" : ": refused: " + why) + (plan.reason.empty() ? "" : " (" + plan.reason + ")");
}

}  // namespace
}  // namespace fastconv

TORCH_LIBRARY_FRAGMENT(fastconv, m) {
  m.def(
      "_cutlass_check(str op, Tensor x, Tensor weight, Tensor? bias, Tensor? residual, Tensor out, int[] stride, "
      "int[] padding, int[] dilation, bool prologue, bool relu, int cc, bool allow_tf32, int sm80_mode, "
      "bool sm90_tf32, str? kernel=None) -> str",
      &fastconv::cutlass_check);
}
