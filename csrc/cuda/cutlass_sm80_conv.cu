// CUTLASS 2.x implicit-GEMM convolution (fprop) for fastconv's cuda backend on sm_80-class GPUs
// (A100, A10, L4, RTX 30/40: compute capability 8.x run the sm_80 cubin).
//
// Mainloop: conv::kernel::DefaultConv2dFprop, IteratorAlgorithm::kOptimized: cp.async loads of the
// NHWC activation (any (n, h, w) strides, so x may be a channel slice of a concat buffer) and of
// the KRSC filter into a multistage shared-memory pipeline, mma.sync tensor-core MMA (HMMA) with
// fp32 accumulation. Five instantiations:
//   fp16, bf16   128x128x32 tile, 64x64x32 warps, m16n8k16 MMA, 4 stages, 8-element (16-byte) access
//   fp32 (TF32)  128x128x16 tile, 64x64x16 warps, m16n8k8 TF32 MMA, 4 stages, 4-element access;
//                taken only when torch.backends.cudnn.allow_tf32 is on, as PyTorch's cuDNN convs do
//   fp16, bf16 few-channels (IteratorAlgorithm::kFewChannels): the 3-channel stems, whose x and
//                weight the caller zero-pads to 4 channels; 4-element (8-byte) accesses pack the
//                (r, s, c) reduction densely; 128x64x32 tile (every stem has 64 output channels),
//                64x32x32 warps, 3 stages. (TF32 stems padded to 4 channels fit the TF32 kernel.)
// Epilogue: EpilogueWithBroadcast with fastconv's own output functor (BiasResidualRelu below):
//   Z = relu?(acc + bias + residual), bias the broadcast vector (null -> 0), residual the source C,
//   read only when present; ReLU a runtime switch that keeps NaN (as torch.relu). One kernel per
//   dtype serves every epilogue variant and both ops (conv1x1 is this kernel with a 1x1 filter).
// Output: the packed epilogue iterator walks out (and residual) as an [N*P*Q, K] row-major matrix
// with one row stride, so out must have uniform pixel strides (plan_conv checks): true for
// channels_last tensors and for channel slices of an NHWC concat buffer.
//
// The same device code is compiled for every target of the build (sm_80 and sm_90a by default):
// mma.sync runs on Hopper too, which lets the GPU tests exercise these kernels on an H100
// (FASTCONV_CUTLASS_SM80=force, see csrc/cuda_plan.h).
#ifndef NDEBUG
#define NDEBUG  // CUTLASS device asserts would otherwise become __assertfail calls (torch omits -DNDEBUG)
#endif
#include "cutlass_conv.h"
#include "cutlass_launch.h"

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include <sstream>
#include <type_traits>

#include "cutlass/cutlass.h"
#include "cutlass/array.h"
#include "cutlass/numeric_conversion.h"
#include "cutlass/conv/conv2d_problem_size.h"
#include "cutlass/conv/device/implicit_gemm_convolution.h"
#include "cutlass/conv/kernel/default_conv2d_fprop_with_broadcast.h"
#include "cutlass/gemm/threadblock/threadblock_swizzle.h"

namespace fastconv {
namespace {

// Output functor of the EpilogueWithBroadcast concept (single source): the residual is the source
// tensor C and is loaded only when is_source_needed(); the bias is the broadcast vector.
template <typename Element, int kN>
class BiasResidualRelu {
 public:
  static bool const kIsSingleSource = true;
  using ElementOutput = Element;
  using ElementC = Element;
  using ElementAccumulator = float;
  using ElementCompute = float;
  using ElementVector = Element;  // the bias, in the tensors' dtype
  using ElementZ = Element;
  using ElementT = Element;       // no second output (kStoreT false)
  static int const kCount = kN;
  using FragmentAccumulator = cutlass::Array<float, kN>;
  using FragmentCompute = cutlass::Array<float, kN>;
  using FragmentC = cutlass::Array<Element, kN>;
  using FragmentOutput = cutlass::Array<Element, kN>;
  using FragmentZ = FragmentOutput;
  using FragmentT = FragmentOutput;
  static bool const kIsHeavy = false;
  static bool const kStoreZ = true;
  static bool const kStoreT = false;

  struct Params {
    bool residual = false;
    bool relu = false;
  };

  CUTLASS_HOST_DEVICE explicit BiasResidualRelu(Params const& p) : p_(p) {}
  CUTLASS_HOST_DEVICE bool is_source_needed() const { return p_.residual; }
  CUTLASS_HOST_DEVICE void set_k_partition(int, int) {}  // never split along K

  // With the residual.
  CUTLASS_HOST_DEVICE void operator()(FragmentZ& z, FragmentT&, FragmentAccumulator const& acc,
                                      FragmentC const& residual, FragmentCompute const& bias) const {
    FragmentCompute r = cutlass::NumericArrayConverter<float, Element, kN>()(residual);
    FragmentCompute v;
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < kN; ++i) v[i] = relu(acc[i] + bias[i] + r[i]);
    z = cutlass::NumericArrayConverter<Element, float, kN>()(v);
  }

