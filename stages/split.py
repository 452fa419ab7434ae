"""split: ratings -> the test fold (train / test) and the tune fold (tune-train / validation,
built from train alone), with per-user slices.

Reads:  the ingest artifact (ratings)
Writes: the split artifacts split@test {train, test, users} and split@tune {train, validation, users}
"""

from recopt.config import Config
from recopt.runlog import log
from recopt.split import run_split
from stages._entry import Invocation, run


def main(cfg: Config, _: Invocation) -> None:
    for fold, summary in run_split(cfg).items():
        log.info("split@%s: %s", fold, summary["counts"])


if __name__ == "__main__":
    run(main)
