// CUTLASS 3.x SM90 implicit-GEMM convolution (fprop) for fastconv's cuda backend.
//
// Mainloop: conv::collective::CollectiveBuilder with KernelImplicitTmaWarpSpecializedSm90, i.e.
// TMA im2col loads of the NHWC activation (UTMALDG.4D.IM2COL) and TMA tiled loads of the KRSC
// filter into a multistage smem pipeline, warpgroup MMA (HGMMA) with fp32 accumulation.
// Epilogue: TmaWarpSpecialized + LinCombPerColBiasEltAct<LeakyReLU>:
//   D = act(beta * C + (alpha * acc + bias)),  alpha = 1, C = residual (beta = 1, or 0 without),
//   bias per output channel (null -> 0), act = LeakyReLU with a runtime slope: 0 is ReLU, 1 the
//   identity. So every epilogue variant (bias?, residual?, relu?) is a runtime argument of ONE
//   kernel per dtype: three instantiations (fp16, bf16, and fp32 computed as TF32) in all, serving
//   conv2d_relu and conv1x1.
//   (LeakyReLU(0) differs from torch.relu only at -inf, where it gives NaN instead of 0.)
// Output: the epilogue's D (and C = residual) strides are the (w, h, n) pixel strides with the
// channels contiguous, so out may be a channel slice of a larger NHWC buffer (out= of
// dense_concat) as long as the strides are multiples of 16 bytes (TMA store).
//
// Build: this file needs sm_90a device code (TORCH_CUDA_ARCH_LIST containing "9.0a"; setup.py's
// default "8.0;9.0a"). For the other targets of the same compile (sm_80) CUTLASS compiles the
// kernel body to a stub (it is guarded by __CUDA_ARCH_FEAT_SM90_ALL), and plan_conv never routes
// a device other than compute capability 9.0 here; setup.py defines FASTCONV_SM90A only when
// 9.0a is built, and without it plan_conv picks the direct kernels.
// Device-side assert() in CUTLASS/CuTe becomes a call to __assertfail inside the mainloop, and
// ptxas then serializes the wgmma pipeline (warning C7510); torch builds .cu files without
// NDEBUG, so define it here, before any header. (plan_conv checks what the host asserts would.)
#ifndef NDEBUG
#define NDEBUG
#endif
#include "cutlass_conv.h"
#include "cutlass_launch.h"

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include <sstream>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/kernel_hardware_info.hpp"
#include "cutlass/conv/convnd_problem_shape.hpp"
#include "cutlass/conv/convolution.h"
#include "cutlass/conv/dispatch_policy.hpp"
#include "cutlass/conv/collective/collective_builder.hpp"
#include "cutlass/conv/device/conv_universal_adapter.hpp"
#include "cutlass/conv/kernel/conv_universal.hpp"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/thread/activation.h"
#include "cutlass/util/packed_stride.hpp"

namespace fastconv {
namespace {

using namespace cute;

template <typename Element>
struct Sm90Fprop {
  using ElementAcc = float;
  using ElementCompute = float;
  static constexpr int kAlign = 128 / cutlass::sizeof_bits<Element>::value;  // 16 bytes: 8 x 16-bit, 4 x fp32
  // K tile: 128 bytes of channels (64 x 16-bit, 32 x fp32), the 128-byte swizzle's row.
  static constexpr int kTileK = 1024 / cutlass::sizeof_bits<Element>::value;
  using TileShape = Shape<_128, _128, Shape<Int<kTileK>>>;
  using ClusterShape = Shape<_1, _1, _1>;
  // GEMM rows are the output pixels, a nested mode (q, p, n) with its own strides (w, h, n):
  // ((int64, int64, int64), _1, _0); channels contiguous.
  using StrideCD = cutlass::detail::TagToStrideC_t<cutlass::layout::TensorNHWC>;
  using FusionOp = cutlass::epilogue::fusion::LinCombPerColBiasEltAct<
      cutlass::epilogue::thread::LeakyReLU, Element, ElementCompute, Element, Element, ElementCompute>;

  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, ElementAcc, ElementCompute,
      Element, cutlass::layout::TensorNHWC, kAlign, Element, cutlass::layout::TensorNHWC, kAlign,
      cutlass::epilogue::TmaWarpSpecialized, FusionOp>::CollectiveOp;

