"""Which BLAS kernels run, for the tests that hold a run to numbers recorded before a change.

Such a snapshot (``float.hex`` values, or a hash of them) is bit-for-bit, and the bits of a matrix
product depend on the kernels: OpenBLAS picks them by CPU, and its AVX-512 kernels (SkylakeX)
round differently from the AVX2 ones (Haswell) that recorded the snapshots. Every x86-64 CPU with
AVX2 runs the Haswell kernels, so importing this module (``conftest.py`` does, first) asks
OpenBLAS for them (``OPENBLAS_CORETYPE``, read when numpy loads it). Where another BLAS runs
(another CPU, another library) the snapshot tests are skipped, saying why; the rest run as usual.
"""

from __future__ import annotations

import os

import pytest

SNAPSHOT_KERNELS = "Haswell"
os.environ.setdefault("OPENBLAS_CORETYPE", SNAPSHOT_KERNELS)  # read when numpy loads OpenBLAS


def blas_kernels() -> str:
    """The kernels of the OpenBLAS numpy uses (e.g. ``Haswell``), or the library's name."""
    import numpy  # noqa: F401  (loads its BLAS, so that threadpoolctl sees it)
    from threadpoolctl import threadpool_info

    for lib in threadpool_info():
        if lib.get("user_api") == "blas":
            return str(lib.get("architecture") or lib.get("internal_api"))
    return "unknown"


RUNNING_KERNELS = blas_kernels()
#: for a test that compares a run with numbers recorded on the snapshot kernels
bit_for_bit = pytest.mark.skipif(
    RUNNING_KERNELS != SNAPSHOT_KERNELS,
    reason=f"snapshots were recorded with OpenBLAS {SNAPSHOT_KERNELS} kernels; "
    f"this BLAS is {RUNNING_KERNELS}",
)
