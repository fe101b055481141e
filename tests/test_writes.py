"""What a kernel's writes leave dirty in L2 at its end (memsim.writes, and the engine's L2 under the same cap)."""

import pytest
from hypothesis import given, strategies as st

from memsim import AttentionShape, predict
from memsim.engine.l2cache import L2Cache
from memsim.kernel import Traffic
from memsim.writes import resident_writes

MB = 1e6


def test_no_ceiling_means_every_write_reaches_hbm_during_the_kernel():
    traffic = {"O": Traffic.streamed(write=17 * MB), "K": Traffic.streamed(read=30 * MB)}
    assert resident_writes(traffic, None, 50 * MB) == traffic


def test_the_calibrated_cap_binds_on_a_prefill():
    """FA2, B=1 H=16 N=4096: 17 MB of O after 50 MB of Q, K, V: LRU alone would keep 12.7 MB; the cap 8.8 MB."""
    out = resident_writes({"O": Traffic.streamed(write=17 * MB), "QKV": Traffic(hbm_read=50 * MB)}, 8.8 * MB, 50 * MB)
    assert out["O"].hbm_write_deferred == pytest.approx(8.8 * MB)
    assert out["O"].hbm_write == pytest.approx(8.2 * MB)


def test_a_decode_streaming_far_more_than_l2_keeps_almost_none_of_its_output():
    out = resident_writes({"O": Traffic.streamed(write=0.5 * MB), "KV": Traffic(hbm_read=537 * MB)}, 8.8 * MB, 50 * MB)
    assert out["O"].hbm_write_deferred == pytest.approx(0.5 * MB * 50 / 537.5)
    assert out["O"].hbm_write > 0.9 * 0.5 * MB


@given(st.lists(st.tuples(st.floats(0, 1e9), st.floats(0, 1e9)), min_size=1, max_size=5),
       st.floats(1, 1e8), st.floats(1, 1e8))
def test_written_bytes_are_conserved_and_the_cap_holds(tensors, cap, l2):
    traffic = {str(i): Traffic(hbm_read=r, hbm_write=w, l2_write=w) for i, (r, w) in enumerate(tensors)}
    out = resident_writes(traffic, cap, l2)
    for name, t in traffic.items():
        assert out[name].hbm_write + out[name].hbm_write_deferred == pytest.approx(t.hbm_write, rel=1e-9, abs=1e-6)
        assert out[name].hbm_write >= -1e-6 and out[name].hbm_read == t.hbm_read
    deferred = sum(t.hbm_write_deferred for t in out.values())
    assert deferred <= min(cap, l2) * (1 + 1e-9) + 1e-6


def test_predictions_defer_what_stays_dirty_only_with_calibrated_ceilings():
    shape = AttentionShape(q_heads=16, q_len=4096)
    calibrated, peak = predict("flash2", shape), predict("flash2", shape, calibrated=False)
    assert peak.bytes["hbm_write_deferred"] == 0
    assert calibrated.bytes["hbm_write_deferred"] == pytest.approx(8.8 * MB)
    assert calibrated.bytes["hbm_write"] + calibrated.bytes["hbm_write_deferred"] == pytest.approx(peak.bytes["hbm_write"])


def test_l2_writes_back_its_oldest_dirty_tiles_above_the_limit_and_keeps_them_clean():
    l2 = L2Cache(capacity_bytes=100, dirty_limit_bytes=25)
    written = []
    for i in range(5):
        written += l2.insert(("O", i), 10, "O", dirty=True)
    assert written == [("O", 10), ("O", 10), ("O", 10)]  # tiles 0, 1, 2, oldest first
    assert l2.dirty_bytes == 20 and l2.lookup(("O", 0)) is True  # still there, clean
    assert l2.flush() == [("O", 10), ("O", 10)]


@given(st.lists(st.tuples(st.integers(0, 12), st.integers(1, 30), st.booleans()), max_size=60), st.integers(10, 200))
def test_l2_dirty_bytes_stay_under_the_limit_and_nothing_is_written_back_that_was_not_written(ops, limit):
    l2 = L2Cache(capacity_bytes=150, dirty_limit_bytes=limit)
    written_back, dirtied = 0.0, 0.0
    for key, nbytes, dirty in ops:
        dirtied += nbytes if dirty else 0.0
        written_back += sum(b for _, b in l2.insert(key, nbytes, "T", dirty))
        assert l2.dirty_bytes <= max(limit, nbytes) + 1e-9  # one tile larger than the limit may stay alone
        assert l2.used_bytes <= max(150, nbytes) + 1e-9
    at_end = sum(b for _, b in l2.flush())
    assert at_end <= limit + 30
    assert written_back + at_end <= dirtied + 1e-9  # a tile rewritten while dirty goes to HBM once
    assert l2.dirty_bytes == 0 and l2.used_bytes == 0
