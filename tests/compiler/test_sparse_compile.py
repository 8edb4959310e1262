"""compile_model(plan=...): pruned layers lowered to block-sparse kernels, checked against PyTorch."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from npas_lightning.algorithms.masking import apply_masks, compute_masks
from npas_lightning.compiler import compile_model
from npas_lightning.compiler.cache import model_hash
from npas_lightning.compiler.errors import CompileError
from npas_lightning.compiler.numerics import check_kernel
from npas_lightning.compiler.tuning import TileCache
from npas_lightning.plan import NPASScheme
from npas_lightning.shrink import frozen_for_compile
from npas_lightning.sparse import SparseConv2d, SparseLinear, StructureError, sparse_layers, sparsify

MIXED_PLAN = {  # all five schemes on efficientnet_b0
    "blocks.0.0.conv_dw": {"scheme": "pattern", "rate": 2.25},
    "blocks.1.*.conv_pw": {"scheme": "block_based", "rate": 3.0, "block": [16, 4]},
    "blocks.1.*.conv_dw": {"scheme": "pattern", "rate": 3.0},
    "blocks.3.*.conv_dw": {"scheme": "block_punched", "rate": 2.0, "block": [8, 1]},
    "blocks.4.*.conv_pwl": {"scheme": "block_punched", "rate": 5.0, "block": [8, 4]},
    "blocks.5.0.conv_pw": {"scheme": "filter", "rate": 2.0},
    "blocks.5.1.conv_pw": {"scheme": "unstructured", "rate": 4.0},
    "blocks.6.0.conv_pw": {"scheme": "block_punched", "rate": 3.0, "block": [8, 4], "params": {"balanced": True}},
    "classifier": {"scheme": "block_based", "rate": 4.0, "block": [16, 4]},
}


def _pruned(model: nn.Module, plan) -> tuple[nn.Module, NPASScheme]:
    resolved = NPASScheme.resolve(plan, model, exclude=[])
    apply_masks(model, compute_masks(model, resolved), resolved)
    return model, resolved


class PatternNet(nn.Module):
    """A regular 3x3 conv (pattern pruning reorders its filters), a strided 5x5 and an FC."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.conv = nn.Conv2d(16, 24, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(24)
        self.down = nn.Conv2d(24, 32, 5, stride=2, padding=2)
        self.fc = nn.Linear(32, 20)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.bn(self.conv(x)))
        x = torch.relu(self.down(x))
        return self.fc(x.mean((2, 3)))


SMALL_PLAN = {
    "conv": {"scheme": "pattern", "rate": 3.0},
    "down": {"scheme": "block_punched", "rate": 4.0, "block": [8, 4]},
    "fc": {"scheme": "block_based", "rate": 2.0, "block": [16, 4]},
}


@pytest.fixture(scope="module")
def effnet_mixed():
    torch.manual_seed(0)
    model = timm.create_model("efficientnet_b0", pretrained=False, num_classes=10).eval()
    return _pruned(model, MIXED_PLAN)


