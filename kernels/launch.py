"""What a kernel launches: the config each op reports and launches from, so memsim can build the
matching schedule (memsim.workload.TileConfig) from the same numbers."""

import os
from dataclasses import dataclass

import torch

# Under TRITON_INTERPRET=1 (CPU, CI) programs run one at a time in numpy: small blocks keep tests fast.
INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"


@dataclass(frozen=True)
class LaunchConfig:
    kernel: str  # the Triton kernel's name
    block_m: int  # rows (queries) per program; 1 where the kernel has no such tile
    block_n: int  # keys per inner-loop step
    num_warps: int
    num_stages: int  # software pipelining depth of the inner loop
    grid: tuple[int, ...]
    shared_mem_bytes: int
    shared_mem_source: str = "estimate"  # "compiled": read from the compiled kernel; "estimate": its buffers

    def with_compiled(self, compiled) -> "LaunchConfig":
        """The same config with shared memory as the compiler allocated it, where the launch returned a kernel."""
        shared = getattr(getattr(compiled, "metadata", None), "shared", None)
        if shared is None:
            return self
        return LaunchConfig(self.kernel, self.block_m, self.block_n, self.num_warps, self.num_stages, self.grid,
                            int(shared), "compiled")

    def as_dict(self) -> dict:
        return {"kernel": self.kernel, "block_m": self.block_m, "block_n": self.block_n,
                "num_warps": self.num_warps, "num_stages": self.num_stages, "grid": list(self.grid),
                "shared_mem_bytes": self.shared_mem_bytes, "shared_mem_source": self.shared_mem_source}


def ceil_div(a: int, b: int) -> int:
    """Host-side ceil(a / b) for launch arithmetic: plain integers (triton.cdiv is a JIT-callable
    wrapper costing microseconds per call, which adds up in a launch heuristic's loop)."""
    return -(-a // b)


def element_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def launch(kernel, config: LaunchConfig, *args, launched: list | None = None, **constexprs) -> LaunchConfig:
    """Run `kernel` on `config`'s grid with its warps and stages (the caller passes the tiles among the
    constexprs, from the same config). Returns the config with shared memory as compiled where the launch
    returned a compiled kernel (on a GPU; the interpreter returns none), appended to `launched` if a list."""
    compiled = kernel[config.grid](*args, **constexprs, num_warps=config.num_warps, num_stages=config.num_stages)
    ran = config.with_compiled(compiled)
    if launched is not None:
        launched.append(ran)
    return ran
