// Host interface of the CUTLASS implicit-GEMM fprop kernels:
//   run_sm90_conv  CUTLASS 3.x, TMA im2col + warpgroup MMA, sm_90a   (csrc/cuda/cutlass_sm90_conv.cu)
//   run_sm80_conv  CUTLASS 2.x, cp.async + mma.sync tensor ops, sm_80 (csrc/cuda/cutlass_sm80_conv.cu)
// Both compute out = relu?(conv(x, w) + bias + residual) with fp32 accumulation and one rounding;
// plan_conv (csrc/cuda_plan.h) decides which one (if any) may take a problem.
#pragma once

#include "cuda_plan.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>

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

// t contiguous with a 16-byte aligned start (the bias vector and repacked weights CUTLASS reads).
inline at::Tensor aligned_contiguous(const at::Tensor& t) {
  at::Tensor c = t.contiguous();
  if (reinterpret_cast<uintptr_t>(c.const_data_ptr()) % 16 != 0) c = c.clone();
  return c;
}

// Launch on the current stream of the current device; raise on any CUTLASS or CUDA error.
void run_sm90_conv(const CutlassConvArgs& a, const at::Tensor& like);
void run_sm80_conv(const CutlassConvArgs& a, const at::Tensor& like);

// The kernel a plan path names ("cutlass_sm90" or "cutlass_sm80").
inline void run_cutlass_conv(const std::string& path, const CutlassConvArgs& a, const at::Tensor& like) {
  if (path == "cutlass_sm90") {
    run_sm90_conv(a, like);
  } else {
    run_sm80_conv(a, like);
  }
}

}  // namespace fastconv
