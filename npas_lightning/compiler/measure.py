"""Latency measurement through one code path, local or over TVM RPC.

Both ``LocalSession`` and ``RPCSession`` load the exported shared library (``export_library`` ->
``load_module``/``upload``) and time the Relax VM's ``main`` with ``time_evaluator`` on the
session's device, so a local number and a phone's number are produced the same way.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .threads import configure_threads

__all__ = ["quiet_native_stderr", "LoadedModel", "LatencyStats", "MeasureSession", "LocalSession", "RPCSession", "open_session", "parse_rpc"]


@contextlib.contextmanager
def quiet_native_stderr():
    """Silence TVM's native per-constant warnings ("Scope Saving/Loaded") around export and load.

    Python exceptions are unaffected (they carry their own message)."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), fd)
            yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


@dataclass(frozen=True)
class LatencyStats:
    """Latency of one compiled model (milliseconds; ``repeats`` medians of ``runs`` runs each)."""

    median_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    runs: int
    repeats: int
    warmup: int
    threads: int
    target: str
    input_shape: tuple[int, ...]
    device: str = "local"

    @classmethod
    def from_seconds(cls, seconds, **meta: Any) -> LatencyStats:
        ms = np.asarray(list(seconds), dtype=float) * 1e3
        return cls(float(np.median(ms)), float(ms.mean()), float(ms.std()), float(ms.min()), **meta)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        return d


class MeasureSession:
    """Where compiled code runs: ``load(lib_path)`` -> module, ``device``, thread configuration."""

    name = "session"

    def upload_and_load(self, lib_path: str):  # pragma: no cover - interface
        raise NotImplementedError

    def device(self, kind: str = "cpu"):  # pragma: no cover - interface
        raise NotImplementedError

    def set_threads(self, threads: int | None) -> None:
        if threads:
            configure_threads(int(threads), self.get_function)

    def get_function(self, name: str):  # pragma: no cover - interface
        raise NotImplementedError


class LocalSession(MeasureSession):
    """This process."""

    name = "local"

    def upload_and_load(self, lib_path: str):
        import tvm

        return tvm.runtime.load_module(lib_path)

    def device(self, kind: str = "cpu"):
        import tvm

        return tvm.device(kind, 0)

    def get_function(self, name: str):
        import tvm

        return tvm.get_global_func(name)

    def tensor(self, arr: np.ndarray, dev):
        import tvm

        return tvm.runtime.tensor(arr, dev)


class RPCSession(MeasureSession):
    """A TVM RPC server (``host``/``port``) or a tracker (``tracker`` = "host:port" plus ``key``).

    ``timeout`` is TVM's session lifetime in seconds (0: no limit; the session lives while in use).
    """

    name = "rpc"

    def __init__(self, host: str | None = None, port: int | None = None, key: str = "",
                 tracker: str | None = None, timeout: int = 0):
        from tvm import rpc

        if tracker:
            th, tp = parse_rpc(tracker)
            if not key:
                raise ValueError("compiler.rpc.key is required with a tracker (the device key it serves)")
            self.remote = rpc.connect_tracker(th, tp).request(key, session_timeout=timeout)
            self.address = f"tracker {th}:{tp} key={key}"
        else:
            if not host or not port:
                raise ValueError(f"RPC needs host and port, got host={host!r} port={port!r}")
            self.remote = rpc.connect(host, int(port), key=key or "", session_timeout=timeout)
            self.address = f"{host}:{port}"

    def close(self) -> None:
        """Drop the connection (the server then accepts the next client)."""
        self.remote = None
        import gc

        gc.collect()

    def upload_and_load(self, lib_path: str):
        self.remote.upload(lib_path)
        return self.remote.load_module(os.path.basename(lib_path))

    def device(self, kind: str = "cpu"):
        return self.remote.device(kind, 0)

    def get_function(self, name: str):
        return self.remote.get_function(name)

    def tensor(self, arr: np.ndarray, dev):
        import tvm

        return tvm.runtime.tensor(arr, dev)


def parse_rpc(value: str) -> tuple[str, int]:
    """``"host:port"`` -> (host, port); a clear error otherwise."""
    host, sep, port = str(value).rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"rpc={value!r} is not 'host:port' (e.g. 127.0.0.1:9190)")
    return host, int(port)


def open_session(device: str | Mapping | MeasureSession | None = "local", rpc: Mapping | None = None) -> MeasureSession:
    """``"local"``, ``"rpc"`` (with ``rpc={host, port, key, tracker}``), ``"host:port"`` or a session."""
    if isinstance(device, MeasureSession):
        return device
    if device is None or device == "local":
        return LocalSession()
    if isinstance(device, Mapping):
        return open_session(device.get("device", "local"), device.get("rpc"))
    if device == "rpc":
        cfg = dict(rpc or {})
        return RPCSession(cfg.get("host"), cfg.get("port"), cfg.get("key") or "", cfg.get("tracker"))
    if isinstance(device, str) and ":" in device:
        host, port = parse_rpc(device)
        return RPCSession(host, port)
    raise ValueError(f"device={device!r} is not 'local', 'rpc' or 'host:port'")


class LoadedModel:
    """A compiled executable exported, loaded on a session's device and ready to run or time."""

    def __init__(self, executable, export_fn, session: MeasureSession, *, device_kind: str = "cpu",
                 threads: int | None = None):
        from tvm import relax

        with tempfile.TemporaryDirectory() as tmp:
            # a fresh name per upload: re-loading an overwritten library under the same path
            # crashes the RPC server (dlopen keeps the old mapping)
            path = os.path.join(tmp, f"npas_{uuid.uuid4().hex[:12]}.so")
            with quiet_native_stderr():
                export_fn(executable, path)
                lib = session.upload_and_load(path)
        session.set_threads(threads)
        self.session = session
        self.dev = session.device(device_kind)
        with quiet_native_stderr():
            self.vm = relax.VirtualMachine(lib, self.dev)
        self.args: list = []

    def set_inputs(self, inputs: list[np.ndarray]) -> None:
        self.args = [self.session.tensor(np.ascontiguousarray(a), self.dev) for a in inputs]

    def run(self) -> list[np.ndarray]:
        out = self.vm["main"](*self.args)
        outs = [out] if hasattr(out, "numpy") else list(out)
        return [o.numpy() for o in outs]

    def time(self, number: int, repeat: int) -> list[float]:
        """``repeat`` samples (seconds), each the mean of ``number`` runs, via ``time_evaluator``."""
        timer = self.vm.time_evaluator("main", self.dev, number=number, repeat=repeat)
        return list(timer(*self.args).results)


def time_vm(executable, export_fn, session: MeasureSession, inputs: list[np.ndarray], *, device_kind: str,
            number: int, repeat: int, warmup: int, threads: int | None) -> tuple[list[float], list[np.ndarray]]:
    """Export, load on ``session``, run ``warmup`` times, time ``repeat x number`` runs.

    Returns (per-repeat mean seconds, outputs of one run as numpy arrays).
    """
    loaded = LoadedModel(executable, export_fn, session, device_kind=device_kind, threads=threads)
    return time_loaded(loaded, inputs, number=number, repeat=repeat, warmup=warmup)


def time_loaded(loaded: LoadedModel, inputs: list[np.ndarray], *, number: int, repeat: int,
                warmup: int) -> tuple[list[float], list[np.ndarray]]:
    """Run an already loaded model ``warmup`` times, then time ``repeat x number`` runs."""
    loaded.set_inputs(inputs)
    outs = loaded.run()
    for _ in range(max(0, warmup - 1)):
        loaded.run()
    return loaded.time(number, repeat), outs
