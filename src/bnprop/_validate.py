"""Validation at the public boundary, in the manner of scikit-learn's ``check_array``.

Every public function converts and checks its arguments here, once; the code behind
it trusts its inputs. Messages name the argument, what was expected and what was
received, in one line, e.g.::

    O: expected a 2D array of shape (m, n_in), got a 1D array of shape (5,) instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class InputError(ValueError):
    """A user input is invalid; the message is one line that names the problem."""


def _shape_str(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def check_array(
    x: object,
    name: str,
    *,
    ndim: int,
    axes: Sequence[str] | None = None,
    shape: Sequence[int | None] | None = None,
    dtype: np.dtype | None = None,
    allow_nonfinite: bool = False,
    all_finite: Callable[[np.ndarray], bool] | None = None,
) -> np.ndarray:
    """Convert ``x`` to a float array and check its dimension, shape and values.

    Parameters
    ----------
    x : array_like
        The user's input.
    name : str
        The argument's name, used in messages.
    ndim : int
        Required number of dimensions.
    axes : sequence of str, optional
        Names of the axes, used in messages, e.g. ``("m", "n_in")``.
    shape : sequence of int or None, optional
        Required size of each axis; ``None`` leaves that axis free.
    dtype : numpy.dtype, optional
        Convert to this floating dtype. By default float32 and float64 are kept and
        every other real type becomes float64.
    allow_nonfinite : bool, default=False
        Accept NaN and inf.
    all_finite : callable, optional
        The test of the values on the C-contiguous result: a compiled pass instead of
        ``np.isfinite(x).all()`` (its boolean temporary), e.g. for a batch every step.

    Returns
    -------
    numpy.ndarray
        A C-contiguous float32 or float64 array.
    """
    if (type(x) is np.ndarray and x.ndim == ndim and x.dtype in FLOAT_DTYPES
            and (dtype is None or x.dtype == dtype) and x.flags.c_contiguous
            and (shape is None
                 or all(w is None or w == g for w, g in zip(shape, x.shape, strict=True)))):
        # Already what is asked for (the common case): only the values are left to test.
        if not allow_nonfinite and not _finite(x, all_finite):
            _raise_nonfinite(x, name)
        return x
    if isinstance(x, np.ndarray):
        arr = x
    else:
        try:
            arr = np.asarray(x)
        except (ValueError, TypeError) as exc:
            raise InputError(f"{name}: cannot be read as a numeric array ({exc}).") from None
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        raise InputError(
            f"{name}: expected a real numeric array, got dtype {arr.dtype} instead."
        )
    if arr.ndim != ndim:
        want = f"{ndim}D array"
        if axes is not None:
            want += " of shape (" + ", ".join(axes) + ("," if len(axes) == 1 else "") + ")"
        raise InputError(
            f"{name}: expected a {want}, got a {arr.ndim}D array of shape "
            f"{_shape_str(arr.shape)} instead."
        )
    if shape is not None:
        for axis, (want, got) in enumerate(zip(shape, arr.shape, strict=True)):
            if want is not None and want != got:
                label = axes[axis] if axes is not None else f"axis {axis}"
                expected = tuple(
                    (axes[i] if axes is not None else "?") if s is None else s
                    for i, s in enumerate(shape)
                )
                raise InputError(
                    f"{name}: expected shape ({', '.join(str(e) for e in expected)}"
                    f"{',' if len(expected) == 1 else ''}) with {label} = {want}, "
                    f"got shape {_shape_str(arr.shape)} instead."
                )
    if dtype is None:
        dtype = arr.dtype if arr.dtype in FLOAT_DTYPES else np.dtype(np.float64)
        if arr.dtype == np.float16:
            dtype = np.dtype(np.float32)
    source = arr
    with np.errstate(over="ignore"):  # a value beyond dtype's range: named just below
        arr = np.ascontiguousarray(arr, dtype=dtype)
    if not allow_nonfinite and not _finite(arr, all_finite):
        _raise_nonfinite(arr, name, source)
    return arr


def _finite(arr: np.ndarray, all_finite: Callable[[np.ndarray], bool] | None) -> bool:
    """The fast test of the values: ``isfinite(...).all()`` (one boolean temporary, no
    inversion) or the caller's compiled pass; only when it fails are the bad entries
    located, for the message (:func:`_raise_nonfinite`)."""
    return bool(np.isfinite(arr).all() if all_finite is None else all_finite(arr))


def _raise_nonfinite(arr: np.ndarray, name: str, source: np.ndarray | None = None) -> None:
    """Name the first NaN or inf of ``arr`` (its caller found one); ``source``: the array
    ``arr`` was converted from, whose value there may have been finite."""
    bad = ~np.isfinite(arr)
    where = tuple(int(i) for i in np.argwhere(bad)[0])
    cast = ""
    if source is not None and source.dtype != arr.dtype and np.isfinite(source[where]):
        cast = (f", {source[where].item()!r} in {source.dtype}, beyond {arr.dtype}'s range "
                f"(+-{np.finfo(arr.dtype).max:.4g})")
    raise InputError(
        f"{name}: contains NaN or inf ({int(bad.sum())} of {arr.size} entries, "
        f"first at index {where}{cast}); every input must be finite."
    )


def check_seed(seed: object) -> int:
    """An integer seed >= 0 (a NumPy integer too), else ``seed: expected an integer >= 0,
    got -1 instead.``"""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise InputError(f"seed: expected an integer >= 0, got {seed!r} instead.")
    return int(seed)


def check_choice(value: object, name: str, choices: Sequence[str]) -> str:
    """Check that ``value`` is one of ``choices``: ``Got 'x' instead.`` otherwise."""
    if not isinstance(value, str) or value not in choices:
        raise InputError(
            f"{name}: expected one of {', '.join(repr(c) for c in choices)}. "
            f"Got {value!r} instead."
        )
    return value


def check_positive(value: object, name: str) -> float:
    """Check that ``value`` is a finite real number > 0."""
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InputError(f"{name}: expected a positive number, got {value!r} instead.") from None
    if not np.isfinite(v) or v <= 0:
        raise InputError(f"{name}: expected a finite number > 0, got {value!r} instead.")
    return v


def common_float_dtype(*arrays: np.ndarray) -> np.dtype:
    """The dtype the layer computes in: float32 only when every array is float32."""
    dt = np.result_type(*arrays)
    return np.dtype(np.float32) if dt == np.float32 else np.dtype(np.float64)


class CheckedSettings:
    """Settings checked every time they are set: in ``__init__`` and by a user later.

    ``opt.lr = -1`` or ``bn.eps = float("nan")`` fails at the assignment, in one line that
    names the setting, instead of training on garbage or failing a step later with a
    message about the loss. ``setting_checks`` maps a setting's name to
    ``check(obj, value, name)``, which returns the value to store (a float, a choice) or
    raises :class:`InputError`; ``obj`` lets a check read the other settings (SGD's
    ``nesterov`` needs ``momentum > 0``). Reading a setting is a plain attribute read:
    only assignment pays for the check.
    """

    setting_checks: ClassVar[dict[str, Callable[[Any, object, str], object]]] = {}

    def __setattr__(self, name: str, value: object) -> None:
        check = self.setting_checks.get(name)
        super().__setattr__(name, value if check is None else check(self, value, name))
