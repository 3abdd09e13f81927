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
//                   fp32 through TF32 wgmma too, when torch.backends.cudnn.allow_tf32 is on and
//                   FASTCONV_CUTLASS_SM90_TF32=1 (sm90_tf32 below): built and its SASS checked
//                   here, not yet run on a GPU, so off by default.
//                   conv1x1 takes the same kernel with a 1x1 filter (an implicit GEMM whose im2col
//                   is the identity), so one instantiation per dtype serves both ops.
//   "cutlass_sm80"  CUTLASS 2.x implicit-GEMM fprop, cp.async + mma.sync (HMMA), for compute
//                   capability 8.x (A100, A10, L4, RTX 30/40); fp16/bf16, and fp32 through TF32
//                   when torch.backends.cudnn.allow_tf32 is on; same epilogue, same 1x1 reuse;
//                   the 3-channel stems zero-padded to 4 channels (a few-channels kernel).
//                   Used only when FASTCONV_CUTLASS_SM80 says so (sm80_mode below): these kernels
//                   compile and their SASS is checked here, but no sm_80 GPU has run them yet.
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
  // FASTCONV_CUTLASS_SM80: 0 = the CUTLASS 2.x kernels are off (the default until a GPU run has
  // verified them); 1 = on for compute capability 8.x, and on 9.0 for what the SM90 kernel
  // refuses (float32/TF32, the 3-channel stems); 2 = "force": also in place of the SM90 kernel on
  // 9.0 (mma.sync runs on Hopper), so the GPU tests can exercise the 2.x kernels on an H100.
  int sm80_mode = 0;
  // FASTCONV_CUTLASS_SM90_TF32=1: float32 (with allow_tf32) on 9.0 tries the SM90 TF32 kernel
  // first. Off by default until a GPU run has verified it.
  bool sm90_tf32 = false;
};

