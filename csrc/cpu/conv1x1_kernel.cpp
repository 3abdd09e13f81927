// fastconv::_conv1x1_cpu: the 1x1 convolution as a cache-blocked GEMM over pixel tiles.
//
// For every tile of output pixels of one image (run in parallel with at::parallel_for):
//   A = x'[tile, :]  (P x Ci) : read in place when it already is a BLAS operand (same dtype as the
//                               accumulator, no prologue, pixels uniformly strided: channels_last or
//                               NCHW with stride 1); otherwise packed into a thread-local buffer with
//                               the pre-activation prologue relu?(x*scale+shift) applied on the way.
//   C_j = A . W_j^T  (P x Co_j) for each out j, W_j its rows of the concatenated weight, written by
//                               BLAS straight into out_j when out_j is a BLAS operand of the
//                               accumulator dtype, else into a thread-local scratch tile.
//   epilogue: bias, residual, ReLU and the dtype conversion while the tile is still in cache, through
//                               out_j's strides (a channel slice of a larger buffer included).
// Half/bfloat16 are computed in float32, float64 in float64; all indexing is int64.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/MemoryOverlap.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

// BLAS from the MKL/OpenBLAS that libtorch_cpu exports. Weak: when the running torch has no such
// symbol the pointers are null and the ATen fallback (at::mm_out on from_blob tiles) runs instead.
extern "C" {
void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*, const float*, const int*,
            const float*, const int*, const float*, float*, const int*) __attribute__((weak));
void dgemm_(const char*, const char*, const int*, const int*, const int*, const double*, const double*, const int*,
            const double*, const int*, const double*, double*, const int*) __attribute__((weak));
}

