"""Search outputs: table, Pareto front and plots, best-plan file, W&B calls."""

import json
import sys
from pathlib import Path

import pytest

from npas_lightning.search.report import candidates_table, pareto_front, write_report

sys.path.insert(0, str(Path(__file__).parent))
import test_search as ts  # noqa: E402  (ToyEvaluator test double + toy space)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    return ts._search(ts.toy_space(), tmp_path_factory.mktemp("r"), strategy="random", num_evaluations=8,
                      evaluator=ts.ToyEvaluator(fail_every=4)).run()


def test_pareto_front():
    pts = [(1.0, 0.5), (2.0, 0.9), (1.5, 0.4), (3.0, 0.95), (2.5, 0.8)]
    assert pareto_front(pts) == [0, 1, 3]


def test_candidates_table_rows(result):
    table = candidates_table(result.history, 4.0, top=5, best_index=result.best["index"])
    assert table.row_count == 5
    assert candidates_table(result.history, 4.0).row_count == len(result.history)


class _RecordingLogger:
    """Test double standing in for lightning's WandbLogger: records log_table/log_image calls
    (a real offline W&B run costs seconds of service start-up per test)."""

    def __init__(self):
        self.tables, self.images = [], []

    def log_table(self, key, columns, data):
        self.tables.append((key, columns, data))

    def log_image(self, key, images):
        self.images.append((key, images))


def test_write_report_files_and_wandb_calls(result, tmp_path):
    logger = _RecordingLogger()
    paths = write_report(result, tmp_path, 4.0, logger=logger)
    for key in ("candidates", "best_plan", "pareto", "plan"):
        assert paths[key].is_file() and paths[key].stat().st_size > 0
    assert paths["pareto"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best = json.loads(paths["best_plan"].read_text())
    assert best["index"] == result.best["index"] and set(best["plan"]) == {f"l{i}" for i in range(6)}
    assert (best["flag"] == "") == result.feasible
    (key, columns, data), = logger.tables
    assert key == "search/candidates" and len(data) == len(result.history) and "reward" in columns
    assert {k for k, _ in logger.images} == {"search/pareto", "search/plan"}
