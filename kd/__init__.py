"""kd: knowledge distillation on small image datasets.

The library knows nothing of sweeps or SLURM. Its entry point is
``kd.train.run(config, out_dir)``; importing ``kd`` itself does not import torch.
"""
from __future__ import annotations

__version__ = "0.1.0"