namespace fastconv {
namespace {

// A row-major view of a matrix: element (r, c) at p[r * rs + c * cs].
template <typename T>
struct Mat {
  T* p;
  int64_t rs, cs;
};

// BLAS needs one unit stride and a leading dimension covering the other extent; a dimension of
// size 1 may claim any stride.
template <typename T>
bool blas_layout(Mat<T>& m, int64_t rows, int64_t cols) {
  if (cols == 1) m.cs = std::max<int64_t>(m.rs == 1 ? rows : 1, 1);
  if (rows == 1) m.rs = std::max<int64_t>(m.cs == 1 ? cols : 1, 1);
  if (m.rs == 1 && m.cs >= std::max<int64_t>(rows, 1) && m.cs <= INT_MAX) return true;
  if (m.cs == 1 && m.rs >= std::max<int64_t>(cols, 1) && m.rs <= INT_MAX) return true;
  return false;
}

bool use_aten_gemm() {
  // FASTCONV_CPU_GEMM=aten forces the fallback so that tests exercise it where BLAS exists.
  const char* v = std::getenv("FASTCONV_CPU_GEMM");
  return v != nullptr && std::strcmp(v, "aten") == 0;
}

// Column-major BLAS call C(m x n) = op(A) op(B), A/B/C given as row-major views that blas_layout
// accepted. A row-major C is computed as C^T = B^T A^T.
template <typename T>
void blas_call(int64_t m, int64_t n, int64_t k, Mat<const T> a, Mat<const T> b, Mat<T> c) {
  if (c.rs != 1) {
    // row-major C: swap roles so that the stored matrix is column-major
    std::swap(m, n);
    std::swap(a, b);
    std::swap(a.rs, a.cs);
    std::swap(b.rs, b.cs);
    std::swap(c.rs, c.cs);
  }
  const char ta = a.rs == 1 ? 'N' : 'T';
  const char tb = b.rs == 1 ? 'N' : 'T';
  const int im = static_cast<int>(m), in = static_cast<int>(n), ik = static_cast<int>(k);
  const int lda = static_cast<int>(a.rs == 1 ? a.cs : a.rs);
  const int ldb = static_cast<int>(b.rs == 1 ? b.cs : b.rs);
  const int ldc = static_cast<int>(c.cs);
  const T one = 1, zero = 0;
  if constexpr (std::is_same_v<T, float>) {
    sgemm_(&ta, &tb, &im, &in, &ik, &one, a.p, &lda, b.p, &ldb, &zero, c.p, &ldc);
  } else {
    dgemm_(&ta, &tb, &im, &in, &ik, &one, a.p, &lda, b.p, &ldb, &zero, c.p, &ldc);
  }
}

template <typename T>
bool have_blas() {
  if constexpr (std::is_same_v<T, float>) return sgemm_ != nullptr;
  return dgemm_ != nullptr;
}

// C = A . B with A (m x k), B (k x n), C (m x n).
template <typename T>
void gemm(int64_t m, int64_t n, int64_t k, Mat<const T> a, Mat<const T> b, Mat<T> c, bool aten) {
  if (k == 0) {
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) c.p[i * c.rs + j * c.cs] = 0;
    return;
  }
  if (!aten && have_blas<T>() && m <= INT_MAX && n <= INT_MAX && k <= INT_MAX) {
    Mat<const T> a2 = a, b2 = b;
    Mat<T> c2 = c;
    if (blas_layout(a2, m, k) && blas_layout(b2, k, n) && blas_layout(c2, m, n)) {
      blas_call<T>(m, n, k, a2, b2, c2);
      return;
    }
  }
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  at::Tensor at_a = at::from_blob(const_cast<T*>(a.p), {m, k}, {a.rs, a.cs}, opts);
  at::Tensor at_b = at::from_blob(const_cast<T*>(b.p), {k, n}, {b.rs, b.cs}, opts);
  at::Tensor at_c = at::from_blob(c.p, {m, n}, {c.rs, c.cs}, opts);
  at::mm_out(at_c, at_a, at_b);
}

struct Geometry {
  int64_t n, ci, h, w, oh, ow, hw_out, s0, s1;
};

// Element offsets (within one image) of the output pixels p0 .. p0+np-1 at input strides (sh, sw)
// and spatial step (s0, s1); returns whether they are uniformly spaced (then *step holds the spacing).
bool pixel_offsets(const Geometry& g, int64_t p0, int64_t np, int64_t sh, int64_t sw, int64_t s0, int64_t s1,
                   int64_t* off, int64_t* step) {
  int64_t oh = p0 / g.ow, ow = p0 % g.ow;
  for (int64_t i = 0; i < np; ++i) {
    off[i] = oh * s0 * sh + ow * s1 * sw;
    if (++ow == g.ow) {
      ow = 0;
      ++oh;
    }
  }
  const bool one_row = (p0 / g.ow) == ((p0 + np - 1) / g.ow);
  *step = s1 * sw;
  return np == 1 || one_row || s0 * sh == g.ow * s1 * sw;
}

// dst[k*ds] = relu?(src[k*ss] + bias + res[k*rs]) for k < len, bias the constant b0 or the vector bv.
// Every choice is a template parameter so that the inner loops are branch-free (a data-dependent ReLU
// branch mispredicts on every other element) and the unit-stride case vectorizes.
// dst may be src (BLAS wrote the tile into out): element k is read before it is written.
template <typename scalar_t, typename acc_t, bool VEC_BIAS, bool RES, bool RELU>
inline void epilogue_line_t(scalar_t* dst, int64_t ds, const acc_t* src, int64_t ss, int64_t len, acc_t b0,
                            const acc_t* bv, const scalar_t* res, int64_t rs) {
  const acc_t zero(0);
  auto value = [&](int64_t k, acc_t s, const scalar_t* r) {
    acc_t v = s + (VEC_BIAS ? bv[k] : b0);
    if constexpr (RES) v += static_cast<acc_t>(*r);
    if constexpr (RELU) v = std::max(v, zero);
    return static_cast<scalar_t>(v);
  };
  if (ds == 1 && ss == 1 && (!RES || rs == 1)) {
    for (int64_t k = 0; k < len; ++k) dst[k] = value(k, src[k], RES ? res + k : nullptr);
  } else {
    for (int64_t k = 0; k < len; ++k) dst[k * ds] = value(k, src[k * ss], RES ? res + k * rs : nullptr);
  }
}

template <typename scalar_t, typename acc_t>
inline void epilogue_line(scalar_t* dst, int64_t ds, const acc_t* src, int64_t ss, int64_t len, acc_t b0,
                          const acc_t* bv, const scalar_t* res, int64_t rs, bool relu) {
#define FASTCONV_EPI(VB, R, RL) epilogue_line_t<scalar_t, acc_t, VB, R, RL>(dst, ds, src, ss, len, b0, bv, res, rs)
  const bool vb = bv != nullptr, r = res != nullptr;
  if (vb) {
    if (r) relu ? FASTCONV_EPI(true, true, true) : FASTCONV_EPI(true, true, false);
    else relu ? FASTCONV_EPI(true, false, true) : FASTCONV_EPI(true, false, false);
  } else {
    if (r) relu ? FASTCONV_EPI(false, true, true) : FASTCONV_EPI(false, true, false);
    else relu ? FASTCONV_EPI(false, false, true) : FASTCONV_EPI(false, false, false);
  }
#undef FASTCONV_EPI
}

template <typename scalar_t, typename acc_t>
void conv1x1_typed(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                   const c10::optional<at::Tensor>& residual, const c10::optional<at::Tensor>& in_scale,
                   const c10::optional<at::Tensor>& in_shift, bool in_relu, const Geometry& g, bool relu,
                   const std::vector<at::Tensor>& outs) {
  constexpr bool same_type = std::is_same_v<scalar_t, acc_t>;
  const auto acc_dtype = c10::CppTypeToScalarType<acc_t>::value;
  // Small per-call operands in the accumulator dtype: the weight (as BLAS's B = W^T) and vectors.
  at::Tensor w = weight.to(acc_dtype);
  {
    Mat<const acc_t> probe{w.const_data_ptr<acc_t>(), w.stride(1), w.stride(0)};
    if (!blas_layout(probe, w.size(1), w.size(0))) w = w.contiguous();
  }
  auto vec = [&](const c10::optional<at::Tensor>& t) {
    return t.has_value() ? t->to(acc_dtype).contiguous() : at::Tensor();
  };
  const at::Tensor b = vec(bias), sc = vec(in_scale), sh = vec(in_shift);
  const acc_t* bias_p = b.defined() ? b.const_data_ptr<acc_t>() : nullptr;
  const acc_t* scale_p = sc.defined() ? sc.const_data_ptr<acc_t>() : nullptr;
  const acc_t* shift_p = sh.defined() ? sh.const_data_ptr<acc_t>() : nullptr;
  const bool prologue = scale_p || shift_p || in_relu;
  // the channels-inner packing loop reads the prologue as two full vectors (1 and 0 when absent)
  std::vector<acc_t> pro_scale(scale_p ? scale_p : nullptr, scale_p ? scale_p + g.ci : nullptr);
  std::vector<acc_t> pro_shift(shift_p ? shift_p : nullptr, shift_p ? shift_p + g.ci : nullptr);
  pro_scale.resize(g.ci, acc_t(1));
  pro_shift.resize(g.ci, acc_t(0));
  const bool aten = use_aten_gemm();

  const int64_t ci = g.ci;
  const int64_t co_total = w.size(0);
  // Pixel tile: A and C tiles together within ~512 KiB (half an L2 slice), at least 16 pixels,
  // at most a whole image, and enough tiles to keep every thread busy.
  const int64_t bytes_per_px = (ci + co_total) * static_cast<int64_t>(sizeof(acc_t));
  int64_t tile = std::clamp<int64_t>((512 * 1024) / std::max<int64_t>(bytes_per_px, 1), 16, 1024);
  const int64_t threads = at::get_num_threads();
  while (tile > 32 && g.n * ((g.hw_out + tile - 1) / tile) < 4 * threads) tile /= 2;
  tile = std::min(tile, g.hw_out);
  const int64_t tiles_per_img = (g.hw_out + tile - 1) / tile;
  tile = (g.hw_out + tiles_per_img - 1) / tiles_per_img;  // balance the tiles of an image

  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const int64_t xsN = x.stride(0), xsC = x.stride(1), xsH = x.stride(2), xsW = x.stride(3);
  const bool x_channels_inner = xsC == 1 && ci > 1;
  const scalar_t* rp = residual.has_value() ? residual->const_data_ptr<scalar_t>() : nullptr;
  int64_t max_co = 0;
  for (const auto& o : outs) max_co = std::max<int64_t>(max_co, o.size(1));

  at::parallel_for(0, g.n * tiles_per_img, 1, [&](int64_t t_begin, int64_t t_end) {
    std::vector<acc_t> abuf, cbuf;
    std::vector<int64_t> xoff(tile), ooff(tile), roff(tile);
    for (int64_t t = t_begin; t < t_end; ++t) {
      const int64_t n = t / tiles_per_img;
      const int64_t p0 = (t % tiles_per_img) * tile;
      const int64_t np = std::min(tile, g.hw_out - p0);
      int64_t xstep = 0;
      const bool x_uniform = pixel_offsets(g, p0, np, xsH, xsW, g.s0, g.s1, xoff.data(), &xstep);
      const scalar_t* xn = xp + n * xsN;

      // ---- A operand (np x ci)
      Mat<const acc_t> a{nullptr, 0, 0};
      bool direct_a = false;
      if constexpr (same_type) {
        if (!prologue && x_uniform) {
          Mat<const acc_t> probe{reinterpret_cast<const acc_t*>(xn + xoff[0]), xstep, xsC};
          if (blas_layout(probe, np, ci)) {
            a = probe;
            direct_a = true;
          }
        }
      }
      if (!direct_a) {
        abuf.resize(static_cast<size_t>(np * ci));
        acc_t* dst = abuf.data();
        if (x_channels_inner) {  // pack as (np x ci), channels contiguous, reading pixel rows
          for (int64_t i = 0; i < np; ++i) {
            const scalar_t* src = xn + xoff[i];
            acc_t* d = dst + i * ci;
            // unit factors instead of absent ones keep this loop branch-free and vectorized
            for (int64_t c = 0; c < ci; ++c) d[c] = static_cast<acc_t>(src[c]) * pro_scale[c] + pro_shift[c];
            if (in_relu)
              for (int64_t c = 0; c < ci; ++c) d[c] = std::max(d[c], acc_t(0));
          }
          a = {dst, ci, 1};
        } else {  // pack as (ci x np), pixels contiguous, reading channel planes
          for (int64_t c = 0; c < ci; ++c) {
            const scalar_t* src = xn + c * xsC;
            acc_t* d = dst + c * np;
            const acc_t s = scale_p ? scale_p[c] : acc_t(1), z = shift_p ? shift_p[c] : acc_t(0);
            if (x_uniform) {
              const scalar_t* s0p = src + xoff[0];
              for (int64_t i = 0; i < np; ++i) {
                d[i] = static_cast<acc_t>(s0p[i * xstep]) * s + z;
              }
            } else {
              for (int64_t i = 0; i < np; ++i) {
                d[i] = static_cast<acc_t>(src[xoff[i]]) * s + z;
              }
            }
          }
          if (in_relu)
            for (int64_t k = 0; k < np * ci; ++k) dst[k] = std::max(dst[k], acc_t(0));
          a = {dst, 1, np};
        }
      }

      // ---- one GEMM and epilogue per out
      int64_t c0 = 0;
      for (const auto& o : outs) {
        const int64_t cj = o.size(1);
        const int64_t osN = o.stride(0), osC = o.stride(1), osH = o.stride(2), osW = o.stride(3);
        int64_t ostep = 0;
        const bool o_uniform = pixel_offsets(g, p0, np, osH, osW, 1, 1, ooff.data(), &ostep);
        scalar_t* on = o.data_ptr<scalar_t>() + n * osN;
        const bool o_channels_inner = osC == 1 && cj > 1;
        const Mat<const acc_t> bmat{w.const_data_ptr<acc_t>() + c0 * w.stride(0), w.stride(1), w.stride(0)};

        Mat<acc_t> cmat{nullptr, 0, 0};
        bool direct_c = false;
        if constexpr (same_type) {
          if (o_uniform) {
            Mat<acc_t> probe{reinterpret_cast<acc_t*>(on + ooff[0]), ostep, osC};
            if (blas_layout(probe, np, cj)) {
              cmat = probe;
              direct_c = true;
            }
          }
        }
        if (!direct_c) {
          cbuf.resize(static_cast<size_t>(np * max_co));
          cmat = o_channels_inner ? Mat<acc_t>{cbuf.data(), cj, 1} : Mat<acc_t>{cbuf.data(), 1, np};
        }
        gemm<acc_t>(np, cj, ci, a, bmat, cmat, aten);

        const acc_t* bj = bias_p ? bias_p + c0 : nullptr;
        const scalar_t* rn = nullptr;
        int64_t rsC = 0, rstep = 0;
        bool r_uniform = false;
        if (rp) {
          r_uniform = pixel_offsets(g, p0, np, residual->stride(2), residual->stride(3), 1, 1, roff.data(), &rstep);
          rn = rp + n * residual->stride(0);
          rsC = residual->stride(1);
        }
        if (direct_c && !bj && !rn && !relu) {
          c0 += cj;
          continue;  // BLAS already wrote the final values
        }
        if (o_channels_inner) {  // per pixel: a row of channels, bias as a vector
          for (int64_t i = 0; i < np; ++i) {
            epilogue_line<scalar_t, acc_t>(on + ooff[i], 1, cmat.p + i * cmat.rs, cmat.cs, cj, acc_t(0), bj,
                                           rn ? rn + roff[i] : nullptr, rsC, relu);
          }
        } else {  // per channel: a line of pixels, bias a constant
          for (int64_t c = 0; c < cj; ++c) {
            const acc_t bc = bj ? bj[c] : acc_t(0);
            const acc_t* src = cmat.p + c * cmat.cs;
            scalar_t* dst = on + c * osC;
            const scalar_t* res = rn ? rn + c * rsC : nullptr;
            if (o_uniform && (!rn || r_uniform)) {
              epilogue_line<scalar_t, acc_t>(dst + ooff[0], ostep, src, cmat.rs, np, bc, nullptr,
                                             res ? res + roff[0] : nullptr, rstep, relu);
            } else {
              for (int64_t i = 0; i < np; ++i) {
                epilogue_line<scalar_t, acc_t>(dst + ooff[i], 1, src + i * cmat.rs, 1, 1, bc, nullptr,
                                               res ? res + roff[i] : nullptr, 1, relu);
              }
            }
          }
        }
        c0 += cj;
      }
    }
  });
}

void conv1x1_cpu(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                 const c10::optional<at::Tensor>& residual, const c10::optional<at::Tensor>& in_scale,
                 const c10::optional<at::Tensor>& in_shift, bool in_relu, at::IntArrayRef stride, bool relu,
                 at::TensorList outs_list) {
  // The public op checks everything with clear messages; these checks keep direct calls from crashing.
  const char* op = "fastconv::_conv1x1_cpu: ";
  TORCH_CHECK(x.dim() == 4 && x.device().is_cpu(), op, "x must be a 4-D CPU tensor, got ", x.sizes());
  const auto dt = x.scalar_type();
  TORCH_CHECK(dt == at::kHalf || dt == at::kBFloat16 || dt == at::kFloat || dt == at::kDouble, op,
              "x must be float16, bfloat16, float32 or float64, got ", dt);
  TORCH_CHECK(weight.dim() == 2 && weight.device().is_cpu() && weight.scalar_type() == x.scalar_type(), op,
              "weight must be a 2-D [C_out, C_in] CPU tensor of x's dtype, got ", weight.sizes());
  TORCH_CHECK(weight.size(1) == x.size(1), op, "weight has ", weight.size(1), " input channels but x has ",
              x.size(1));
  TORCH_CHECK(stride.size() == 2 && stride[0] > 0 && stride[1] > 0, op, "stride must be two positive ints");
  const int64_t co_total = weight.size(0);
  Geometry g{x.size(0), x.size(1), x.size(2), x.size(3), 0, 0, 0, stride[0], stride[1]};
  g.oh = g.h == 0 ? 0 : (g.h - 1) / g.s0 + 1;
  g.ow = g.w == 0 ? 0 : (g.w - 1) / g.s1 + 1;
  g.hw_out = g.oh * g.ow;
  auto check_vec = [&](const c10::optional<at::Tensor>& t, const char* name, int64_t len) {
    if (!t.has_value()) return;
    TORCH_CHECK(t->dim() == 1 && t->size(0) == len && t->device().is_cpu() && t->scalar_type() == x.scalar_type(),
                op, name, " must be a 1-D CPU tensor of x's dtype with ", len, " elements, got ", t->sizes());
  };
  check_vec(bias, "bias", co_total);
  check_vec(in_scale, "in_scale", g.ci);
  check_vec(in_shift, "in_shift", g.ci);
  TORCH_CHECK(!outs_list.empty(), op, "outs must hold at least one tensor");
  std::vector<at::Tensor> outs(outs_list.begin(), outs_list.end());
  int64_t co_sum = 0;
  for (size_t j = 0; j < outs.size(); ++j) {
    const auto& o = outs[j];
    TORCH_CHECK(o.dim() == 4 && o.device().is_cpu() && o.scalar_type() == x.scalar_type(), op, "outs[", j,
                "] must be a 4-D CPU tensor of x's dtype");
    TORCH_CHECK(o.size(0) == g.n && o.size(2) == g.oh && o.size(3) == g.ow, op, "outs[", j, "] has shape ",
                o.sizes(), " but the output is [", g.n, ", C, ", g.oh, ", ", g.ow, "]");
    co_sum += o.size(1);
    if (o.numel() == 0) continue;
    at::assert_no_internal_overlap(o);  // parallel tiles would race on shared output elements
    at::assert_no_overlap(o, x);
    at::assert_no_overlap(o, weight);
    for (const auto* t : {&bias, &residual, &in_scale, &in_shift}) {
      if (t->has_value()) at::assert_no_overlap(o, **t);
    }
    for (size_t k = 0; k < j; ++k) at::assert_no_overlap(o, outs[k]);
  }
  TORCH_CHECK(co_sum == co_total, op, "outs have ", co_sum, " channels in all but weight has ", co_total, " rows");
  if (residual.has_value()) {
    TORCH_CHECK(outs.size() == 1, op, "residual needs exactly one out, got ", outs.size());
    TORCH_CHECK(residual->sizes() == outs[0].sizes() && residual->device().is_cpu() &&
                    residual->scalar_type() == x.scalar_type(),
                op, "residual must have the output's shape ", outs[0].sizes(), " and x's dtype");
  }
  if (g.n == 0 || g.hw_out == 0 || co_total == 0) return;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastconv_conv1x1_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    conv1x1_typed<scalar_t, acc_t>(x, weight, bias, residual, in_scale, in_shift, in_relu, g, relu, outs);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, CPU, m) {
  m.impl("_conv1x1_cpu", &conv1x1_cpu);
}

}  // namespace fastconv
