import os

import blas  # noqa: F401  (first: it chooses the BLAS kernels before numpy loads OpenBLAS)

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MPLBACKEND", "Agg")
# `madloop run` draws its figures in a second process started with the command
# (madloop.report.plot_worker); tests draw in their own process unless they test that worker
os.environ.setdefault("MADLOOP_PLOT_WORKER", "0")
