"""Tolerances for comparing floating-point results, set from what fp32 can promise.

CI runs on Intel and AMD CPUs whose math kernels (oneDNN, MKL/OpenBLAS, vectorised reductions)
pick different block sizes and therefore different summation orders. A test may only demand what
holds on every x86 CPU, so each comparison names which of these situations it is in:

- ``REPLAY``: the same arithmetic replayed on the same machine with the same shapes (a resumed run
  against the uninterrupted one, a rerun). Kernels and their order are the same, so results agree
  to the last bits; the tolerance only absorbs values that pass through a text or JSON round trip.
- ``CROSS_PATH``: the same quantity reached by two fp32 computations that reduce in different
  orders (other batch sizes, a cached latent against one encoded on the fly, a reference forward
  under ``no_grad`` against the policy forward). Each reduction of n terms can be off by about
  sqrt(n)·eps relative (eps = 2**-23 ≈ 1.2e-7), and a UNet forward plus backward chains dozens of
  reductions over 10^2–10^4 terms, so losses and gradient norms agree to about 1e-5 and no better:
  on an AMD EPYC a gradient norm differed by 1.24e-5 relative. ``CROSS_PATH`` allows 1e-4 relative
  (about 840 eps), with an absolute floor for quantities that can be near zero.
- ``CROSS_PATH_AFTER_ADAM``: as ``CROSS_PATH`` but after optimizer steps. Adam divides by the root
  of the second moment, which turns the rounding of near-zero gradients into full-size updates, so
  the difference grows with every step.
- ``SCALED_LOGIT``: probabilities or scores computed from CLIP similarities multiplied by the logit
  scale (about 100): a rounding of 1 ulp in a similarity becomes ~1e-5 in the logit.
"""

from __future__ import annotations

FP32_EPS = 2.0**-23

REPLAY = {"rel": 1e-5, "abs": 1e-7}
CROSS_PATH = {"rel": 1e-4, "abs": 1e-6}
CROSS_PATH_AFTER_ADAM = {"rel": 1e-3, "abs": 1e-6}
SCALED_LOGIT = {"rel": 1e-4, "abs": 1e-5}


def torch_kwargs(tol: dict[str, float]) -> dict[str, float]:
    """The same tolerance for ``torch.testing.assert_close``."""
    return {"rtol": tol["rel"], "atol": tol["abs"]}


def numpy_kwargs(tol: dict[str, float]) -> dict[str, float]:
    """The same tolerance for ``numpy.testing.assert_allclose``."""
    return {"rtol": tol["rel"], "atol": tol["abs"]}
