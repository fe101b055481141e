"""The engine benchmark's configurations and labels (its timings are figures it prints, not tested)."""

from memsim.bench import describe, main, sweep_configs
from memsim.workload import AttentionShape, TileConfig


def test_sweep_keeps_the_mix_of_causal_and_tiles():
    configs = sweep_configs(60)
    assert len(configs) == 60
    assert len(set(configs)) == 60
    assert 0.4 <= sum(shape.causal for shape, _ in configs) / 60 <= 0.6  # the full mix is half causal
    everything = sweep_configs(64 * 36)
    assert len(set(everything)) == 2304 and sum(shape.causal for shape, _ in everything) == 2304 // 2
    assert {tiles.num_stages for _, tiles in configs} == {1, 2, 3}
    assert {shape.head_dim for shape, _ in configs} == {64, 128}


def test_describe_names_the_shape_and_tiles():
    shape = AttentionShape(batch=4, q_heads=16, kv_heads=4, q_len=8192, head_dim=128, causal=True)
    tiles = TileConfig(block_m=64, block_n=32, num_warps=4, num_stages=1)
    assert describe(shape, tiles) == "B=4 H=16/4 N=8192 d=128 causal, 64x32 4 warps 1 stages"
    assert describe(AttentionShape(q_heads=8, q_len=1024), tiles).startswith("B=1 H=8 N=1024 d=128, 64x32")


def test_a_non_positive_sweep_is_refused(capsys):
    try:
        main(["--sweep", "0"])
    except SystemExit as exit_:
        assert exit_.code != 0
    else:
        raise AssertionError("--sweep 0 was accepted")
    assert "--sweep 0" in capsys.readouterr().err
