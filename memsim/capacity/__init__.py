"""Capacity planning: KV-cache and weight bytes, what fits on a GPU group, paging waste, prefix
sharing, and decode/prefill time from memsim.predict."""

from memsim.capacity.fit import DEFAULT_RESERVE_FRACTION, MemoryBudget, max_batch, max_context
from memsim.capacity.kv import KVLayout, kv_bytes_per_token
from memsim.capacity.lengths import DISTRIBUTIONS, read_lengths, synthetic_lengths
from memsim.capacity.paging import AllocationWaste, allocation_waste
from memsim.capacity.plan import CapacityPlan, plan
from memsim.capacity.sharing import SharingSavings, sharing_savings
from memsim.capacity.weights import WEIGHT_DTYPES, weight_bytes, weight_bytes_per_gpu

__all__ = ["AllocationWaste", "CapacityPlan", "DEFAULT_RESERVE_FRACTION", "DISTRIBUTIONS", "KVLayout",
           "MemoryBudget", "SharingSavings", "WEIGHT_DTYPES", "allocation_waste", "kv_bytes_per_token", "max_batch",
           "max_context", "plan", "read_lengths", "sharing_savings", "synthetic_lengths", "weight_bytes",
           "weight_bytes_per_gpu"]