  using CollectiveMainloop = typename cutlass::conv::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, cutlass::conv::Operator::kFprop,
      Element, cutlass::layout::TensorNHWC, kAlign, Element, cutlass::layout::TensorNHWC, kAlign, ElementAcc,
      TileShape, ClusterShape,
      cutlass::conv::collective::StageCountAutoCarveout<
          static_cast<int>(sizeof(typename CollectiveEpilogue::SharedStorage))>,
      cutlass::conv::KernelImplicitTmaWarpSpecializedSm90>::CollectiveOp;

  using ProblemShape = cutlass::conv::ConvProblemShape<cutlass::conv::Operator::kFprop, 2>;
  using Kernel = cutlass::conv::kernel::ConvUniversal<ProblemShape, CollectiveMainloop, CollectiveEpilogue>;
  using Conv = cutlass::conv::device::ConvUniversalAdapter<Kernel>;
};

// The CUTLASS arguments of one problem (host only; nothing is launched), or why the problem
// shape CUTLASS derives disagrees with out's.
template <typename Element>
typename Sm90Fprop<Element>::Conv::Arguments arguments(const CutlassConvArgs& a, int device, int sm_count,
                                                       std::string* error) {
  using F = Sm90Fprop<Element>;
  using Conv = typename F::Conv;
  using ProblemShape = typename F::ProblemShape;
  using I = int;
  // [n, h, w, c] extents/strides of the activation, [k, r, s, c] of the filter, [n, p, q, k] strides
  // of the output (used by the problem shape to size the im2col; D's own stride is StrideCD).
  typename ProblemShape::TensorExtent shape_act{I(a.n), I(a.h), I(a.w), I(a.c)};
  typename ProblemShape::TensorStride stride_act{a.xs_n, a.xs_h, a.xs_w, 1};
  typename ProblemShape::TensorExtent shape_flt{I(a.k), I(a.r), I(a.s), I(a.c)};
  typename ProblemShape::TensorStride stride_flt{a.ws_k, a.ws_r, a.ws_s, 1};
  typename ProblemShape::TensorStride stride_out{a.os[0], a.os[1], a.os[2], 1};
  typename ProblemShape::ShapePadding lower{I(a.pad[0]), I(a.pad[2])};
  typename ProblemShape::ShapePadding upper{I(a.pad[1]), I(a.pad[3])};
  typename ProblemShape::TraversalStride tstride{I(a.stride[0]), I(a.stride[1])};
  typename ProblemShape::ShapeDilation dilation{I(a.dil[0]), I(a.dil[1])};
  ProblemShape problem(cutlass::conv::Mode::kCrossCorrelation, shape_act, stride_act, shape_flt, stride_flt,
                       stride_out, lower, upper, tstride, dilation, 1);
  if (problem.shape_C[1] != a.p || problem.shape_C[2] != a.q) {
    *error = "output extent mismatch: CUTLASS computes [" + std::to_string(problem.shape_C[1]) + ", " +
             std::to_string(problem.shape_C[2]) + "], out is [" + std::to_string(a.p) + ", " + std::to_string(a.q) +
             "]";
  }

  typename Conv::Arguments args;
  args.problem_shape = problem;
  args.mainloop.ptr_A = static_cast<const Element*>(a.x);
  args.mainloop.ptr_B = static_cast<const Element*>(a.weight);
  auto& ep = args.epilogue;
  ep.thread.alpha = 1.0f;
  ep.thread.beta = a.residual ? 1.0f : 0.0f;
  ep.thread.bias_ptr = static_cast<const Element*>(a.bias);
  ep.thread.activation.leaky_alpha = a.relu ? 0.0f : 1.0f;
  // Without a residual C is never read (beta == 0): point it at D so the TMA descriptor is valid.
  ep.ptr_C = static_cast<const Element*>(a.residual ? a.residual : a.out);
  auto pixel_strides = [](const int64_t* s) {  // (w, h, n) element strides -> ((w, h, n), _1, _0)
    typename F::StrideCD d{};
    cute::get<0, 0>(d) = s[2];
    cute::get<0, 1>(d) = s[1];
    cute::get<0, 2>(d) = s[0];
    return d;
  };
  ep.dC = pixel_strides(a.residual ? a.rs : a.os);
  ep.ptr_D = static_cast<Element*>(a.out);
  ep.dD = pixel_strides(a.os);
  args.hw_info.device_id = device;
  args.hw_info.sm_count = sm_count;
  return args;
}

// fn(Element{}) for the instantiation that takes a's dtype.
template <typename Fn>
decltype(auto) visit_instantiation(const CutlassConvArgs& a, Fn&& fn) {
  switch (a.dtype) {
    case PlanDtype::kHalf: return fn(cutlass::half_t{});
    case PlanDtype::kBFloat16: return fn(cutlass::bfloat16_t{});
    case PlanDtype::kFloat: return fn(float{});  // TF32 wgmma (the builder maps float operands to tfloat32_t)
    default:
      TORCH_CHECK(false, "fastconv cutlass_sm90: dtype ", plan_dtype_name(a.dtype),
                  " has no SM90 kernel (plan_conv should not have routed it here)");
  }
}

// Compile-time facts of one instantiation, for benchmarks/RESULTS_cuda_build.md and tests.
template <typename Element>
std::string describe(const char* name) {
  using F = Sm90Fprop<Element>;
  using K = typename F::Kernel;
  std::ostringstream s;
  s << name << ": tile 128x128x" << F::kTileK << ", cluster 1x1x1, " << F::CollectiveMainloop::DispatchPolicy::Stages
    << " mainloop stages, dynamic smem " << K::SharedStorageSize << " bytes, " << K::MaxThreadsPerBlock
    << " threads";
  return s.str();
}

std::string cutlass_kernel_info() {
  return describe<cutlass::half_t>("cutlass_sm90 fp16") + "\n" + describe<cutlass::bfloat16_t>("cutlass_sm90 bf16") +
         "\n" + describe<float>("cutlass_sm90 tf32");
}

}  // namespace

void run_sm90_conv(const CutlassConvArgs& a, const at::Tensor& like) {
  visit_instantiation(a, [&](auto element) {
    using Element = decltype(element);
    const int device = like.get_device();
    std::string error;
    const auto args =
        arguments<Element>(a, device, at::cuda::getDeviceProperties(device)->multiProcessorCount, &error);
    TORCH_CHECK(error.empty(), "fastconv cutlass_sm90: ", error);
    typename Sm90Fprop<Element>::Conv conv;
    launch_cutlass(conv, args, like, "cutlass_sm90");
  });
}

std::string sm90_can_implement(const CutlassConvArgs& a) {
  return visit_instantiation(a, [&](auto element) -> std::string {
    using Element = decltype(element);
    std::string error;
    const auto args = arguments<Element>(a, /*device=*/0, /*sm_count=*/0, &error);
    if (!error.empty()) return error;
    const cutlass::Status st = Sm90Fprop<Element>::Conv::can_implement(args);
    return st == cutlass::Status::kSuccess ? "" : std::string("can_implement: ") + cutlassGetStatusString(st);
  });
}

}  // namespace fastconv

// fastconv::_cuda_kernel_info() -> str: host-side constants of the CUTLASS kernels (no GPU needed).
TORCH_LIBRARY_FRAGMENT(fastconv, m) { m.def("_cuda_kernel_info() -> str", &fastconv::cutlass_kernel_info); }
