"""Capacity planning: KV-cache and weight bytes checked against hand computations, what fits, paging
waste, prefix sharing, decode/prefill time; properties with Hypothesis."""

import dataclasses
import json
from math import ceil

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from memsim import AttentionShape, predict
from memsim.capacity import (KVLayout, MemoryBudget, allocation_waste, kv_bytes_per_token, max_batch, max_context,
                             plan, read_lengths, sharing_savings, synthetic_lengths, weight_bytes,
                             weight_bytes_per_gpu)
from memsim.capacity.kv import head_vector_bytes
from memsim.capacity.timing import expert_read_fraction, weights_roofline
from memsim.errors import MemsimError
from memsim.hardware import load_gpu
from memsim.models import ModelSpec, load_model
from memsim.predict import resolve_tiles
from memsim.workload.dtypes import KV_DTYPES

H100 = load_gpu("H100-SXM5-80GB")
GIB = 2**30


# ---- KV bytes ---------------------------------------------------------------------------------

def test_llama2_7b_fp16_kv_is_half_a_mebibyte_per_token():
    assert kv_bytes_per_token(load_model("Llama-2-7B"), "fp16") == 2 * 32 * 32 * 128 * 2 == 524_288


@pytest.mark.parametrize("dtype, per_head_vector", [
    ("bf16", 128 * 2), ("fp32", 128 * 4), ("fp8", 128), ("int8", 128 + 2 * 2), ("int4", 64 + 2 * 2)])
def test_llama3_70b_kv_per_token_by_dtype(dtype, per_head_vector):
    """2 x 80 layers x 8 K/V heads x head vector; int8/int4 add one fp16 scale per 64 elements (2 per head)."""
    got = kv_bytes_per_token(load_model("Llama-3-70B"), dtype)
    print(f"\nLlama-3-70B {dtype}: {got:,} B per token")
    assert got == 2 * 80 * 8 * per_head_vector


@pytest.mark.parametrize("dtype", KV_DTYPES)
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_head_vector_bytes_agree_with_attention_shape(dtype, head_dim):
    """The KV bytes memsim.predict moves per element (scales included) are the ones capacity counts."""
    shape = AttentionShape(head_dim=head_dim, kv_dtype=dtype)
    assert head_vector_bytes(head_dim, dtype) == head_dim * shape.kv_element_bytes


def test_tensor_parallel_splits_kv_heads():
    m = load_model("Llama-3-70B")
    lay = KVLayout(m, "bf16", tp=8)
    assert (lay.kv_heads_per_gpu, lay.q_heads_per_gpu, lay.replicated) == (1, 8, False)
    assert lay.bytes_per_token_per_gpu * 8 == lay.bytes_per_token == lay.bytes_per_token_all_gpus == 327_680


def test_fewer_kv_heads_than_gpus_replicates():
    m = load_model("Llama-2-70B")
    lay = KVLayout(m, "bf16", tp=16)
    assert lay.replicated and lay.kv_heads_per_gpu == 1
    assert lay.bytes_per_token_all_gpus == 2 * lay.bytes_per_token
    p = plan(m, H100, tp=16, context=4096)
    assert any("replicated on 2 GPUs" in n for n in p.notes)


@pytest.mark.parametrize("tp, words", [(3, ["tp = 3", "64 query heads"]), (0, ["tp = 0"]),
                                       (128, ["tp = 128", "64 query heads"])])
def test_impossible_tensor_parallel_is_refused(tp, words):
    with pytest.raises(MemsimError) as err:
        KVLayout(load_model("Llama-3-70B"), "bf16", tp=tp)
    for w in words:
        assert w in str(err.value)


def test_kv_heads_neither_dividing_nor_divided_by_tp():
    m = dataclasses.replace(load_model("Llama-3-70B"), kv_heads=8, q_heads=48, hidden_size=48 * 128)
    with pytest.raises(MemsimError, match="one must divide the other"):
        KVLayout(m, "bf16", tp=12)


