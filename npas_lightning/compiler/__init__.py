"""TVM compiler: project kernels and schedules, latency measurement (local/RPC), latency cache.

Public API::

    compile_model(model, example_input, *, plan=None, target="host", tune=False, threads=None, check=True)
        -> Compiled   (.run(x), .measure(...) -> LatencyStats, .export(dir))
    resolve_target(name_or_cfg) -> TargetSpec;  known_targets()
    measure_latency(model, x, plan=..., cache=LatencyCache(path)) -> (LatencyStats, cache_hit)
    npas-latency CLI: npas_lightning.compiler.cli
"""

from .cache import LatencyCache, latency_key, model_hash
from .compile import Compiled, compile_model, compiler_version, plan_hash
from .errors import CompileError, NumericsError, UnsupportedOpError
from .latency import measure_latency
from .measure import LatencyStats, LocalSession, RPCSession, open_session
from .targets import TargetError, TargetSpec, known_targets, resolve_target

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
    "UnsupportedOpError",
    "compile_model",
    "compiler_version",
    "known_targets",
    "latency_key",
    "measure_latency",
    "model_hash",
    "open_session",
    "plan_hash",
    "resolve_target",
]
