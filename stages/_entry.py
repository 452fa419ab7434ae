"""How every stage module starts: one config, two ways in, one way out on user errors.

* `python -m stages.<name> --params params.yaml [--fold tune|test]` (what dvc.yaml runs)
  uses exactly the composed params.yaml, so `dvc exp run -S key=value` works.
* `python -m stages.<name> [--fold tune|test] [key=value ...] [-m]` composes conf/ with
  Hydra overrides (and sweeps with -m).

Both build the same typed :class:`recopt.config.Config`, and both check every output of the
stage (`recopt.outputs`) before any work: with --params every output must also be inside the
repository (the folder of the params file), as DVC requires; in Hydra mode a callback checks
them, Hydra's own run or sweep folder included, before Hydra creates that folder. A user error
(bad data, bad config or override, an output it may not write, a missing or stale input
artifact, a disk or file-size limit reached while writing) prints one message and exits with
status 2, without a traceback; set RECOPT_DEBUG=1 to see it. SIGXFSZ is ignored, so a file-size
limit fails the write (EFBIG) instead of killing the stage.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NoReturn

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from recopt.config import FOLDS, Config, ConfigError, load_config, read_params
from recopt.errors import ArtifactError, RecoptError
from recopt.outputs import Place, check_outputs
from recopt.write_failure import explain_write_failure

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
log = logging.getLogger("recopt")


@dataclass(frozen=True)
class Invocation:
    """How a stage was started: by DVC from params.yaml, or by Hydra."""

    mode: str                      # "params" | "hydra"
    fold: str | None = None        # --fold, when given
    sweep_dir: Path | None = None  # Hydra multirun: the sweep's output folder
    job_num: int | None = None
    overrides: tuple[str, ...] = ()  # Hydra multirun: this job's overrides


def _override_error(overrides: list[str], err: Exception) -> ConfigError:
    """Hydra's or OmegaConf's error about the overrides (unknown key, bad syntax or value, unknown group
    option), as one line."""
    odd = [o for o in overrides if not o.isprintable()]
    if odd:
        return ConfigError(f"the override {odd[0]!r} holds a newline or another control character, which no "
                           "override may hold — fix: remove it (set such a value in conf/ instead)")
    shown = " ".join(overrides) or "(none)"
    return ConfigError(f"conf/ with the overrides {shown}: {' '.join(str(err).split())} — fix the override "
                       "(conf/ holds every key and its default)")


def compose(overrides: list[str] | None = None) -> dict:
    """Compose conf/ exactly as DVC's Hydra composition does (resolved). An override Hydra
    rejects (unknown key, bad syntax, unknown group option) is a ConfigError."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(str(CONF_DIR), version_base=None):
            cfg = hydra_compose(config_name="config", overrides=overrides or [])
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as err:
        raise _override_error(overrides or [], err) from None
    return OmegaConf.to_container(cfg)  # type: ignore[return-value]


def _job_config(config: DictConfig) -> Config:
    """The typed config of a Hydra job or callback (its `hydra` node left out); a value that does not
    resolve (a bad interpolation) is a ConfigError."""
    from omegaconf.errors import OmegaConfBaseException

    job = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
    try:
        raw = OmegaConf.to_container(job, resolve=True)
    except OmegaConfBaseException as err:
        raise ConfigError(f"conf/ + overrides: {' '.join(str(err).split())} — fix the value in conf/ or the "
                          "override") from None
    return load_config(raw, source="conf/ + overrides")  # type: ignore[arg-type]


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its CPU-dispatch chatter is not news


def fail(err: BaseException) -> NoReturn:
    """Print a user error as one message and exit 2 (RECOPT_DEBUG=1: re-raise with its traceback)."""
    if os.environ.get("RECOPT_DEBUG"):
        raise err
    print(f"error: {err}", file=sys.stderr, flush=True)
    sys.exit(2)


def _take_fold(argv: list[str]) -> tuple[str | None, list[str]]:
    """Remove `--fold X` from argv; exit with a usage message when X is not a fold."""
    if "--fold" not in argv:
        return None, argv
    i = argv.index("--fold")
    if i + 1 >= len(argv) or argv[i + 1] not in FOLDS:
        fail(RecoptError(f"--fold: expected one of {', '.join(FOLDS)}"))
    return argv[i + 1], argv[:i] + argv[i + 2:]


