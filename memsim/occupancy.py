"""How many CTAs of a kernel an SM holds at once, and what stops it holding more.

The limits are those of the CUDA Occupancy Calculator (CUDA C++ Programming Guide,
"Occupancy Calculator" and Technical Specifications): shared memory (with the
per-block reservation), registers (allocated per warp in units of 256), warps, and
the hardware's cap on resident blocks.
"""

from dataclasses import dataclass
from math import ceil

from memsim.errors import MemsimError
from memsim.hardware.spec import GPUSpec

REGISTER_ALLOCATION_UNIT = 256  # registers, per warp (CUDA Occupancy Calculator, cc >= 7.0)


@dataclass(frozen=True)
class Occupancy:
    ctas_per_sm: int
    limiter: str  # "smem", "registers", "warps", "ctas"
    slots: int  # CTAs resident on the whole GPU at once
    waves: int

    @property
    def as_dict(self) -> dict:
        return {"ctas_per_sm": self.ctas_per_sm, "limiter": self.limiter, "waves": self.waves}


def check_fits(gpu: GPUSpec, smem_bytes: int, what: str) -> None:
    if smem_bytes > gpu.smem_per_block_optin_bytes:
        raise MemsimError(
            f"{what} needs {smem_bytes} B of shared memory per CTA, more than the "
            f"{gpu.smem_per_block_optin_bytes} B a block may have on {gpu.name}; use smaller tiles or fewer stages")


def occupancy(gpu: GPUSpec, smem_bytes: int, warps: int, registers_per_thread: int, grid_ctas: int,
              what: str = "this tile config") -> Occupancy:
    check_fits(gpu, smem_bytes, what)
    regs = min(registers_per_thread, gpu.max_registers_per_thread)
    regs_per_warp = ceil(regs * gpu.warp_size / REGISTER_ALLOCATION_UNIT) * REGISTER_ALLOCATION_UNIT
    limits = {
        "smem": gpu.smem_per_sm_bytes // (smem_bytes + gpu.smem_reserved_per_block_bytes),
        "registers": (gpu.registers_per_sm // regs_per_warp) // warps,
        "warps": gpu.max_warps_per_sm // warps,
        "ctas": gpu.max_ctas_per_sm,
    }
    limiter = min(limits, key=limits.get)
    per_sm = limits[limiter]
    if per_sm < 1:
        raise MemsimError(
            f"a CTA of {warps} warps x {regs} registers/thread and {smem_bytes} B shared memory does not fit "
            f"on one SM of {gpu.name} (limited by {limiter})")
    slots = per_sm * gpu.sm_count
    return Occupancy(ctas_per_sm=per_sm, limiter=limiter, slots=slots, waves=ceil(grid_ctas / slots))