def test_mixed_plan_efficientnet_matches_torch_with_every_scheme(effnet_mixed):
    model, plan = effnet_mixed
    x = torch.randn(1, 3, 32, 32)
    compiled = compile_model(model, x, plan=plan, threads=2)
    assert compiled.numerics["ok"], compiled.numerics
    with torch.no_grad():
        ref = model(x)
    assert torch.allclose(compiled.run(x), ref, rtol=1e-4, atol=1e-5)
    lowered = {r.module: r.sparse for r in compiled.kernels if r.sparse}
    kernels = {s["scheme"] for s in lowered.values() if s["lowering"] == "block-sparse kernel"}
    assert kernels == {"pattern", "block_based", "block_punched"}
    assert "zeros are computed" in lowered["blocks.5.1.conv_pw"]["lowering"]
    assert lowered["blocks.5.0.conv_pw"]["scheme"] == "filter"
    # the 10-class FC at 4x reads a quarter of conv_head's 1280 channels: the others are cut with the
    # conv_head filters computing them (shrink.shrink_unread_channels)
    assert compiled.prepare_info["unread_channels_cut"]["conv_head"] == [1280, 320]
    assert lowered["classifier"]["scheme"] == "block_based"
    assert compiled.prepare_info["sparse_layers"] >= 10
    manifest = compiled.manifest()
    assert any(k["sparse"] for k in manifest["kernels"])
    # projections (more input channels than filters) split their reduction between the two threads,
    # dense and block-sparse alike; expand convs do not (split_conv)
    splits = {r.module: r.split for r in compiled.kernels}
    assert splits["blocks.4.0.conv_pwl"] == splits["blocks.4.1.conv_pwl"] == 2  # block_punched 5x
    assert splits["blocks.2.0.conv_pwl"] == 2 and splits["blocks.2.0.conv_pw"] == 1  # dense
    assert {k["split"] for k in manifest["kernels"]} == {1, 2}
    # without an activation the partial sums are added by the graph, fused into the next function
    assert all(r.partials == (r.epilogue in (None, "none")) for r in compiled.kernels if r.split > 1)
    assert any(r.partials for r in compiled.kernels)
    # depthwise blocks keeping different numbers of positions (block_punched; pattern with kernels
    # cut) stop at their own count
    uneven = [r for r in compiled.kernels if r.kind == "depthwise" and r.sparse and "counts" in r.sparse]
    assert {"blocks.1", "blocks.3"} == {r.module.rsplit(".", 2)[0] for r in uneven}, [r.module for r in uneven]
    assert all(min(r.sparse["counts"]) < r.sparse["k"] == max(r.sparse["counts"]) for r in uneven)
    for rec in compiled.kernels:
        if rec.split > 1 or rec in uneven:  # each split / uneven kernel alone against its layer in PyTorch
            stats = check_kernel(rec, compiled.target.tvm_target)
            assert stats["max_rel"] < 1e-4 or stats["max_abs"] < 1e-4, (rec.module, stats)


def test_sparse_kernels_check_alone_against_their_layer():
    torch.manual_seed(1)
    model, plan = _pruned(PatternNet().eval(), SMALL_PLAN)
    x = torch.randn(2, 3, 12, 12)
    compiled = compile_model(model, x, plan=plan, threads=2)
    recs = {r.module: r for r in compiled.kernels}
    assert recs["conv"].sparse["scheme"] == "pattern" and recs["conv"].sparse["lowering"] == "block-sparse kernel"
    assert recs["down"].sparse["lowering"] == "block-sparse kernel"
    assert recs["fc"].kind == "dense" and recs["fc"].sparse["scheme"] == "block_based"
    for rec in recs.values():
        stats = check_kernel(rec, compiled.target.tvm_target)
        assert stats["max_rel"] < 1e-5, (rec.module, stats)
    assert torch.allclose(compiled.run(x), model(x), rtol=1e-4, atol=1e-5)


def test_mismatched_plan_is_refused_naming_the_layer():
    torch.manual_seed(2)
    model = PatternNet().eval()
    unstructured = {"down": {"scheme": "unstructured", "rate": 4.0}}
    model, _ = _pruned(model, unstructured)
    plan = NPASScheme.resolve({"down": {"scheme": "block_punched", "rate": 4.0, "block": [8, 4]}}, model, exclude=[])
    with pytest.raises(StructureError, match=r"'down'.*block_punched"):
        compile_model(model, torch.randn(1, 3, 12, 12), plan=plan)


def test_unpruned_model_with_a_sparse_plan_is_refused():
    model = PatternNet().eval()
    plan = NPASScheme.resolve({"fc": {"scheme": "block_based", "rate": 4.0}}, model, exclude=[])
    with pytest.raises(StructureError, match="'fc'"):
        compile_model(model, torch.randn(1, 3, 12, 12), plan=plan)


