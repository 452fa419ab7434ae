"""Write params.yaml: the composition of conf/ (what DVC's Hydra composition writes).

    python -m stages.compose [key=value ...]    write it
    python -m stages.compose --check            exit 1 when params.yaml is not the composition of conf/
                                                (run by .ci/run; `dvc exp run -S` legitimately rewrites
                                                params.yaml with its overrides, so this is a lint, not a test)
"""

from __future__ import annotations

import sys

import yaml
from omegaconf import OmegaConf

from recopt.config import load_config
from stages._entry import ROOT, compose, guarded


def main(argv: list[str]) -> int:
    check = "--check" in argv
    overrides = [a for a in argv if a != "--check"]
    raw = guarded(lambda: compose(overrides))
    guarded(lambda: load_config(raw, source="conf/"))
    path = ROOT / "params.yaml"
    if check:
        on_disk = yaml.safe_load(path.read_text()) if path.exists() else None
        if on_disk != raw:
            print(f"{path} is not the composition of conf/{' + ' + ' '.join(overrides) if overrides else ''}: "
                  "regenerate it with `python -m stages.compose`", file=sys.stderr)
            return 1
        print(f"{path} is the composition of conf/")
        return 0
    path.write_text(OmegaConf.to_yaml(OmegaConf.create(raw)), encoding="utf-8")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
