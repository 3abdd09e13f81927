// ConvPlanInput from tensors: shared by the private op fastconv::_cuda_plan (any device, meta
// included) and the CUDA ops, so that the unit-tested decision is the one the kernels take.
#pragma once

#include "cuda_plan.h"

#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>
#include <torch/version.h>

#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace fastconv {

inline PlanDtype plan_dtype(at::ScalarType t) {
  switch (t) {
    case at::kHalf: return PlanDtype::kHalf;
    case at::kBFloat16: return PlanDtype::kBFloat16;
    case at::kFloat: return PlanDtype::kFloat;
    case at::kDouble: return PlanDtype::kDouble;
    default: return PlanDtype::kOther;
  }
}

inline int64_t misalignment16(const at::Tensor& t) {
  if (!t.defined() || t.is_meta()) return 0;
  return static_cast<int64_t>(reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16);
}

// (N, C, H, W) strides; when channels are innermost (stride 1), the strides of size-1 spatial or
// batch dimensions (which address nothing, and which PyTorch leaves at arbitrary values such as 1)
// are replaced by their packed NHWC values, so alignment rules and TMA descriptors see a regular
// layout.
inline std::array<int64_t, 4> nhwc_strides(const at::Tensor& t) {
  std::array<int64_t, 4> s{t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
  if (s[1] != 1 && t.size(1) != 1) return s;
  s[1] = 1;
  if (t.size(3) == 1) s[3] = t.size(1);
  if (t.size(2) == 1) s[2] = t.size(3) * s[3];
  if (t.size(0) == 1) s[0] = t.size(2) * s[2];
  return s;
}

// True when the extension was compiled with sm_90a device code (setup.py defines FASTCONV_SM90A
// when TORCH_CUDA_ARCH_LIST names 9.0a).
constexpr bool kBuiltSm90a =
#if defined(FASTCONV_SM90A)
    true;
#else
    false;
#endif

// FASTCONV_CUTLASS_SM80 as ConvPlanInput::sm80_mode: unset, "" or "0" -> 0, "1" -> 1, "force" -> 2.
// Read at every call, so a test (or a user) can switch it without reloading the extension.
inline int sm80_mode_from_env() {
  const char* v = std::getenv("FASTCONV_CUTLASS_SM80");
  if (v == nullptr || *v == '\0' || std::strcmp(v, "0") == 0) return 0;
  if (std::strcmp(v, "1") == 0) return 1;
  if (std::strcmp(v, "force") == 0) return 2;
  TORCH_CHECK(false, "FASTCONV_CUTLASS_SM80 must be 0, 1 or force, got '", v, "'");
}

// FASTCONV_CUTLASS_SM90_TF32 as ConvPlanInput::sm90_tf32: unset, "" or "0" -> false, "1" -> true.
inline bool sm90_tf32_from_env() {
  const char* v = std::getenv("FASTCONV_CUTLASS_SM90_TF32");
  if (v == nullptr || *v == '\0' || std::strcmp(v, "0") == 0) return false;
  TORCH_CHECK(std::strcmp(v, "1") == 0, "FASTCONV_CUTLASS_SM90_TF32 must be 0 or 1, got '", v, "'");
  return true;
}

// Whether float32 convs may run as TF32, as PyTorch's cuDNN convs decide it. The legacy query
// (allowTF32CuDNN() without an op) raises once a user sets the newer per-op setting, e.g.
// torch.backends.cudnn.conv.fp32_precision = "ieee"; torch 2.14 (checked here) takes the conv op.
// On older torch an ambiguous setting computes in IEEE float32 rather than raising.
inline bool conv_allows_tf32() {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 14)
  return at::globalContext().allowTF32CuDNN(at::Float32Op::CONV);
#else
  try {
    return at::globalContext().allowTF32CuDNN();
  } catch (const c10::Error&) {
    return false;
  }
#endif
}

// weight: 4-D [Co, Ci/groups, KH, KW] (conv2d_relu) or 2-D [Co, Ci] (conv1x1, then padding and
// dilation are ignored and kh = kw = 1).
inline ConvPlanInput plan_input(bool conv1x1, const at::Tensor& x, const at::Tensor& weight,
                                const c10::optional<at::Tensor>& residual, const at::Tensor& out,
                                at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                int64_t groups, bool prologue, int cc, bool allow_tf32, bool built_sm90a,
                                int sm80_mode, bool sm90_tf32) {
  ConvPlanInput p;
  p.conv1x1 = conv1x1;
  p.cc = cc;
  p.built_sm90a = built_sm90a;
  p.dtype = plan_dtype(x.scalar_type());
  p.allow_tf32 = allow_tf32;
  p.n = x.size(0); p.c = x.size(1); p.h = x.size(2); p.w = x.size(3);
  p.co = out.size(1);
  p.oh = out.size(2); p.ow = out.size(3);
  p.groups = groups;
  const auto xs = nhwc_strides(x), os = nhwc_strides(out);
  for (int i = 0; i < 4; ++i) {
    p.xs[i] = xs[i];
    p.os[i] = os[i];
  }
  if (weight.dim() == 4) {
    p.kh = weight.size(2); p.kw = weight.size(3);
    const auto ws = nhwc_strides(weight);
    for (int i = 0; i < 4; ++i) p.ws[i] = ws[i];
  } else {
    p.ws[0] = weight.stride(0); p.ws[1] = weight.stride(1);
  }
  for (int i = 0; i < 2 && i < static_cast<int>(stride.size()); ++i) p.stride[i] = stride[i];
  if (!conv1x1) {
    for (int i = 0; i < 4 && i < static_cast<int>(padding.size()); ++i) p.pad[i] = padding[i];
    for (int i = 0; i < 2 && i < static_cast<int>(dilation.size()); ++i) p.dil[i] = dilation[i];
  }
  if (residual.has_value() && residual->defined()) {
    p.has_residual = true;
    const auto rs = nhwc_strides(*residual);
    for (int i = 0; i < 4; ++i) p.rs[i] = rs[i];
    p.r_mis = misalignment16(*residual);
  }
  p.x_mis = misalignment16(x);
  p.w_mis = misalignment16(weight);
  p.o_mis = misalignment16(out);
  p.has_prologue = prologue;
  p.sm80_mode = sm80_mode;
  p.sm90_tf32 = sm90_tf32;
  return p;
}

}  // namespace fastconv
