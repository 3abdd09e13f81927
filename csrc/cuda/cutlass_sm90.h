// Host interface of the CUTLASS 3.x SM90 implicit-GEMM fprop kernels (csrc/cuda/cutlass_sm90_conv.cu).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>

namespace fastconv {

// One NHWC fprop: out = relu?(conv(x, w) + bias + residual), fp32 accumulation, one rounding.
// Preconditions (checked by plan_conv, re-checked by CUTLASS's can_implement): fp16/bf16,
// channels innermost with 16-byte aligned pointers and strides, groups == 1, weight [K, R, S, C]
// with C innermost, out/residual channels innermost with 16-byte pixel strides.
struct Sm90ConvArgs {
  bool bf16 = false;
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
};

// Launches on the current stream of the current device; raises on any CUTLASS or CUDA error.
void run_sm90_conv(const Sm90ConvArgs& a, const at::Tensor& like);

}  // namespace fastconv