  // Without it.
  CUTLASS_HOST_DEVICE void operator()(FragmentZ& z, FragmentT&, FragmentAccumulator const& acc,
                                      FragmentCompute const& bias) const {
    FragmentCompute v;
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < kN; ++i) v[i] = relu(acc[i] + bias[i]);
    z = cutlass::NumericArrayConverter<Element, float, kN>()(v);
  }

 private:
  CUTLASS_HOST_DEVICE float relu(float v) const { return (p_.relu && v < 0.f) ? 0.f : v; }  // NaN stays NaN
  Params p_;
};

template <typename Element, bool kFew = false>
struct Sm80Config;  // tile shapes per element type (and few-channels variant)

template <>
struct Sm80Config<cutlass::half_t> {
  using Tile = cutlass::gemm::GemmShape<128, 128, 32>;
  using Warp = cutlass::gemm::GemmShape<64, 64, 32>;
  using Mma = cutlass::gemm::GemmShape<16, 8, 16>;
  static constexpr int kStages = 4;
  static constexpr const char* kName = "cutlass_sm80 fp16";
};
template <>
struct Sm80Config<cutlass::bfloat16_t> : Sm80Config<cutlass::half_t> {
  static constexpr const char* kName = "cutlass_sm80 bf16";
};
template <>
struct Sm80Config<cutlass::half_t, true> {
  using Tile = cutlass::gemm::GemmShape<128, 64, 32>;
  using Warp = cutlass::gemm::GemmShape<64, 32, 32>;
  using Mma = cutlass::gemm::GemmShape<16, 8, 16>;
  static constexpr int kStages = 3;
  static constexpr const char* kName = "cutlass_sm80 fp16 few-channels";
};
template <>
struct Sm80Config<cutlass::bfloat16_t, true> : Sm80Config<cutlass::half_t, true> {
  static constexpr const char* kName = "cutlass_sm80 bf16 few-channels";
};
template <>
struct Sm80Config<float> {  // float operands, TF32 tensor-core MMA
  using Tile = cutlass::gemm::GemmShape<128, 128, 16>;
  using Warp = cutlass::gemm::GemmShape<64, 64, 16>;
  using Mma = cutlass::gemm::GemmShape<16, 8, 8>;
  static constexpr int kStages = 4;
  static constexpr const char* kName = "cutlass_sm80 tf32";
};

template <typename Element, bool kFew = false>
struct Sm80Fprop {
  using Cfg = Sm80Config<Element, kFew>;
  static constexpr int kAlign = 128 / cutlass::sizeof_bits<Element>::value;  // 16 bytes (out, residual, bias)
  static constexpr int kAlignIn = kFew ? 4 : kAlign;                          // x and weight accesses
  using OutputOp = BiasResidualRelu<Element, kAlign>;
  using Layout = cutlass::layout::TensorNHWC;
  using Kernel = typename cutlass::conv::kernel::DefaultConv2dFpropWithBroadcast<
      Element, Layout, Element, Layout, Element, Layout, float, cutlass::arch::OpClassTensorOp, cutlass::arch::Sm80,
      typename Cfg::Tile, typename Cfg::Warp, typename Cfg::Mma, OutputOp,
      cutlass::gemm::threadblock::GemmIdentityThreadblockSwizzle<4>, Cfg::kStages, cutlass::arch::OpMultiplyAdd,
      kFew ? cutlass::conv::IteratorAlgorithm::kFewChannels : cutlass::conv::IteratorAlgorithm::kOptimized,
      cutlass::conv::StrideSupport::kStrided, kAlignIn, kAlignIn>::Kernel;
  using Conv = cutlass::conv::device::ImplicitGemmConvolution<Kernel>;
};

