"""Run a list of kernel launches through the discrete-event model; results per launch."""

from dataclasses import dataclass

import simpy

from memsim.engine.dispatch import run_launch
from memsim.engine.machine import UNITS, Machine
from memsim.hardware.spec import Ceilings, GPUSpec
from memsim.occupancy import Occupancy, occupancy
from memsim.schedules.steps import Launch


@dataclass
class LaunchResult:
    launch: Launch
    occupancy: Occupancy
    start_s: float
    end_s: float
    counters: "object"  # memsim.engine.machine.Counters of this launch alone
    busy_s: dict  # unit -> seconds of full utilisation during the launch
    cohorts: list
    unit_intervals: dict  # unit -> [(start, end)] when tracing

    @property
    def latency_s(self) -> float:
        return self.end_s - self.start_s

    def utilisation(self) -> dict:
        span = self.latency_s or 1.0
        return {unit: busy / span for unit, busy in self.busy_s.items()}


def simulate(gpu: GPUSpec, ceilings: Ceilings, launches: list[Launch], fast: bool = True,
             trace: bool = False) -> list[LaunchResult]:
    """Each launch starts with a cold L2 (as under ncu) after one launch overhead."""
    results = []
    clock_s = 0.0
    for launch in launches:
        occ = occupancy(gpu, launch.smem_bytes_per_cta, launch.warps_per_cta, launch.registers_per_thread,
                        launch.grid, launch.name)
        env = simpy.Environment(initial_time=clock_s + ceilings.launch_overhead_s)
        m = Machine(env, gpu, ceilings, trace=trace)
        cohorts: list = []
        start = env.now
        env.run(env.process(run_launch(m, launch, occ, fast, cohorts)))
        end = env.now
        m.counters.flush(m.l2.flush())  # the next kernel starts cold, as under ncu
        results.append(LaunchResult(
            launch=launch, occupancy=occ, start_s=start - ceilings.launch_overhead_s, end_s=end,
            counters=m.counters, busy_s={u: m.units[u].busy_s for u in UNITS}, cohorts=cohorts,
            unit_intervals={u: m.units[u].busy_intervals or [] for u in UNITS},
        ))
        clock_s = end
    return results
