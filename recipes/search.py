"""recipe=search: Phase 2 alone -- search a per-layer NPAS scheme for a Phase-1 model.

    python train.py recipe=search recipe.checkpoint=<phase-1 .ckpt> search.latency_budget_ms=3
    python train.py recipe=search debug=smoke                       # seconds-to-minutes end-to-end check
    python train.py recipe=search search.executor=ray               # evaluations as Ray tasks
    python train.py recipe=search search.resume=true search.run_dir=<old run>/search recipe.checkpoint=<same>

Without ``recipe.checkpoint`` the recipe first trains its own starting point with ``cfg.trainer``
(it says so) and saves it as ``<run_dir>/phase1_start.ckpt`` so the search can be resumed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from npas_lightning.search.build import build_space, search_from_config
from npas_lightning.search.report import candidates_table, write_report
from npas_lightning.search.state import model_fingerprint
from npas_lightning.utils.builders import (
    build_datamodule,
    build_loggers,
    build_model,
    build_trainer,
    finish_loggers,
)

#: what debug=smoke shrinks (search keys / evaluator keys)
SMOKE_SEARCH = {"num_evaluations": 2, "batch_size": 2, "pool_size": 4, "min_gp_points": 2}
SMOKE_EVALUATOR = {"finetune_steps": 2, "val_batches": 2, "measure_kwargs": {"number": 2, "repeat": 2, "warmup": 1}}


def _reconstruction(cfg: DictConfig, net, space, datamodule, smoke: bool):
    rc = cfg.search.get("reconstruction") or {}
    wanted = {ls.name: sorted({c.filter_type for c in ls.choices} - {"keep", "skip"}) for ls in space.layers}
    wanted = {n: fts for n, fts in wanted.items() if fts}
    if not wanted or not rc.get("enabled", True):
        return None
    from npas_lightning.transforms.reconstruction import fit_candidates

    batches = []
    for i, batch in enumerate(datamodule.train_dataloader()):
        if i >= int(rc.get("batches", 2)):
            break
        batches.append(batch)
    types = sorted({ft for fts in wanted.values() for ft in fts})
    return fit_candidates(net, batches, layers=list(wanted), filter_types=types,
                          steps=2 if smoke else int(rc.get("steps", 100)),
                          max_samples=16 if smoke else int(rc.get("max_samples", 64)), seed=int(cfg.seed))


def run(cfg: DictConfig, *, checkpoint: str | None = None, swap_activations: bool = True,
        report_top: int = 20) -> dict[str, Any]:
    """Search a per-layer plan (filter type, scheme, rate) under ``search.latency_budget_ms``.

    Args:
        checkpoint: the Phase-1 model (Lightning ``.ckpt`` of ClassifierModule, ``.pth`` or ``.safetensors``).
        swap_activations: apply Phase 1's hard-swish/hard-sigmoid swap to the network first.
        report_top: candidates shown in the terminal table.
    """
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise FileNotFoundError(f"recipe.checkpoint={checkpoint!r} does not exist")
    console = Console()
    smoke = bool(cfg.get("debug_smoke", False))
    search_cfg = OmegaConf.to_container(cfg.search, resolve=True)
    run_dir = Path(search_cfg.get("run_dir") or Path(cfg.paths.output_dir) / "search")
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    # swap_activations: the Phase-1 network (hard-swish / hard-sigmoid, same state-dict keys)
    module = build_model(cfg, datamodule, hard_activations=bool(swap_activations),
                         **({"checkpoint": checkpoint} if checkpoint else {}))
    loggers = build_loggers(cfg)
    if checkpoint is None:
        console.print("[yellow]recipe.checkpoint is not set: training a starting point with cfg.trainer first "
                      "(pass recipe.checkpoint=<phase-1 ckpt> to search a trained model)")
        build_trainer(cfg, logger=loggers).fit(module, datamodule=datamodule)
        run_dir.mkdir(parents=True, exist_ok=True)
        start = run_dir / "phase1_start.ckpt"
        torch.save({"state_dict": {f"net.{k}": v for k, v in module.net.state_dict().items()}}, start)
        console.print(f"starting point saved to {start} (use it as recipe.checkpoint to resume this search)")
    net = module.net.eval()
    x, _ = next(iter(datamodule.val_dataloader()))
    example_input = torch.randn(1, *x.shape[1:])
    space = build_space(search_cfg, net, example_input)
    console.print(f"search space: {space.summary()}")
    fitted = _reconstruction(cfg, net, space, datamodule, smoke)
    ev_cfg = dict(search_cfg["evaluator"])
    if smoke:
        ev_cfg.update(SMOKE_EVALUATOR)
    evaluator = hydra.utils.instantiate(ev_cfg, _convert_="all")(
        net=net, train_loader_fn=datamodule.train_dataloader, val_loader_fn=datamodule.val_dataloader,
        example_input=example_input, fitted=fitted, seed=int(cfg.seed))
    wandb = next((lg for lg in loggers if type(lg).__name__ == "WandbLogger"), None)
    metric_logger = wandb or (loggers[0] if loggers else None)
    search = search_from_config(search_cfg, space, evaluator, run_dir=run_dir, model_fingerprint=model_fingerprint(net),
                                logger=metric_logger, **(SMOKE_SEARCH if smoke else {}))
    try:
        result = search.run()
    finally:
        search.executor.close()
    H = float(search_cfg["latency_budget_ms"])
    paths = write_report(result, run_dir, H, logger=wandb)
    best = result.best
    console.print(candidates_table(result.history, H, top=report_top, best_index=best["index"] if best else None))
    if best is not None and not result.feasible:
        console.print(f"[red]no evaluated plan meets H = {H} ms: reporting the best-reward plan (flagged)")
    metrics: dict[str, Any] = {"search/evaluations": float(len(result.history)),
                               "search/feasible": float(result.feasible)}
    if best is not None:
        metrics.update({"search/best_V": best["V"], "search/best_h_ms": best["h"], "search/best_reward": best["reward"]})
    artifacts = {f"search {k}": str(p) for k, p in paths.items()}
    artifacts["search state"] = str(run_dir / "search_state.json")
    artifacts.update({f"{name} files": path for name, path in finish_loggers(loggers).items()})
    return {"recipe": "search", "metrics": metrics, "artifacts": artifacts}
