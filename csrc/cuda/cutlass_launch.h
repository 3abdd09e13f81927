// The launch sequence shared by the CUTLASS 3.x (ConvUniversalAdapter) and 2.x
// (ImplicitGemmConvolution) device operators: check, allocate the workspace through PyTorch's
// allocator, initialize and run on the current stream; every step's status raised as an error.
// Included only by the .cu files that instantiate CUTLASS kernels.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include "cutlass/cutlass.h"

namespace fastconv {

template <typename Operator>
void launch_cutlass(Operator& op, const typename Operator::Arguments& args, const at::Tensor& like,
                    const char* name) {
  cutlass::Status st = op.can_implement(args);
  TORCH_CHECK(st == cutlass::Status::kSuccess, "fastconv ", name, ": can_implement failed (",
              cutlassGetStatusString(st), ") for a problem plan_conv accepted: a dispatch bug");
  const size_t ws_bytes = op.get_workspace_size(args);
  at::Tensor workspace;
  if (ws_bytes > 0) workspace = at::empty({static_cast<int64_t>(ws_bytes)}, like.options().dtype(at::kByte));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream(like.get_device());
  st = op.initialize(args, ws_bytes > 0 ? workspace.data_ptr() : nullptr, stream);
  TORCH_CHECK(st == cutlass::Status::kSuccess, "fastconv ", name, ": initialize failed: ",
              cutlassGetStatusString(st));
  st = op.run(stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  TORCH_CHECK(st == cutlass::Status::kSuccess, "fastconv ", name, ": run failed: ", cutlassGetStatusString(st));
}

}  // namespace fastconv
