"""How every stage module starts: one config, two ways in.

* `python -m stages.<name> --params params.yaml` (what dvc.yaml runs) uses
  exactly the composed params.yaml, so `dvc exp run -S key=value` works.
* `python -m stages.<name> [key=value ...] [-m]` composes conf/ with Hydra
  overrides (and sweeps with -m).

Both build the same typed :class:`recopt.config.Config`.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig, OmegaConf

from recopt.config import Config, ConfigError, load_config, read_params

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
log = logging.getLogger("recopt")


@dataclass(frozen=True)
class Invocation:
    """How a stage was started: by DVC from params.yaml, or by Hydra."""

    mode: str                      # "params" | "hydra"
    sweep_dir: Path | None = None  # Hydra multirun: the sweep's output folder
    job_num: int | None = None


def compose(overrides: list[str] | None = None) -> dict:
    """Compose conf/ exactly as DVC's Hydra composition does (resolved)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(str(CONF_DIR), version_base=None):
        cfg = hydra_compose(config_name="config", overrides=overrides or [])
    OmegaConf.resolve(cfg)
    return OmegaConf.to_container(cfg)  # type: ignore[return-value]


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its CPU-dispatch chatter is not news


def run(main: Callable[[Config, Invocation], None], *, hydra_overrides: tuple[str, ...] = ()) -> None:
    """Run a stage's `main(cfg, invocation)` from the command line.

    `hydra_overrides` are appended to the command line in Hydra mode (e.g. a callback
    that only this stage registers).
    """
    argv = sys.argv[1:]
    if argv[:1] == ["--params"]:
        _setup_logging()
        if len(argv) != 2:
            sys.exit("usage: python -m stages.<name> --params params.yaml")
        try:
            cfg = read_params(argv[1])
        except ConfigError as err:
            sys.exit(str(err))
        main(cfg, Invocation(mode="params"))
        return

    import hydra
    from hydra.core.hydra_config import HydraConfig

    @hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
    def _hydra_main(dcfg: DictConfig) -> None:
        logging.getLogger("faiss.loader").setLevel(logging.WARNING)
        raw = OmegaConf.to_container(dcfg, resolve=True)
        try:
            cfg = load_config(raw, source="conf/ + overrides")  # type: ignore[arg-type]
        except ConfigError as err:
            sys.exit(str(err))
        hc = HydraConfig.get()
        multirun = hc.mode is not None and hc.mode.name == "MULTIRUN"
        main(cfg, Invocation(mode="hydra",
                             sweep_dir=Path(hc.sweep.dir) if multirun else None,
                             job_num=hc.job.num if multirun else None))

    # name the Hydra job after the stage (not this module), e.g. for the sweep callback
    sys.argv += [f"hydra.job.name={main.__module__.rsplit('.', 1)[-1]}", *hydra_overrides]
    _hydra_main()
