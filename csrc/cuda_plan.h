// Which CUDA kernel runs a conv2d_relu / conv1x1 problem: a small, pure host function.
//
// The CUDA ops (csrc/cuda/*.cu) call plan_conv() before launching anything, and the private op
// fastconv::_cuda_plan (csrc/cuda_plan.cpp, compiled in every build, CPU-only ones included)
// returns the same decision as a string, so that the dispatch rules are unit-tested on the CPU
// (tests/test_cuda_plan.py) without a GPU.
//
// Paths:
//   "cutlass_sm90"  CUTLASS 3.x implicit-GEMM fprop, TMA im2col + warpgroup MMA (wgmma), built for
//                   sm_90a only (runs on compute capability 9.0 exactly); fp16/bf16 in, fp32
//                   accumulation; epilogue relu?(acc + bias + residual) with ReLU a runtime switch.
//                   conv1x1 takes the same kernel with a 1x1 filter (an implicit GEMM whose im2col
//                   is the identity), so one instantiation per dtype serves both ops.
//   "direct"        the naive direct-convolution kernel (conv2d_relu) / the tiled SIMT GEMM
//                   (conv1x1): any strides, groups, dtypes (fp64 included). The correctness
//                   baseline, and the path for everything CUTLASS cannot take.
// The reason after the colon says why, e.g. "direct: x is not channels_last (NCHW ...)".
#pragma once

#include <cstdint>
#include <string>

