"""Scenario files: what-if questions as commented YAML, run through memsim's library (`memsim run`), each
checked against its expected output."""

from memsim.scenario.expected import check_expected, differences, expected_path, to_json, write_expected
from memsim.scenario.load import Scenario, Step, load_scenario
from memsim.scenario.run import ScenarioResult, StepResult, run_scenario
from memsim.scenario.steps import STEP_KINDS

__all__ = ["STEP_KINDS", "Scenario", "ScenarioResult", "Step", "StepResult", "check_expected", "differences",
           "expected_path", "load_scenario", "run_scenario", "to_json", "write_expected"]
