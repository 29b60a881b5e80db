"""Triton kernels of the grid/window Potts ops and the unaries, registered as torch.library.triton_op
(namespace pottsops_triton) so that they compose with autograd and torch.compile.

On a GPU they run compiled; with TRITON_INTERPRET=1 they run on CPU tensors through the Triton
interpreter (slowly: the tests use it on small shapes).  Import pottsops.triton.grid_potts or
pottsops.triton.unary; the public API (pottsops.potts_energy, ...) selects them with backend="triton".
"""