# ---- weights and what fits ------------------------------------------------------------------

def test_llama3_70b_bf16_weights_are_131_4_gib():
    b = weight_bytes(load_model("Llama-3-70B").params, "bf16")
    assert b == 70_553_706_496 * 2 == 141_107_412_992
    assert f"{b / GIB:.1f}" == "131.4"


def test_llama3_70b_bf16_does_not_fit_on_one_h100():
    with pytest.raises(MemsimError) as err:
        plan("Llama-3-70B", H100, context=8192)
    message = str(err.value)
    print("\n" + message)
    assert "Llama-3-70B in bf16 does not fit on one H100-SXM5-80GB: its weights alone need 131.4 GiB" in message
    assert "\n" not in message


def test_weights_that_fit_hbm_but_not_after_the_reserve_say_so():
    m = dataclasses.replace(load_model("Llama-3-70B"), params=40_000_000_000)  # 74.5 GiB in bf16: < 80, > 72
    with pytest.raises(MemsimError, match="more than the 72.0 GiB left after the 10% reserve"):
        plan(m, H100, context=4096)
    assert plan(m, H100, context=4096, reserve_fraction=0.0).max_batch >= 0


def test_int4_weights_count_one_scale_per_128():
    assert weight_bytes(1280, "int4") == 640 + 10 * 2
    assert weight_bytes(1280, "int8") == 1280 + 10 * 2
    assert weight_bytes_per_gpu(1001, "fp16", 4) == ceil(2002 / 4)


def test_llama2_7b_max_batch_by_hand():
    """H100: 80 GiB; 10% reserve; weights 6,738,415,616 x 2 B; KV 524,288 B per token in blocks of 16."""
    m = load_model("Llama-2-7B")
    hbm = 80 * GIB
    kv = hbm - 8_589_934_592 - 13_476_831_232
    assert kv == 63_832_580_096
    blocks = kv // (16 * 524_288)
    assert blocks == 7609
    p = plan(m, H100, context=4096, kv_dtype="fp16", weight_dtype="fp16")
    assert p.budget.kv_bytes == kv
    assert p.max_batch == blocks // (4096 // 16) == 29
    assert p.max_context == blocks * 16  # batch 1
    assert plan(m, H100, context=4096, batch=7, kv_dtype="fp16", weight_dtype="fp16").max_context == blocks // 7 * 16
    assert max_batch(kv, 524_288, 4096, block_size=1) == kv // (4096 * 524_288) == 29


def test_batch_that_does_not_fit_is_said_plainly():
    p = plan("Llama-2-7B", H100, context=4096, batch=64, kv_dtype="fp16", weight_dtype="fp16")
    assert not p.batch_fits
    assert p.verdict().startswith("batch 64 at 4096 tokens does not fit: it needs 128.00 GiB of KV cache per GPU")
    assert "at most 29 sequences fit" in p.verdict()


def test_no_sequence_fits_when_context_is_huge():
    p = plan("Llama-2-7B", H100, context=200_000, kv_dtype="fp16")
    assert p.max_batch == 0 and p.verdict().startswith("no sequence of 200000 tokens fits")
    assert any("exceeds Llama-2-7B's 4096-token maximum" in n for n in p.notes)


@given(name=st.sampled_from(["Llama-2-70B", "Llama-3-70B", "Qwen2.5-72B", "Mixtral-8x7B", "Llama-3-8B"]),
       context=st.integers(1, 200_000), dtype=st.sampled_from(["bf16", "fp8", "int4"]),
       block=st.sampled_from([1, 8, 16, 32]), batch=st.integers(1, 64))
