"""Every attention algorithm memsim models, one file each. ALGORITHMS maps a name to its Algorithm."""

from memsim.algorithms import (flash1, flash2, flash3, flash_decoding, flash_decoding_pp, lightning, linear,
                               moba, nsa, paged, sdpa_math, standard)
from memsim.algorithms.base import PASSES, Algorithm

ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (
    standard.ALGORITHM,
    flash1.ALGORITHM,
    flash2.ALGORITHM,
    flash3.ALGORITHM,
    flash_decoding.ALGORITHM,
    flash_decoding_pp.ALGORITHM,
    paged.ALGORITHM,
    linear.ALGORITHM,
    lightning.ALGORITHM,
    lightning.ALGORITHM_NO_DECAY,
    moba.ALGORITHM,
    nsa.ALGORITHM,
    sdpa_math.ALGORITHM,
)}

__all__ = ["ALGORITHMS", "PASSES", "Algorithm"]
