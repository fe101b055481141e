"""BlockManager against a model of the cache it manages: every step writes the tokens it makes room for
into a simulated cache, and the invariants below are checked after every step."""

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from kernels.block_manager import BlockManager, OutOfBlocks


class CacheModel(RuleBasedStateMachine):
    """Sequences allocated, grown, forked and freed on a small cache; cache[block][slot] holds the label of
    the token written there, expected[seq] the labels the sequence must read back in order."""

    def __init__(self):
        super().__init__()
        self.manager: BlockManager | None = None
        self.cache: dict[int, list] = {}
        self.expected: dict[int, list[int]] = {}
        self.next_id = 0
        self.next_label = 0

    @rule(num_blocks=st.integers(1, 12), block_size=st.integers(1, 5))
    @precondition(lambda self: self.manager is None)
    def start(self, num_blocks, block_size):
        self.manager = BlockManager(num_blocks, block_size)
        self.cache = {b: [None] * block_size for b in range(num_blocks)}

    # ---- reading and writing the model cache ----

    def _live(self, index: int) -> int:
        return sorted(self.expected)[index % len(self.expected)]

    def _write(self, seq: int, position: int) -> None:
        """Write a fresh token label at `position` of seq: only into a block no other sequence holds."""
        m = self.manager
        block = m.block_table(seq)[position // m.block_size]
        assert m.ref_count(block) == 1, f"block {block} written while shared by {m.ref_count(block)} sequences"
        self.cache[block][position % m.block_size] = self.next_label
        self.expected[seq].append(self.next_label)
        self.next_label += 1

    def _snapshot(self):
        m = self.manager
        return (m.num_free_blocks, {s: (m.block_table(s), m.num_tokens(s)) for s in m.sequences()},
                [m.ref_count(b) for b in range(m.num_blocks)])

    # ---- rules ----

    @rule(num_tokens=st.integers(0, 12))
    @precondition(lambda self: self.manager is not None)
    def allocate(self, num_tokens):
        m, seq = self.manager, self.next_id
        needed = -(-num_tokens // m.block_size)
        if needed > m.num_free_blocks:
            before = self._snapshot()
            with pytest.raises(OutOfBlocks) as caught:
                m.allocate(seq, num_tokens)
            assert (caught.value.needed, caught.value.free) == (needed, before[0])
            assert self._snapshot() == before
            return
        m.allocate(seq, num_tokens)
        self.next_id += 1
        self.expected[seq] = []
        for position in range(num_tokens):
            self._write(seq, position)

    @rule(index=st.integers(0, 1000))
    @precondition(lambda self: self.expected)
    def append(self, index):
        m, seq = self.manager, self._live(index)
        count, table = m.num_tokens(seq), m.block_table(seq)
        slot = count % m.block_size
        shared_last = slot != 0 and m.ref_count(table[-1]) > 1
        if (slot == 0 or shared_last) and m.num_free_blocks == 0:
            before = self._snapshot()
            with pytest.raises(OutOfBlocks) as caught:
                m.append_token(seq)
            assert (caught.value.needed, caught.value.free) == (1, 0)
            assert self._snapshot() == before
            return
        copy = m.append_token(seq)
        if shared_last:
            assert copy is not None and copy[0] == table[-1] and copy[1] == m.block_table(seq)[-1]
            self.cache[copy[1]] = list(self.cache[copy[0]])
        else:
            assert copy is None
        self._write(seq, count)

    @rule(index=st.integers(0, 1000))
    @precondition(lambda self: self.expected)
    def fork(self, index):
        parent, child = self._live(index), self.next_id
        self.manager.fork(parent, child)
        self.next_id += 1
        self.expected[child] = list(self.expected[parent])

    @rule(index=st.integers(0, 1000))
    @precondition(lambda self: self.expected)
    def free(self, index):
        seq = self._live(index)
        self.manager.free(seq)
        del self.expected[seq]

    # ---- invariants ----

    @invariant()
    def no_block_leaked(self):
        m = self.manager
        if m is None:
            return
        held = {b for s in m.sequences() for b in m.block_table(s)}
        assert m.num_free_blocks + len(held) == m.num_blocks
        assert all(m.ref_count(b) == 0 for b in range(m.num_blocks) if b not in held)

    @invariant()
    def ref_counts_match_tables(self):
        m = self.manager
        if m is None:
            return
        holders = [0] * m.num_blocks
        for s in m.sequences():
            table = m.block_table(s)
            assert len(set(table)) == len(table), f"sequence {s} holds a block twice: {table}"
            for b in table:
                holders[b] += 1
        assert holders == [m.ref_count(b) for b in range(m.num_blocks)]

    @invariant()
    def token_counts_consistent(self):
        m = self.manager
        if m is None:
            return
        assert sorted(m.sequences()) == sorted(self.expected)
        for s, labels in self.expected.items():
            assert m.num_tokens(s) == len(labels)
            assert len(m.block_table(s)) == -(-len(labels) // m.block_size)  # waste only in the last block

    @invariant()
    def every_sequence_reads_its_tokens(self):
        """A block written by two sequences without a copy would hand one of them the other's token."""
        m = self.manager
        if m is None:
            return
        for s, labels in self.expected.items():
            table = m.block_table(s)
            read = [self.cache[table[t // m.block_size]][t % m.block_size] for t in range(len(labels))]
            assert read == labels, f"sequence {s} reads {read}, wrote {labels}"


TestBlockManagerStateMachine = CacheModel.TestCase
TestBlockManagerStateMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


def test_worked_example_fork_then_copy_on_write():
    """Block size 4: 10 tokens take 3 blocks (2 slots wasted, all in the last). A fork shares all three; the
    parent's next token lands in the shared, half-full last block, so the parent moves to a copy."""
    m = BlockManager(num_blocks=8, block_size=4)
    assert m.allocate("parent", 10) == [0, 1, 2]
    m.fork("parent", "child")
    assert [m.ref_count(b) for b in (0, 1, 2)] == [2, 2, 2]
    assert m.append_token("parent") == (2, 3)  # copy block 2 to block 3, then write slot 2 of block 3
    assert m.block_table("parent") == [0, 1, 3] and m.block_table("child") == [0, 1, 2]
    assert [m.ref_count(b) for b in (0, 1, 2, 3)] == [2, 2, 1, 1]
    assert m.append_token("child") is None  # block 2 is the child's alone now: written in place
    assert m.num_free_blocks == 4
    print(f"tables {m.padded_tables(['parent', 'child'])}, free {m.num_free_blocks}")


def test_full_shared_block_stays_shared():
    m = BlockManager(num_blocks=4, block_size=2)
    m.allocate(0, 2)
    m.fork(0, 1)
    assert m.append_token(0) is None  # the last block is full: a fresh block, no copy
    assert m.block_table(0) == [0, 1] and m.block_table(1) == [0] and m.ref_count(0) == 2


def test_out_of_blocks_names_needed_and_free():
    m = BlockManager(num_blocks=3, block_size=4)
    m.allocate("a", 8)
    with pytest.raises(OutOfBlocks, match=r"needed 2 free block\(s\), 1 free") as caught:
        m.allocate("b", 5)
    assert isinstance(caught.value, RuntimeError) and (caught.value.needed, caught.value.free) == (2, 1)
    assert m.sequences() == ["a"] and m.num_free_blocks == 1


def test_free_returns_only_unshared_blocks():
    m = BlockManager(num_blocks=4, block_size=2)
    m.allocate("a", 3)
    m.fork("a", "b")
    m.free("a")
    assert m.num_free_blocks == 2 and m.block_table("b") == [0, 1]
    m.free("b")
    assert m.num_free_blocks == 4


@pytest.mark.parametrize("call, message", [
    (lambda m: BlockManager(0, 4), "num_blocks = 0"),
    (lambda m: BlockManager(4, 0), "block_size = 0"),
    (lambda m: m.allocate("a", 1), "already exists"),
    (lambda m: m.allocate("z", -1), "num_tokens = -1"),
    (lambda m: m.append_token("nobody"), "not allocated"),
    (lambda m: m.fork("a", "a"), "already exists"),
    (lambda m: m.free("nobody"), "not allocated"),
    (lambda m: m.ref_count(9), "block = 9"),
    (lambda m: m.padded_tables(["a"], width=0), "width = 0"),
])
def test_bad_input_raises_value_error(call, message):
    m = BlockManager(num_blocks=4, block_size=2)
    m.allocate("a", 3)
    with pytest.raises(ValueError, match=message):
        call(m)
