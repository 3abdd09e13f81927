// Host interface of the CUTLASS implicit-GEMM fprop kernels:
//   run_sm90_conv  CUTLASS 3.x, TMA im2col + warpgroup MMA, sm_90a   (csrc/cuda/cutlass_sm90_conv.cu)
//   run_sm80_conv  CUTLASS 2.x, cp.async + mma.sync tensor ops, sm_80 (csrc/cuda/cutlass_sm80_conv.cu)
// Both compute out = relu?(conv(x, w) + bias + residual) with fp32 accumulation and one rounding;
// plan_conv (csrc/cuda_plan.h) decides which one (if any) may take a problem.
#pragma once

#include "cuda_plan_tensors.h"

#include <ATen/ATen.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <string>
#include <utility>

namespace fastconv {

// One NHWC fprop. Preconditions (checked by plan_conv, re-checked by CUTLASS's can_implement):
// channels innermost with 16-byte aligned pointers and strides, groups == 1, weight [K, R, S, C]
// with C innermost, out/residual channels innermost.
struct CutlassConvArgs {
  PlanDtype dtype = PlanDtype::kHalf;    // kHalf, kBFloat16, or kFloat (TF32 math)
  const void* x = nullptr;
  int64_t n = 0, h = 0, w = 0, c = 0;
  int64_t xs_n = 0, xs_h = 0, xs_w = 0;  // element strides of x (channel stride 1)
  const void* weight = nullptr;
  int64_t k = 0, r = 1, s = 1;
  int64_t ws_k = 0, ws_r = 0, ws_s = 0;  // element strides of the weight (channel stride 1)
  const void* bias = nullptr;            // contiguous [k], 16-byte aligned, or null
  const void* residual = nullptr;        // or null
  int64_t rs[3] = {0, 0, 0};             // residual element strides (n, h, w); channel stride 1
  void* out = nullptr;
  int64_t p = 0, q = 0;                  // output height, width
  int64_t os[3] = {0, 0, 0};             // out element strides (n, h, w); channel stride 1
  int64_t pad[4] = {0, 0, 0, 0};         // top, bottom, left, right
  int64_t stride[2] = {1, 1}, dil[2] = {1, 1};
  bool relu = false;
  bool few_channels = false;             // sm80 only: the 4-channel (8-byte access) kernel for stems, C == 4
};

// t contiguous in memory_format with a 16-byte aligned start (the bias vector and repacked
// weights CUTLASS reads). A tensor already contiguous but misaligned (a view at an odd storage
// offset) is copied, not returned as it is.
inline at::Tensor aligned_contiguous(const at::Tensor& t,
                                     at::MemoryFormat memory_format = at::MemoryFormat::Contiguous) {
  at::Tensor c = t.contiguous(memory_format);
  if (reinterpret_cast<uintptr_t>(c.const_data_ptr()) % 16 != 0) c = c.clone(memory_format);
  return c;
}

// Operand preparation, shared by the CUDA ops and the host-side check fastconv::_cutlass_check
// (csrc/cuda/cutlass_check.cpp), so the check sees the tensors the kernels get. at:: ops only:
// they run on CUDA, CPU and meta tensors alike.

// t [N, C, H, W] copied into a zeroed channels_last [N, pad_c, H, W] (pad_c >= C): the few-channel
// stems' input and filter for the CUTLASS 2.x kernels, whose loads need 8 or 16 bytes per access.
inline at::Tensor zero_pad_channels(const at::Tensor& t, int64_t pad_c) {
  // at::zeros would drop the memory format of the options: allocate, then zero.
  at::Tensor p = at::empty({t.size(0), pad_c, t.size(2), t.size(3)},
                           t.options().memory_format(at::MemoryFormat::ChannelsLast));
  p.zero_();
  p.narrow(1, 0, t.size(1)).copy_(t);
  return p;
}

// conv1x1's prologue output relu?(x*scale+shift), already subsampled by the stride: a contiguous
// channels_last [N, C, OH, OW] tensor (the CUDA op fills it; the check only needs its layout).
inline at::Tensor prologue_temp(const at::Tensor& x, int64_t oh, int64_t ow) {
  return at::empty({x.size(0), x.size(1), oh, ow}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
}

struct CutlassOperands {
  at::Tensor x, weight, bias;  // bias undefined when there is none
};

// The operands of one CUTLASS launch as plan asks for them: x (and a 4-D weight) zero-padded to
// plan.pad_c channels, the weight repacked to KRSC (4-D: channels_last; conv1x1's 2-D [K, C]:
// row-major) with a 16-byte aligned start, the bias contiguous and aligned.
inline CutlassOperands cutlass_operands(const ConvPlan& plan, const at::Tensor& x, const at::Tensor& weight,
                                        const c10::optional<at::Tensor>& bias) {
  CutlassOperands o;
  o.x = plan.pad_c > 0 ? zero_pad_channels(x, plan.pad_c) : x;
  o.weight = plan.pad_c > 0 ? zero_pad_channels(weight, plan.pad_c) : weight;
  if (plan.repack_weight) {
    o.weight = aligned_contiguous(o.weight, o.weight.dim() == 4 ? at::MemoryFormat::ChannelsLast
                                                                : at::MemoryFormat::Contiguous);
  }
  if (bias.has_value() && bias->defined()) o.bias = aligned_contiguous(*bias);
  return o;
}

// CutlassConvArgs of out = relu?(conv(op.x, op.weight) + bias + residual): the shapes from the
// tensors (out gives K, P, Q), geometry from the arguments (conv1x1: pad 0, dilation 1, and the
// stride its x needs: 1 when x is the prologue's already-subsampled temporary).
inline CutlassConvArgs cutlass_args(const ConvPlan& plan, const CutlassOperands& op,
                                    const c10::optional<at::Tensor>& residual, const at::Tensor& out,
                                    const int64_t pad[4], const int64_t stride[2], const int64_t dil[2], bool relu) {
  const at::Tensor& x = op.x;
  const at::Tensor& wk = op.weight;
  CutlassConvArgs a;
  a.dtype = plan_dtype(x.scalar_type());
  a.few_channels = plan.few_channels;
  a.x = x.const_data_ptr();
  a.n = x.size(0); a.c = x.size(1); a.h = x.size(2); a.w = x.size(3);
  const auto xs = nhwc_strides(x);
  a.xs_n = xs[0]; a.xs_h = xs[2]; a.xs_w = xs[3];
  a.weight = wk.const_data_ptr();
  a.k = out.size(1);
  if (wk.dim() == 4) {
    const auto ws = nhwc_strides(wk);
    a.r = wk.size(2); a.s = wk.size(3);
    a.ws_k = ws[0]; a.ws_r = ws[2]; a.ws_s = ws[3];
  } else {  // [K, C]: a 1x1 filter
    a.r = a.s = 1;
    a.ws_k = wk.stride(0); a.ws_r = a.ws_s = a.c;
  }
  a.bias = op.bias.defined() ? op.bias.const_data_ptr() : nullptr;
  if (residual.has_value() && residual->defined()) {
    a.residual = residual->const_data_ptr();
    const auto rs = nhwc_strides(*residual);
    a.rs[0] = rs[0]; a.rs[1] = rs[2]; a.rs[2] = rs[3];
  }
  a.out = const_cast<void*>(out.const_data_ptr());
  a.p = out.size(2); a.q = out.size(3);
  const auto os = nhwc_strides(out);
  a.os[0] = os[0]; a.os[1] = os[2]; a.os[2] = os[3];
  for (int i = 0; i < 4; ++i) a.pad[i] = pad[i];
  for (int i = 0; i < 2; ++i) {
    a.stride[i] = stride[i];
    a.dil[i] = dil[i];
  }
  a.relu = relu;
  return a;
}

// Why the CUTLASS kernel of plan path `path` would refuse `a` ("" when it takes it): 16-byte
// aligned pointers, then the kernel's own host-side can_implement (and the problem shape the SM90
// kernel derives). No GPU needed: run_cutlass_conv raises on the same refusals before launching.
std::string sm90_can_implement(const CutlassConvArgs& a);
std::string sm80_can_implement(const CutlassConvArgs& a);
inline std::string misaligned_pointer(const CutlassConvArgs& a) {
  const std::pair<const void*, const char*> ptrs[] = {
      {a.x, "x"}, {a.weight, "weight"}, {a.bias, "bias"}, {a.residual, "residual"}, {a.out, "out"}};
  for (const auto& [ptr, name] : ptrs) {
    if (reinterpret_cast<uintptr_t>(ptr) % 16 != 0) return std::string(name) + " is not 16-byte aligned";
  }
  return "";
}
inline std::string cutlass_can_implement(const std::string& path, const CutlassConvArgs& a) {
  std::string why = misaligned_pointer(a);
  if (why.empty()) why = path == "cutlass_sm90" ? sm90_can_implement(a) : sm80_can_implement(a);
  return why;
}

// Launch on the current stream of the current device; raise on any CUTLASS or CUDA error.
void run_sm90_conv(const CutlassConvArgs& a, const at::Tensor& like);
void run_sm80_conv(const CutlassConvArgs& a, const at::Tensor& like);

// The kernel a plan path names ("cutlass_sm90" or "cutlass_sm80").
inline void run_cutlass_conv(const std::string& path, const CutlassConvArgs& a, const at::Tensor& like) {
  const std::string misaligned = misaligned_pointer(a);
  TORCH_CHECK(misaligned.empty(), "fastconv ", path, ": ", misaligned, " (a dispatch bug)");
  if (path == "cutlass_sm90") {
    run_sm90_conv(a, like);
  } else {
    run_sm80_conv(a, like);
  }
}

}  // namespace fastconv
