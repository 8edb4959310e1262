"""SQLite latency cache: keys, hits, stats, and two processes writing at once."""

import multiprocessing as mp

import pytest
import timm

from npas_lightning.compiler.cache import LatencyCache, latency_key, model_hash
from npas_lightning.compiler.cli import main as cli_main
from npas_lightning.compiler.measure import LatencyStats


def _stats(ms=1.0):
    return LatencyStats(ms, ms, 0.0, ms, 10, 5, 2, 2, "host", (1, 3, 32, 32))


def _meta(i=0):
    return {"backbone": f"b{i}", "plan": "dense", "input_shape": (1, 3, 32, 32), "target": "host", "compiler": "v"}


def test_put_get_and_hits(tmp_path):
    cache = LatencyCache(tmp_path / "lat.sqlite")
    key = latency_key("b", "dense", (1, 3, 32, 32), "host", "v")
    assert cache.get(key) is None
    cache.put(key, _stats(2.5), **_meta())
    got = cache.get(key)
    assert got == _stats(2.5)
    st = cache.stats()
    assert st["entries"] == 1 and st["hits"] == 1 and st["by_target"] == {"host": 1}
    assert cache._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_key_ignores_weights_but_not_structure():
    a = timm.create_model("resnet18", pretrained=False, num_classes=10)
    b = timm.create_model("resnet18", pretrained=False, num_classes=10)  # other random weights
    c = timm.create_model("resnet18", pretrained=False, num_classes=11)
    assert model_hash(a) == model_hash(b)
    assert model_hash(a) != model_hash(c)
    k = latency_key(model_hash(a), "dense", (1, 3, 32, 32), "host", "v")
    assert k != latency_key(model_hash(a), "dense", (1, 3, 64, 64), "host", "v")
    assert k != latency_key(model_hash(a), "p123", (1, 3, 32, 32), "host", "v")
    assert k != latency_key(model_hash(a), "dense", (1, 3, 32, 32), "host", "v2")


def _writer(path, offset, n, barrier):
    cache = LatencyCache(path)
    barrier.wait()
    for i in range(n):
        key = latency_key(f"b{offset + i}", "dense", (1, 3, 32, 32), "host", "v")
        cache.put(key, _stats(float(i)), **_meta(offset + i))
        cache.get(key)


def test_two_processes_write_at_once(tmp_path):
    path = str(tmp_path / "lat.sqlite")
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_writer, args=(path, off, 60, barrier)) for off in (0, 1000)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    st = LatencyCache(path).stats()
    assert st["entries"] == 120 and st["hits"] == 120


def test_cli_cache_stats(tmp_path, capsys):
    path = tmp_path / "lat.sqlite"
    LatencyCache(path).put("k", _stats(), **_meta())
    assert cli_main(["--cache-stats", "--cache", str(path), "--json"]) == 0
    out = capsys.readouterr().out
    assert '"entries": 1' in out
    assert cli_main(["--cache-stats", "--cache", str(path)]) == 0
    assert "entries" in capsys.readouterr().out


def test_cli_requires_model(capsys):
    with pytest.raises(SystemExit):
        cli_main([])
    assert "MODEL_OR_CKPT is required" in capsys.readouterr().err
