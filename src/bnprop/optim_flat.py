"""An optimizer's buffers as flat arrays, and its fused update over them.

A :class:`~bnprop.nn.Sequential` keeps its parameters as views of one flat array per
dtype (:mod:`bnprop.nn.plan`). :class:`FlatState` (a base of
:class:`bnprop.optim.Optimizer`) keeps each buffer kind (``momentum_buffer``,
``exp_avg``, ...) the same way, so one kernel pass updates every parameter
(:func:`bnprop.kernels.optim.flat_update`), bit for bit the per-parameter update.

The update of one step is first described (:meth:`FlatState.flat_update_args`: the
kernel's arguments, new buffers not yet adopted), then run, then finished
(:meth:`FlatState.finish_flat`: new buffers adopted, ``t += 1``). :meth:`step_flat` does
all three; the compiled train step (:mod:`bnprop.nn.compiled`) runs the update inside
its own last call, after the finiteness test of the gradients, and finishes it only
when the step is committed: a step refused for a non-finite value leaves the optimizer
as it was.
"""

from __future__ import annotations

import operator
from typing import Any, NamedTuple

import numpy as np

from bnprop._validate import InputError

Layout = list[tuple[str, int, int, tuple[int, ...]]]


class FlatUpdate(NamedTuple):
    """One step's fused update: :func:`bnprop.kernels.optim.flat_update`'s arguments
    (``kind`` "sgd" or "adam", the flat parameter ``p`` and gradient ``g``, buffers ``a``
    and ``b``, the rounded scalars ``coef``, ``flags``), and the new flat buffers to adopt
    once it has run (``(kind, array)`` pairs)."""

    kind: str
    p: np.ndarray
    g: np.ndarray
    a: np.ndarray
    b: np.ndarray
    coef: np.ndarray
    flags: int
    adopt: tuple[tuple[str, np.ndarray], ...]


class FlatState:
    """The flat buffers of an optimizer (module docstring); the subclass gives
    ``buffer_names``, ``buffers``, ``t``, ``current_lr``, ``_buffer`` and ``_flat_args``."""

    buffer_names: tuple[str, ...]
    buffers: dict[str, dict[str, np.ndarray]]
    t: int
    current_lr: float
    _flats: dict[tuple[str, np.dtype], np.ndarray]
    _views: dict[tuple[str, np.dtype], tuple[Any, tuple[np.ndarray, ...]]]

    def step_flat(self, params: dict[np.dtype, np.ndarray], grads: dict[np.dtype, np.ndarray],
                  layout: dict[np.dtype, Layout]) -> None:
        """The same update as :meth:`step` on every parameter, in one fused pass per dtype
        over flat arrays (a :class:`~bnprop.nn.Sequential`'s), bit for bit; then ``t += 1``.

        ``layout[dtype]`` names the ``(name, start, stop, shape)`` slices. The buffers
        become one flat array per kind, of which ``buffers[kind][name]`` are views, so
        :meth:`state_dict` is unchanged.
        """
        from bnprop.kernels.optim import flat_update

        lr = self.current_lr
        for dt, p in params.items():
            u = self._describe(p, grads[dt], layout[dt], lr)
            flat_update(*u[:7])
            self._adopt_new(u, layout[dt])
        self.t += 1

    def flat_update_args(self, params: dict[np.dtype, np.ndarray],
                         grads: dict[np.dtype, np.ndarray],
                         layout: dict[np.dtype, Layout]) -> FlatUpdate | None:
        """The update :meth:`step_flat` would run now on the one flat array of a
        single-dtype network, without running it (``None`` for several dtypes); after it
        has run, :meth:`finish_flat`. No value of the optimizer's state changes here (named
        buffers may be gathered into a flat array of the same values)."""
        if len(params) != 1:
            return None
        ((dt, p),) = params.items()
        return self._describe(p, grads[dt], layout[dt], self.current_lr)

    def finish_flat(self, update: FlatUpdate, layout: dict[np.dtype, Layout]) -> None:
        """After ``update`` (:meth:`flat_update_args`) has run: adopt its new buffers and
        count the step."""
        self._adopt_new(update, layout[update.p.dtype])
        self.t += 1

    def check_flat(self, params: dict[np.dtype, np.ndarray],
                   layout: dict[np.dtype, Layout]) -> None:
        """Raise :class:`~bnprop.InputError` (one line) when the state does not fit these
        flat parameters, e.g. an optimizer of another network; :meth:`step_flat` would.
        A step calls it first, so that it fails before anything is updated."""
        for dt, p in params.items():
            for kind in self.buffer_names:
                self._flat_buffer(kind, dt, p, layout[dt])

    def _describe(self, p: np.ndarray, g: np.ndarray, layout: Layout, lr: float) -> FlatUpdate:
        flats, dt = [], p.dtype  # a loop, not a comprehension: 0.2 us less a step
        for kind in self.buffer_names:
            flats.append(self._flat_buffer(kind, dt, p, layout))
        return self._flat_args(p, g, flats, lr)

    def _flat_args(self, p: np.ndarray, g: np.ndarray, flats: list[np.ndarray | None],
                   lr: float) -> FlatUpdate:
        raise NotImplementedError

    def _adopt_new(self, update: FlatUpdate, layout: Layout) -> None:
        for kind, flat in update.adopt:
            self._adopt(kind, flat.dtype, flat, layout)

    def _buffer(self, kind: str, name: str, p: np.ndarray) -> np.ndarray | None:
        raise NotImplementedError

    def _flat_buffer(self, kind: str, dt: np.dtype, p: np.ndarray,
                     layout: Layout) -> np.ndarray | None:
        """The flat buffer of ``kind`` for ``p``: the kept one while every named buffer is
        still its view and the layout is the one it was made for, else assembled from the
        named buffers, each checked against its parameter (None: none exist yet)."""
        bufs, key = self.buffers[kind], (kind, dt)
        flat = self._flats.get(key)
        if flat is None and not bufs:  # none exists yet (plain SGD's momentum buffer)
            return None
        kept_layout, views = self._views.get(key, (None, ()))
        # The cheap test, every step: the same layout object and the very arrays _adopt
        # stored, still views of flat (a copy or an unpickle of the optimizer keeps their
        # identity, but not their base).
        if layout is kept_layout and flat is not None and views[0].base is flat \
                and len(bufs) == len(views) and all(map(operator.is_, bufs.values(), views)):
            return flat
        if flat is not None and flat.size == p.size and layout == kept_layout \
                and all(bufs.get(name) is not None and bufs[name].base is flat
                        for name, *_ in layout):
            return flat
        have = [name for name, *_ in layout if name in bufs]
        if not have:
            return None
        if len(have) != len(layout):
            missing = next(name for name, *_ in layout if name not in bufs)
            raise InputError(f"{kind}.{missing}: the optimizer state holds {kind} for some "
                             "parameters but not for this one.")
        flat = np.empty_like(p)
        for name, start, stop, shape in layout:
            ref = self._buffer(kind, name, flat[start:stop].reshape(shape))
            flat[start:stop] = ref.reshape(-1)  # type: ignore[union-attr]
        self._adopt(kind, dt, flat, layout)
        return flat

    def _adopt(self, kind: str, dt: np.dtype, flat: np.ndarray, layout: Layout) -> None:
        """Keep ``flat`` and point the named buffers at its slices."""
        self._flats[(kind, dt)] = flat
        for name, start, stop, shape in layout:
            self.buffers[kind][name] = flat[start:stop].reshape(shape)
        self._views[(kind, dt)] = (layout, tuple(self.buffers[kind].values()))
