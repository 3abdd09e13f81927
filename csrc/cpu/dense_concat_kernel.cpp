// dense_concat's copying path on the CPU: each feature is copied once into its channel slice of
// out. The copy loop walks the destination in its own memory order (innermost = smallest
// stride), so NCHW and channels_last outputs, and outputs that are slices of larger buffers,
// are written sequentially.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>

namespace fastconv {
namespace {

template <typename scalar_t>
void copy_4d(const at::Tensor& src, const at::Tensor& dst) {
  // Dimension order by the destination's strides, largest first; the last is the inner loop.
  std::array<int64_t, 4> order = {0, 1, 2, 3};
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return dst.stride(a) > dst.stride(b); });
  std::array<int64_t, 4> size, ss, ds;
  for (int i = 0; i < 4; ++i) {
    size[i] = dst.size(order[i]);
    ss[i] = src.stride(order[i]);
    ds[i] = dst.stride(order[i]);
  }
  const scalar_t* s = src.const_data_ptr<scalar_t>();
  scalar_t* d = dst.mutable_data_ptr<scalar_t>();
  const int64_t rows = size[0] * size[1] * size[2];
  at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(size[3], 1)), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t i2 = r % size[2];
      const int64_t i1 = (r / size[2]) % size[1];
      const int64_t i0 = r / (size[2] * size[1]);
      const scalar_t* sp = s + i0 * ss[0] + i1 * ss[1] + i2 * ss[2];
      scalar_t* dp = d + i0 * ds[0] + i1 * ds[1] + i2 * ds[2];
      if (ss[3] == 1 && ds[3] == 1) {
        std::copy(sp, sp + size[3], dp);
      } else {
        for (int64_t i3 = 0; i3 < size[3]; ++i3) dp[i3 * ds[3]] = sp[i3 * ss[3]];
      }
    }
  });
}

void dense_concat_cpu(at::TensorList features, const at::Tensor& out) {
  TORCH_CHECK(out.dim() == 4 && out.device().is_cpu(), "_dense_concat_cpu: out must be a 4-D CPU tensor");
  if (out.numel() > 0) at::assert_no_internal_overlap(out);  // parallel rows would race
  int64_t c = 0;
  for (const auto& f : features) {
    TORCH_CHECK(f.dim() == 4 && f.device().is_cpu() && f.scalar_type() == out.scalar_type(),
                "_dense_concat_cpu: every feature must be a 4-D CPU tensor of out's dtype");
    TORCH_CHECK(f.size(0) == out.size(0) && f.size(2) == out.size(2) && f.size(3) == out.size(3),
                "_dense_concat_cpu: feature shape ", f.sizes(), " does not match out ", out.sizes());
    TORCH_CHECK(c + f.size(1) <= out.size(1), "_dense_concat_cpu: features have more channels than out");
    if (out.numel() > 0 && f.numel() > 0) at::assert_no_overlap(out, f);
    const at::Tensor dst = out.narrow(1, c, f.size(1));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "dense_concat_cpu",
                                    [&] { copy_4d<scalar_t>(f, dst); });
    c += f.size(1);
  }
  TORCH_CHECK(c == out.size(1), "_dense_concat_cpu: features have ", c, " channels but out has ", out.size(1));
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, CPU, m) { m.impl("_dense_concat_cpu", &dense_concat_cpu); }

}  // namespace fastconv