namespace fastconv {

enum class PlanDtype { kHalf, kBFloat16, kFloat, kDouble, kOther };

struct ConvPlanInput {
  bool conv1x1 = false;     // conv1x1 op (weight 2-D, no padding/dilation)
  int cc = 0;               // compute capability, major * 10 + minor (90 = H100)
  bool built_sm90a = false; // the extension holds the sm_90a CUTLASS kernels
  PlanDtype dtype = PlanDtype::kOther;
  bool allow_tf32 = false;  // torch.backends.cudnn.allow_tf32 (fp32 via TF32 tensor cores)
  int64_t n = 0, c = 0, h = 0, w = 0;  // input
  int64_t co = 0, kh = 1, kw = 1;      // weight [co, c / groups, kh, kw]
  int64_t oh = 0, ow = 0;              // output
  int64_t groups = 1;
  int64_t stride[2] = {1, 1}, pad[4] = {0, 0, 0, 0}, dil[2] = {1, 1};  // pad: top, bottom, left, right
  int64_t xs[4] = {0, 0, 0, 0};        // element strides (N, C, H, W)
  int64_t ws[4] = {0, 0, 0, 0};        // weight strides (Co, Ci, KH, KW); 2-D weights: (Co, Ci, 0, 0)
  int64_t os[4] = {0, 0, 0, 0};        // output strides
  bool has_residual = false;
  int64_t rs[4] = {0, 0, 0, 0};        // residual strides
  // Byte addresses modulo 16 (0 = 16-byte aligned) of x, weight, out, residual.
  int64_t x_mis = 0, w_mis = 0, o_mis = 0, r_mis = 0;
  bool has_prologue = false;  // conv1x1's in_scale/in_shift/in_relu
};

struct ConvPlan {
  std::string path;    // "cutlass_sm90" or "direct"
  std::string reason;  // why (for "direct"), or the variant notes (for CUTLASS)
  bool repack_weight = false;  // weight is not [K, R, S, C] with C innermost: copied per call
  bool prologue_temp = false;  // conv1x1 prologue: relu?(x*scale+shift) written to a temporary first
  std::string str() const { return reason.empty() ? path : path + ": " + reason; }
};

inline const char* plan_dtype_name(PlanDtype d) {
  switch (d) {
    case PlanDtype::kHalf: return "float16";
    case PlanDtype::kBFloat16: return "bfloat16";
    case PlanDtype::kFloat: return "float32";
    case PlanDtype::kDouble: return "float64";
    default: return "other";
  }
}

// NHWC strides (s = N, C, H, W strides, C innermost) no smaller than the packed ones: what
// CUTLASS's ConvProblemShape asserts (no broadcast / overlapping / W-outer layouts).
inline bool at_least_packed(const int64_t* s, int64_t c, int64_t h, int64_t w) {
  return s[3] >= c && s[2] >= w * s[3] && s[0] >= h * s[2];
}

// The rules, in order; the first that fails names the reason for the direct path.
inline ConvPlan plan_conv(const ConvPlanInput& p) {
  auto direct = [](std::string why) { return ConvPlan{"direct", std::move(why)}; };
  constexpr int64_t kAlign = 8;  // 16 bytes of 16-bit elements: TMA's global-address granule
  if (p.dtype == PlanDtype::kFloat) {
    return direct(p.allow_tf32 ? "float32 with TF32: no TF32 CUTLASS kernel is built (TF32 is on the roadmap)"
                               : "float32 without TF32 needs exact fp32 math (no fp32 tensor-core path)");
  }
  if (p.dtype != PlanDtype::kHalf && p.dtype != PlanDtype::kBFloat16) {
    return direct(std::string("dtype ") + plan_dtype_name(p.dtype) + " (CUTLASS kernels take float16/bfloat16)");
  }
  if (!p.built_sm90a) return direct("the extension was built without sm_90a (TORCH_CUDA_ARCH_LIST lacks 9.0a)");
  if (p.cc != 90) {
    return direct("compute capability " + std::to_string(p.cc) +
                  ": the CUTLASS kernels are sm_90a (Hopper) only; no sm_80 CUTLASS kernel is built yet");
  }
  if (p.groups != 1) return direct("groups=" + std::to_string(p.groups) + " (CUTLASS path needs groups == 1)");
  if (p.n == 0 || p.oh == 0 || p.ow == 0 || p.co == 0) return direct("empty problem");
  if (p.c % kAlign != 0) {
    // Zero-padding C to 8 was tried and fails on an H200: the SM90 kernel traps (illegal
    // instruction) when C is below its 64-channel K tile, and padding to 64 would cost 8x the
    // stem's MACs. A few-channels kernel is what the stems need (issue 4).
    return direct("C_in=" + std::to_string(p.c) +
                  " is not a multiple of 8 (16-byte TMA alignment; stems with 3 channels take the direct kernel)");
  }
  if (p.co % kAlign != 0) return direct("C_out=" + std::to_string(p.co) + " is not a multiple of 8");
  // x: channels innermost (channels_last or a channel slice of an NHWC buffer), 16-byte strides.
  // With conv1x1's prologue x is read by the prologue kernel (any strides) instead.
  if (!p.has_prologue) {
    if (p.xs[1] != 1) {
      return direct("x is not channels_last (NCHW input: convert with x.to(memory_format=torch.channels_last))");
    }
    for (int d : {0, 2, 3}) {
      if (p.xs[d] % kAlign != 0 || p.xs[d] < 0) return direct("x's pixel strides are not multiples of 16 bytes");
    }
    if (!at_least_packed(p.xs, p.c, p.h, p.w)) return direct("x's strides overlap (broadcast or transposed pixels)");
    if (p.x_mis != 0) return direct("x is not 16-byte aligned");
  }
  // output (and residual, the epilogue's C): channels innermost, (n, h, w) strides multiples of 16
  // bytes (TMA store/load), so a channel slice of an NHWC buffer qualifies.
  auto pixel_aligned = [&](const int64_t* s) {
    for (int d : {0, 2, 3}) {
      if (s[d] % kAlign != 0 || s[d] < 0) return false;
    }
    return true;
  };
  if (p.os[1] != 1 && p.co > 1) return direct("out is not channels_last");
  if (!pixel_aligned(p.os)) return direct("out's pixel strides are not multiples of 16 bytes");
  if (!at_least_packed(p.os, p.co, p.oh, p.ow)) return direct("out's strides overlap or transpose the pixels");
  if (p.o_mis != 0) return direct("out is not 16-byte aligned");
  if (p.has_residual) {
    if ((p.rs[1] != 1 && p.co > 1) || !pixel_aligned(p.rs)) {
      return direct("residual is not channels_last with 16-byte pixel strides");
    }
    if (!at_least_packed(p.rs, p.co, p.oh, p.ow)) return direct("residual's strides overlap or transpose the pixels");
    if (p.r_mis != 0) return direct("residual is not 16-byte aligned");
  }
  if (p.n * p.oh * p.ow > INT32_MAX) return direct("N*OH*OW exceeds 2^31-1 (the kernel's GEMM M is 32-bit)");
  if (p.n * p.h * p.w * p.c > (int64_t(1) << 40)) return direct("x too large for a TMA descriptor");
  // TMA im2col limits (2-D): padding in [0, 256]; corners in [-128, 127]; (k-1)*dilation < 255.
  for (int i = 0; i < 4; ++i) {
    if (p.pad[i] > 256) return direct("padding > 256 (TMA im2col limit)");
  }
  const int64_t kext[2] = {p.kh, p.kw};
  for (int i = 0; i < 2; ++i) {
    const int64_t lower = -p.pad[2 * i], upper = p.pad[2 * i + 1] - (kext[i] - 1) * p.dil[i];
    if (lower < -128 || lower > 127 || upper < -128 || upper > 127) {
      return direct("padding/kernel extent outside the TMA im2col corner range [-128, 127]");
    }
    if ((kext[i] - 1) * p.dil[i] >= 255) return direct("(kernel-1)*dilation >= 255 (TMA im2col offset limit)");
    if (!p.has_prologue && p.stride[i] > 8) return direct("stride > 8 (TMA im2col traversal-stride limit)");
  }
  ConvPlan plan{"cutlass_sm90", ""};
  // weight as [K, R, S, C] with C innermost and 16-byte strides; otherwise a per-call repack.
  const bool w_krsc = p.ws[1] == 1 && p.ws[0] % kAlign == 0 && (p.conv1x1 || (p.ws[2] % kAlign == 0 && p.ws[3] % kAlign == 0)) &&
                      p.w_mis == 0;
  if (!w_krsc) {
    plan.repack_weight = true;
    plan.reason = "weight repacked to KRSC per call (store it channels_last to avoid the copy)";
  }
  if (p.has_prologue) {
    plan.prologue_temp = true;
    if (!plan.reason.empty()) plan.reason += "; ";
    plan.reason += "prologue relu?(x*scale+shift) written to a temporary by a fused CUDA kernel, then the GEMM";
  }
  return plan;
}

}  // namespace fastconv
