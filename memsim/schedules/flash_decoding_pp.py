"""FlashDecoding++ as a schedule: Flash-Decoding's CTAs (memsim.schedules.flash_decoding) with the
asynchronised softmax and the summing combine of memsim.algorithms.flash_decoding_pp, then, where
rows overflowed, Flash-Decoding itself over the (batch, kv head) groups to recompute.

The recompute launches come after the first pass's and start from a cold L2, as every launch
does, so the groups' K/V come from HBM a second time.
"""

from memsim.algorithms import flash_decoding_pp as fdpp
from memsim.schedules import flash_decoding as fd_sched
from memsim.schedules.steps import Launch
from memsim.workload.shape import AttentionShape
from memsim.workload.tiles import TileConfig


def asynchronous(shape: AttentionShape, splits: int) -> fd_sched.SplitSoftmax:
    d, normalise = shape.head_dim, splits == 1
    return fd_sched.SplitSoftmax(
        tile=lambda scores, masked, rows: fdpp.async_softmax(scores, masked, rows, 0, d, normalise),
        end=lambda rows: fdpp.async_softmax(0, 0, 0, rows, d, normalise),
        statistic=fdpp.STATISTIC,
    )


def summing(shape: AttentionShape, splits: int) -> fd_sched.CombineOps:
    before, per_split, after = fdpp.combine_ops_per_row(splits, shape.head_dim)
    return fd_sched.CombineOps(before=before, per_split=per_split, after=after, statistic=fdpp.STATISTIC,
                               buffer="L partials")


def first_pass(shape: AttentionShape, tiles: TileConfig) -> list[Launch]:
    fdpp.check_decode(shape)
    s = tiles.num_splits
    launches = [fd_sched.split_launch(shape, tiles, name=f"{fdpp.NAME}_split", softmax=asynchronous(shape, s))]
    if s > 1:
        launches.append(fd_sched.combine_launch(shape, tiles, name=f"{fdpp.NAME}_combine", ops=summing(shape, s)))
    return launches


def recompute(shape: AttentionShape, tiles: TileConfig, overflow_probability: float) -> list[Launch]:
    groups = fdpp.recompute_groups(shape, overflow_probability)
    if not groups:
        return []
    sub = fdpp.recompute_shape(shape, groups)
    launches = [fd_sched.split_launch(sub, tiles, name=f"{fdpp.NAME}_recompute_split")]
    if tiles.num_splits > 1:
        launches.append(fd_sched.combine_launch(sub, tiles, name=f"{fdpp.NAME}_recompute_combine"))
    return launches


def forward(shape: AttentionShape, tiles: TileConfig,
            overflow_probability: float = fdpp.DEFAULT_OVERFLOW_PROBABILITY) -> list[Launch]:
    return first_pass(shape, tiles) + recompute(shape, tiles, overflow_probability)