def guarded(call: Callable[[], Any], everything: bool = False) -> Any:
    """Run `call`, turning user errors -- and a write that failed for lack of space or a file-size limit,
    from any library -- into one clean message (exit 2); with `everything`, any other exception too (exit
    1) -- for work Hydra runs in a callback, whose exceptions it would only warn about while the process
    exits 0."""
    try:
        return call()
    except RecoptError as err:
        fail(err)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as err:
        why = explain_write_failure(err)
        if why is not None:
            fail(ArtifactError(why))
        if not everything or os.environ.get("RECOPT_DEBUG"):
            raise
        print(f"error: {type(err).__name__}: {err} (a bug or an environment problem; RECOPT_DEBUG=1 shows "
              "the traceback)", file=sys.stderr, flush=True)
        sys.exit(1)


class CheckOutputs(Callback):
    """Hydra callback: check every output of the stage, Hydra's run or sweep folder included, before
    Hydra creates that folder and before the stage does any work."""

    def __init__(self, stage: str, fold: str | None = None) -> None:
        self.stage, self.fold = stage, fold

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.sweep.dir")

    def _check(self, config: DictConfig, key: str) -> None:
        folder = Place(key, Path(str(OmegaConf.select(config, key))), "shared")
        guarded(lambda: check_outputs(_job_config(config), self.stage, self.fold, extra=(folder,)))


def _stage_name(main: Callable[..., Any]) -> str:
    """The stage a `main` belongs to: `ingest` for stages/ingest.py, however it was started (`python -m`
    names its module `__main__`)."""
    spec = main.__globals__.get("__spec__")
    return (spec.name if spec is not None else main.__module__).rsplit(".", 1)[-1]


def run(main: Callable[[Config, Invocation], Any], *, usage: str | None = None,
        hydra_overrides: tuple[str, ...] = ()) -> Any:
    """Run a stage's `main(cfg, invocation)` from the command line.

    `usage` is printed before Hydra's help on `--help`. `hydra_overrides` are appended to the
    command line in Hydra mode (e.g. a callback that only this stage registers). In Hydra
    mode `main`'s return value is the job's return value (what an optimising sweeper maximises).
    """
    if usage and any(a in ("--help", "-h") for a in sys.argv[1:]):
        print(usage, flush=True)
    # a file-size limit: the write fails with EFBIG (one clean error) instead of the signal killing the stage
    # (CPython's start-up ignores SIGXFSZ too; an embedding interpreter need not)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    stage = _stage_name(main)
    fold, argv = _take_fold(sys.argv[1:])
    if argv[:1] == ["--params"]:
        _setup_logging()
        if len(argv) != 2:
            fail(RecoptError("usage: python -m stages.<name> --params params.yaml [--fold tune|test]"))
        cfg = guarded(lambda: read_params(argv[1]))
        guarded(lambda: check_outputs(cfg, stage, fold, repo=Path(argv[1]).resolve().parent))
        return guarded(lambda: main(cfg, Invocation(mode="params", fold=fold)))

    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if not OmegaConf.has_resolver("unique"):  # two sweeps started in the same second get their own folders
        OmegaConf.register_new_resolver("unique", lambda: uuid.uuid4().hex[:6], use_cache=True)

    @hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
    def _hydra_main(dcfg: DictConfig) -> Any:
        logging.getLogger("faiss.loader").setLevel(logging.WARNING)
        cfg = guarded(lambda: _job_config(dcfg))
        hc = HydraConfig.get()
        multirun = hc.mode is not None and hc.mode.name == "MULTIRUN"
        how = Invocation(mode="hydra", fold=fold, sweep_dir=Path(hc.sweep.dir) if multirun else None,
                         job_num=hc.job.num if multirun else None,
                         overrides=tuple(hc.overrides.task) if multirun else ())
        return guarded(lambda: main(cfg, how))

    # name the Hydra job after the stage (not this module), e.g. for the sweep callback; check the outputs
    callback = "+hydra.callbacks.check_outputs"
    sys.argv = [sys.argv[0], *argv, f"hydra.job.name={stage}", f"{callback}._target_={__name__}.CheckOutputs",
                f"{callback}.stage={stage}", f"{callback}.fold={fold or 'null'}", *hydra_overrides]
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises its errors (printed below as one message)
    try:
        return _hydra_main()
    except (HydraException, OmegaConfBaseException) as err:
        fail(_override_error(argv, err))
