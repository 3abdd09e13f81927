// Argument checks and geometry shared by the CPU and CUDA conv2d_relu kernels.
//
// The public Python op validates everything with friendly messages first; these TORCH_CHECKs
// repeat the assumptions the kernels' index arithmetic relies on, so that a direct call to the
// private op (torch.ops.fastconv._conv2d_relu_cpu / _cuda) with bad arguments raises a
// RuntimeError instead of reading or writing out of bounds.
#pragma once

#include <ATen/MemoryOverlap.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <vector>

namespace fastconv {

struct Conv2dGeometry {
  int64_t n, c, h, w;         // input
  int64_t co, cg, cog, kh, kw;  // weight: [co, cg = c / groups, kh, kw]; cog = co / groups
  int64_t groups;
  int64_t oh, ow;              // output
  int64_t sh, sw, pt, pl, dh, dw;
  int64_t k() const { return cg * kh * kw; }  // GEMM reduction length per group
};

inline Conv2dGeometry check_conv2d_relu_args(
    const char* op, const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& residual, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, int64_t groups, const at::Tensor& out, c10::DeviceType device_type) {
  TORCH_CHECK(x.dim() == 4, op, ": x must be 4-D [N, C, H, W], got ", x.dim(), "-D");
  TORCH_CHECK(weight.dim() == 4, op, ": weight must be 4-D [Co, C/groups, KH, KW], got ", weight.dim(), "-D");
  TORCH_CHECK(out.dim() == 4, op, ": out must be 4-D, got ", out.dim(), "-D");
  TORCH_CHECK(x.device().type() == device_type, op, ": x must be on ", device_type, ", got ", x.device());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": x must be floating point, got ", x.scalar_type());
  auto same = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.scalar_type() == x.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(),
                " but x has dtype ", x.scalar_type());
    TORCH_CHECK(t.device() == x.device(), op, ": ", name, " is on ", t.device(), " but x is on ", x.device());
  };
  same(weight, "weight");
  same(out, "out");
  if (bias.has_value() && bias->defined()) same(*bias, "bias");
  if (residual.has_value() && residual->defined()) same(*residual, "residual");

  TORCH_CHECK(stride.size() == 2, op, ": stride must have 2 elements, got ", stride.size());
  TORCH_CHECK(padding.size() == 4, op, ": padding must be [top, bottom, left, right], got ", padding.size(),
              " elements");
  TORCH_CHECK(dilation.size() == 2, op, ": dilation must have 2 elements, got ", dilation.size());
  TORCH_CHECK(stride[0] > 0 && stride[1] > 0, op, ": stride must be positive, got ", stride);
  TORCH_CHECK(dilation[0] > 0 && dilation[1] > 0, op, ": dilation must be positive, got ", dilation);
  for (auto p : padding) TORCH_CHECK(p >= 0, op, ": padding must be non-negative, got ", padding);
  TORCH_CHECK(groups > 0, op, ": groups must be positive, got ", groups);

  Conv2dGeometry g;
  g.n = x.size(0); g.c = x.size(1); g.h = x.size(2); g.w = x.size(3);
  g.co = weight.size(0); g.cg = weight.size(1); g.kh = weight.size(2); g.kw = weight.size(3);
  g.groups = groups;
  TORCH_CHECK(g.c % groups == 0, op, ": input channels (", g.c, ") must be divisible by groups (", groups, ")");
  TORCH_CHECK(g.co % groups == 0, op, ": weight's output channels (", g.co, ") must be divisible by groups (",
              groups, ")");
  TORCH_CHECK(g.cg * groups == g.c, op, ": weight ", weight.sizes(), " expects ", g.cg * groups,
              " input channels with groups=", groups, ", but x has ", g.c);
  TORCH_CHECK(g.kh > 0 && g.kw > 0, op, ": weight must have a non-empty kernel, got ", weight.sizes());
  TORCH_CHECK(g.n == 0 || g.c == 0 || (g.h > 0 && g.w > 0), op,
              ": x must have non-empty spatial dimensions (only the batch or the channels may be 0), got ",
              x.sizes());
  g.cog = g.co / groups;
  g.sh = stride[0]; g.sw = stride[1];
  g.pt = padding[0]; g.pl = padding[2];
  g.dh = dilation[0]; g.dw = dilation[1];
  const int64_t span_h = g.dh * (g.kh - 1) + 1, span_w = g.dw * (g.kw - 1) + 1;
  const int64_t padded_h = g.h + padding[0] + padding[1], padded_w = g.w + padding[2] + padding[3];
  TORCH_CHECK(span_h <= padded_h && span_w <= padded_w, op, ": kernel ", weight.sizes().slice(2),
              " with dilation ", dilation, " is larger than the padded input [", padded_h, ", ", padded_w, "]");
  g.oh = (padded_h - span_h) / g.sh + 1;
  g.ow = (padded_w - span_w) / g.sw + 1;
  const std::vector<int64_t> shape{g.n, g.co, g.oh, g.ow};
  TORCH_CHECK(out.sizes() == at::IntArrayRef(shape), op, ": out must have shape ", at::IntArrayRef(shape),
              ", got ", out.sizes());
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == g.co, op, ": bias must have shape [", g.co, "], got ",
                bias->sizes());
  }
  if (residual.has_value() && residual->defined()) {
    TORCH_CHECK(residual->sizes() == at::IntArrayRef(shape), op, ": residual must have shape ",
                at::IntArrayRef(shape), ", got ", residual->sizes());
  }
  if (out.numel() > 0) {
    // Writes must not race with each other or clobber inputs still being read. assert_no_overlap
    // gives up ("too hard") on non-dense views, so out = buf[:, c:] while x = buf[:, :c] passes.
    at::assert_no_internal_overlap(out);
    at::assert_no_overlap(out, x);
    at::assert_no_overlap(out, weight);
    if (bias.has_value() && bias->defined()) at::assert_no_overlap(out, *bias);
    if (residual.has_value() && residual->defined()) at::assert_no_overlap(out, *residual);
  }
  return g;
}

}  // namespace fastconv
