"""The data layer: the IDX format (:mod:`.idx`) and the MNIST-family datasets (:mod:`.datasets`).

NumPy only. Downloads happen only in :func:`fetch`; loading never touches the network.
"""

from bnprop.data.datasets import (
    DATASETS,
    SHA256,
    data_dir,
    fetch,
    load_dataset,
    load_idx_pair,
    verify,
)
from bnprop.data.idx import read_idx, write_idx

__all__ = [
    "DATASETS",
    "SHA256",
    "data_dir",
    "fetch",
    "load_dataset",
    "load_idx_pair",
    "read_idx",
    "verify",
    "write_idx",
]
