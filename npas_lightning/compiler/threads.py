"""TVM's CPU thread pool: sized so that ``threads=N`` really runs N threads, and checked.

TVM creates its thread pool once per process, at the first parallel call, with
``TVM_NUM_THREADS`` workers (else ``OMP_NUM_THREADS``, else *half* the hardware threads on x86, to
skip hyper-threads). ``runtime.config_threadpool`` can then only choose how many of those workers
run. On a 2-vCPU x86 VM without hyper-threads that default is one worker, so ``threads=2`` silently
ran on one core (and pinned the process to it, so torch and ONNX Runtime timed in the same process
lost their second core too). Importing :mod:`npas_lightning.compiler` therefore sets
``TVM_NUM_THREADS`` to the CPUs this process may use, unless it is set already
(:func:`reserve_thread_pool`), and :func:`configure_threads` raises when the pool cannot run the
threads asked for.

Example:
    >>> configure_threads(1)   # one worker of the pool
    1
"""

from __future__ import annotations

import os
from collections.abc import Callable

__all__ = ["POOL_ENV", "ThreadPoolError", "available_cpus", "configure_threads", "reserve_thread_pool"]

#: the environment variable TVM sizes its thread pool from, read once at the pool's first use
POOL_ENV = "TVM_NUM_THREADS"


class ThreadPoolError(ValueError):
    """``threads`` asks for more workers than the process's TVM thread pool holds."""


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def reserve_thread_pool() -> str:
    """Set ``TVM_NUM_THREADS`` to :func:`available_cpus` unless the user set it; returns its value.

    Has an effect only before TVM's pool exists (its first parallel call in this process)."""
    return os.environ.setdefault(POOL_ENV, str(available_cpus()))


def configure_threads(threads: int, get_function: Callable[[str], Callable] | None = None) -> int:
    """Run TVM's parallel loops on ``threads`` workers; returns the workers now in use.

    ``get_function`` looks up runtime functions (default: this process's; an RPC session passes its
    remote's). Raises :class:`ThreadPoolError` naming ``threads``, the pool's size and the fix when
    the pool holds fewer workers.
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ThreadPoolError(f"threads={threads!r}: expected a positive int")
    if get_function is None:
        import tvm

        get_function = tvm.get_global_func
    get_function("runtime.config_threadpool")(1, threads)
    try:
        in_use = int(get_function("runtime.NumThreads")())
    except Exception:  # noqa: BLE001 - an RPC server without the function: nothing to check against
        return threads
    if in_use < threads:
        raise ThreadPoolError(
            f"threads={threads}: TVM's thread pool in this process holds {in_use} worker(s) "
            f"({POOL_ENV}={os.environ.get(POOL_ENV)!r} when it was created). Ask for at most {in_use}, or set "
            f"{POOL_ENV}={threads} before the first TVM call (importing npas_lightning.compiler first "
            f"sets it to the {available_cpus()} CPUs available)")
    return in_use
