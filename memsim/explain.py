"""Why a kernel is bound where it is, in a few plain sentences with the prediction's own numbers.

Every figure is read from the Prediction (utilisation, bytes, occupancy, achieved rates), so
the words cannot drift from the table. The discrete-event engine's busy fractions are simulated;
the analytic model's are each resource's time over the latency.
"""

from memsim.cli.render import human_bytes, human_count, human_kib, human_time
from memsim.result import KernelPrediction, Prediction

SATURATED = 0.6  # memsim.engine.report.SATURATED (kept here so the analytic path needs no engine)

UNIT_NAMES = {"tensor": "tensor cores", "cuda": "CUDA cores", "sfu": "SFU (exp)", "smem": "shared-memory bandwidth",
              "issue": "warp schedulers", "hbm": "HBM", "l2": "L2 bandwidth"}
COMPUTE_UNITS = ("tensor", "cuda", "sfu", "smem", "issue")
LIMITERS = {"smem": "shared memory", "registers": "registers", "warps": "warps", "ctas": "the hardware's CTA cap"}
BASIS = {"des": "busy = the fraction of the time a unit had work in the discrete-event simulation",
         "analytic": "busy = a resource's time over the latency (analytic roofline: its work / its rate)"}


def explain(prediction: Prediction) -> list[str]:
    """A few lines about the kernel that takes longest (and, for several kernels, its share)."""
    k = prediction.main_kernel
    lines = [kernels_line(prediction, k)] if len(prediction.kernels) > 1 else []
    waves = waves_line(k)
    if prediction.engine == "analytic" and k.slots and k.waves * k.slots > k.grid_ctas:
        waves += (f"; the analytic model stretches compute time by the idle slots "
                  f"(x{k.waves * k.slots / k.grid_ctas:.2f})")
    lines += [bound_line(k), atomics_line(k), memory_line(k), occupancy_line(k), waves, achieved_line(k),
              BASIS.get(prediction.engine, "")]
    return [line for line in lines if line]


def pct(fraction: float) -> str:
    return f"{fraction:.0%}"


def _busiest(k: KernelPrediction, skip: str = "") -> list[str]:
    ranked = sorted((u for u in k.utilisation if u != skip), key=k.utilisation.get, reverse=True)
    return [f"{UNIT_NAMES[u]} {pct(k.utilisation[u])}" for u in ranked[:3] if k.utilisation[u] > 0]


def kernels_line(p: Prediction, k: KernelPrediction) -> str:
    return (f"{len(p.kernels)} kernels; {k.name} takes {pct(k.latency_s / p.latency_s)} of the "
            f"{human_time(p.latency_s)}, and the lines below are about it")


def bound_line(k: KernelPrediction) -> str:
    u = k.utilisation
    if k.bound == "compute" and "launch" in k.resource_s:
        return _analytic_compute_line(k)
    if k.critical in UNIT_NAMES:
        others = _busiest(k, skip=k.critical)
        tail = f" (then {', '.join(others)})" if others else ""
        return f"{k.bound}-bound on {UNIT_NAMES[k.critical]}: {pct(u.get(k.critical, 0.0))} busy{tail}"
    busiest = ", ".join(_busiest(k)) or "none"
    if k.critical == "launch":
        return (f"launch-bound: the launch overhead is more than any unit's work "
                f"(latency {human_time(k.latency_s)}; busiest: {busiest})")
    if "memory_latency" in k.resource_s:  # the analytic model's Little's-law term
        share = k.resource_s["memory_latency"] / k.latency_s
        return (f"latency-bound: memory round trips take {pct(share)} of the latency, since each CTA keeps "
                f"only its stage buffers in flight (busiest: {busiest})")
    steps = "their own steps one after another"
    if k.loop_instructions:
        steps += f" (each warp issuing its {k.loop_instructions:,.0f} instructions per loop iteration in turn)"
    return (f"latency-bound: no unit is {pct(SATURATED)} busy (busiest: {busiest}); CTAs spend their time "
            f"waiting on memory round trips and on {steps}")


