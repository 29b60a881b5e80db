// The operator schemas of pottsops, declared once.  Kernels register per backend in csrc/cpu and
// csrc/cuda; fake kernels and autograd are registered in pottsops/_ops.py.
#include <torch/extension.h>
#include <torch/library.h>

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
  // Gaussian filter sum_j exp(-|f_i - f_j|^2 / 2) values_j over all pixels j of the same image (j = i
  // included), approximated with the permutohedral lattice.  features (B, d, H, W): pixel positions
  // and colours already divided by their sigma.  Linear and symmetric in values.
  m.def("bilateral_filter(Tensor values, Tensor features) -> Tensor");
  // Building blocks of the device lattice (pottsops/lattice.py): the enclosing simplex of every pixel,
  // keys (B, N, d+1, d) int32 and barycentric weights (B, N, d+1), N = H * W ...
  m.def("lattice_simplex(Tensor features) -> (Tensor, Tensor)");
  // ... and out[s] = sum of rows[offsets[s]:offsets[s+1]] in order (deterministic, no atomics);
  // rows (R, C), offsets (S + 1,) int64.
  m.def("segment_sum(Tensor rows, Tensor offsets) -> Tensor");
  // The fused solver step (pottsops/solve.py).  solver_gradient: per image sum of eta H(y, sigma) over the
  // unlabeled pixels (B,), the gradient lam potts_grad + eta dH/dy (zero on seeded pixels) and its
  // largest per-pixel spread max_k g - min_k g per image (B,); operand: the one tensor the unary reads,
  // sigma for cce and rce, log sigma for ce (fixed during a solve, so computed once).
  m.def(
      "solver_gradient(Tensor y, Tensor operand, Tensor potts_grad, Tensor unlabeled, Tensor seeded, int kind, "
      "float eta, float lam, float eps) -> (Tensor, Tensor, Tensor)");
  // grid_solver_gradient: the same outputs straight from y, the Potts energy included (energy =
  // lam Potts + eta H per image): grid_potts_energy, its backward and solver_gradient in one pass.
  m.def(
      "grid_solver_gradient(Tensor y, Tensor? image, Tensor? weights, Tensor? mask, Tensor? inv_two_sigma2, "
      "int[] offsets, float[] spatial, int relaxation, float eps, Tensor operand, Tensor unlabeled, "
      "Tensor seeded, int kind, float eta, float lam, float unary_eps) -> (Tensor, Tensor, Tensor)");
  // mirror_step: log y <- max(log_softmax(log y - scale[b] grad), log_floor) and y = exp(log y), one-hot
  // seeds on seeded pixels.
  m.def(
      "mirror_step(Tensor log_y, Tensor grad, Tensor scale, Tensor seeds, Tensor seeded, float log_floor) -> "
      "(Tensor, Tensor)");
  // mirror_solve (CPU): the whole mirror-descent loop of pottsops/solve.py from y (log_y = max(log y,
  // log_floor)): grid_solver_gradient's energy, mirror_step, per-image steps of largest log-change tau
  // (x1.25 accepted, x0.5 rejected; an image stops at relative change < tol or tau <= 1e-8) ->
  // (y, energy (B,), energy after each step (T + 1, B), steps per image (B,) int64).
  m.def(
      "mirror_solve(Tensor y, Tensor log_y, Tensor? image, Tensor? weights, Tensor? mask, Tensor? inv_two_sigma2, "
      "int[] offsets, float[] spatial, int relaxation, float eps, Tensor operand, Tensor unlabeled, Tensor seeded, "
      "Tensor seeds, int kind, float eta, float lam, float unary_eps, float log_floor, float step, int iters, "
      "float tol) -> (Tensor, Tensor, Tensor, Tensor)");
  // mirror_fused_step (CUDA): one step of that loop for every active image in one launch.  log_buffers and
  // grad_buffers (2, B, K, H, W): per image, log y and the gradient of its iterate in buffer state[b, 0]
  // (the trial goes to the other one); state (B, 7) float64: buffer, tau, energy, spread, active, steps,
  // accepted steps; arrived (B,) int32 zeros (a counter each launch resets); trace_row (B,) gets the
  // energy after the step.
  m.def(
      "mirror_fused_step(Tensor(a!) log_buffers, Tensor(b!) grad_buffers, Tensor(c!) state, Tensor(d!) arrived, "
      "Tensor(e!) trace_row, Tensor? image, Tensor? weights, Tensor? mask, Tensor? inv_two_sigma2, int[] offsets, "
      "float[] spatial, int relaxation, float eps, Tensor operand, Tensor unlabeled, Tensor seeded, Tensor seeds, "
      "int kind, float eta, float lam, float unary_eps, float log_floor, float tol) -> ()");
}

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

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("compiled_with_cuda", &compiled_with_cuda, "whether the CUDA kernels were built");
  m.def("compiled_with_openmp", &compiled_with_openmp, "whether the CPU kernels run in parallel");
}