def test_custom_op_model_compiles_through_the_convert_map():
    torch.manual_seed(3)
    model, plan = _pruned(PatternNet().eval(), SMALL_PLAN)
    sparse = sparsify(model, plan)
    assert set(sparse_layers(sparse)) == {"conv", "down", "fc"}
    x = torch.randn(1, 3, 12, 12)
    compiled = compile_model(sparse, x, threads=2)  # no plan: the sparse modules say how
    assert compiled.numerics["ok"]
    assert sum(1 for r in compiled.kernels if r.sparse) == 3
    assert torch.allclose(compiled.run(x), model(x), rtol=1e-4, atol=1e-5)
    with_plan = compile_model(sparse, x, plan=plan, threads=2, check=False)
    assert with_plan.plan_hash == plan.structural_hash()
    with pytest.raises(CompileError, match="already sparse modules"):
        compile_model(sparse, x, plan=SMALL_PLAN)


def test_frozen_for_compile_makes_sparse_modules_and_keeps_outputs():
    torch.manual_seed(4)
    model, plan = _pruned(PatternNet().eval(), SMALL_PLAN)
    x = torch.randn(1, 3, 12, 12)
    frozen, info = frozen_for_compile(model, plan, x)
    assert info["sparse_layers"] == 3
    assert isinstance(frozen.conv, SparseConv2d) and isinstance(frozen.fc, SparseLinear)
    assert isinstance(model.conv, nn.Conv2d)  # the caller's model is untouched
    with torch.no_grad():
        assert torch.allclose(frozen(x), model(x), atol=1e-6)


def test_same_plan_on_other_weights_has_the_same_latency_key_hash():
    plan_model = {}
    for seed in (5, 6):
        torch.manual_seed(seed)
        model, plan = _pruned(PatternNet().eval(), SMALL_PLAN)
        frozen, _ = frozen_for_compile(model, plan, torch.randn(1, 3, 12, 12))
        plan_model[seed] = model_hash(frozen)
    assert plan_model[5] == plan_model[6]


def test_sparse_tiles_are_tuned_and_cached_by_structure(tmp_path):
    torch.manual_seed(7)
    model, plan = _pruned(PatternNet().eval(), {"down": {"scheme": "block_punched", "rate": 4.0, "block": [8, 4]}})
    cache = TileCache(tmp_path / "tiles.json")
    x = torch.randn(1, 3, 12, 12)
    first = compile_model(model, x, plan=plan, tune=True, tile_cache=cache, threads=1, check=False)
    keys = [k for k in cache._load() if k.startswith("block-conv-sparse|")]
    assert len(keys) == 1 and "structure" in keys[0]
    rec = next(r for r in first.kernels if r.module == "down")
    assert rec.tuned
    again = compile_model(model, x, plan=plan, tile_cache=TileCache(tmp_path / "tiles.json"), threads=1, check=False)
    assert next(r for r in again.kernels if r.module == "down").tile == rec.tile
    # another structure (other surviving blocks) is another cache entry
    torch.manual_seed(8)
    other, plan2 = _pruned(PatternNet().eval(), {"down": {"scheme": "block_punched", "rate": 4.0, "block": [8, 4]}})
    compile_model(other, x, plan=plan2, tune=True, tile_cache=cache, threads=1, check=False)
    assert len([k for k in cache._load() if k.startswith("block-conv-sparse|")]) == 2


def test_block_sparse_conv_over_a_large_input_runs_in_channel_blocks():
    """Input planes over L2_INPUT_BYTES (128 x 50 x 51 floats): untuned, the block-sparse kernel runs
    in channel blocks of 32; a small layer keeps one block."""
    model = nn.Sequential(nn.Conv2d(128, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 32, 3, padding=1)).eval()
    plan = {"0": {"scheme": "block_punched", "rate": 4.0, "block": [8, 4]},
            "2": {"scheme": "block_punched", "rate": 4.0, "block": [8, 4]}}
    model, resolved = _pruned(model, plan)
    x = torch.randn(1, 128, 48, 48)
    compiled = compile_model(model, x, plan=resolved, threads=2)
    assert compiled.numerics["ok"]
    by_module = {r.module: r for r in compiled.kernels}
    assert by_module["0"].sparse["cblock"] == 32 and len(by_module["0"].buffers) == 3
    assert by_module["2"].sparse["cblock"] == 0 and len(by_module["2"].buffers) == 2
    for record in compiled.kernels:
        assert check_kernel(record, compiled.target.tvm_target)["max_rel"] < 1e-5, record.module
