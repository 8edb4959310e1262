"""Measurement through a real TVM RPC server on 127.0.0.1 (same code path as local timing)."""

import numpy as np
import pytest
import torch
from torch import nn

from npas_lightning.compiler import RPCSession, compile_model
from npas_lightning.compiler.measure import parse_rpc


@pytest.fixture(scope="module")
def rpc_server():
    from tvm import rpc

    server = rpc.Server(host="127.0.0.1", port=9190, port_end=9390)
    yield server
    server.terminate()


def test_measure_and_run_over_rpc_loopback(rpc_server):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 5)).eval()
    x = torch.randn(1, 3, 12, 12)
    c = compile_model(model, x, threads=1)
    session = RPCSession("127.0.0.1", rpc_server.port)
    remote = c.measure(number=3, repeat=2, warmup=1, session=session)
    assert remote.device == "rpc" and remote.repeats == 2 and remote.median_ms > 0
    local = c.measure(number=3, repeat=2, warmup=1)
    assert local.device == "local"
    out = c.run(x.numpy(), session=session)
    with torch.no_grad():
        np.testing.assert_allclose(out, model(x).numpy(), rtol=1e-4, atol=1e-6)
    session.close()  # the server serves one client at a time
    via_config = c.measure(number=2, repeat=1, device="rpc", rpc={"host": "127.0.0.1", "port": rpc_server.port})
    assert via_config.device == "rpc"


def test_rpc_address_errors():
    with pytest.raises(ValueError, match=r"rpc='phone' is not 'host:port'"):
        parse_rpc("phone")
    with pytest.raises(ValueError, match="RPC needs host and port, got host=None"):
        RPCSession(None, None)
