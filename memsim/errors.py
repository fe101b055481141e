"""The one exception type memsim raises for bad input.

Every message names the thing that is wrong, its value, and what would be right,
on one line, so the CLI can print it as is and exit non-zero without a traceback.
"""


class MemsimError(ValueError):
    """Bad input: an unknown GPU, a malformed file, an impossible shape or tile."""
