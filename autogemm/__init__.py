"""autogemm: a code-generating GEMM autotuner.

Example:
    >>> import numpy as np, autogemm
    >>> a, b = np.ones((3, 4), np.float32), np.ones((4, 5), np.float32)
    >>> autogemm.matmul(a, b)[0, 0]
    np.float32(4.0)
"""

__version__ = "0.1.0"

from . import api as _api, fastcall as _fastcall  # noqa: E402
from .api import export, export_blas, export_workload, load  # noqa: E402
from .tune import tune  # noqa: E402
from .params import InvalidParams, KernelParams  # noqa: E402

#: `api.matmul` and `api.gemm` behind C entry points that take the common calls (2-D float arrays)
#: to the kernel.
matmul, gemm = _fastcall.wrap(_api.matmul, _api.gemm)

__all__ = ["matmul", "gemm", "load", "export", "export_workload", "export_blas", "tune", "KernelParams", "InvalidParams", "__version__"]