def test_more_gpus_never_less_capacity(name, context, dtype, block, batch):
    m = load_model(name)
    tps = [t for t in (1, 2, 4, 8, 16) if m.q_heads % t == 0 and (m.kv_heads % t == 0 or t % m.kv_heads == 0)]
    batches, contexts = [], []
    for tp in tps:
        lay = KVLayout(m, dtype, tp)
        budget = MemoryBudget(H100.hbm_bytes, weight_bytes_per_gpu(m.params, "bf16", tp))
        batches.append(max_batch(budget.kv_bytes, lay.bytes_per_token_per_gpu, context, block))
        contexts.append(max_context(budget.kv_bytes, lay.bytes_per_token_per_gpu, batch, block))
    assert batches == sorted(batches) and contexts == sorted(contexts), (tps, batches, contexts)


@given(kv=st.integers(0, 10**12), per_token=st.integers(1, 10**6), context=st.integers(1, 10**6),
       block=st.integers(1, 64))
def test_max_batch_and_context_fit_and_are_the_most(kv, per_token, context, block):
    b = max_batch(kv, per_token, context, block)
    assert b * ceil(context / block) * block * per_token <= kv
    assert (b + 1) * ceil(context / block) * block * per_token > kv - (kv % (block * per_token))
    c = max_context(kv, per_token, 1, block)
    assert c % block == 0 and c * per_token <= kv < (c + block) * per_token


# ---- paging waste ---------------------------------------------------------------------------

def test_waste_by_hand():
    w = allocation_waste(np.array([1, 16, 17, 100]), max_len=128, block_size=16)
    assert w.tokens_used == 134
    assert w.contiguous_reserved == 4 * 128 and w.contiguous_waste == 512 - 134
    assert w.paged_reserved == 16 + 16 + 32 + 112 and w.paged_waste == 176 - 134


@given(lengths=st.lists(st.integers(1, 5000), min_size=1, max_size=50), block=st.integers(1, 256),
       extra=st.integers(0, 1000))
def test_paged_waste_is_at_most_contiguous_and_under_a_block_per_sequence(lengths, block, extra):
    max_len = max(lengths) + extra
    w = allocation_waste(np.array(lengths), max_len, block)
    # Paged waste is under one block per sequence and never more than contiguous waste, except that a
    # request's last block may stick out past max_len when max_len is not a whole number of blocks.
    assert 0 <= w.paged_waste < block * w.requests
    rounded = allocation_waste(np.array(lengths), ceil(max_len / block) * block, block)
    assert rounded.paged_waste <= rounded.contiguous_waste
    if max_len % block == 0:
        assert w.paged_waste <= w.contiguous_waste
    assert allocation_waste(np.array(lengths), max_len, 1).paged_waste == 0


def test_plan_reports_waste_of_given_lengths():
    p = plan("Llama-3-8B", H100, context=1024, lengths=[1, 16, 17, 1000])
    d = p.as_dict()["waste"]
    per_token = p.layout.bytes_per_token_per_gpu
    assert d["contiguous"]["waste_tokens"] == 4 * 1024 - 1034 and d["paged"]["waste_tokens"] == 15 + 0 + 15 + 8
    assert d["paged"]["waste_bytes"] == 38 * per_token


def test_lengths_longer_than_context_are_refused():
    with pytest.raises(MemsimError, match="length 2000 exceeds the context 1024"):
        plan("Llama-3-8B", H100, context=1024, lengths=[5, 2000])


# ---- lengths ------------------------------------------------------------------------------------

def test_read_lengths_skips_blanks_and_comments(tmp_path):
    path = tmp_path / "lengths.txt"
    path.write_text("# one per line\n12\n\n  300  # a long one\n7\n")
    assert read_lengths(path).tolist() == [12, 300, 7]


@pytest.mark.parametrize("text, words", [("12\nabc\n", ["line 2", "'abc'"]), ("0\n", ["line 1", "length 0"]),
                                         ("# nothing\n", ["no lengths"]), ("5000\n", ["exceeds the context 4096"])])
def test_bad_lengths_files(tmp_path, text, words):
    path = tmp_path / "lengths.txt"
    path.write_text(text)
    with pytest.raises(MemsimError) as err:
        read_lengths(path, 4096)
    for w in words:
        assert w in str(err.value)


