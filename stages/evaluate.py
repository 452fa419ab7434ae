"""evaluate: a fold's candidate pools -> ranked lists, metrics, choices (tune) or gates (test), MLflow runs.

    python -m stages.evaluate --params params.yaml --fold tune   (dvc repro: every choice, on validation)
    python -m stages.evaluate --params params.yaml --fold test   (dvc repro: the choices reported on test)
    python -m stages.evaluate alpha=0.5                          (one alpha on evaluate.fold: one MLflow
                                                                  parent with its run and the baselines)
    python -m stages.evaluate -m alpha=0.35,0.5,0.65             (a sweep on evaluate.fold; the comparison is
                                                                  written to the sweep folder when it ends)
Reads:  split@<fold>, embed_load@<fold>, cf_load@<fold>, candidates@<fold>; evaluate@tune (for the test fold)
Writes: evaluate@<fold>; paths.metrics/{<fold>.json, <fold>_alpha_curve.csv}; MLflow
"""

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from recopt.artifacts import output
from recopt.config import Config, load_config
from recopt.errors import RecoptError
from recopt.layout import job_dir
from recopt.publish import publish_fold, write_artifact
from recopt.study import preflight, run_test, run_tune
from recopt.sweep import compare_sweep, evaluate_job
from stages._entry import Invocation, guarded, run

USAGE = """recopt evaluate: rank, measure and compare a fold's runs.

  python -m stages.evaluate --params params.yaml --fold tune|test   what `dvc repro` runs
  python -m stages.evaluate alpha=0.5                               one alpha on evaluate.fold (validation)
  python -m stages.evaluate -m alpha=0.35,0.5,0.65                  a sweep, one job per alpha
  python -m stages.evaluate -m alpha=0.2,0.4 hydra/launcher=joblib  jobs in parallel
  python -m stages.evaluate -m hydra/sweeper=search                 an Optuna search over alpha
  python -m stages.evaluate evaluate.fold=test alpha=0.5            score the test fold instead

Repeat the `key=value` overrides the pipeline was built with (e.g. data=movielens data.path=...).
Hydra's own options follow.
"""


class SweepTable(Callback):
    """Hydra callback: refuse a sweep that lists a value twice; when it ends, evaluate the baselines
    and print the comparison. A failure here ends the sweep with a non-zero status (Hydra would only
    warn about an exception raised in a callback)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        guarded(lambda: _each_value_once(list(config.hydra.overrides.task)), everything=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)  # resolved (and cached) as the sweeper did
        job = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
        guarded(lambda: compare_sweep(load_config(OmegaConf.to_container(job, resolve=True)), sweep_dir),  # type: ignore[arg-type]
                everything=True)


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
    preflight(cfg)
    fold = how.fold or cfg.evaluate.fold
    if how.mode == "params":
        if how.fold is None:
            raise RecoptError("evaluate: --fold tune|test is required with --params (dvc.yaml passes it)")
        with output(cfg, "evaluate", fold) as out:  # open from the start: its run facts time the whole stage
            outcome = run_tune(cfg) if fold == "tune" else run_test(cfg)
            write_artifact(out, cfg, outcome)
        publish_fold(cfg, outcome, out)
        if outcome.gates is not None and cfg.evaluate.enforce_gates and not outcome.gates.passed:
            verdicts = [outcome.gates.gate1.verdict, outcome.gates.gate2.verdict]
            raise RecoptError(f"evaluate@test: acceptance gates {verdicts} (evaluate.enforce_gates=true"
                              f"{', enforce_inconclusive=true' if cfg.evaluate.enforce_inconclusive else ''}); "
                              "see the report")
        return None
    if how.sweep_dir is not None:  # a job of a multirun: the comparison runs when the sweep ends
        return evaluate_job(cfg, fold, job_dir(cfg.paths, how.sweep_dir, how.job_num), how.overrides)
    single = job_dir(cfg.paths, None, None)  # a single run is a one-job sweep
    value = evaluate_job(cfg, fold, single / "0", how.overrides)
    compare_sweep(cfg, single, kind="single")
    return value


if __name__ == "__main__":
    run(main, usage=USAGE, hydra_overrides=("+hydra.callbacks.sweep_table._target_=stages.evaluate.SweepTable",))
