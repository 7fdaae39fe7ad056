"""The one set of Numba options every kernel is compiled with, and why.

* ``cache=True``: compiled code is written beside the source (``__pycache__``) and
  loaded by later processes instead of recompiled; a change to any kernel file makes
  every kernel's cache stale (:mod:`bnprop.kernels._cache_stamp`: a compiled function
  carries the code of the functions it calls, which Numba's own stamp misses).
* ``fastmath=False``: IEEE semantics. The kernels must equal their NumPy references to
  rounding: no reassociation of the float64 accumulations, no FMA contraction of
  ``gamma * Obar + beta`` (which NumPy rounds twice), no "no NaN" assumptions. Nothing is
  lost by it: every loop here is over the contiguous feature axis and has no loop-carried
  float dependence, so LLVM vectorizes it without reassociating anything.
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
