"""Every attention algorithm memsim models, one file each. ALGORITHMS maps a name to its Algorithm."""

from memsim.algorithms import flash2
from memsim.algorithms.base import PASSES, Algorithm

ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (
    flash2.ALGORITHM,
)}

__all__ = ["ALGORITHMS", "PASSES", "Algorithm"]
