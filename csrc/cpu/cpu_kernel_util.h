// Small helpers the C++ CPU conv kernels share (csrc/cpu/conv2d_relu_kernel.cpp,
// csrc/cpu/winograd_conv_kernel.cpp).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/from_blob.h>
#include <c10/core/ScalarType.h>

#include <cstdint>

namespace fastconv {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// A float/double matrix view of memory we own or only read, for at::cpu::mm_out (which never
// writes its inputs).
template <typename acc_t>
at::Tensor matrix(const acc_t* data, int64_t rows, int64_t cols, int64_t s_row, int64_t s_col) {
  return at::from_blob(const_cast<acc_t*>(data), {rows, cols}, {s_row, s_col},
                       at::TensorOptions().dtype(c10::CppTypeToScalarType<acc_t>::value));
}

}  // namespace fastconv