struct ConvPlan {
  std::string path;    // "cutlass_sm90", "cutlass_sm80" or "direct"
  std::string reason;  // why (for "direct"), or the variant notes (for CUTLASS)
  bool repack_weight = false;  // weight is not [K, R, S, C] with C innermost: copied per call
  bool prologue_temp = false;  // conv1x1 prologue: relu?(x*scale+shift) written to a temporary first
  int64_t pad_c = 0;           // > 0: x and weight zero-padded to pad_c channels per call (few-channel stems)
  bool few_channels = false;   // the CUTLASS 2.x few-channels kernel (4-channel accesses) takes it
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

// The pixel stride L of a tensor viewed as an [N*H*W, C] row-major matrix (channels innermost),
// or -1 when no single L exists (what CUTLASS 2.x's packed epilogue iterator needs of out and
// the residual). s = (N, C, H, W) strides; size-1 dimensions constrain nothing.
inline int64_t uniform_pixel_stride(const int64_t* s, int64_t n, int64_t h, int64_t w) {
  const int64_t l = w > 1 ? s[3] : h > 1 ? s[2] : s[0];
  if (w > 1 && s[3] != l) return -1;
  if (h > 1 && s[2] != l * w) return -1;
  if (n > 1 && s[0] != l * w * h) return -1;
  return l;
}

// The last rules, shared by both CUTLASS paths: the weight as [K, R, S, C] with C innermost and
// 16-byte strides (otherwise a per-call repack), and conv1x1's prologue temporary.
inline ConvPlan finish_plan(const ConvPlanInput& p, const char* path, int64_t align) {
  ConvPlan plan{path, ""};
  // A 4-D weight must also be packed along R: CUTLASS 2.x's optimized filter iterator walks the
  // R x S taps as one flat index with the S stride alone (a [..., :3] slice of a wider kernel, or
  // an R/S transpose, would read the wrong taps), and no stride may overlap (an expanded weight).
  const bool w_packed = p.conv1x1 ? p.ws[0] >= p.c
                                  : at_least_packed(p.ws, p.c, p.kh, p.kw) && (p.kh == 1 || p.ws[2] == p.kw * p.ws[3]);
  const bool w_krsc = p.ws[1] == 1 && p.ws[0] % align == 0 && w_packed &&
                      (p.conv1x1 || (p.ws[2] % align == 0 && p.ws[3] % align == 0)) && p.w_mis == 0;
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

// Bytes from a 4-D tensor's first element to one past its last (strides (N, C, H, W), C innermost).
inline int64_t span_bytes(const int64_t* s, int64_t n, int64_t c, int64_t h, int64_t w, int64_t elem) {
  return ((n - 1) * s[0] + (h - 1) * s[2] + (w - 1) * s[3] + c) * elem;
}

// What the CUTLASS 2.x kernels need beyond the rules both paths share.
inline ConvPlan plan_sm80_rest(const ConvPlanInput& p, int64_t align, int64_t pad_c) {
  auto direct = [](std::string why) { return ConvPlan{"direct", std::move(why)}; };
  // The packed epilogue iterator walks out and the residual as [N*P*Q, K] with ONE row stride.
  if (uniform_pixel_stride(p.os, p.n, p.oh, p.ow) < 0) {
    return direct("out's pixel strides are not uniform (CUTLASS 2.x writes it as an [N*OH*OW, C] matrix)");
  }
  if (p.has_residual && uniform_pixel_stride(p.rs, p.n, p.oh, p.ow) < 0) {
    return direct("residual's pixel strides are not uniform (CUTLASS 2.x reads it as an [N*OH*OW, C] matrix)");
  }
  // The 2.x iterators keep strides and some offsets in 32-bit ints (and can_implement refuses
  // tensors of 2 GiB or more).
  const int64_t elem = p.dtype == PlanDtype::kFloat ? 4 : 2, limit = INT32_MAX;
  const int64_t wspan = (p.co - 1) * p.ws[0] + (p.kh - 1) * p.ws[2] + (p.kw - 1) * p.ws[3] + p.c;
  if ((!p.has_prologue && pad_c == 0 && span_bytes(p.xs, p.n, p.c, p.h, p.w, elem) > limit) ||
      (p.has_prologue && p.n * p.oh * p.ow * p.c * elem > limit) ||  // the prologue's temporary is x then
      (pad_c > 0 && p.n * p.h * p.w * pad_c * elem > limit) ||
      span_bytes(p.os, p.n, p.co, p.oh, p.ow, elem) > limit ||
      (p.has_residual && span_bytes(p.rs, p.n, p.co, p.oh, p.ow, elem) > limit) || wspan * elem > limit) {
    return direct("a tensor spans 2 GiB or more (CUTLASS 2.x conv offsets are 32-bit)");
  }
  // The optimized activation iterator (every 2.x kernel but the few-channels one) keeps a 32-bit
  // mask per filter row and column: CUTLASS's can_implement refuses R or S above 32.
  const bool few_channels = pad_c > 0 && p.dtype != PlanDtype::kFloat;
  if (!few_channels && (p.kh > 32 || p.kw > 32)) {
    return direct("kernel " + std::to_string(p.kh) + "x" + std::to_string(p.kw) +
                  " has more than 32 taps in a dimension (CUTLASS 2.x's optimized iterator)");
  }
  ConvPlan plan = finish_plan(p, "cutlass_sm80", align);
  if (pad_c > 0) {
    plan.pad_c = pad_c;
    plan.few_channels = few_channels;
    plan.repack_weight = false;  // the padded copy is KRSC already
    plan.reason = "C_in=" + std::to_string(p.c) + " zero-padded to " + std::to_string(pad_c) +
                  " channels (x and weight copied per call)" +
                  (plan.few_channels ? ", few-channels kernel" : "");
  }
  return plan;
}

// The rules of one kernel family (sm90: the CUTLASS 3.x TMA kernels; else the 2.x kernels), in
// order; the first that fails names the reason for the direct path.
inline ConvPlan plan_family(const ConvPlanInput& p, bool sm90) {
  auto direct = [](std::string why) { return ConvPlan{"direct", std::move(why)}; };
  const bool fp32 = p.dtype == PlanDtype::kFloat;
  const int64_t kAlign = fp32 ? 4 : 8;  // 16 bytes: TMA's global-address granule, cp.async's widest access
  if (p.groups != 1) return direct("groups=" + std::to_string(p.groups) + " (CUTLASS path needs groups == 1)");
  if (p.n == 0 || p.oh == 0 || p.ow == 0 || p.co == 0 || p.c == 0) return direct("empty problem");
  // both CUTLASS problem shapes hold extents in 32-bit ints
  if (p.h > INT32_MAX || p.w > INT32_MAX) return direct("input height or width exceeds 2^31-1");
  const std::string align_s = std::to_string(kAlign);
  // The 3-channel stems on the 2.x kernels: x and weight zero-padded to 4 channels (8 bytes for
  // 16-bit types: the few-channels kernel's access; 16 bytes for TF32: the regular kernel's).
  const int64_t pad_c = (!sm90 && !p.conv1x1 && p.c > 0 && p.c <= (fp32 ? 3 : 4)) ? 4 : 0;
  const bool x_copied = p.has_prologue || pad_c > 0;  // x read by a prologue/padding kernel, any layout
  if (p.c % kAlign != 0 && pad_c == 0) {
    // Zero-padding C to 8 was tried and fails on an H200: the SM90 kernel traps (illegal
    // instruction) when C is below its 64-channel K tile, and padding to 64 would cost 8x the
    // stem's MACs. A few-channels kernel is what the stems need (issue 4).
    return direct("C_in=" + std::to_string(p.c) + " is not a multiple of " + align_s +
                  " (16-byte alignment; 3-channel stems take the direct kernel, or the CUTLASS 2.x "
                  "few-channels path where FASTCONV_CUTLASS_SM80 enables it)");
  }
  if (p.co % kAlign != 0) return direct("C_out=" + std::to_string(p.co) + " is not a multiple of " + align_s);
  // x: channels innermost (channels_last or a channel slice of an NHWC buffer), 16-byte strides.
  // With conv1x1's prologue (or a channel padding) x is read by a CUDA kernel (any strides) instead.
  if (!x_copied) {
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
  // bytes (TMA store/load, 16-byte vector stores), so a channel slice of an NHWC buffer qualifies.
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
  if (!sm90) return plan_sm80_rest(p, kAlign, pad_c);
  if (p.n * p.h * p.w * p.c > (int64_t(1) << 40)) return direct("x too large for a TMA descriptor");
  // On an H200 the SM90 kernel ran C_in = 24 x bf16 (48 bytes per pixel; gpu_ops) and C_in = 16
  // (GoogLeNet's 3x3s, tuned under auto) correctly; with C_in = 8 (the stem zero-padded) it
  // trapped (illegal instruction, which kills the CUDA context). Keep inputs under 32 bytes per
  // pixel off it until they are verified.
  const int64_t elem = fp32 ? 4 : 2;
  if (p.c * elem < 32) {
    return direct("C_in=" + std::to_string(p.c) + " is below 32 bytes per pixel (" + std::to_string(32 / elem) +
                  " channels), the smallest input the SM90 kernel ran on a GPU (8 x 16-bit trapped)");
  }
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
  return finish_plan(p, "cutlass_sm90", kAlign);
}

// The dispatch: the dtype, then the kernel family the device and FASTCONV_CUTLASS_SM80 allow
// (on Hopper with the 2.x kernels on: the SM90 kernel first, the 2.x kernels for what it refuses;
// float32 tries the SM90 kernel only with FASTCONV_CUTLASS_SM90_TF32).
inline ConvPlan plan_conv(const ConvPlanInput& p) {
  auto direct = [](std::string why) { return ConvPlan{"direct", std::move(why)}; };
  const bool fp32 = p.dtype == PlanDtype::kFloat;
  if (fp32 && !p.allow_tf32) {
    return direct("float32 without TF32 needs exact fp32 math (no fp32 tensor-core path)");
  }
  if (!fp32 && p.dtype != PlanDtype::kHalf && p.dtype != PlanDtype::kBFloat16) {
    return direct(std::string("dtype ") + plan_dtype_name(p.dtype) +
                  " (CUTLASS kernels take float16/bfloat16, and float32 as TF32)");
  }
  // The sm_80 cubins run on 8.x, and mma.sync on 9.0.
  const std::string cc = "compute capability " + std::to_string(p.cc);
  const bool sm80_device = p.cc >= 80 && p.cc <= 90;
  if (p.sm80_mode == 2) {
    if (!sm80_device) return direct(cc + ": the CUTLASS 2.x kernels run on 8.x and 9.0 only");
    return plan_family(p, false);
  }
  if (p.cc == 90 && (!fp32 || p.sm90_tf32)) {
    const ConvPlan sm90 = p.built_sm90a ? plan_family(p, true)
                                        : direct("the extension was built without sm_90a (TORCH_CUDA_ARCH_LIST lacks 9.0a)");
    if (sm90.path != "direct" || p.sm80_mode == 0) return sm90;
    const ConvPlan sm80 = plan_family(p, false);
    return sm80.path != "direct" ? sm80 : sm90;
  }
  if (!sm80_device) return direct(cc + ": no CUTLASS kernel is built for it (sm_90a and sm_80 only)");
  if (p.sm80_mode == 0) {
    return direct(cc + (fp32 ? " with float32/TF32" : "") +
                  ": the CUTLASS 2.x kernels for it are off until verified on a GPU "
                  "(FASTCONV_CUTLASS_SM80=1 turns them on" +
                  (fp32 && p.cc == 90 ? "; FASTCONV_CUTLASS_SM90_TF32=1 the SM90 TF32 kernel)" : ")"));
  }
  return plan_family(p, false);
}

}  // namespace fastconv
