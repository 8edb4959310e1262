"""recipe=export through Hydra compose (debug=smoke): artefacts + latency report."""

import json

import hydra
import pytest


def test_export_recipe_smoke(make_cfg, tmp_path):
    out = tmp_path / "export"
    cfg = make_cfg("recipe=export", "debug=smoke", "model.backbone=test_efficientnet", "compiler.threads=2",
                   f"recipe.output_dir={out}", "recipe.compare=[torch]")
    result = hydra.utils.instantiate(cfg.recipe)(cfg)
    assert result["recipe"] == "export"
    m = result["metrics"]
    assert m["latency/tvm_ms"] > 0 and m["latency/torch_ms"] > 0 and m["latency/max_rel_err"] < 1e-4
    for name in ("model.so", "params.npz", "manifest.json", "latency.json"):
        assert (out / name).is_file()
    report = json.loads((out / "latency.json").read_text())
    assert report["input"] == [1, 3, 32, 32] and set(report["results"]) == {"tvm", "torch"}


def test_export_recipe_refuses_bad_arguments(make_cfg, tmp_path):
    cfg = make_cfg("recipe=export", "debug=smoke", "recipe.compare=[tflite]", f"recipe.output_dir={tmp_path}")
    with pytest.raises(ValueError, match=r"recipe.compare=\['tflite'\]: unknown engine\(s\) \['tflite'\]"):
        hydra.utils.instantiate(cfg.recipe)(cfg)
    cfg = make_cfg("recipe=export", "debug=smoke", "recipe.checkpoint=/nonexistent.ckpt")
    with pytest.raises(FileNotFoundError, match="recipe.checkpoint='/nonexistent.ckpt' does not exist"):
        hydra.utils.instantiate(cfg.recipe)(cfg)
