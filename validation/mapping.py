"""From a measured case to the memsim prediction of the same launches.

For kernels nobody here wrote, the tiles come from what Nsight Compute reports of the launch
(README, "third-party kernels"): BLOCK_M from the grid, warps from the block size, BLOCK_N x
stages from the dynamic shared memory. The kernel family (which memsim algorithm runs the same
schedule) is named per backend below, with the reason.
"""

import json
import re
from dataclasses import dataclass, replace
from functools import lru_cache
from math import ceil
from pathlib import Path

from memsim.algorithms import ALGORITHMS, flash3
from memsim.algorithms.moba import MOBA_BLOCK_SIZE, MOBA_TOP_K
from memsim.hardware import load_gpu
from memsim.predict import resolve_tiles
from memsim.resources import CtaResources
from memsim.workload import AttentionShape, TileConfig
from memsim.workload.dtypes import QUANTISED_KV_DTYPES, bytes_per_element


GPU = "H100-SXM5-80GB"  # the preset of the card the suite was measured on (default tiles are fitted to it)


@lru_cache(maxsize=None)
def _gpu(name: str):
    """A preset read once per process, not once per case."""
    return load_gpu(name)


@dataclass(frozen=True)
class Mapped:
    algo: str
    shape: AttentionShape
    tiles: TileConfig | None  # None: the algorithm's own default
    order: str = "pid"
    ctas: int | None = None
    how: str = ""  # how the tiles were found, for the report
    pass_: str = "fwd"  # memsim.predict's pass_: "bwd" for a case that runs backward kernels only
    kernels: tuple[str, ...] | None = None  # memsim's launches that were measured (None: all of them)
    resources: dict | None = None  # memsim launch name -> CtaResources as ncu reported them (launch_resources)


class Unmapped(Exception):
    """A case memsim does not model (the reason is the message)."""


def shape_of(row: dict) -> AttentionShape:
    extra = {k: row[k] for k in ("kv_dtype", "kv_group_size", "kv_scale_dtype") if row.get(k)}
    if extra.get("kv_dtype") in QUANTISED_KV_DTYPES and "kv_scale_dtype" not in extra:
        extra["kv_scale_dtype"] = _scale_dtype(row["dtype"])
    return AttentionShape(batch=row["batch"], q_heads=row["q_heads"], kv_heads=row["kv_heads"], q_len=row["q_len"],
                          kv_len=row["kv_len"], head_dim=row["head_dim"], causal=row["causal"], dtype=row["dtype"],
                          **extra)


def _scale_dtype(dtype: str) -> str:
    """The scales' type where a row (recorded before rows named it) does not say: kernels.kv_quant.quantize_kv, as
    validation.runners calls it, keeps fp16 scales for fp16 tensors and fp32 for the rest."""
    return "fp16" if dtype == "fp16" else "fp32"


def main_launches(row: dict) -> list[dict]:
    """The case's attention kernels: helper launches of one CTA (flex_attention's fills) left out."""
    return [k for k in row["launches"] if (k.get("launch__grid_size") or 0) > 1]


