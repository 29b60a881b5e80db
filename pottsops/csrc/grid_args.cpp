#include "pottsops/grid_args.h"

#include <cmath>

#include "pottsops/relaxations.h"

namespace pottsops {
namespace {

void check_offsets(at::IntArrayRef offsets, at::ArrayRef<double> spatial, GridArgs& args) {
  TORCH_CHECK(offsets.size() % 2 == 0, "offsets: expected (dy, dx) pairs, got ", offsets.size(),
              " values");
  const int64_t num = static_cast<int64_t>(offsets.size() / 2);
  TORCH_CHECK(num >= 1 && num <= kMaxOffsets, "offsets: expected 1 to ", kMaxOffsets,
              " offsets, got ", num);
  for (int64_t e = 0; e < num; ++e) {
    TORCH_CHECK(offsets[2 * e] > 0 || (offsets[2 * e] == 0 && offsets[2 * e + 1] > 0), "offsets: (",
                offsets[2 * e], ", ", offsets[2 * e + 1], ") is not in the half-plane dy > 0 or (dy == 0 and dx > 0)");
  }
  TORCH_CHECK(static_cast<int64_t>(spatial.size()) == num, "spatial: expected ", num,
              " factors (one per offset), got ", spatial.size());
  for (int64_t e = 0; e < num; ++e) {
    const int64_t dy = offsets[2 * e], dx = offsets[2 * e + 1];
    TORCH_CHECK(std::isfinite(spatial[e]) && spatial[e] >= 0, "spatial: expected finite factors >= 0, got ",
                spatial[e]);
    args.dy.push_back(dy);
    args.dx.push_back(dx);
    args.spatial.push_back(spatial[e]);
  }
}

void check_image(const at::Tensor& image, const at::Tensor& inv_two_sigma2, int64_t B, int64_t H,
                 int64_t W, at::ScalarType acc, GridArgs& args) {
  TORCH_CHECK(image.dim() == 4, "image: expected (B, C, H, W), got shape ", image.sizes());
  TORCH_CHECK(at::isFloatingType(image.scalar_type()), "image: expected a floating dtype, got ",
              image.scalar_type());
  TORCH_CHECK(image.size(0) == B && image.size(2) == H && image.size(3) == W,
              "image: expected shape (", B, ", C, ", H, ", ", W, "), got ", image.sizes());
  TORCH_CHECK(inv_two_sigma2.dim() == 1 && inv_two_sigma2.size(0) == B,
              "inv_two_sigma2: expected shape (", B, "), got ", inv_two_sigma2.sizes());
  TORCH_CHECK(inv_two_sigma2.device() == image.device(), "inv_two_sigma2: expected device ", image.device(),
              ", got ", inv_two_sigma2.device());
  args.image = image.to(acc);
  args.inv_two_sigma2 = inv_two_sigma2.to(acc).contiguous();
}

void check_mask(const at::Tensor& mask, int64_t B, int64_t H, int64_t W, GridArgs& args) {
  TORCH_CHECK(mask.scalar_type() == at::kBool, "mask: expected dtype bool, got ",
              mask.scalar_type());
  TORCH_CHECK(mask.dim() == 3 && mask.size(0) == B && mask.size(1) == H && mask.size(2) == W,
              "mask: expected shape (", B, ", ", H, ", ", W, "), got ", mask.sizes());
  args.mask = mask;
}

}  // namespace

GridArgs make_grid_args(const at::Tensor& y, const c10::optional<at::Tensor>& image,
                        const c10::optional<at::Tensor>& weights, const c10::optional<at::Tensor>& mask,
                        const c10::optional<at::Tensor>& inv_two_sigma2, at::IntArrayRef offsets,
                        at::ArrayRef<double> spatial, int64_t relaxation, double eps) {
  GridArgs args;
  TORCH_CHECK(y.dim() == 4, "y: expected (B, K, H, W), got shape ", y.sizes());
  TORCH_CHECK(at::isFloatingType(y.scalar_type()), "y: expected a floating dtype, got ",
              y.scalar_type());
  TORCH_CHECK(y.size(1) >= 2, "y: expected K >= 2 classes, got ", y.size(1));
  TORCH_CHECK(relaxation >= 0 && relaxation < kNumRelaxations, "relaxation: expected an index in [0, ",
              int(kNumRelaxations), "), got ", relaxation);
  TORCH_CHECK(std::isfinite(eps) && eps >= 0, "eps: expected a finite number >= 0, got ", eps);
  args.y = y;
  args.relaxation = static_cast<int>(relaxation);
  args.eps = eps;
  check_offsets(offsets, spatial, args);
  const int64_t B = y.size(0), H = y.size(2), W = y.size(3);
  const at::ScalarType acc = accumulation_type(y.scalar_type());
  if (weights.has_value()) {
    const at::Tensor& w = *weights;
    TORCH_CHECK(w.dim() == 4 && w.size(0) == B && w.size(1) == args.num_offsets() && w.size(2) == H &&
                    w.size(3) == W,
                "weights: expected shape (", B, ", ", args.num_offsets(), ", ", H, ", ", W, "), got ",
                w.sizes());
    TORCH_CHECK(at::isFloatingType(w.scalar_type()), "weights: expected a floating dtype, got ",
                w.scalar_type());
    TORCH_CHECK(w.device() == y.device(), "weights: expected device ", y.device(), ", got ", w.device());
    args.weights = w.to(acc);
  } else if (image.has_value()) {
    TORCH_CHECK(image->device() == y.device(), "image: expected device ", y.device(), ", got ",
                image->device());
    TORCH_CHECK(inv_two_sigma2.has_value(), "inv_two_sigma2: required when image is given");
    check_image(*image, *inv_two_sigma2, B, H, W, acc, args);
  }
  if (mask.has_value()) {
    TORCH_CHECK(mask->device() == y.device(), "mask: expected device ", y.device(), ", got ",
                mask->device());
    check_mask(*mask, B, H, W, args);
  }
  return args;
}

void check_backward_args(const at::Tensor& grad_energy, const GridArgs& args, bool weights_grad) {
  const at::Tensor& y = args.y;
  TORCH_CHECK(grad_energy.dim() == 1 && grad_energy.size(0) == y.size(0), "grad_energy: expected shape (",
              y.size(0), "), got ", grad_energy.sizes());
  TORCH_CHECK(grad_energy.device() == y.device(), "grad_energy: expected device ", y.device(), ", got ",
              grad_energy.device());
  TORCH_CHECK(!weights_grad || args.weights.defined(), "weights_grad: requires weights");
}

at::Tensor weights_grad_buffer(const GridArgs& args, bool weights_grad) {
  if (!weights_grad) return at::empty({0}, args.y.options());
  return at::zeros(args.weights.sizes(), args.weights.options().memory_format(at::MemoryFormat::Contiguous));
}

GridArgs make_affinity_args(const at::Tensor& image, const c10::optional<at::Tensor>& mask,
                            const at::Tensor& inv_two_sigma2, at::IntArrayRef offsets,
                            at::ArrayRef<double> spatial) {
  GridArgs args;
  TORCH_CHECK(image.dim() == 4, "image: expected (B, C, H, W), got shape ", image.sizes());
  check_offsets(offsets, spatial, args);
  const int64_t B = image.size(0), H = image.size(2), W = image.size(3);
  check_image(image, inv_two_sigma2, B, H, W, accumulation_type(image.scalar_type()), args);
  if (mask.has_value()) {
    TORCH_CHECK(mask->device() == image.device(), "mask: expected device ", image.device(), ", got ",
                mask->device());
    check_mask(*mask, B, H, W, args);
  }
  return args;
}

}  // namespace pottsops
