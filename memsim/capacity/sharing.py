"""Prefix sharing with copy-on-write (PagedAttention, Kwon et al. 2023, section 4.4).

n sequences that start from one prompt of P tokens (parallel sampling: n samples; beam search: w
beams) each grow G tokens. Without sharing each holds its own ceil((P + G) / B) blocks. With
sharing the prompt's floor(P / B) full blocks are stored once and referenced by all; the prompt's
last, partly filled block is shared until a sequence writes into it, then copied (copy-on-write),
so at the end each sequence owns ceil((P mod B + G) / B) blocks of its own.

Beam search shares more than this: beams also share the tokens they generated before they diverged,
and vLLM frees the blocks of beams that drop out. Counting only the prompt as shared gives the least
that beam search saves.
"""

from dataclasses import dataclass
from math import ceil

from memsim.capacity.fit import check_block_size
from memsim.errors import MemsimError


@dataclass(frozen=True)
class SharingSavings:
    scheme: str  # "parallel sampling" or "beam search"
    copies: int  # samples or beams
    prompt_len: int
    gen_len: int
    block_size: int

    @property
    def blocks_unshared(self) -> int:
        return self.copies * ceil((self.prompt_len + self.gen_len) / self.block_size)

    @property
    def blocks_shared(self) -> int:
        if self.gen_len == 0:  # nothing written: even the prompt's last block stays shared
            return ceil(self.prompt_len / self.block_size)
        full = self.prompt_len // self.block_size
        own = ceil((self.prompt_len % self.block_size + self.gen_len) / self.block_size)
        return full + self.copies * own

    @property
    def saved_fraction(self) -> float:
        return 1.0 - self.blocks_shared / self.blocks_unshared

    def as_dict(self, bytes_per_token: int) -> dict:
        block = self.block_size * bytes_per_token
        return {"scheme": self.scheme, "copies": self.copies, "prompt_len": self.prompt_len,
                "gen_len": self.gen_len, "block_size": self.block_size,
                "blocks_unshared": self.blocks_unshared, "blocks_shared": self.blocks_shared,
                "bytes_unshared": self.blocks_unshared * block, "bytes_shared": self.blocks_shared * block,
                "saved_fraction": self.saved_fraction}


def sharing_savings(scheme: str, copies: int, prompt_len: int, gen_len: int, block_size: int) -> SharingSavings:
    check_block_size(block_size)
    for name, value, least in (("copies", copies, 1), ("prompt_len", prompt_len, 1), ("gen_len", gen_len, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise MemsimError(f"{scheme}: {name} = {value!r} must be a whole number >= {least}")
    return SharingSavings(scheme, copies, prompt_len, gen_len, block_size)
