"""Layers as modules, with PyTorch's names, conventions and shapes.

``Linear``, ``BatchNorm1d``, ``Sigmoid``, ``Tanh``, ``ReLU``, ``Identity``, the image
layers ``Conv2d``, ``BatchNorm2d``, ``MaxPool2d``, ``Flatten`` (NCHW, as PyTorch), and
``Sequential``, which chains them, owns the loss (mean softmax cross-entropy) and runs a
training step on the compiled kernels (``backend="numba"``, default) or on the NumPy
reference (``backend="numpy"``). The handout's layer is
``Linear(n_in, n_out, bias=False), BatchNorm1d(n_out), Sigmoid()``.
"""

from bnprop.nn.batchnorm import BatchNorm1d
from bnprop.nn.batchnorm2d import BatchNorm2d
from bnprop.nn.conv import Conv2d
from bnprop.nn.module import Identity, Linear, Module, ReLU, Sigmoid, Tanh
from bnprop.nn.pool import Flatten, MaxPool2d
from bnprop.nn.sequential import NonFiniteError, Sequential

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "Conv2d",
    "Flatten",
    "Identity",
    "Linear",
    "MaxPool2d",
    "Module",
    "NonFiniteError",
    "ReLU",
    "Sequential",
    "Sigmoid",
    "Tanh",
]