@pytest.mark.parametrize("name", ["uniform", "lognormal", "exponential", "fixed"])
def test_synthetic_lengths_are_bounded_and_reproducible(name):
    a = synthetic_lengths(name, 4096, 500, seed=3)
    assert a.shape == (500,) and a.min() >= 1 and a.max() <= 4096
    assert (a == synthetic_lengths(name, 4096, 500, seed=3)).all()
    if name != "fixed":
        assert (a != synthetic_lengths(name, 4096, 500, seed=4)).any()


def test_unknown_distribution():
    with pytest.raises(MemsimError, match="use one of uniform, lognormal, exponential, fixed"):
        synthetic_lengths("zipf", 100)


# ---- prefix sharing -------------------------------------------------------------------------

def test_sharing_by_hand():
    s = sharing_savings("parallel sampling", 4, 16384, 16384, 16)
    assert (s.blocks_unshared, s.blocks_shared, s.saved_fraction) == (8192, 1024 + 4 * 1024, 0.375)
    # prompt 100 = 6 full blocks + 4 tokens; each sample copies the partial block and adds 10 tokens: 1 block each
    s = sharing_savings("beam search", 4, 100, 10, 16)
    assert (s.blocks_unshared, s.blocks_shared) == (4 * 7, 6 + 4 * 1)
    assert sharing_savings("parallel sampling", 4, 100, 0, 16).blocks_shared == 7


@given(copies=st.integers(1, 16), prompt=st.integers(1, 5000), gen=st.integers(0, 5000), block=st.integers(1, 64))
def test_sharing_never_costs_more_and_one_copy_saves_nothing(copies, prompt, gen, block):
    s = sharing_savings("parallel sampling", copies, prompt, gen, block)
    assert s.blocks_shared <= s.blocks_unshared
    assert sharing_savings("parallel sampling", 1, prompt, gen, block).saved_fraction == 0.0
    # what the prompt's full blocks save, and no more
    assert s.blocks_unshared - s.blocks_shared <= (copies - 1) * ceil(prompt / block)


def test_prompt_and_generation_must_fit_the_context():
    with pytest.raises(MemsimError, match="prompt_len \\+ gen_len = 600 \\+ 600 exceeds the context 1024"):
        plan("Llama-3-8B", H100, context=1024, prompt_len=600, gen_len=600)


# ---- time ------------------------------------------------------------------------------------

def test_decode_weights_roofline_by_hand():
    """Llama-3-8B bf16, batch 1 on one H100: every weight read once at the calibrated 3.028 TB/s."""
    m = load_model("Llama-3-8B")
    seconds, bound, read, flops = weights_roofline(m, H100, 1, "bf16", "bf16", 1)
    assert read == 8_030_261_248 * 2 and flops == 2 * 8_030_261_248
    assert bound == "hbm" and seconds == pytest.approx(16_060_522_496 / 3.028e12, rel=1e-12)
    print(f"\nLlama-3-8B decode, batch 1: weights {seconds * 1e3:.3f} ms")


def test_prefill_weights_roofline_is_tensor_bound():
    m = load_model("Llama-3-8B")
    seconds, bound, _, flops = weights_roofline(m, H100, 8192, "bf16", "bf16", 1)
    assert bound == "tensor" and seconds == pytest.approx(2 * 8_030_261_248 * 8192 / 789.9e12, rel=1e-12)


