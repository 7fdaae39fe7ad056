"""``BatchNorm2d``: the handout's normalization per channel, as ``torch.nn.BatchNorm2d``.

The statistics of channel ``c`` are taken over its ``m = N H W`` values: with the images
channels-last inside bnprop, ``X`` (N, H, W, C) is the ``(m, C)`` matrix
``Z = X.reshape(N H W, C)`` and BatchNorm2d *is* :class:`~bnprop.nn.BatchNorm1d` of it --
the same equations, running statistics (PyTorch's convention, ``m = N H W`` in the
unbiased ``m/(m-1) var_B``), exact and frozen gradients, the same kernels
(:class:`~bnprop.nn.stage.BNStage`) and SyncBN::

    mu_B[c]  = (1/m) sum_{n,h,w} X[n,c,h,w],   var_B[c] = (1/m) sum (X[n,c,h,w] - mu_B[c])^2
    Y[n,c,h,w] = gamma[c] (X[n,c,h,w] - mu_B[c]) / sqrt(var_B[c] + eps) + beta[c]
"""

from __future__ import annotations

import numpy as np

from bnprop._validate import InputError
from bnprop.conv import to_nhwc
from bnprop.nn.batchnorm import BatchNorm1d
from bnprop.nn.spatial import SpatialModule, check_images, fresh_nchw


class BatchNorm2d(SpatialModule, BatchNorm1d):
    """Batch normalization of (N, C, H, W) images per channel (module docstring).

    Parameters are those of :class:`~bnprop.nn.BatchNorm1d`, ``num_features = C``:
    ``eps=1e-5``, ``momentum=0.1``, ``running="ema" | "average"``,
    ``stats="exact" | "frozen"``, ``dtype``.
    """

    def _check_input(self, X: object, training: bool) -> np.ndarray:
        X = check_images(X, "X", self.num_features, self.dtype)
        N, _, H, W = X.shape
        if training and N * H * W < 2:
            raise InputError(
                f"X: got a training batch of shape {X.shape} (N, C, H, W), N H W = 1 value "
                "per channel; its batch variance is always 0, so BatchNorm2d needs "
                "N H W >= 2.")
        return X

    def forward(self, X: object, training: bool = True) -> np.ndarray:
        """Validate ``X`` (N, C, H, W), normalize it per channel, and (training) update the
        running statistics; returns a fresh (N, C, H, W) array."""
        X = to_nhwc(self._check_input(X, training))
        Y = fresh_nchw(self._forward(X.copy(), bool(training)))
        if training:
            self.commit_running()
        return Y

    def _forward(self, X: np.ndarray, training: bool) -> np.ndarray:
        self._remember(X, training)
        return self.stage.forward(X.reshape(-1, X.shape[-1]), training).reshape(X.shape)

    def _backward(self, dY: np.ndarray, dX: np.ndarray | None) -> None:
        C = dY.shape[-1]
        self.stage.backward(dY.reshape(-1, C), None if dX is None else dX.reshape(-1, C))
