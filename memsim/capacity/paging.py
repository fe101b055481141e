"""Memory a batch of requests wastes: contiguous pre-allocation against paged allocation.

Contiguous: each request reserves room for the longest allowed sequence (max_len tokens) up
front, as FasterTransformer-style servers do; a request of L tokens wastes max_len - L.
Paged (PagedAttention, Kwon et al. 2023, section 4.2): a request takes blocks of block_size tokens
as it grows; only its last block is partly empty, so it wastes ceil(L / B) B - L < B tokens.
Paged never wastes more than contiguous when max_len is a whole number of blocks; otherwise a request
near max_len may hold a last block that reaches past max_len.
"""

from dataclasses import dataclass

import numpy as np

from memsim.capacity.fit import check_block_size


@dataclass(frozen=True)
class AllocationWaste:
    """Tokens reserved and wasted by the two schemes for one set of requests, all summed."""

    requests: int
    max_len: int
    block_size: int
    tokens_used: int
    contiguous_reserved: int
    paged_reserved: int

    @property
    def contiguous_waste(self) -> int:
        return self.contiguous_reserved - self.tokens_used

    @property
    def paged_waste(self) -> int:
        return self.paged_reserved - self.tokens_used

    @staticmethod
    def fraction(waste: int, reserved: int) -> float:
        return waste / reserved if reserved else 0.0

    def as_dict(self, bytes_per_token: int) -> dict:
        """Tokens, and bytes at `bytes_per_token` (one GPU's share, or the whole model's)."""
        out = {"requests": self.requests, "max_len": self.max_len, "block_size": self.block_size,
               "tokens_used": self.tokens_used, "mean_length": self.tokens_used / self.requests}
        for scheme, reserved, waste in (("contiguous", self.contiguous_reserved, self.contiguous_waste),
                                        ("paged", self.paged_reserved, self.paged_waste)):
            out[scheme] = {"reserved_tokens": reserved, "waste_tokens": waste,
                           "reserved_bytes": reserved * bytes_per_token, "waste_bytes": waste * bytes_per_token,
                           "waste_fraction": self.fraction(waste, reserved)}
        return out


def allocation_waste(lengths: np.ndarray, max_len: int, block_size: int) -> AllocationWaste:
    """Waste of `lengths` (int [requests], each <= max_len) under contiguous and paged allocation."""
    check_block_size(block_size)
    lengths = np.asarray(lengths, dtype=np.int64)
    paged = -(-lengths // block_size) * block_size
    return AllocationWaste(requests=int(lengths.size), max_len=max_len, block_size=block_size,
                           tokens_used=int(lengths.sum()), contiguous_reserved=int(lengths.size) * max_len,
                           paged_reserved=int(paged.sum()))
