"""The block bookkeeping of a paged KV cache (PagedAttention / vLLM, Kwon et al. 2023, sections 4.2-4.4).

The cache holds num_blocks physical blocks of block_size token slots each. A sequence's block table
lists its blocks in token order: token t sits in block table[t // block_size] at slot t % block_size,
so at most the last block of a sequence has free slots (the only waste, section 4.2).

Sharing (section 4.4, parallel sampling / beam search): fork gives the child the parent's blocks,
each block's reference count going up by one. A block held by more than one sequence is never written:
before a sequence writes into its last block while others share it, append_token moves the sequence to
a fresh copy (copy-on-write) and returns the (src, dst) block copy the caller must perform on the cache
before it writes the new token. Full shared blocks are never written again, so they stay shared.

Pure Python: it decides which block each token goes to; kernels/paged.py reads the tables it produces.
"""

from collections.abc import Hashable


class OutOfBlocks(RuntimeError):
    """Not enough free blocks for a request; the manager's state is unchanged."""

    def __init__(self, needed: int, free: int):
        super().__init__(f"out of KV-cache blocks: needed {needed} free block(s), {free} free")
        self.needed = needed
        self.free = free


class BlockManager:
    """Block tables, reference counts and the free list of a paged KV cache of num_blocks x block_size slots."""

    def __init__(self, num_blocks: int, block_size: int):
        if not isinstance(num_blocks, int) or num_blocks < 1:
            raise ValueError(f"num_blocks = {num_blocks!r}; expected an int >= 1")
        if not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"block_size = {block_size!r}; expected an int >= 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free = list(range(num_blocks - 1, -1, -1))  # pop() hands out the lowest id first
        self._refs = [0] * num_blocks
        self._tables: dict[Hashable, list[int]] = {}
        self._tokens: dict[Hashable, int] = {}

    # ---- queries ----

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    def block_table(self, seq_id: Hashable) -> list[int]:
        """The sequence's physical blocks in token order (a copy)."""
        return list(self._tables[self._known(seq_id)])

    def num_tokens(self, seq_id: Hashable) -> int:
        return self._tokens[self._known(seq_id)]

    def ref_count(self, block: int) -> int:
        """How many block tables hold `block`."""
        if not 0 <= block < self.num_blocks:
            raise ValueError(f"block = {block}; expected 0..{self.num_blocks - 1}")
        return self._refs[block]

    def sequences(self) -> list[Hashable]:
        return list(self._tables)

    def padded_tables(self, seq_ids: list[Hashable], width: int | None = None, pad: int = 0) -> list[list[int]]:
        """The block tables of seq_ids as rows of equal width (default: the longest), padded with `pad`:
        the [B, max_pages] block_table of kernels.paged.paged_decode."""
        tables = [self.block_table(s) for s in seq_ids]
        width = max((len(t) for t in tables), default=0) if width is None else width
        if any(len(t) > width for t in tables):
            raise ValueError(f"width = {width} is less than the longest table ({max(len(t) for t in tables)} blocks)")
        return [t + [pad] * (width - len(t)) for t in tables]

    # ---- changes ----

    def allocate(self, seq_id: Hashable, num_tokens: int) -> list[int]:
        """A new sequence of num_tokens tokens on ceil(num_tokens / block_size) fresh blocks; returns its table."""
        if seq_id in self._tables:
            raise ValueError(f"sequence {seq_id!r} already exists; free it or pick a new id")
        if not isinstance(num_tokens, int) or num_tokens < 0:
            raise ValueError(f"num_tokens = {num_tokens!r}; expected an int >= 0")
        blocks = self._take(-(-num_tokens // self.block_size))
        self._tables[seq_id] = blocks
        self._tokens[seq_id] = num_tokens
        return list(blocks)

    def append_token(self, seq_id: Hashable) -> tuple[int, int] | None:
        """Make room for one more token of the sequence. Returns (src, dst) when its last block was shared
        and has been replaced by a fresh copy (copy block src to dst before writing), else None."""
        table = self._tables[self._known(seq_id)]
        slot = self._tokens[seq_id] % self.block_size
        copy = None
        if slot == 0:  # no block yet, or the last is full: a fresh block
            table.extend(self._take(1))
        elif self._refs[table[-1]] > 1:  # the token would land in a shared block: copy-on-write
            src, (dst,) = table[-1], self._take(1)
            self._refs[src] -= 1
            table[-1] = dst
            copy = (src, dst)
        self._tokens[seq_id] += 1
        return copy

    def fork(self, parent: Hashable, child: Hashable) -> None:
        """The child shares all of the parent's blocks (reference counts up) and its token count."""
        table = self._tables[self._known(parent)]
        if child in self._tables:
            raise ValueError(f"sequence {child!r} already exists; fork into a new id")
        for block in table:
            self._refs[block] += 1
        self._tables[child] = list(table)
        self._tokens[child] = self._tokens[parent]

    def free(self, seq_id: Hashable) -> None:
        """Drop the sequence; its blocks that no other sequence holds return to the free list."""
        for block in reversed(self._tables.pop(self._known(seq_id))):
            self._refs[block] -= 1
            if self._refs[block] == 0:
                self._free.append(block)
        del self._tokens[seq_id]

    # ---- internals ----

    def _known(self, seq_id: Hashable) -> Hashable:
        if seq_id not in self._tables:
            raise ValueError(f"sequence {seq_id!r} is not allocated; allocate it (or fork into it) first")
        return seq_id

    def _take(self, count: int) -> list[int]:
        """count free blocks, each with reference count 1, or OutOfBlocks with nothing taken."""
        if count > len(self._free):
            raise OutOfBlocks(count, len(self._free))
        blocks = [self._free.pop() for _ in range(count)]
        for block in blocks:
            self._refs[block] = 1
        return blocks