def _warps(launch: dict) -> int:
    return max(1, int(launch["launch__block_size"]) // 32)


def _pow2_at_most(n: float) -> int:
    p = 1
    while p * 2 <= n:
        p *= 2
    return p


def q_block_rows(shape: AttentionShape, grid: int, splits: int = 1) -> int:
    """FA2-style grid (q blocks x batch x heads [x splits]): rows per q block."""
    blocks = grid / (shape.batch * shape.q_heads * splits)
    if blocks < 1 or blocks != int(blocks):
        raise Unmapped(f"grid {grid} is not q-blocks x {shape.batch} x {shape.q_heads} x {splits}")
    return _pow2_at_most(ceil(shape.q_len / blocks) * 2 - 1) if blocks > 1 else max(16, _pow2_at_most(shape.q_len))


def kv_stage_keys(shape: AttentionShape, launch: dict, block_m: int) -> int:
    """Keys buffered per CTA (BLOCK_N x stages): dynamic shared memory less the Q tile, over a K and a V row."""
    element = bytes_per_element(shape.dtype)
    smem = launch.get("launch__shared_mem_per_block_dynamic") or 0
    keys = (smem - block_m * shape.head_dim * element) / (2 * shape.head_dim * element)
    return max(16, _pow2_at_most(keys)) if keys >= 16 else 64


# PyTorch's flash_fwd_kernel spills registers (255 per thread): local-store bytes per CTA per key block and per
# CTA, by (head_dim, BLOCK_M, BLOCK_N), fitted by `python3 -m validation.fit_spills` on shapes outside the suite
# (results/h100/spill-probe-ncu-2026-11-23.csv). A kernel property, like its launch config.
SDPA_FA2_SPILLS = {(64, 128, 128): (3032, 13817), (128, 128, 64): (7158, 8424)}
# Its one-split decode instantiation (flash_fwd_kernel at q_len = 1, 255 registers), (head_dim, BLOCK_M, BLOCK_N) ->
# (bytes per CTA per key block, bytes per CTA): least squares over five d = 128 shapes outside the suite, residual 0
# (results/h100/decode-spill-probe-ncu-2026-11-23.csv, validation.fit_spills.decode_fit).
SDPA_FA2_DECODE_SPILLS = {(128, 128, 64): (4096, 3584)}
# Our kernels that run at 255 registers and spill, (kernel, head_dim, causal) -> local-store bytes per CTA, the same
# at every probed N (1024-8192): `python3 -m validation.fit_spills --ours` over six shapes each outside the suite
# (results/h100/ours-spill-probe-ncu-2026-11-23.csv). The FP8 forward's; the backward's dK/dV kernel's.
OUR_SPILLS = {("flash2_bwd", 64, False): 14336, ("flash2_bwd", 64, True): 34304,
              ("flash2_fp8", 64, False): 6656, ("flash2_fp8", 64, True): 7168}
FA2_TRAITS = re.compile(r"Flash_fwd_kernel_traits<\(int\)(\d+), \(int\)(\d+), \(int\)(\d+)")


# FlashAttention-2's CUDA forward (flash_fwd_kernel.h, compute_attn_1rowblock) keeps one K and one V buffer but
# loads V_j while it computes Q K_j^T and K_{j+1} while it computes softmax and P V_j: the next block's loads
# overlap this block's compute, as memsim's two stages do. Its occupancy comes from ncu (launch_resources).
SDPA_FA2_PIPELINE_STAGES = 2


def _fa2_prefill(row: dict, shape: AttentionShape, launch: dict, how: str) -> Mapped:
    block_m = q_block_rows(shape, int(launch["launch__grid_size"]))
    block_n = kv_stage_keys(shape, launch, block_m)
    spills = SDPA_FA2_SPILLS.get((shape.head_dim, block_m, block_n), (0, 0))
    tiles = TileConfig(block_m=block_m, block_n=block_n, num_warps=_warps(launch), num_stages=SDPA_FA2_PIPELINE_STAGES,
                       spill_bytes_per_iteration=spills[0], spill_bytes_per_cta=spills[1], key_order="descending")
    how += "; K and V loads overlap compute (2 stages); key blocks walked last to first (flash_fwd_kernel.h)"
    if any(spills):
        how += f"; register spills {spills[0]} B per key block and {spills[1]} B per CTA (validation.fit_spills)"
    return Mapped("flash2", shape, tiles, how=how)


def _decode(row: dict, shape: AttentionShape, launches: list[dict], how: str, lse_output: bool = True) -> Mapped:
    """Split-KV decode (FA2's splitkv kernel, cuDNN's sm80 decode path): GQA packed into the Q tile,
    grid = batch x kv heads x splits (one M block). `lse_output` False: the kernel writes no final LSE."""
    split = launches[0]
    grid = int(split["launch__grid_size"])
    splits = grid // (shape.batch * shape.kv_heads)
    if splits < 1 or grid % (shape.batch * shape.kv_heads):
        raise Unmapped(f"decode grid {grid} is not batch {shape.batch} x kv heads {shape.kv_heads} x splits")
    tiles = TileConfig(block_m=64, block_n=128 if shape.head_dim <= 128 else 64, num_warps=_warps(split),
                       num_stages=2, num_splits=splits, lse_output=lse_output)
    traits = FA2_TRAITS.search(split["kernel"])
    if traits and "splitkv" not in split["kernel"]:  # FA2's one-split kernel: its own tile, and it spills
        d, block_m, block_n = map(int, traits.groups())
        per_block, per_cta = SDPA_FA2_DECODE_SPILLS.get((d, block_m, block_n), (0, 0))
        tiles = replace(tiles, block_m=block_m, block_n=block_n, spill_bytes_per_iteration=per_block,
                        spill_bytes_per_cta=per_cta)
        how += f"; the one-split kernel's {block_m} x {block_n} tile"
        if per_block or per_cta:
            how += f"; register spills {per_block} B per key block and {per_cta} B per CTA (decode probe)"
    return Mapped("flash_decoding", shape, tiles, how=f"{how}; {splits} splits from the grid")


def map_sdpa_flash(row: dict) -> Mapped:
    """PyTorch's FlashAttention-2 (flash_fwd_kernel / flash_fwd_splitkv_kernel): memsim's flash2 and
    flash_decoding model the same schedules."""
    shape = shape_of(row)
    launches = main_launches(row)
    if any("splitkv" in k["kernel"] for k in launches) or shape.q_len == 1:
        if shape.q_len > 16:
            raise Unmapped("FA2's split-KV path on a prefill shape: memsim's flash_decoding models decode only")
        return _decode(row, shape, launches, "FA2 decode")
    return _fa2_prefill(row, shape, launches[0], "FA2: BLOCK_M from the grid, BLOCK_N from shared memory")


def map_sdpa_cudnn(row: dict) -> Mapped:
    """cuDNN's sm90 kernel: warp-specialised (384 threads = producer + 2 consumer warpgroups) on a
    persistent grid of one CTA per SM: memsim's flash3 on a persistent grid. Causal: tiles of unequal
    length go to whichever CTA asks next, as FlashAttention-3 does (hopper/flash_fwd_launch_template.h:
    DynamicPersistentTileScheduler when causal or local, StaticPersistentTileScheduler otherwise); with
    one CTA per SM that is the hardware's own first-free-slot dispatch, memsim's program-id order (a
    static stride lets CTAs drift onto many heads at once: 10x the measured HBM reads at N=16384). Its
    decode path is an sm80 split kernel like FA2's. Called without grad, as the suite calls it, both write O and
    no log-sum-exp (SM -> L2 bytes: exactly O's at one split, O's plus 0.2% at d = 64 prefill): lse_output False."""
    shape = shape_of(row)
    launches = main_launches(row)
    if shape.q_len == 1:
        return _decode(row, shape, launches, "cuDNN sm80 decode, no LSE", lse_output=False)
    grid = int(launches[0]["launch__grid_size"])
    block_m = cudnn_block_m(launches[0])
    tiles = resolve_tiles(_gpu(GPU), "flash3", shape, block_m=block_m, lse_output=False)
    how = f"BLOCK_M {block_m} from its consumer warpgroups, FA3's BLOCK_N, no LSE"
    if shape.causal:
        return Mapped("flash3", shape, tiles, how=f"{how}, tiles handed to whichever of the {grid} persistent CTAs "
                                                  f"is free (dynamic scheduler): program-id dispatch")
    return Mapped("flash3", shape, tiles, order="persistent", ctas=grid, how=f"{how}, persistent grid of {grid} CTAs")


def cudnn_block_m(launch: dict) -> int:
    """Query rows per tile of a warp-specialised kernel: 64 per consumer warpgroup (wgmma's M), one warpgroup of
    the CTA being the producer. cuDNN's 384 threads hold two consumers at d = 64 as at d = 128, so its tiles are 128
    rows where FlashAttention-3's own d = 64 kernel takes 192 (three consumers, 512 threads): the grid of 64 CTAs at
    B1 H16 N512 (4 q-blocks x 16 heads; 192 rows would make 48) says the same."""
    return flash3.block_m_for_warps(_warps(launch))


def map_sdpa_efficient(row: dict) -> Mapped:
    """CUTLASS memory-efficient attention (xFormers): one CTA per 64 queries looping over key blocks,
    O in registers ("rf"): the FA2 schedule with the tile from its name (64 x 128 or 64 x 64). Its Q K^T GEMM
    streams Q from global memory for every key block (TileConfig.q_reload): the crossbar counters show K/V plus
    one Q tile per key block, to the byte (2.5 GiB at B1 H16 N4096 d128, 12 GiB at B1 H32 N8192 d64)."""
    shape = shape_of(row)
    launch = main_launches(row)[0]
    block_m = q_block_rows(shape, int(launch["launch__grid_size"]))
    block_n = 128 if "64x128" in launch["kernel"] else 64
    tiles = TileConfig(block_m=block_m, block_n=block_n, num_warps=_warps(launch), num_stages=1, q_reload=True)
    return Mapped("flash2", shape, tiles, how="FA2 schedule, tile from the kernel name, Q read per key block")


def map_flex(row: dict) -> Mapped:
    """flex_attention's Triton template: the FA2 schedule (Triton tutorial 06), BLOCK_M from the grid."""
    shape = shape_of(row)
    launch = main_launches(row)[-1]
    block_m = q_block_rows(shape, int(launch["launch__grid_size"]))
    keys = kv_stage_keys(shape, launch, block_m)
    block_n = min(64, keys)
    tiles = TileConfig(block_m=block_m, block_n=block_n, num_warps=_warps(launch),
                       num_stages=max(1, keys // block_n))
    return Mapped("flash2", shape, tiles, how="Triton FA2 template: BLOCK_M from the grid, stages from shared memory")


def map_sdpa_math(row: dict) -> Mapped:
    """The math path: memsim's sdpa_math, PyTorch's launches around standard attention in fp32 (casts, scales, the
    masked-row check), its GEMMs as they run (sm80_xmma_gemm_f32f32_..._ffma: FMA on the CUDA cores, TF32 off)."""
    return Mapped("sdpa_math", shape_of(row), None, how="PyTorch's math path: casts, scales, GEMMs in fp32, softmax "
                                                        "and the masked-row check, every launch")


MAPPERS = {"sdpa_flash": map_sdpa_flash, "sdpa_cudnn": map_sdpa_cudnn, "sdpa_efficient": map_sdpa_efficient,
           "flex_attention": map_flex, "sdpa_math": map_sdpa_math}


def map_case(row: dict) -> Mapped:
    if row.get("error") or not row.get("launches"):
        raise Unmapped(row.get("error") or "no kernel launches recorded")
    mapper = MAPPERS.get(row["kernel"])
    mapped = map_ours(row) if mapper is None else mapper(row)
    mapped = with_mma(mapped, matrix_instruction(row))
    return replace(mapped, resources=launch_resources(mapped, row))


# The matrix instruction each measured launch compiled to (memsim's TileConfig.mma). Triton kernels: read from their
# PTX (validation/mma_instructions.py over the suite's Triton caches on the H100, results/h100/mma-instructions-*).
# Others: from the name ncu reports. cuDNN's sm90 kernels say wgmma; FlashAttention-2 (pytorch_flash::) and
# CUTLASS's fmha_cutlassF_*_sm80 are sm_80 code, as is cuDNN's sm80 decode kernel (wmma): mma.sync; the math path's
# GEMMs say ffma (fp32 operands on the CUDA cores; ncu shows the tensor pipe idle).
RESULTS = Path(__file__).parent / "results" / "h100"


@lru_cache(maxsize=None)
def _triton_instructions() -> dict[str, str]:
    """Triton kernel name -> "fastest", "mma_sync" or None (no matrix products), from the newest PTX record."""
    files = sorted(RESULTS.glob("mma-instructions-*.json"))
    if not files:
        return {}
    path = {"warpgroup": "fastest", "warp": "mma_sync", "none": None}
    return {r["kernel"]: path[r["mma"]] for r in json.loads(files[-1].read_text())}


def launch_instruction(kernel: str) -> str | None:
    """The matrix instruction of one launch by its name; None for a launch with no matrix products (or unknown)."""
    triton = _triton_instructions()
    if kernel in triton:
        return triton[kernel]
    if "wgmma" in kernel:
        return "fastest"
    if "ffma" in kernel:
        return "fma"
    if "sm80" in kernel or "pytorch_flash::" in kernel:
        return "mma_sync"
    return None


def matrix_instruction(row: dict) -> str:
    """The case's matrix instruction: the slowest that any of its attention launches uses."""
    found = {launch_instruction(k["kernel"]) for k in main_launches(row)}
    return next((path for path in ("fma", "mma_sync") if path in found), "fastest")


def with_mma(mapped: Mapped, mma: str) -> Mapped:
    if mma == "fastest" and (mapped.tiles is None or mapped.tiles.mma == mma):
        return mapped
    tiles = mapped.tiles or ALGORITHMS[mapped.algo].default_tiles(_gpu(GPU), mapped.shape)
    return replace(mapped, tiles=replace(tiles, mma=mma), how=f"{mapped.how}; matrix products on {mma}")


TORCH_ELEMENTWISE = "void at::native::"  # PyTorch's own kernels (fills, casts, copies), as ncu names them


@lru_cache(maxsize=None)
def _instruction_rows() -> dict[str, dict]:
    """Case id -> its row of validation.instruction_mix's records (a later file's row replaces an earlier one)."""
    rows = {}
    for path in sorted(RESULTS.glob("instructions-*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows[row["id"]] = row
    return rows


def loop_instructions(launch, measured: dict, case_id: str, position: int) -> float | None:
    """Instructions per warp per loop iteration of a measured launch: the warp instructions ncu counted for it
    (validation.instruction_mix, the same launch of the case by position and name) over its warps x the loop
    iterations of memsim's launch, summed over its CTAs. Prologue and epilogue instructions are spread over the
    iterations. None where nothing was counted or memsim's launch has no loop."""
    row = _instruction_rows().get(case_id)
    if row is None:
        return None
    counted = main_launches(row)
    if position >= len(counted) or counted[position]["kernel"] != measured["kernel"]:
        return None
    instructions = counted[position].get("smsp__inst_executed.sum")
    iterations = sum(p.loop.iterations for p in map(launch.program, range(launch.grid)) if p.loop is not None)
    if not instructions or not iterations:
        return None
    return instructions / (measured["launch__block_size"] / 32 * iterations)


def launch_resources(mapped: Mapped, row: dict) -> dict:
    """memsim launch name -> the registers and shared memory ncu reported for the measured launch of the same grid,
    so that memsim's occupancy is the launch's, and the instructions its warps issue per loop iteration
    (loop_instructions). Where the case's attention launches and memsim's compared
    launches are as many, they pair up in order, and each pair with equal grids (a persistent grid: the CTAs
    memsim was given) and equal threads per CTA takes the measured launch's (a split-KV decode's split kernel
    even where its combine kernel is not memsim's); every other launch keeps memsim's own estimates. The
    instructions need equal threads only: they are counted over the whole launch and spread over memsim's
    own loop iterations, however memsim splits the work into CTAs."""
    algorithm = ALGORITHMS[mapped.algo]
    tiles = mapped.tiles or algorithm.default_tiles(_gpu(GPU), mapped.shape)
    ours = [launch for launch in algorithm.schedule(mapped.shape, tiles, mapped.pass_)
            if (mapped.kernels is None or launch.name in mapped.kernels) and launch.grid > 1]  # as main_launches
    theirs = list(enumerate(main_launches(row)))  # (position among the case's launches, launch)
    if len(ours) != len(theirs):  # PyTorch's own fills and casts around the attention launches do not pair
        theirs = [(i, k) for i, k in theirs if not k["kernel"].startswith(TORCH_ELEMENTWISE)]
    if len(ours) != len(theirs):
        return {}
    out = {}
    for launch, (position, measured) in zip(ours, theirs):
        grid = mapped.ctas if mapped.order == "persistent" else launch.grid
        registers = measured.get("launch__registers_per_thread")
        smem = (measured.get("launch__shared_mem_per_block_dynamic") or 0) + \
            (measured.get("launch__shared_mem_per_block_static") or 0)
        threads = measured.get("launch__block_size")
        if threads != 32 * launch.warps_per_cta:
            continue  # not the same CTA (e.g. cuDNN's 3 warpgroups against memsim's FA3 CTA)
        instructions = loop_instructions(launch, measured, row["id"], position)
        if grid == measured.get("launch__grid_size") and registers:
            out[launch.name] = CtaResources(int(registers), int(smem) or None, instructions)
        elif instructions is not None:
            out[launch.name] = CtaResources(loop_instructions=instructions)
    return out


# Our kernel -> the launch whose tiles memsim's main kernel takes, where it is not the first with a BLOCK_M tile:
# the backward's dK/dV kernel is FlashAttention-2's key-block CTA (BLOCK_N keys held, BLOCK_M query rows per step),
# memsim.schedules.flash2_bwd's main kernel; the delta kernel before it has a BLOCK_M of rows too.
MAIN_LAUNCH = {"flash2_bwd": "_flash2_bwd_dkdv"}

# Our kernel -> the launch whose pipeline stages memsim's tiles take, where the main launch has no loop to pipeline:
# linear attention's output kernel is one matmul per CTA (memsim.schedules.linear.output_kernel); its state kernel
# streams K and V through 3 stages (kernels/linear.py, state_config), as memsim's state kernel does tiles.num_stages.
STAGES_LAUNCH = {"linear": "linear_state_kernel"}

# Where memsim's schedule and our kernel differ, what the prediction counts that the kernel does not, or the other
# way round (appended to Mapped.how for the report).
NOT_MODELLED = {
    "ring": "one Ring Attention step is FlashAttention-2's forward over one K/V block: flash2 on (local queries, "
            "block keys); c1 is the diagonal step, which memsim's causal alignment matches because the lengths are "
            "equal; the merge launch is not measured",
    "moba": "the gate runs outside the timed call (per query tile, as memsim assumes): only memsim's moba_attn "
            "launch is compared (MEASURED_KERNELS), not its moba_pool and moba_gate",
    "flash2_fp8": "flash2 on fp8 inputs, O written in bf16 as the kernel does (AttentionShape.out_element_bytes); "
                  "memsim does not count the per-block scales (4 bytes per 128 tokens of Q, K, V)",
}


# Our kernel -> the TileConfig fields its structure fixes: our backward computes dQ in a kernel of its own
# (kernels/flash2.py), memsim.algorithms.flash2_bwd_separate_dq; our int8 decode loads its V codes into registers
# in the iteration that uses them (TileConfig.v_prefetch: its sm_90 SASS, results/h100/sass-loops-kv_int8-*); our
# Lightning scan, launched with 2 stages, issues the next iteration's copies after its last matmul and waits for all
# of them at the loop's top (DEPBAR.LE SB0, 0x0: results/h100/sass-lightning-*), so no load overlaps compute: 1 stage.
KERNEL_STRUCTURE = {"flash2_bwd": {"dq": "separate"}, "kv_int8": {"v_prefetch": False}, "lightning": {"num_stages": 1}}

# Our kernel -> memsim's launches that the measurement covers, where it does not cover all of them.
MEASURED_KERNELS = {"moba": ("moba_attn",)}


def _main_config(row: dict, configs: list[dict]) -> dict:
    """The launch whose tiles memsim's main kernel takes: MAIN_LAUNCH's, else the first with a BLOCK_M tile
    (not an init or combine pass)."""
    name = MAIN_LAUNCH.get(row["kernel"])
    if name is not None:
        return _config_named(row, configs, name)
    return next((c for c in configs if c["block_m"] > 1), configs[0])


def _config_named(row: dict, configs: list[dict], name: str) -> dict:
    found = [c for c in configs if c["kernel"] == name]
    if not found:
        raise Unmapped(f"{row['kernel']}: no {name} among the recorded launches "
                       f"{', '.join(c['kernel'] for c in configs)}")
    return found[0]


def _check_moba(row: dict) -> None:
    """memsim's "moba" models one block size and top-k (memsim.algorithms.moba): a row that ran others is refused."""
    ran = (row.get("moba_block_size"), row.get("moba_top_k"))
    if ran != (MOBA_BLOCK_SIZE, MOBA_TOP_K):
        raise Unmapped(f"moba ran blocks of {ran[0]} keys, top-{ran[1]}; memsim's moba models blocks of "
                       f"{MOBA_BLOCK_SIZE}, top-{MOBA_TOP_K}")


def map_ours(row: dict, gpu: str = GPU) -> Mapped:
    """Our kernels record the launch configs they ran from (kernels.launch.LaunchConfig) in the row, with the
    memsim algorithm and pass that model them: the main kernel's tiles (_main_config) replace the memsim
    algorithm's defaults, which keep the rest (loop order)."""
    configs = row.get("launch_configs")
    if not configs:
        raise Unmapped(f"{row['kernel']}: no launch config recorded")
    if row["kernel"] == "moba":
        _check_moba(row)
    main = _main_config(row, configs)
    algo = row.get("memsim_algo") or row["kernel"]
    shape = shape_of(row)
    base = ALGORITHMS[algo].default_tiles(_gpu(gpu), shape)
    staged = _config_named(row, configs, STAGES_LAUNCH[row["kernel"]]) if row["kernel"] in STAGES_LAUNCH else main
    tiles = replace(base, block_m=main["block_m"], block_n=main["block_n"] if main["block_n"] > 1 else base.block_n,
                    num_warps=main["num_warps"], num_stages=staged["num_stages"],
                    num_splits=row.get("num_splits") or base.num_splits, page_size=row.get("page_size") or base.page_size)
    structure = KERNEL_STRUCTURE.get(row["kernel"], {})
    spilled = OUR_SPILLS.get((row["kernel"], shape.head_dim, shape.causal), 0)
    tiles = replace(tiles, **structure, spill_bytes_per_cta=spilled)
    how = f"the kernel's own launch config ({main['kernel']})"
    if staged is not main:
        how += f"; its {staged['num_stages']} stages from {staged['kernel']}"
    if structure:
        how += "; as compiled: " + ", ".join(f"{k} = {v}" for k, v in structure.items())
    if spilled:
        how += f"; spills {spilled} B per CTA (OUR_SPILLS, probed outside the suite)"
    if row["kernel"] in NOT_MODELLED:
        how += f"; {NOT_MODELLED[row['kernel']]}"
    return Mapped(algo, shape, tiles, how=how, pass_=row.get("memsim_pass") or "fwd",
                  kernels=MEASURED_KERNELS.get(row["kernel"]))
