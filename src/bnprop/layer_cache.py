"""What one forward pass of a layer keeps (:class:`LayerCache`) and what its backward pass
gives (:class:`LayerGrads`); the equations are in :mod:`bnprop.layer`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import FrozenInstanceError
from typing import TYPE_CHECKING, Any

import numpy as np

from bnprop import batchnorm as bn
from bnprop._validate import InputError, check_positive
from bnprop.activations import ACTIVATIONS

if TYPE_CHECKING:  # the math layer never imports the distributed one at run time
    from bnprop.distributed import Communicator

_FIELDS = ("O", "W", "gamma", "beta", "Z", "mu", "var", "inv_std", "Obar", "A", "Y",
           "activation", "eps", "m_global", "comm")


def _check_fields(arrays: dict[str, object], activation: object, eps: object,
                  m_global: object) -> None:
    """The arrays of a cache built by hand (any real dtypes and layouts: the backward pass
    converts them): ``O`` (m, n_in), ``W`` (n_out, n_in), ``Z``, ``Obar``, ``A``, ``Y``
    (m, n_out), the vectors (n_out,); a known activation, ``eps > 0``, ``m_global`` None
    or >= m."""
    for name, value in arrays.items():
        if value is None and name in ("Obar", "A"):
            raise InputError(f"{name}: a LayerCache holds every array of its forward "
                             "pass; got None (layer_forward builds a complete one).")
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiu":
            got = value.dtype if isinstance(value, np.ndarray) else type(value).__name__
            raise InputError(f"{name}: expected a real numeric array, got {got} instead.")
    O, W = arrays["O"], arrays["W"]
    if O.ndim != 2 or W.ndim != 2 or W.shape[1] != O.shape[1]:  # type: ignore[union-attr]
        raise InputError(f"O, W: expected shapes (m, n_in) and (n_out, n_in), got "
                         f"{O.shape} and {W.shape} instead.")  # type: ignore[union-attr]
    (m, _), n_out = O.shape, W.shape[0]  # type: ignore[union-attr]
    for name, value in arrays.items():
        want = (n_out,) if name in ("gamma", "beta", "mu", "var", "inv_std") else (m, n_out)
        if name in ("O", "W"):
            want = value.shape  # type: ignore[union-attr]
        if value.shape != want:  # type: ignore[union-attr]
            raise InputError(f"{name}: expected shape {want} to fit O {O.shape} and W "
                             f"{W.shape}, got {value.shape} instead.")  # type: ignore[union-attr]
    if activation not in ACTIVATIONS:
        raise InputError(f"activation: expected one of {', '.join(map(repr, ACTIVATIONS))}, "
                         f"got {activation!r} instead.")
    check_positive(eps, "eps")
    if m_global is not None and (isinstance(m_global, bool) or not isinstance(m_global, int)
                                 or m_global < m):
        raise InputError(f"m_global: expected None or an integer >= m = {m}, got "
                         f"{m_global!r} instead.")


class LayerCache:
    """Everything the forward pass computed, kept for the backward pass.

    Attributes
    ----------
    O : ndarray (m, n_in)
        Input of the layer, ``o^{l-1}``.
    W : ndarray (n_out, n_in)
    gamma, beta : ndarray (n_out,)
    Z : ndarray (m, n_out)
        ``O W^T``.
    mu, var : ndarray (n_out,)
        Batch mean ``mu_B`` and biased batch variance ``var_B`` of ``Z``.
    inv_std : ndarray (n_out,)
        ``1 / sqrt(var_B + eps)``.
    Obar : ndarray (m, n_out)
        ``(Z - mu_B) * inv_std``.
    A : ndarray (m, n_out)
        ``gamma * Obar + beta``, the handout's ``a^l``.
    Y : ndarray (m, n_out)
        ``sigma(A)``, the handout's ``o^l``.
    activation : str
    eps : float
    m_global : int or None
        Rows of the global batch, the ``m`` of the exact ``dZ``: ``sum_p m_p`` over the
        processes, ``m`` in one process. ``None`` (a cache built by hand) means ``m``.
    comm : Communicator or None
        The communicator the statistics were combined through; the backward pass reduces
        its sums through it. ``None``: one process, nothing is reduced.

    A cache of a large batch from the kernels (:mod:`bnprop.kernels.layer`) computes
    ``Obar`` and ``A`` from ``Z`` when first read, with the forward pass's float64
    ``mu_B`` and ``inv_std`` (the arrays equal those an eager forward pass stores, bit
    for bit), and its backward pass forms each row of ``Obar`` again from ``Z`` instead
    of reading it: the forward pass writes two (m, n_out) arrays instead of four. A
    narrow layer's (:mod:`bnprop.kernels.narrow`) keeps ``Y`` alone, and forms ``Obar``
    (by the forward pass's GEMMs of its centered input) and ``Z = O W^T`` when first read
    (and before it is pickled or copied).
    """


    O: np.ndarray
    W: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray
    mu: np.ndarray
    var: np.ndarray
    inv_std: np.ndarray
    Y: np.ndarray
    activation: str
    eps: float
    m_global: int | None
    comm: Communicator | None
    #: The plan of :mod:`bnprop.kernels.layer_small` whose forward pass made this cache
    #: (its backward pass then skips the checks), else None.
    _plan: Any = None
    #: A narrow layer's centered input (:class:`bnprop.kernels.narrow.Centered`), where
    #: its split forward pass formed it for its moments (the backward pass reuses it).
    _centered: Any = None
    #: ``Z``'s formation when first read (a narrow layer's split forward pass, which forms
    #: ``Obar`` without it), else None.
    _form_Z: Any = None
    #: ``Obar``'s formation when first read (that pass keeps ``Y`` alone), else None.
    _form_Obar: Any = None

    def __init__(self, O: np.ndarray, W: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                 Z: np.ndarray, mu: np.ndarray, var: np.ndarray, inv_std: np.ndarray,
                 Obar: np.ndarray, A: np.ndarray, Y: np.ndarray, activation: str, eps: float,
                 m_global: int | None = None, comm: Communicator | None = None) -> None:
        """A cache built by hand: every field is checked against the others (the backward
        kernels trust the shapes), one line naming the first that does not fit."""
        _check_fields(dict(O=O, W=W, gamma=gamma, beta=beta, Z=Z, mu=mu, var=var,
                           inv_std=inv_std, Obar=Obar, A=A, Y=Y), activation, eps, m_global)
        self.__dict__.update(  # frozen: __setattr__ refuses, the dict is written directly
            O=O, W=W, gamma=gamma, beta=beta, _Z=Z, mu=mu, var=var, inv_std=inv_std,
            _Obar=Obar, _A=A, Y=Y, activation=activation, eps=eps, m_global=m_global,
            comm=comm, _stats64=None)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled and copied with ``Z`` (and a narrow layer's ``Obar``) formed and without
        the plan: a copy's backward pass checks again."""
        self.Z  # noqa: B018 - formed now, if it was not
        if self._form_Obar is not None:
            self.Obar  # noqa: B018
        return {**self.__dict__, "_plan": None}

    @classmethod
    def _made(cls, *, Z: np.ndarray, Obar: np.ndarray, A: np.ndarray,
              **fields: Any) -> LayerCache:
        """The cache of bnprop's own forward pass, whose fields fit by construction (the
        constructor's fields, by keyword)."""
        cache = cls.__new__(cls)
        cache.__dict__.update(fields, _Z=Z, _Obar=Obar, _A=A, _stats64=None)
        return cache

    @classmethod
    def _from_z(cls, stats64: tuple[np.ndarray, np.ndarray], *, Z: np.ndarray,
                **fields: Any) -> LayerCache:
        """A cache whose ``Obar`` and ``A`` are formed from ``Z`` when read;
        ``stats64 = (mu_B, inv_std)`` in float64, as the forward pass used them."""
        cache = cls.__new__(cls)
        cache.__dict__.update({"m_global": None, "comm": None, **fields, "_Z": Z,
                               "_Obar": None, "_A": None, "_stats64": stats64})
        return cache

    @classmethod
    def _from_centered(cls, stats64: tuple[np.ndarray, np.ndarray],
                       form_Z: Callable[[], np.ndarray], form_Obar: Callable[[], np.ndarray],
                       **fields: Any) -> LayerCache:
        """A narrow layer's cache, whose ``Z`` is ``form_Z()`` and ``Obar`` ``form_Obar()``,
        each called once, when first read (and before the cache is pickled or copied);
        ``A`` is formed from ``Obar`` when read; ``stats64`` as :meth:`_from_z`'s."""
        cache = cls.__new__(cls)
        cache.__dict__.update({"m_global": None, "comm": None, **fields, "_Z": None,
                               "_form_Z": form_Z, "_Obar": None, "_form_Obar": form_Obar,
                               "_A": None, "_stats64": stats64})
        return cache

    @property
    def Z(self) -> np.ndarray:
        """``O W^T``."""
        if self._Z is None:
            self.__dict__.update(_Z=self._form_Z(), _form_Z=None)
        return self._Z

    @property
    def Obar(self) -> np.ndarray:
        """``(Z - mu_B) * inv_std``, in float64, rounded once to ``Z``'s dtype (a narrow
        layer's: ``Oc (W^T diag(inv_std))``, its GEMM of the centered input)."""
        if self._Obar is None and self._form_Obar is not None:
            self.__dict__.update(_Obar=self._form_Obar(), _form_Obar=None)
        elif self._Obar is None:
            mu, inv_std = self._stats64
            self.__dict__["_Obar"] = bn.normalize(self.Z, mu, inv_std)
        return self._Obar

    @property
    def A(self) -> np.ndarray:
        """``gamma * Obar + beta``, the handout's ``a^l``."""
        if self._A is None:
            self.__dict__["_A"] = bn.scale_shift(self.Obar, self.gamma, self.beta)
        return self._A

    def _z_stats(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(mu_B, inv_std)`` in float64 while ``Obar`` has not been formed (the backward
        kernels then form its rows from ``Z``); None once it has, where it is formed
        another way (a narrow layer's), or for an eager cache."""
        return self._stats64 if self._Obar is None and self._form_Obar is None else None

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in _FIELDS
                          if name not in ("Obar", "A"))
        return f"LayerCache({shown})"

    @property
    def m(self) -> int:
        """Batch size (rows held by this process)."""
        return self.O.shape[0]

    def _repr_html_(self) -> str:
        """Every array with its formula, as HTML (a notebook shows this)."""
        from bnprop.trace_html import cache_html

        return cache_html(self)


_GRAD_FIELDS = ("dA", "dgamma", "dbeta", "dZ", "dW", "dO")


class LayerGrads:
    """Gradients of F from one backward pass of a layer.

    Attributes
    ----------
    dA : ndarray (m, n_out)
    dgamma, dbeta : ndarray (n_out,)
    dZ : ndarray (m, n_out)
    dW : ndarray (n_out, n_in)
    dO : ndarray (m, n_in)

    The gradients of a large batch from the kernels (:mod:`bnprop.kernels.layer`) form
    ``dZ`` when it is first read, from ``dA``, the cache's ``Z`` (or ``Obar``) and the
    backward pass's two sums, by the kernel that formed each chunk of it for ``dW`` and
    ``dO`` (the array equals the one an eager pass stores, bit for bit): the backward
    pass writes two (m, n_out) arrays instead of three. It reads ``dA`` and the cache
    then, so change neither in place before reading ``dZ``. A narrow layer's
    (:mod:`bnprop.kernels.narrow`) ``dW`` and ``dO`` come from ``dA`` and the centered
    input, not from ``dZ``: they equal ``dZ^T O`` and ``dZ W`` to rounding.
    """

    dA: np.ndarray
    dgamma: np.ndarray
    dbeta: np.ndarray
    dW: np.ndarray
    dO: np.ndarray

    def __init__(self, dA: np.ndarray, dgamma: np.ndarray, dbeta: np.ndarray,
                 dZ: np.ndarray, dW: np.ndarray, dO: np.ndarray) -> None:
        if dZ is None:
            raise InputError("dZ: a LayerGrads holds every gradient of its backward pass; "
                             "got None (layer_backward builds a complete one).")
        self.__dict__.update(dA=dA, dgamma=dgamma, dbeta=dbeta, _dZ=dZ, dW=dW, dO=dO,
                             _form_dZ=None)

    @classmethod
    def _made(cls, **fields: np.ndarray) -> LayerGrads:
        """The gradients of bnprop's own backward pass (the constructor's fields, by
        keyword), ``dZ`` included."""
        grads, dZ = cls.__new__(cls), fields.pop("dZ")
        grads.__dict__.update(fields, _dZ=dZ, _form_dZ=None)
        return grads

    @classmethod
    def _dZ_when_read(cls, form_dZ: Callable[[], np.ndarray],
                      **fields: np.ndarray) -> LayerGrads:
        """Gradients whose ``dZ`` is ``form_dZ()``, called once, when first read."""
        grads = cls.__new__(cls)
        grads.__dict__.update({**fields, "_dZ": None, "_form_dZ": form_dZ})
        return grads

    @property
    def dZ(self) -> np.ndarray:
        """``dF/dZ``, ``Z = O W^T``: ``gamma * inv_std * (dA - ...)`` (:mod:`bnprop.layer`)."""
        if self._dZ is None:
            self.__dict__.update(_dZ=self._form_dZ(), _form_dZ=None)
        return self._dZ

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __reduce__(self) -> tuple[type, tuple[np.ndarray, ...]]:
        """Pickled (and copied) with every array, ``dZ`` formed."""
        return LayerGrads, tuple(getattr(self, name) for name in _GRAD_FIELDS)

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in _GRAD_FIELDS)
        return f"LayerGrads({shown})"
