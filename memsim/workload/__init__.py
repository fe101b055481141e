"""The work mapped onto the hardware: attention shapes, dtypes and tile configs."""

from memsim.workload.shape import AttentionShape
from memsim.workload.tiles import TileConfig

__all__ = ["AttentionShape", "TileConfig"]
