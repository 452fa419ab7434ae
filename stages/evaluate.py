"""evaluate: a fold's candidate pools -> ranked lists, metrics, choices (tune) or gates (test), MLflow runs.

    python -m stages.evaluate --params params.yaml --fold tune   (dvc repro: every choice, on validation)
    python -m stages.evaluate --params params.yaml --fold test   (dvc repro: the choices reported on test)
    python -m stages.evaluate alpha=0.5                          (one alpha on evaluate.fold, one MLflow run)
    python -m stages.evaluate -m alpha=0.35,0.5,0.65             (a sweep on evaluate.fold; the comparison is
                                                                  written to the sweep folder when it ends)
Reads:  split@<fold>, embed_load@<fold>, candidates@<fold>; evaluate@tune (for the test fold)
Writes: evaluate@<fold>; paths.metrics/{<fold>.json, <fold>_alpha_curve.csv}
"""

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from recopt.config import Config, load_config
from recopt.errors import RecoptError
from recopt.sweep import compare_sweep, evaluate_fold, evaluate_job
from stages._entry import Invocation, guarded, run


class SweepTable(Callback):
    """Hydra callback: refuse a sweep that lists a value twice; when it ends, evaluate the baselines
    and print the comparison."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        guarded(lambda: _each_value_once(list(config.hydra.overrides.task)))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)  # resolved (and cached) as the sweeper did
        job = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
        guarded(lambda: compare_sweep(load_config(OmegaConf.to_container(job, resolve=True)), sweep_dir))  # type: ignore[arg-type]


def _each_value_once(task: list[str]) -> None:
    """Two jobs of one configuration would be two rows of one run (alpha=0.3,0.30 is one alpha)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for override in OverridesParser.create().parse_overrides(task):
        if override.is_choice_sweep():
            values = list(override.sweep_iterator())
            repeated = sorted({repr(v) for i, v in enumerate(values) if v in values[:i]})
            if repeated:
                raise RecoptError(f"{override.get_key_element()}: the sweep lists {', '.join(repeated)} more than "
                                  f"once ({override.input_line}) — list each value once")


def main(cfg: Config, how: Invocation) -> Any:
    if how.mode == "params":
        if how.fold is None:
            raise RecoptError("evaluate: --fold tune|test is required with --params (dvc.yaml passes it)")
        gates = evaluate_fold(cfg, how.fold)
        if how.fold == "test" and cfg.evaluate.enforce_gates and not gates.get("passed", False):
            verdicts = [gates.get(g, {}).get("verdict") for g in ("gate1", "gate2")]
            raise RecoptError(f"evaluate@test: acceptance gates {verdicts} (evaluate.enforce_gates=true"
                              f"{', enforce_inconclusive=true' if cfg.evaluate.enforce_inconclusive else ''}); "
                              "see the report")
        return None
    return evaluate_job(cfg, how.fold or cfg.evaluate.fold, how.sweep_dir, how.job_num, how.overrides)


if __name__ == "__main__":
    run(main, hydra_overrides=("+hydra.callbacks.sweep_table._target_=stages.evaluate.SweepTable",))
