"""Whole-model parity (TVM with the project's kernels vs PyTorch) and the npas-latency CLI."""

import json

import numpy as np
import pytest
import timm
import torch

from npas_lightning.compiler import compile_model
from npas_lightning.compiler.cli import main as cli_main
from npas_lightning.compiler.cli import parse_input_shape


def _parity(name, size, **kwargs):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs).eval()
    c = compile_model(model, torch.randn(1, 3, size, size), threads=2)
    assert c.numerics["ok"], c.numerics
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        ref = model(x).numpy()
    out = c.run(x.numpy())
    scale = np.abs(ref).max()
    assert np.abs(out - ref).max() <= 1e-4 * scale
    return c


def test_resnet18_parity():
    c = _parity("resnet18", 32)
    assert sum(k.kind == "conv" for k in c.kernels) == 20 and c.kernels[-1].kind == "dense"


@pytest.mark.slow
def test_efficientnet_b0_parity():
    c = _parity("efficientnet_b0", 32)
    assert {k.kind for k in c.kernels} == {"conv", "depthwise", "dense"}


@pytest.mark.slow
def test_mobilenetv3_large_100_parity():
    _parity("mobilenetv3_large_100", 32)


def test_small_efficientnet_parity_with_se_and_depthwise():
    """timm's test_efficientnet: the same block types as efficientnet_b0 (depthwise, SE, SiLU), small."""
    c = _parity("test_efficientnet", 32)
    assert {k.kind for k in c.kernels} == {"conv", "depthwise", "dense"}


def test_cli_json(capsys):
    rc = cli_main(["test_efficientnet", "--input", "1x3x32x32", "--threads", "2", "--compare", "torch,onnxruntime",
                   "--number", "2", "--repeat", "2", "--warmup", "1", "--sample-ms", "5", "--json"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"model", "input", "target", "results"}
    assert report["model"] == "test_efficientnet" and report["input"] == [1, 3, 32, 32] and report["target"] == "host"
    assert set(report["results"]) == {"tvm", "torch", "onnxruntime"}
    for r in report["results"].values():
        # at least --number runs; how many more --sample-ms adds depends on this machine's speed
        # (test_engines.py checks the sizing with stated run times)
        assert r["median_ms"] > 0 and r["repeats"] == 2 and r["runs"] >= 2
    assert report["results"]["tvm"]["numerics"]["ok"]


def test_cli_errors(capsys):
    assert cli_main(["resnet18", "--input", "1x3xbad"]) == 2
    assert "--input '1x3xbad' is not a shape like 1x3x224x224" in capsys.readouterr().err
    assert cli_main(["resnet18", "--input", "1x3x8x8", "--compare", "tflite"]) == 2
    assert "unknown engine(s) ['tflite']" in capsys.readouterr().err
    assert cli_main(["resnet18", "--input", "1x3x8x8", "--sample-ms", "-1"]) == 2
    assert "--sample-ms -1.0: expected milliseconds >= 0 (0: --number runs per sample)" in capsys.readouterr().err
    assert cli_main(["not_a_model_xyz", "--input", "1x3x8x8"]) == 2
    assert "is neither a checkpoint file nor a timm model name" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"--input '0x3' is not a shape"):
        parse_input_shape("0x3")
