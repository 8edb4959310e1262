"""Entry point: `python train.py recipe=<name> [group=option ...] [key=value ...]`.

Seeds everything, lets the chosen recipe (configs/recipe/) build data, model, callbacks, loggers
and trainer from their `_target_`s, prints where the run's files went, and returns the tracked
metric (`optimized_metric`) for Hydra sweepers.
"""

from __future__ import annotations

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from npas_lightning.utils.summary import print_run_summary


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    L.seed_everything(cfg.seed, workers=True)
    recipe = hydra.utils.instantiate(cfg.recipe)
    result = recipe(cfg)
    if L.fabric.utilities.rank_zero.rank_zero_only.rank == 0:
        output_dir = HydraConfig.get().runtime.output_dir
        result.setdefault("artifacts", {})
        result["artifacts"]["resolved config"] = f"{output_dir}/.hydra/config.yaml"
        result["artifacts"]["run directory"] = output_dir
        print_run_summary(result)
    metric = result.get("metrics", {}).get(cfg.get("optimized_metric"))
    return float(metric) if metric is not None else None


if __name__ == "__main__":
    main()
