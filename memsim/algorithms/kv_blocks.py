"""Which query blocks visit each key block, for one (batch, head): tiling.q_block_tiles turned
round, for schedules whose outer loop runs over key blocks (FlashAttention-1's forward,
FlashAttention-2's backward). A (query block, key block) pair is visited when some row of the
query block sees some key of the key block, exactly the pairs q_block_tiles loads."""

from dataclasses import dataclass
from math import ceil

import numpy as np

from memsim.algorithms.tiling import QBlockTiles


@dataclass(frozen=True)
class KVBlockVisits:
    """Per key block j (arrays of length T_c = ceil(kv_len / block_n))."""

    q_blocks: np.ndarray  # query blocks that visit key block j
    keys: np.ndarray  # keys in block j (the last block may be partial)

    @property
    def t_c(self) -> int:
        return len(self.keys)

    @property
    def keys_loaded(self) -> int:
        """Keys of the blocks at least one query block visits: what a kv-outer CTA loads once."""
        return int(self.keys[self.q_blocks > 0].sum())


def kv_block_visits(blocks: QBlockTiles, kv_len: int) -> KVBlockVisits:
    """Count, for each key block, the query blocks whose tile range [first_tile, first_tile + tiles) holds it."""
    t_c = ceil(kv_len / blocks.block_n)
    change = np.zeros(t_c + 1, dtype=np.int64)
    np.add.at(change, blocks.first_tile, 1)
    np.add.at(change, blocks.first_tile + blocks.tiles, -1)
    starts = np.arange(t_c, dtype=np.int64) * blocks.block_n
    keys = np.minimum(starts + blocks.block_n, kv_len) - starts
    return KVBlockVisits(q_blocks=np.cumsum(change[:-1]), keys=keys)


def row_visits(blocks: QBlockTiles) -> int:
    """Query rows loaded over all visited (query block, key block) pairs of one head."""
    return int((blocks.rows * blocks.tiles).sum())


def rows_with_keys(blocks: QBlockTiles) -> int:
    """Query rows whose block visits at least one key block (the rows whose output gets written)."""
    return int(blocks.rows[blocks.tiles > 0].sum())
