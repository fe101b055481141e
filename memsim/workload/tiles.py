"""How a kernel cuts the problem into CTAs: named like the Triton meta-parameters."""

from dataclasses import asdict, dataclass

from memsim.errors import MemsimError
from memsim.hardware.spec import MMA_PATHS

LOOP_ORDERS = ("q_outer", "kv_outer")  # FlashAttention-2 order / FlashAttention-1 order
DQ_MODES = ("atomic", "separate")  # FlashAttention-2 backward: dQ by fp32 atomics / in its own kernel
ATOMIC_SEMS = ("acq_rel", "relaxed")  # Triton's tl.atomic_add semantics: its default / fire and forget
KEY_ORDERS = ("ascending", "descending")  # a query block's key blocks first to last / last to first


@dataclass(frozen=True, kw_only=True)
class TileConfig:
    """BLOCK_M query rows and BLOCK_N keys per tile; num_warps per CTA; num_stages of K/V buffers.

    `num_splits` cuts the keys of each (batch, head) across CTAs (Flash-Decoding);
    `page_size` is the tokens per KV-cache page (PagedAttention);
    `q_reload` reads the Q tile from global memory again for every key block instead of keeping it on
    chip (flash2 only): CUTLASS memory-efficient attention (PyTorch SDPA's "efficient" path) streams both
    operands of Q K^T through its GEMM iterators, so on the H100 its L2 -> SM reads are K/V plus one Q tile
    per key block (validation/results/h100: 2.5 GiB at B1 H16 N4096 d128, 64 x 128 tiles);
    `mma` is the instruction the kernel's matrix products compile to: "fastest" (the GPU's own: wgmma on
    Hopper), "mma_sync" (sm_80 code such as FlashAttention-2 and CUTLASS's sm80 kernels, or a Triton dot it
    cannot put on wgmma; on the H100 it peaks at 0.66 of wgmma's rate, validation/mma_sync_peak.cu) or "fma"
    (no tensor cores: an fp32 GEMM with TF32 off runs on the CUDA cores). The PTX shows which
    (validation/mma_instructions.py);
    `v_prefetch` False: the kernel loads each V tile into registers in the iteration that uses it instead of
    through the num_stages shared-memory buffers, so every iteration waits out its V load (flash_decoding's
    split kernel and those built on it). kernels/kv_quant.py's int8 decode does: compiled for sm_90 its loop
    fetches the V codes with plain LDG.E.128 and unpacks them (PRMT) about 65 instructions later, where the
    K codes go through cp.async (LDGSTS); ncu shows it stalled on long scoreboard 12 cycles per issued
    instruction (validation/results/h100/ncu-kv-int8-vs-bf16-decode-2026-11-22.csv, sass-loops-kv_int8-*);
    `dq` is how a FlashAttention-2 backward computes dQ: "atomic" (flash-attention's CUDA kernels: the
    key-block CTA adds dS K into an fp32 accumulator in L2) or "separate" (the Triton tutorial 06 and
    kernels/flash2.py: no atomics, a second kernel of BLOCK_N-row query tiles over BLOCK_M-key blocks,
    the key-block kernel's tile transposed, recomputes S and dP; memsim.algorithms.flash2_bwd_separate_dq);
    `atomic_sem` is the ordering of the atomic adds that reduce linear attention's partial states: "acq_rel"
    (Triton's default for tl.atomic_add: each thread's atomics one at a time, each behind a GPU-scope fence and
    waiting for its result, MEMBAR.ALL.GPU + ATOMG in the SASS) or "relaxed" (RED: the warps go on).
    FlashAttention-2's dQ atomics are atomicAdd, relaxed, whatever this says.
    `lse_output` False: the forward writes O alone, not each row's log-sum-exp beside it (an inference kernel
    that keeps no statistics for a backward: cuDNN's, through PyTorch SDPA without grad, wrote exactly O's bytes,
    validation/results/h100). Partial statistics that splits exchange are still written.
    `key_order` is the order a query block walks its key blocks (flash2 forward): "ascending" (the Triton
    tutorial, kernels/flash2.py) or "descending" (FlashAttention-2's CUDA forward, PyTorch SDPA's flash path:
    flash_fwd_kernel.h, compute_attn_1rowblock, "We iterate over the blocks in reverse order", so that only the
    first block it walks needs the causal mask). On the H100 the descending walk alone re-reads K and V from HBM
    as a head's keys grow (validation/key_order_probe.py, validation/ACCURACY.md).
    """

    block_m: int = 128
    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 2
    loop_order: str = "q_outer"
    num_splits: int = 1
    page_size: int = 16
    q_reload: bool = False
    v_prefetch: bool = True
    mma: str = "fastest"
    dq: str = "atomic"
    atomic_sem: str = "acq_rel"
    spill_bytes_per_iteration: int = 0
    spill_bytes_per_cta: int = 0
    lse_output: bool = True
    key_order: str = "ascending"

    def __post_init__(self):
        for name in ("block_m", "block_n", "num_warps", "num_stages", "num_splits", "page_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise MemsimError(f"{name} = {value!r} must be a positive whole number")
        for name in ("spill_bytes_per_iteration", "spill_bytes_per_cta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise MemsimError(f"{name} = {value!r} must be a whole number of bytes, 0 or more")
        if self.num_warps & (self.num_warps - 1):
            raise MemsimError(f"num_warps = {self.num_warps} must be a power of two (1, 2, 4, 8, 16)")
        for name in ("q_reload", "v_prefetch", "lse_output"):
            if not isinstance(getattr(self, name), bool):
                raise MemsimError(f"{name} = {getattr(self, name)!r} must be true or false")
        if self.mma not in MMA_PATHS:
            raise MemsimError(f"mma = {self.mma!r} is not known; use one of {', '.join(MMA_PATHS)}")
        if self.dq not in DQ_MODES:
            raise MemsimError(f"dq = {self.dq!r} is not known; use one of {', '.join(DQ_MODES)}")
        if self.atomic_sem not in ATOMIC_SEMS:
            raise MemsimError(f"atomic_sem = {self.atomic_sem!r} is not known; use one of {', '.join(ATOMIC_SEMS)}")
        if self.key_order not in KEY_ORDERS:
            raise MemsimError(f"key_order = {self.key_order!r} is not known; use one of {', '.join(KEY_ORDERS)}")
        if self.loop_order not in LOOP_ORDERS:
            raise MemsimError(f"loop_order = {self.loop_order!r} is not known; use one of {', '.join(LOOP_ORDERS)}")

    @property
    def spills(self) -> bool:
        return self.spill_bytes_per_iteration > 0 or self.spill_bytes_per_cta > 0

    @property
    def threads(self) -> int:
        return self.num_warps * 32

    def as_dict(self) -> dict:
        return asdict(self)
