"""evaluate: candidate pools -> ranked lists, metrics, gates, report, MLflow runs.

    python -m stages.evaluate --params params.yaml     (dvc repro: the alpha grid + baselines, all outputs)
    python -m stages.evaluate alpha=0.5                (one alpha, one MLflow run)
    python -m stages.evaluate -m alpha=0.35,0.5,0.65   (a sweep; the comparison table is written
                                                        to the sweep folder when it ends)
Reads:  paths.split, paths.embed_load (mmr, embeddings), paths.candidates
Writes: paths.evaluate/{results/, metrics.json, alpha_curve.csv}; runs in paths.mlflow_uri
"""

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from recopt.config import Config, load_config
from recopt.sweep import compare_sweep, evaluate_grid, evaluate_one
from stages._entry import Invocation, run


class SweepTable(Callback):
    """Hydra callback: when a multirun ends, evaluate the baselines and print the comparison."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)  # resolved (and cached) as the sweeper did
        job = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
        compare_sweep(load_config(OmegaConf.to_container(job, resolve=True)), sweep_dir)  # type: ignore[arg-type]


def main(cfg: Config, how: Invocation) -> None:
    if how.mode == "params":
        gates = evaluate_grid(cfg)
        if cfg.evaluate.enforce_gates and not gates.get("passed", False):
            sys.exit("evaluate: acceptance gates failed (evaluate.enforce_gates=true); see results/report.md")
        return
    r = evaluate_one(cfg, how.sweep_dir, how.job_num)
    print({k: round(v, 4) for k, v in r.summary.items()})


if __name__ == "__main__":
    run(main, hydra_overrides=("+hydra.callbacks.sweep_table._target_=stages.evaluate.SweepTable",))
