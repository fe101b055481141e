"""The FlashAttention paper's own arithmetic (Dao et al. 2022): its block-size rule and exact
counts of the HBM accesses of Algorithm 0 (standard attention) and Algorithm 1 (FlashAttention),
in elements. The paper's GPU has no L2 between SRAM and HBM, so its "HBM accesses" are what
memsim calls L2 <-> SM traffic. Theorem 2: standard attention needs Theta(N d + N^2) accesses,
FlashAttention Theta(N^2 d^2 / M) for an SRAM of M elements with d <= M <= N d.

Everything here is for one (batch, head), N queries and N keys, no mask.
"""

from math import ceil

from memsim.errors import MemsimError
from memsim.workload.tiles import TileConfig


def _positive(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise MemsimError(f"{name} = {value!r} must be a positive whole number")
    return value


def paper_block_sizes(sram_elements: int, head_dim: int, n: int) -> dict:
    """Algorithm 1, line 1: B_c = ceil(M / 4d), B_r = min(ceil(M / 4d), d); T_r = ceil(N / B_r), T_c = ceil(N / B_c).

    B_c is chosen so that K_j, V_j, Q_i and O_i (each at most B_c x d) fit in M elements together;
    B_r <= d keeps the B_r x B_c block of S within M / 4 as well.
    """
    m, d, n = _positive("sram_elements", sram_elements), _positive("head_dim", head_dim), _positive("n", n)
    b_c = ceil(m / (4 * d))
    b_r = min(b_c, d)
    return {"block_n": b_c, "block_m": b_r, "t_r": ceil(n / b_r), "t_c": ceil(n / b_c)}


def paper_tiles(sram_elements: int, head_dim: int, n: int, num_warps: int = 4) -> TileConfig:
    """FlashAttention-1 tiles (key-block outer loop) sized by the paper's rule."""
    b = paper_block_sizes(sram_elements, head_dim, n)
    return TileConfig(block_m=b["block_m"], block_n=b["block_n"], num_warps=num_warps, num_stages=1,
                      loop_order="kv_outer")


def standard_hbm_accesses(n: int, d: int, block_m: int | None = None, block_n: int | None = None) -> int:
    """Elements Algorithm 0 reads and writes.

    1. load Q, K by blocks, write S = Q K^T     Q read once per column of S blocks (T_c times),
                                                 K once per row of S blocks (T_r times), S written: N^2
    2. read S, write P = softmax(S)              2 N^2
    3. load P and V by blocks, write O = P V     P read once (each block of rows reads its rows), V once per
                                                 block of rows (T_r times), O written: N d
    Without block sizes each matrix moves once (T_r = T_c = 1): 4 N d + 4 N^2, the paper's Theta(N d + N^2).
    With BLOCK_M x BLOCK_N blocks for S and BLOCK_M x d blocks for O, the panels are re-read as listed.
    """
    n, d = _positive("n", n), _positive("d", d)
    t_r = ceil(n / _positive("block_m", block_m)) if block_m is not None else 1
    t_c = ceil(n / _positive("block_n", block_n)) if block_n is not None else 1
    step1 = t_c * n * d + t_r * n * d + n * n
    step2 = 2 * n * n
    step3 = n * n + t_r * n * d + n * d
    return step1 + step2 + step3


def flash_hbm_accesses(n: int, d: int, m: int) -> int:
    """Elements Algorithm 1 reads and writes with an SRAM of m elements.

    line 2        initialise O (N x d), l (N), m (N) in HBM                      N d + 2 N written
    lines 5-6     load K_j, V_j, once per outer step: over all j                 2 N d read
    lines 7-8     for every j, every Q block loads Q_i, O_i, l_i, m_i            T_c (2 N d + 2 N) read
    lines 12-13   and writes O_i, l_i, m_i back                                  T_c (N d + 2 N) written
    Total 3 N d + 2 N + T_c (3 N d + 4 N); with T_c = ceil(N / ceil(m / 4d)) ~ 4 N d / m this is
    about 12 N^2 d^2 / m, the paper's Theta(N^2 d^2 / M).
    """
    n, d, m = _positive("n", n), _positive("d", d), _positive("m", m)
    t_c = paper_block_sizes(m, d, n)["t_c"]
    init = n * d + 2 * n
    kv = 2 * n * d
    inner = t_c * (2 * n * d + 2 * n) + t_c * (n * d + 2 * n)
    return init + kv + inner