// The CUTLASS arguments of one problem (host only; nothing is launched).
template <typename Element, bool kFew>
typename Sm80Fprop<Element, kFew>::Conv::Arguments arguments(const CutlassConvArgs& a) {
  using F = Sm80Fprop<Element, kFew>;
  using Layout = typename F::Layout;
  using I = int;
  // Conv2dProblemSize has one (lower) padding per dimension: the upper padding only shapes P and
  // Q, which are passed explicitly, and the iterators mask every tap outside [0, H) x [0, W).
  cutlass::conv::Conv2dProblemSize problem(I(a.n), I(a.h), I(a.w), I(a.c), I(a.k), I(a.r), I(a.s), I(a.p), I(a.q),
                                           I(a.pad[0]), I(a.pad[2]), I(a.stride[0]), I(a.stride[1]), I(a.dil[0]),
                                           I(a.dil[1]), cutlass::conv::Mode::kCrossCorrelation, 1, 1);
  auto nhwc = [](int64_t sw, int64_t sh, int64_t sn) {  // TensorNHWC strides are (w, h, n), 32-bit
    return Layout(cutlass::make_Coord(I(sw), I(sh), I(sn)));
  };
  auto* x = static_cast<Element*>(const_cast<void*>(a.x));
  auto* w = static_cast<Element*>(const_cast<void*>(a.weight));
  auto* out = static_cast<Element*>(a.out);
  auto* res = a.residual ? static_cast<Element*>(const_cast<void*>(a.residual)) : out;  // unread without one
  // out and the residual as [N*P*Q, K] matrices: the epilogue reads only the W stride, so pass the
  // one pixel stride plan_conv found (a size-1 W or H may carry any stride in PyTorch).
  auto matrix = [&](const int64_t* s) {  // s = (n, h, w) strides
    const int64_t s4[4] = {s[0], 1, s[1], s[2]};
    const int64_t l = uniform_pixel_stride(s4, a.n, a.p, a.q);
    TORCH_CHECK(l >= 0, "fastconv cutlass_sm80: non-uniform pixel strides reached the kernel: a dispatch bug");
    return nhwc(l, l * a.q, l * a.q * a.p);
  };
  typename F::OutputOp::Params op;
  op.residual = a.residual != nullptr;
  op.relu = a.relu;
  return typename F::Conv::Arguments(problem, {x, nhwc(a.xs_w, a.xs_h, a.xs_n)}, {w, nhwc(a.ws_s, a.ws_r, a.ws_k)},
                                     {res, matrix(a.residual ? a.rs : a.os)}, {out, matrix(a.os)}, op,
                                     cutlass::conv::SplitKMode::kSerial, const_cast<void*>(a.bias), nullptr, 0, 0);
}

// fn(Element{}, std::bool_constant<kFew>{}) for the instantiation that takes a.
template <typename Fn>
decltype(auto) visit_instantiation(const CutlassConvArgs& a, Fn&& fn) {
  TORCH_CHECK(!a.few_channels || (a.c == 4 && a.dtype != PlanDtype::kFloat),
              "fastconv cutlass_sm80: the few-channels kernel takes 4-channel float16/bfloat16 inputs");
  switch (a.dtype) {
    case PlanDtype::kHalf:
      return a.few_channels ? fn(cutlass::half_t{}, std::true_type{}) : fn(cutlass::half_t{}, std::false_type{});
    case PlanDtype::kBFloat16:
      return a.few_channels ? fn(cutlass::bfloat16_t{}, std::true_type{})
                            : fn(cutlass::bfloat16_t{}, std::false_type{});
    case PlanDtype::kFloat: return fn(float{}, std::false_type{});
    default:
      TORCH_CHECK(false, "fastconv cutlass_sm80: dtype ", plan_dtype_name(a.dtype),
                  " has no kernel (plan_conv should not have routed it here)");
  }
}

// Compile-time facts of one instantiation, for benchmarks/RESULTS_cuda_build.md and tests.
template <typename Element, bool kFew = false>
std::string describe() {
  using F = Sm80Fprop<Element, kFew>;
  using C = typename F::Cfg;
  std::ostringstream s;
  s << C::kName << ": tile " << C::Tile::kM << "x" << C::Tile::kN << "x" << C::Tile::kK << ", warp " << C::Warp::kM
    << "x" << C::Warp::kN << "x" << C::Warp::kK << ", mma " << C::Mma::kM << "x" << C::Mma::kN << "x" << C::Mma::kK
    << ", " << C::kStages << " stages, smem " << sizeof(typename F::Kernel::SharedStorage) << " bytes, "
    << F::Kernel::kThreadCount << " threads";
  return s.str();
}

std::string sm80_kernel_info() {
  return describe<cutlass::half_t>() + "\n" + describe<cutlass::bfloat16_t>() + "\n" + describe<float>() + "\n" +
         describe<cutlass::half_t, true>() + "\n" + describe<cutlass::bfloat16_t, true>();
}

}  // namespace

void run_sm80_conv(const CutlassConvArgs& a, const at::Tensor& like) {
  visit_instantiation(a, [&](auto element, auto few) {
    typename Sm80Fprop<decltype(element), decltype(few)::value>::Conv conv;
    launch_cutlass(conv, arguments<decltype(element), decltype(few)::value>(a), like, "cutlass_sm80");
  });
}

std::string sm80_can_implement(const CutlassConvArgs& a) {
  return visit_instantiation(a, [&](auto element, auto few) -> std::string {
    using Conv = typename Sm80Fprop<decltype(element), decltype(few)::value>::Conv;
    const cutlass::Status st = Conv::can_implement(arguments<decltype(element), decltype(few)::value>(a));
    return st == cutlass::Status::kSuccess ? "" : std::string("can_implement: ") + cutlassGetStatusString(st);
  });
}

}  // namespace fastconv

// fastconv::_cuda_sm80_kernel_info() -> str: host-side constants of the CUTLASS 2.x kernels.
TORCH_LIBRARY_FRAGMENT(fastconv, m) { m.def("_cuda_sm80_kernel_info() -> str", &fastconv::sm80_kernel_info); }
