"""Which key tiles each block of query rows loads, for one (batch, head): shared by every
FlashAttention-style schedule. A tile is loaded when any row of the block sees any of its keys."""

from dataclasses import dataclass
from math import ceil

import numpy as np

from memsim.workload.shape import AttentionShape


@dataclass(frozen=True)
class QBlockTiles:
    """Per query block i (arrays of length T_r = ceil(q_len / block_m))."""

    rows: np.ndarray  # valid query rows in the block
    first_tile: np.ndarray  # first key tile loaded
    tiles: np.ndarray  # key tiles loaded
    keys: np.ndarray  # valid keys loaded (the last tile of the sequence may be partial)
    edge_tiles: np.ndarray  # tiles in which some (row, key) pairs are masked
    block_m: int
    block_n: int

    @property
    def t_r(self) -> int:
        return len(self.rows)

    @property
    def tile_pairs(self) -> int:
        return int(self.tiles.sum())

    @property
    def keys_loaded(self) -> int:
        return int(self.keys.sum())


def q_block_tiles(shape: AttentionShape, block_m: int, block_n: int) -> QBlockTiles:
    first, last = shape.key_ranges()
    t_r = ceil(shape.q_len / block_m)
    starts = np.arange(t_r) * block_m
    rows = np.minimum(starts + block_m, shape.q_len) - starts
    lo = np.minimum.reduceat(first, starts)
    hi = np.maximum.reduceat(last, starts)
    empty = hi <= lo
    first_tile = np.where(empty, 0, lo // block_n)
    end_tile = np.where(empty, 0, -(-hi // block_n))
    tiles = end_tile - first_tile
    keys = np.where(empty, 0, np.minimum(end_tile * block_n, shape.kv_len) - first_tile * block_n)
    # Tiles holding a masked pair: those between the lowest and highest per-row limit, at both ends.
    hi_min = np.minimum.reduceat(last, starts)
    lo_max = np.maximum.reduceat(first, starts)
    right_edge = np.where(empty, 0, end_tile - hi_min // block_n) if (shape.causal or shape.window) else 0
    left_edge = np.where(empty, 0, -(-lo_max // block_n) - first_tile) if shape.window else 0
    edge = np.minimum(tiles, np.asarray(right_edge) + np.asarray(left_edge))
    return QBlockTiles(rows, first_tile, tiles, keys, edge * np.ones_like(tiles), block_m, block_n)


def keys_touched(shape: AttentionShape) -> int:
    """Distinct keys that some query of one head sees: the K/V bytes a head's CTAs share."""
    first, last = shape.key_ranges()
    if not (shape.causal or shape.window):
        return shape.kv_len
    # For causal and sliding-window masks both limits grow with the query, so the union of
    # the ranges adds, for each query, what lies past the previous query's last key.
    previous_last = np.concatenate(([0], last[:-1]))
    return int(np.maximum(0, last - np.maximum(first, previous_last)).sum())
