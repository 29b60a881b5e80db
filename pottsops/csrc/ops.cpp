// The operator schemas of pottsops, declared once.  Kernels register per backend in csrc/cpu and
// csrc/cuda; fake kernels and autograd are registered in pottsops/_ops.py.
#include <torch/extension.h>
#include <torch/library.h>

#include "pottsops/lattice_args.h"
#include "pottsops/grid_args.h"
#include "pottsops/relaxations.h"
#include "pottsops/unaries.h"

TORCH_LIBRARY(pottsops, m) {
  // Energy per image (B,) of the Potts relaxation `relaxation` (index into the table of
  // csrc/pottsops/relaxations.h) over the pairs (i, i + offset) of a grid/window neighbourhood.
  // offsets = [dy0, dx0, dy1, dx1, ...] in one half-plane; spatial = one factor per offset.
  // Edge weight: weights[b, e, i] if given, else spatial[e] * exp(-|I_i - I_j|^2 inv_two_sigma2[b])
  // with image I, else spatial[e].  Pairs touching a pixel with mask == False are skipped.
  m.def(
      "grid_potts_energy(Tensor y, Tensor? image, Tensor? weights, Tensor? mask, "
      "Tensor? inv_two_sigma2, int[] offsets, float[] spatial, int relaxation, float eps) -> Tensor");
  // Gradients of sum_b grad_energy[b] * energy[b]: (grad_y, grad_weights); grad_weights is empty
  // unless weights_grad is true.
  m.def(
      "grid_potts_energy_backward(Tensor grad_energy, Tensor y, Tensor? image, Tensor? weights, "
      "Tensor? mask, Tensor? inv_two_sigma2, int[] offsets, float[] spatial, int relaxation, "
      "float eps, bool weights_grad) -> (Tensor, Tensor)");
  // Edge weights (B, E, H, W) as used by grid_potts_energy; zero for pairs that do not exist.
  m.def(
      "grid_affinity(Tensor image, Tensor? mask, Tensor inv_two_sigma2, int[] offsets, "
      "float[] spatial) -> Tensor");
  // Per-pixel unary H(y, softmax(logits)) (B, H, W) of kind 0 = cce, 1 = ce, 2 = rce; zero where
  // mask == False.
  m.def("unary_loss(Tensor logits, Tensor y, Tensor? mask, int kind, float eps) -> Tensor");
  m.def(
      "unary_loss_backward(Tensor grad_loss, Tensor logits, Tensor y, Tensor? mask, int kind, "
      "float eps) -> (Tensor, Tensor)");
  // The Gaussian filter sum_j exp(-|f_i - f_j|^2 / 2) values_j over all pixels j of the same image (j = i
  // included), approximated with the permutohedral lattice, in two ops: lattice_build(features) builds
  // each image's lattice once, from features (B, d, H, W) (pixel positions and colours already divided by
  // their sigma), and lattice_filter(values (B, C, H, W), lattice) filters with it, linear and symmetric in
  // values.  The lattice's tensors depend on the device (csrc/cpu/lattice.cpp, pottsops/lattice_tensors.py);
  // they are made by lattice_build and only read by lattice_filter, which checks them.
  m.def("lattice_build(Tensor features) -> Tensor[]");
  m.def("lattice_filter(Tensor values, Tensor[] lattice) -> Tensor");
  // The filter and the quadratic forms (B, C): forms[b, c] = values[b, c] . filtered[b, c] (summed over the
  // pixels, in float32, or float64 for float64 values), whose gradient 2 filtered needs no second filtering;
  // filtered is not differentiable here (lattice_filter's is).
  m.def("lattice_quadratic(Tensor values, Tensor[] lattice) -> (Tensor, Tensor)");
  // Building blocks of the device lattice (pottsops/lattice_tensors.py): the enclosing simplex of every pixel,
  // keys (B, N, d+1, d) int32 and barycentric weights (B, N, d+1), N = H * W ...
  m.def("lattice_simplex(Tensor features) -> (Tensor, Tensor)");
  // ... and out[s] = sum of rows[offsets[s]:offsets[s+1]] in order (deterministic, no atomics);
  // rows (R, C), offsets (S + 1,) int64.
  m.def("segment_sum(Tensor rows, Tensor offsets) -> Tensor");
  // The fused solver (pottsops/solver/).  grid_solver_gradient: per image eta H(y, sigma) summed over the
  // unlabeled pixels plus lam times the Potts energy (B,), and its gradient lam potts_grad + eta dH/dy
  // (zero on seeded pixels), in one pass; operand: the one tensor the unary reads, sigma for cce and rce,
  // log sigma for ce (fixed during a solve, so computed once).
  m.def(
      "grid_solver_gradient(Tensor y, Tensor? image, Tensor? weights, Tensor? mask, Tensor? inv_two_sigma2, "
      "int[] offsets, float[] spatial, int relaxation, float eps, Tensor operand, Tensor unlabeled, "
      "Tensor seeded, int kind, float eta, float lam, float unary_eps) -> (Tensor, Tensor)");
  // adaptive_step: one step of the adaptive rule (csrc/pottsops/solver_math.h) for the images b with
  // scale[b] > 0 (0: stopped), theta, m, v and y updated in place from grad; steps[b] >= 1 is the image's
  // step number, scale[b] its learning-rate factor; rule = [lr, beta1, beta2, eps, log_floor].  On seeded
  // pixels y becomes one-hot; theta (0 / log_floor), m, v and grad (0) are expected to be the seed's.
  m.def(
      "adaptive_step(Tensor(a!) theta, Tensor(b!) m, Tensor(c!) v, Tensor(d!) y, Tensor grad, Tensor steps, "
      "Tensor scale, Tensor seeds, Tensor seeded, float[] rule) -> ()");
  // adaptive_solve (CPU): the whole loop of pottsops/solver/loop.py from y and theta: grid_solver_gradient's
  // energy, adaptive_step, the best labels kept; every `window` steps adaptive_window_check halves an
  // image's learning rate or stops it; at most `iters` steps -> (best y, its energy (B,), the lowest energy
  // after each step (T + 1, B), steps per image (B,) int64).
  m.def(
      "adaptive_solve(Tensor y, Tensor theta, Tensor? image, Tensor? weights, Tensor? mask, Tensor? inv_two_sigma2, "
      "int[] offsets, float[] spatial, int relaxation, float eps, Tensor operand, Tensor unlabeled, Tensor seeded, "
      "Tensor seeds, Tensor lower, int kind, float eta, float lam, float unary_eps, float[] rule, int iters, "
      "float tol, int window) -> (Tensor, Tensor, Tensor, Tensor)");
}

