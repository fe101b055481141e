"""The validation suite: which kernel, on which shape, measured on the GPU and predicted by memsim.

Runs on the GPU machine (standard library only). A case's id is stable across runs and names
everything that defines it, e.g. "sdpa_flash.b1h16k16n4096m4096d128c0.bf16"; the id is also the
NVTX range around its launch, so Nsight Compute's rows can be traced back to it (no "/": ncu
joins range and kernel name with one).

Kernels:
- ours (kernels/): "flash2", "flash_decoding", "paged", "standard", "flash1", ... run the schedules
  memsim models, with the launch configs they report; "ring" (one Ring Attention step), "moba"
  (MoBA's block-sparse attention), "flash2_fp8" (the e4m3 forward) and "flash2_bwd" (FlashAttention-2's
  backward kernels alone) are measured the same way (validation/runners.py says what each call runs);
- theirs: PyTorch SDPA's "sdpa_flash", "sdpa_cudnn", "sdpa_efficient", "sdpa_math" and
  "flex_attention", whose code memsim has never seen: launch configs are read from ncu.
"""

import re
from dataclasses import asdict, dataclass

ID_PATTERN = re.compile(r"(\w+)\.b(\d+)h(\d+)k(\d+)n(\d+)m(\d+)d(\d+)c([01])\.(\w+)")  # Case.id, read back


@dataclass(frozen=True)
class Case:
    """One measured call. For "ring", q_len and kv_len are the local query block and the K/V block of one
    step; for "flash2_bwd", the shape of the forward whose gradients the backward kernels compute."""

    kernel: str
    batch: int
    q_heads: int
    kv_heads: int
    q_len: int
    kv_len: int
    head_dim: int
    causal: bool = False
    dtype: str = "bf16"

    @property
    def id(self) -> str:
        return (f"{self.kernel}.b{self.batch}h{self.q_heads}k{self.kv_heads}n{self.q_len}m{self.kv_len}"
                f"d{self.head_dim}c{int(self.causal)}.{self.dtype}")

    @staticmethod
    def from_id(text: str) -> "Case":
        """The case whose id is `text`; ValueError naming the form when it is not one."""
        match = ID_PATTERN.fullmatch(text)
        if match is None:
            raise ValueError(f"case {text!r} is not KERNEL.bBhHkKnNmMdDcC.DTYPE "
                             f"(e.g. flash2.b1h16k16n4096m4096d128c0.bf16)")
        kernel, b, h, k, n, m, d, c, dtype = match.groups()
        return Case(kernel, int(b), int(h), int(k), int(n), int(m), int(d), c == "1", dtype)

    @property
    def is_decode(self) -> bool:
        return self.q_len == 1

    def as_dict(self) -> dict:
        return {"id": self.id, **asdict(self)}


THIRD_PARTY = ("sdpa_flash", "sdpa_cudnn", "sdpa_efficient", "flex_attention")

# (batch, q heads, kv heads, q length, kv length, head dim, causal): prefill from 512 to 32K, MHA and GQA,
# head dims 64 and 128, causal and not; the first rows are the shapes shared/DESIGN.md quotes.
PREFILL = [
    (1, 16, 16, 4096, 4096, 128, False),
    (1, 16, 16, 4096, 4096, 128, True),
    (4, 32, 32, 4096, 4096, 128, False),
    (4, 32, 32, 4096, 4096, 128, True),
    (1, 16, 16, 512, 512, 64, False),
    (4, 16, 16, 1024, 1024, 128, False),
    (4, 16, 16, 1024, 1024, 128, True),
    (2, 32, 32, 2048, 2048, 64, True),
    (1, 32, 32, 8192, 8192, 64, False),
    (1, 32, 8, 4096, 4096, 128, False),
    (1, 32, 8, 4096, 4096, 128, True),
    (2, 16, 16, 16384, 16384, 128, True),
    (1, 8, 8, 32768, 32768, 128, False),
    (1, 16, 16, 4096, 4096, 64, False),
]
# Decode (one query per sequence) over growing contexts, GQA and MHA.
DECODE = [
    (64, 32, 8, 1, 8192, 128, False),
    (8, 32, 8, 1, 32768, 128, False),
    (16, 32, 8, 1, 16384, 64, False),
    (1, 32, 32, 1, 4096, 128, False),
    (32, 32, 32, 1, 2048, 128, False),
]
# flex_attention compiles per shape (tens of seconds each): a few shapes.
FLEX = [PREFILL[0], PREFILL[1], PREFILL[3], PREFILL[9]]
# The math path writes S and P (B x H x N^2 each): small shapes only.
MATH = [
    (1, 16, 16, 1024, 1024, 128, False),
    (1, 16, 16, 2048, 2048, 64, False),
    (2, 8, 8, 1024, 1024, 64, True),
]


