"""`scripts/chaos_resume.py 3`: SIGKILLed training runs resume to the uninterrupted run's adapter (to 1e-6)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_three_killed_runs_resume_to_the_uninterrupted_adapter(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "chaos_resume.py"), "3", "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "chaos resume: 3/3 rounds ok" in proc.stdout