namespace pottsops {
torch::Tensor gco_expansion(const std::vector<int64_t>& functions, torch::Tensor costs, torch::Tensor first,
                            torch::Tensor second, torch::Tensor weights, torch::Tensor start, int64_t iters);
}  // namespace pottsops (csrc/cpu/graphcut.cpp)

namespace {

bool compiled_with_cuda() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}

bool compiled_with_openmp() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

// The limits and table sizes the Python layer mirrors (tests/test_constants.py compares them).
pybind11::dict constants() {
  pybind11::dict d;
  d["max_offsets"] = pottsops::kMaxOffsets;
  d["max_lattice_feature"] = pottsops::kMaxLatticeFeature;
  d["max_lattice_pixels"] = pottsops::kMaxLatticePixels;
  d["max_lattice_dim"] = pottsops::kMaxLatticeDim;
  d["lattice_reach"] = pottsops::kLatticeReach;
  d["num_relaxations"] = static_cast<int>(pottsops::kNumRelaxations);
  d["num_unaries"] = static_cast<int>(pottsops::kNumUnaries);
  return d;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("constants", &constants, "the limits and table sizes of the kernels, which the Python layer mirrors");
  m.def("lattice_vertex_budget", &pottsops::lattice_vertex_budget, "the most vertices of one image's lattice");
  m.def("compiled_with_cuda", &compiled_with_cuda, "whether the CUDA kernels were built");
  m.def("compiled_with_openmp", &compiled_with_openmp, "whether the CPU kernels run in parallel");
  m.def("gco_expansion", &pottsops::gco_expansion, pybind11::call_guard<pybind11::gil_scoped_release>(),
        "alpha-expansion on one image through gco-wrapper's functions, GCO's exceptions as RuntimeError");
}
