// Schemas of fastconv's private backend kernels, defined once here.
//
// The public ops (fastconv::conv2d_relu, ...) are defined in Python with torch.library so they
// exist without this extension; they call these private ops, which every backend implements
// with the same "write into out" contract:
//   padding is [top, bottom, left, right]; out has the output's shape and any strides (a
//   channel slice of a larger NCHW or NHWC buffer included) and shares no memory with inputs.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// An empty module: importing fastconv._C only has to load this library so that the
// TORCH_LIBRARY registrations below run (as pytorch/extension-cpp does).
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY_FRAGMENT(fastconv, m) {
  m.def(
      "_conv2d_relu_cpu(Tensor x, Tensor weight, Tensor? bias, Tensor? residual, int[] stride, "
      "int[] padding, int[] dilation, int groups, bool relu, Tensor(a!) out) -> ()");
  m.def(
      "_conv2d_relu_cuda(Tensor x, Tensor weight, Tensor? bias, Tensor? residual, int[] stride, "
      "int[] padding, int[] dilation, int groups, bool relu, Tensor(a!) out) -> ()");
  // Winograd F(m x m, 3x3) for 3x3 stride-1 float32 channels_last convs: u is the transformed weight
  // [16 or 36, C_in, C_out] (F(2x2) or F(4x4): fastconv.ops.conv2d_relu.winograd_weight); padding as above;
  // weight (the 3x3 weight u was made from), when given, computes the tiles with a non-finite input
  // directly, so NaN and Inf reach exactly the outputs a direct conv gives them.
  m.def(
      "_conv2d_winograd_cpu(Tensor x, Tensor u, Tensor? bias, Tensor? residual, int[] padding, bool relu, "
      "Tensor(a!) out, Tensor? weight=None) -> ()");
  m.def("_dense_concat_cpu(Tensor[] features, Tensor(a!) out) -> ()");
  m.def("_dense_concat_cuda(Tensor[] features, Tensor(a!) out) -> ()");
  // max_pool2d: padding is symmetric [ph, pw] as in PyTorch; ceil_mode is resolved by the caller
  // into out's shape (every window is clipped to the input).
  m.def(
      "_max_pool2d_cpu(Tensor x, int[] kernel_size, int[] stride, int[] padding, int[] dilation, "
      "Tensor(a!) out) -> ()");
  m.def(
      "_max_pool2d_cuda(Tensor x, int[] kernel_size, int[] stride, int[] padding, int[] dilation, "
      "Tensor(a!) out) -> ()");
  // conv1x1 and its grouped form in one schema: weight is 2-D [sum of outs' channels, C_in]; out j
  // receives the next outs[j].size(1) rows of the GEMM; residual only with a single out.
  m.def(
      "_conv1x1_cpu(Tensor x, Tensor weight, Tensor? bias, Tensor? residual, Tensor? in_scale, "
      "Tensor? in_shift, bool in_relu, int[] stride, bool relu, Tensor(a!)[] outs) -> ()");
  m.def(
      "_conv1x1_cuda(Tensor x, Tensor weight, Tensor? bias, Tensor? residual, Tensor? in_scale, "
      "Tensor? in_shift, bool in_relu, int[] stride, bool relu, Tensor(a!)[] outs) -> ()");
  // _cuda_plan(...) -> str, the CUDA backend's dispatch decision: csrc/cuda_plan.cpp.
}