def test_decode_attention_is_one_layers_prediction_times_layers():
    m = load_model("Llama-3-70B")
    p = plan(m, H100, tp=8, context=32768, kv_dtype="fp8", batch=16)
    shape = AttentionShape(batch=16, q_heads=8, kv_heads=1, q_len=1, kv_len=32768, head_dim=128, kv_dtype="fp8")
    per_layer = predict("flash_decoding", shape, H100).latency_s
    assert p.decode.attention_s == pytest.approx(80 * per_layer, rel=1e-12)
    assert p.decode.total_s == pytest.approx(p.decode.attention_s + p.decode.weights_s, rel=1e-12)
    assert p.decode_tokens_per_s == pytest.approx(16 / p.decode.total_s)
    prefill_shape = AttentionShape(batch=1, q_heads=8, kv_heads=1, q_len=16384, head_dim=128, kv_dtype="fp8",
                                   causal=True)
    assert p.prefill.attention_s == pytest.approx(80 * predict("flash2", prefill_shape, H100).latency_s, rel=1e-12)


def test_paged_decode_reads_pages_of_the_block_size():
    m = load_model("Llama-3-8B")
    shape = AttentionShape(batch=8, q_heads=32, kv_heads=8, q_len=1, kv_len=4096, head_dim=128)
    for block in (16, 32):
        p = plan(m, H100, context=4096, batch=8, block_size=block, decode_algo="paged")
        tiles = resolve_tiles(H100, "paged", shape, page_size=block)
        assert p.decode.attention_per_layer_s == predict("paged", shape, H100, tiles).latency_s


def test_mixture_of_experts_reads_only_routed_experts():
    m = load_model("Mixtral-8x7B")
    assert expert_read_fraction(m, 1) == pytest.approx(m.active_params / m.params, rel=1e-12)
    assert expert_read_fraction(m, 2) > expert_read_fraction(m, 1)
    assert expert_read_fraction(m, 200) == pytest.approx(1.0, abs=1e-9)
    assert expert_read_fraction(load_model("Llama-3-8B"), 1) == 1.0


TINY = ModelSpec(name="Tiny", layers=2, hidden_size=256, q_heads=4, kv_heads=2, head_dim=64, vocab_size=1000,
                 ffn_size=512, params=1_500_000, max_context=2048)


def test_discrete_event_engine_can_time_the_decode():
    p = plan(TINY, H100, context=256, batch=2, engine="des")
    assert p.decode.attention_s > 0 and p.prefill.attention_s > 0 and p.engine == "des"


def test_plan_as_json_has_every_section():
    p = plan("Llama-3-70B", H100, tp=8, context=32768, kv_dtype="fp8", lengths=synthetic_lengths("uniform", 32768))
    d = json.loads(json.dumps(p.as_dict()))
    for key in ("model", "kv", "weights", "memory", "max_batch", "max_context", "verdict", "waste", "sharing",
                "decode", "prefill", "notes"):
        assert key in d
    assert d["kv"]["bytes_per_token"] == 163_840 and d["kv"]["bytes_per_token_per_gpu"] == 20_480
    assert d["memory"]["reserve_fraction"] == 0.1
    assert any("not included" in n for n in d["notes"]) and any("reserve" in n for n in d["notes"])


def test_kv_memory_plot_is_written(tmp_path):
    pytest.importorskip("matplotlib")
    from memsim.plots.kv_memory import attention_variants, kv_memory_plot

    path = kv_memory_plot(load_model("Llama-2-7B"), tmp_path / "kv.png", kv_budget_bytes=50 * GIB)
    assert (tmp_path / "kv.png").stat().st_size > 1000 and path.endswith("kv.png")
    assert [v.kv_heads for v in attention_variants(load_model("Llama-2-7B")).values()] == [32, 4, 1]
    assert [v.kv_heads for v in attention_variants(load_model("Llama-3-70B")).values()] == [64, 8, 1]


def test_capacity_and_sweeps_run_without_torch():
    import subprocess
    import sys

    code = ("import sys\nsys.modules['torch'] = None\nsys.modules['triton'] = None\n"
            "import memsim.capacity, memsim.sweep, memsim.models, memsim.cli.capacity, memsim.cli.sweep\n"
            "p = memsim.capacity.plan('Llama-2-7B', context=4096)\n"
            "assert p.max_batch > 0 and memsim.sweep.sweep(grid=[(64, 64, 1, 4)]).best is not None\nprint('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
