"""examples/lightning_project.py runs as a plain script and prunes a plain Lightning project."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_lightning_project_example_runs(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "lightning_project.py"), "--epochs", "3", "--out-dir", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=240, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "pruned layers: conv2, conv3" in out
    assert re.search(r"conv3\s+sparsity 0\.667\s+rate 3\.00 \(target 3\)", out), out
    assert "reload identical: True" in out
    acc = float(re.search(r"val/acc1 ([0-9.]+)", out).group(1))
    assert acc > 0.5, out  # real digits data: the pruned model still classifies
    assert (tmp_path / "pruned.ckpt").is_file()
