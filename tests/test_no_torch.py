"""memsim runs without torch: the model, the engine and the CLI never import it (DESIGN.md)."""

import subprocess
import sys


def test_memsim_imports_and_predicts_without_torch():
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # any import of torch now fails\n"
        "sys.modules['triton'] = None\n"
        "import memsim, memsim.cli.main, memsim.engine, memsim.bench\n"
        "p = memsim.predict('flash2', memsim.AttentionShape(q_len=256, q_heads=2), engine='des')\n"
        "assert p.latency_s > 0\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
