"""The Numba options the kernels are compiled with, and why.

* ``cache=True``: compiled code is written beside the source (``__pycache__``) and
  loaded by later processes instead of recompiled; a change to any kernel file makes
  every kernel's cache stale (:mod:`bnprop.kernels._cache_stamp`: a compiled function
  carries the code of the functions it calls, which Numba's own stamp misses).
* ``fastmath=False``: IEEE semantics. The kernels must equal their NumPy references to
  rounding: no reassociation of the float64 accumulations, no FMA contraction of
  ``gamma * Obar + beta`` (which NumPy rounds twice), no "no NaN" assumptions. Nothing is
  lost by it: every loop here is over the contiguous feature axis and has no loop-carried
  float dependence, so LLVM vectorizes it without reassociating anything.
* ``ACTIVATION_JIT_OPTIONS`` (the activations' ``exp``, ``sigmoid`` and ``tanh`` alone,
  :mod:`bnprop.kernels.activations`) add ``fastmath={"contract"}``: LLVM may fuse a
  multiply and the add that follows into one FMA, nothing else (no reassociation, NaN and
  inf kept). These functions are a polynomial and a division, a few ulps from NumPy's
  ``exp`` and ``tanh`` either way, never bit-equal to them, so nothing is compared to
  rounding there; with the fused Horner steps the float32 sigmoid went from 0.84 to 0.59
  ns an element and tanh from 1.00 to 0.68 (1024 x 256 from L2, one thread, both versions
  alternated in one process), with the same largest errors against the exact values on
  [-100, 100] (``tests/test_activation_kernels.py``: float32 sigmoid 1.94 ulps, tanh 2.31;
  float64 1.79, 2.45, then 1.87, 2.30 in the ratio form of one division). The fused
  steps change 0.55% of float32 sigmoids by an ulp (tanh 0.06%; float64 0.02% and
  0.002%, before the ratio form), 10 million uniform arguments in [-20, 20].
  On a CPU without FMA, LLVM keeps the two operations (the results then differ in the last
  bits from a machine with FMA, as they may between any two builds of libm).
* ``error_model="numpy"``: a float division by zero gives inf/NaN as in NumPy instead of
  raising; the Python model's check before every division stops vectorization (a float32
  sigmoid over 65536 x 256: 93 ms with the check, 8 ms without).
* ``nogil=True``: a kernel releases the GIL, so other Python threads (I/O, a data
  loader) run meanwhile.
* no ``parallel=True``: kernels are serial on purpose; see :mod:`bnprop.threads`.
"""

from __future__ import annotations

from bnprop.kernels import _cache_stamp  # noqa: F401 - installs the stamped cache locators

JIT_OPTIONS = {"cache": True, "fastmath": False, "error_model": "numpy", "nogil": True}
ACTIVATION_JIT_OPTIONS = {**JIT_OPTIONS, "fastmath": {"contract"}}