def atomics_line(k: KernelPrediction) -> str:
    """Where each CTA ends waiting for ordered atomics (linear attention's state reduction), how long: "" if not."""
    if k.ordered_atomic_wait_s <= 0:
        return ""
    return (f"each CTA ends waiting {human_time(k.ordered_atomic_wait_s)} for its threads' ordered (acq_rel) atomics, "
            f"one fenced round trip to L2 after another ({pct(k.ordered_atomic_wait_s / k.latency_s)} of the "
            f"latency); relaxed atomics would not wait (--atomic-sem relaxed)")


def _analytic_compute_line(k: KernelPrediction) -> str:
    """The roofline's compute time is the units' times added (a warp does its matmuls, then its
    softmax) or their largest (FlashAttention-3 overlap); either way it is the latency less the launch."""
    share = 1 - k.resource_s["launch"] / k.latency_s
    compute_units = [u for u in COMPUTE_UNITS if k.utilisation.get(u, 0.0) > 0]
    compute_units.sort(key=k.utilisation.get, reverse=True)
    parts = ", ".join(f"{UNIT_NAMES[u]} {pct(k.utilisation[u])}" for u in compute_units)
    others = [f"{UNIT_NAMES[u]} {pct(k.utilisation[u])}" for u in ("l2", "hbm") if u in k.utilisation]
    return (f"compute-bound on {UNIT_NAMES[k.critical]}: compute takes {pct(share)} of the latency "
            f"({parts}); memory: {', '.join(others)}")


def reread_tensors(k: KernelPrediction) -> list[str]:
    """Tensors the SMs read more bytes of than came from HBM: L2 served the difference."""
    return [t for t, b in k.bytes_by_tensor.items() if b["l2_read"] > b["hbm_read"]]


def memory_line(k: KernelPrediction) -> str:
    u = k.utilisation
    head = f"HBM {pct(u.get('hbm', 0.0))} busy, L2 {pct(u.get('l2', 0.0))}"
    tensors = reread_tensors(k)
    if not tensors:
        return f"{head}; no tensor is read twice: the SMs' {human_bytes(k.bytes['l2_read'])} of reads all come from HBM"
    to_sms = sum(k.bytes_by_tensor[t]["l2_read"] for t in tensors)
    from_hbm = sum(k.bytes_by_tensor[t]["hbm_read"] for t in tensors)
    return (f"{head}; the L2 served {pct(1 - from_hbm / to_sms)} of {'/'.join(tensors)} reads "
            f"({human_bytes(to_sms)} to the SMs, {human_bytes(from_hbm)} from HBM)")


def occupancy_line(k: KernelPrediction) -> str:
    n = k.ctas_per_sm
    head = f"{n} CTA{'s' if n != 1 else ''} per SM, limited by {LIMITERS.get(k.occupancy_limiter, k.occupancy_limiter)}"
    if k.occupancy_limiter == "smem":
        parts = ", ".join(f"{name} {human_kib(b)}" for name, b in k.smem_buffers.items() if b)
        return f"{head} ({human_kib(k.smem_bytes_per_cta)} per CTA: {parts})"
    if k.occupancy_limiter == "registers":
        return f"{head} ({k.registers_per_thread} per thread x {32 * k.warps_per_cta} threads)"
    if k.occupancy_limiter == "warps":
        return f"{head} ({k.warps_per_cta} per CTA)"
    return head


def waves_line(k: KernelPrediction) -> str:
    if not k.slots:
        return f"{k.grid_ctas} CTAs in {k.waves} wave{'s' if k.waves != 1 else ''}"
    last = k.grid_ctas - (k.waves - 1) * k.slots
    if k.waves == 1:
        return f"{k.grid_ctas} CTAs in one wave: {pct(last / k.slots)} of the GPU's {k.slots} CTA slots in use"
    return f"{k.grid_ctas} CTAs in {k.waves} waves of {k.slots}; last wave {pct(last / k.slots)} full"


def achieved_line(k: KernelPrediction) -> str:
    a = k.achieved
    if not a:
        return ""
    return (f"achieved {human_count(a['tensor_flops_per_s'], 'FLOP/s')} on tensor cores, "
            f"{human_count(a['hbm_bytes_per_s'], 'B/s')} HBM <-> L2, "
            f"{human_count(a['l2_bytes_per_s'], 'B/s')} L2 <-> SMs")
