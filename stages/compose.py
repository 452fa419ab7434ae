"""Write params.yaml: the composition of conf/ (what DVC's Hydra composition writes).

    python -m stages.compose [key=value ...]
"""

from __future__ import annotations

import sys

from omegaconf import OmegaConf

from recopt.config import ConfigError, load_config
from stages._entry import ROOT, compose


def main(argv: list[str]) -> None:
    raw = compose(argv)
    try:
        load_config(raw, source="conf/")
    except ConfigError as err:
        sys.exit(str(err))
    (ROOT / "params.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(raw)), encoding="utf-8")
    print(f"wrote {ROOT / 'params.yaml'}")


if __name__ == "__main__":
    main(sys.argv[1:])
