"""Request lengths: read from a file (one length per line) or drawn from a named distribution.

The synthetic distributions are stand-ins for a trace, each bounded to [1, max_len] and reproducible
from a seed:
    uniform       every length in [1, max_len] equally likely
    lognormal     median max_len / 8, sigma 1 (a long right tail: most requests short, a few long)
    exponential   mean max_len / 4
    fixed         every request max_len tokens (contiguous and paged allocation then waste the same)
"""

from pathlib import Path

import numpy as np

from memsim.errors import MemsimError

DISTRIBUTIONS = ("uniform", "lognormal", "exponential", "fixed")
DEFAULT_REQUESTS = 1000


def read_lengths(path: str | Path, max_len: int | None = None) -> np.ndarray:
    """Lengths from a text file, one positive whole number per line; blank lines and # comments skipped.
    Returns int64 [requests]."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise MemsimError(f"{path}: cannot read lengths file ({err.strerror})") from None
    lengths = [_length(line.split("#")[0].strip(), path, number)
               for number, line in enumerate(lines, 1) if line.split("#")[0].strip()]
    if not lengths:
        raise MemsimError(f"{path}: no lengths found; write one positive whole number per line")
    return check_lengths(np.asarray(lengths, dtype=np.int64), max_len, str(path))


def _length(text: str, path: Path, number: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise MemsimError(f"{path}, line {number}: {text!r} is not a whole number of tokens") from None
    if value <= 0:
        raise MemsimError(f"{path}, line {number}: length {value} must be >= 1 token")
    return value


def check_lengths(lengths: np.ndarray, max_len: int | None, where: str = "lengths") -> np.ndarray:
    """Lengths as int64 [requests], each in [1, max_len]; refuses others by value."""
    lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
    if lengths.size == 0:
        raise MemsimError(f"{where}: no lengths given; need at least one request")
    if int(lengths.min()) < 1:
        raise MemsimError(f"{where}: length {int(lengths.min())} must be >= 1 token")
    if max_len is not None and int(lengths.max()) > max_len:
        raise MemsimError(f"{where}: length {int(lengths.max())} exceeds the context {max_len}; "
                          f"raise the context or drop the longer requests")
    return lengths


def synthetic_lengths(name: str, max_len: int, requests: int = DEFAULT_REQUESTS, seed: int = 0) -> np.ndarray:
    """`requests` lengths from distribution `name` (see DISTRIBUTIONS), int64 [requests] in [1, max_len]."""
    if name not in DISTRIBUTIONS:
        raise MemsimError(f"length distribution {name!r} is not known; use one of {', '.join(DISTRIBUTIONS)}")
    if requests <= 0 or max_len <= 0:
        raise MemsimError(f"requests = {requests} and max_len = {max_len} must both be >= 1")
    rng = np.random.default_rng(seed)
    draws = {
        "uniform": lambda: rng.integers(1, max_len, size=requests, endpoint=True),
        "lognormal": lambda: rng.lognormal(np.log(max_len / 8), 1.0, size=requests),
        "exponential": lambda: rng.exponential(max_len / 4, size=requests),
        "fixed": lambda: np.full(requests, max_len),
    }[name]()
    return np.clip(np.rint(draws), 1, max_len).astype(np.int64)
