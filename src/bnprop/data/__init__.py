"""The data layer: the IDX format (:mod:`.idx`), the MNIST-family datasets (:mod:`.datasets`)
and their provisioning (:mod:`.provision`).

NumPy only. Downloads happen only in :func:`fetch`; loading never touches the network.
"""

from bnprop.data.datasets import (
    DATASETS,
    SHA256,
    data_dir,
    load_dataset,
    load_idx_pair,
    verify,
)
from bnprop.data.idx import read_idx, write_idx
from bnprop.data.provision import fetch

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
