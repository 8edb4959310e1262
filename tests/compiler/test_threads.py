"""TVM's thread pool: importing the compiler sizes it to the CPUs available, ``threads=`` is checked."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from npas_lightning.compiler import ThreadPoolError, compile_model, configure_threads
from npas_lightning.compiler.threads import POOL_ENV, available_cpus


def _python(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in (POOL_ENV, "OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                         timeout=120, check=True)
    return out.stdout.strip().splitlines()[-1]


def test_import_sizes_the_pool_to_the_available_cpus():
    """Without it, TVM would make a pool of half the hardware threads on x86 (one on a 2-vCPU VM)."""
    code = ("import os, tvm, npas_lightning.compiler as c; c.configure_threads(c.threads.available_cpus()); "
            f"print(os.environ['{POOL_ENV}'], tvm.get_global_func('runtime.NumThreads')())")
    assert _python(code) == f"{available_cpus()} {available_cpus()}"


def test_a_pool_size_the_user_set_is_kept_and_enforced():
    code = ("import os, npas_lightning.compiler as c\n"
            "try:\n    c.configure_threads(2)\nexcept c.ThreadPoolError as e:\n    print(os.environ['TVM_NUM_THREADS'], 'refused')")
    assert _python(code, **{POOL_ENV: "1"}) == "1 refused"


def test_configure_threads_runs_that_many_workers():
    import tvm

    n = min(2, available_cpus())
    assert configure_threads(n) == n
    assert tvm.get_global_func("runtime.NumThreads")() == n


def test_more_threads_than_the_pool_holds_is_refused_before_compiling():
    too_many = int(os.environ[POOL_ENV]) + 1
    with pytest.raises(ThreadPoolError, match=rf"threads={too_many}: TVM's thread pool in this process holds \d+ "
                                              rf"worker\(s\).*set {POOL_ENV}={too_many} before the first TVM call"):
        compile_model(nn.Conv2d(3, 4, 3), torch.randn(1, 3, 8, 8), threads=too_many)
    configure_threads(min(2, available_cpus()))


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "2"])
def test_threads_must_be_a_positive_int(bad):
    with pytest.raises(ThreadPoolError, match=rf"threads={bad!r}: expected a positive int"):
        configure_threads(bad)
