"""TVM compiler: project kernels and schedules, latency measurement (local/RPC), latency cache.

Public API::

    compile_model(model, example_input, *, plan=None, target="host", tune=False, threads=None, check=True)
        -> Compiled   (.run(x), .measure(...) -> LatencyStats, .export(dir))
    resolve_target(name_or_cfg) -> TargetSpec;  known_targets()
    measure_latency(model, x, plan=..., cache=LatencyCache(path)) -> (LatencyStats, cache_hit)
    npas-latency CLI: npas_lightning.compiler.cli
"""

from .threads import ThreadPoolError, configure_threads, reserve_thread_pool

reserve_thread_pool()  # before anything below can start TVM's thread pool (see threads.py)

from .cache import LatencyCache, latency_key, model_hash  # noqa: E402
from .compile import Compiled, compile_model, compiler_version, plan_hash  # noqa: E402
from .errors import CompileError, NumericsError, UnsupportedOpError  # noqa: E402
from .latency import measure_latency  # noqa: E402
from .measure import LatencyStats, LocalSession, RPCSession, open_session  # noqa: E402
from .targets import TargetError, TargetSpec, known_targets, resolve_target  # noqa: E402

__all__ = [
    "Compiled",
    "CompileError",
    "LatencyCache",
    "LatencyStats",
    "LocalSession",
    "NumericsError",
    "RPCSession",
    "TargetError",
    "TargetSpec",
    "ThreadPoolError",
    "UnsupportedOpError",
    "compile_model",
    "compiler_version",
    "configure_threads",
    "known_targets",
    "latency_key",
    "measure_latency",
    "model_hash",
    "open_session",
    "plan_hash",
    "resolve_target",
]