def _cases(kernel: str, shapes: list[tuple]) -> list[Case]:
    """Shapes are Case's fields after the kernel, in order (a dtype last where it is not bf16)."""
    return [Case(kernel, *shape) for shape in shapes]


def suite(name: str, ours: tuple[str, ...] = ()) -> list[Case]:
    """"third-party": PyTorch's kernels only; "full": those and ours; "smoke": a handful, for a quick check."""
    theirs = [c for k in THIRD_PARTY if k != "flex_attention" for c in _cases(k, PREFILL + DECODE)]
    theirs += _cases("flex_attention", FLEX)
    theirs += _cases("sdpa_math", MATH)
    mine = []
    for kernel in ours:
        mine += _cases(kernel, OURS_SHAPES.get(kernel, PREFILL))
    if name == "third-party":
        return theirs
    if name == "full":
        return theirs + mine
    if name == "smoke":
        return [Case("sdpa_flash", *PREFILL[0]), Case("sdpa_cudnn", *PREFILL[0]), Case("sdpa_flash", *DECODE[0])]
    raise ValueError(f"unknown suite {name!r}; use third-party, full or smoke")


# One Ring Attention step (kernels/ring.py): a rank's local queries against one K/V block of the same length, the
# per-rank block of a sequence of world x N (1K to 16K per rank, e.g. 128K over 8 GPUs). c1 is the diagonal step
# (the rank's own block, causal inside it), c0 a step with no mask (a bidirectional ring; in a causal ring every
# earlier block loads the same tiles). Head dims 64 and 128, MHA and GQA.
RING = [
    (1, 16, 16, 1024, 1024, 64, False),
    (1, 16, 16, 1024, 1024, 64, True),
    (1, 32, 32, 4096, 4096, 128, False),
    (1, 32, 32, 4096, 4096, 128, True),
    (2, 32, 32, 4096, 4096, 64, True),
    (1, 32, 8, 16384, 16384, 128, False),
    (1, 32, 8, 16384, 16384, 128, True),
]
# MoBA (kernels/block_sparse.py) is causal over one sequence (q_len == kv_len); blocks of 512 keys, top-3
# (validation/runners.py): from 4 blocks (2K) to 64 (32K), MHA and GQA.
MOBA = [
    (1, 16, 16, 2048, 2048, 64, True),
    (1, 32, 32, 8192, 8192, 64, True),
    (1, 32, 32, 8192, 8192, 128, True),
    (1, 32, 8, 8192, 8192, 128, True),
    (1, 16, 16, 32768, 32768, 128, True),
]
# The e4m3 forward (kernels/flash2_fp8.py): prefill shapes of PREFILL's range, dtype "fp8" in the id.
FP8 = [(*shape, "fp8") for shape in (
    (1, 16, 16, 1024, 1024, 64, False),
    (1, 16, 16, 1024, 1024, 64, True),
    (4, 32, 32, 4096, 4096, 128, False),
    (4, 32, 32, 4096, 4096, 128, True),
    (1, 32, 8, 4096, 4096, 128, True),
    (1, 16, 16, 4096, 4096, 64, False),
    (2, 16, 16, 16384, 16384, 128, True),
)]
# FlashAttention-2's backward kernels (kernels/flash2.py), MHA only: memsim's backward writes dK/dV per q head
# where ours sums a GQA group in registers, so only MHA has the same key-block grid (validation/mapping.py).
BACKWARD = [
    (1, 16, 16, 1024, 1024, 64, False),
    (1, 16, 16, 1024, 1024, 64, True),
    (1, 16, 16, 4096, 4096, 128, False),
    (1, 16, 16, 4096, 4096, 128, True),
    (2, 32, 32, 4096, 4096, 64, True),
    (2, 16, 16, 8192, 8192, 128, True),
]

# Our kernels: the decode ones on decode shapes; those that write N^2 intermediates (standard) or walk
# every key block per (batch, head) in one CTA (flash1) on the small shapes; ring, MoBA, FP8 and the backward on
# their lists above; the rest on PREFILL.
OURS_SHAPES = {"flash_decoding": DECODE, "paged": DECODE, "flash_decoding_pp": DECODE, "kv_int8": DECODE,
               "standard": MATH, "flash1": MATH,
               "linear": [s for s in PREFILL if not s[6]], "lightning": [s for s in PREFILL if s[6]],
               "ring": RING, "moba": MOBA, "flash2_fp8": FP8, "flash2_bwd": BACKWARD}
