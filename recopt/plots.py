"""`dvc plots` pages that render without a network.

DVC's HTML page loads Vega, Vega-Lite and Vega-Embed from a CDN, so offline it is blank.
:func:`offline_template` is a DVC ``--html-template`` with the three libraries inlined from
the vl-convert-python package (its ``javascript_bundle`` puts ``vegaEmbed`` on ``window``,
which is what DVC's plot divs call). :func:`offline_plots` runs ``dvc plots diff`` with it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from recopt.errors import RecoptError
from recopt.layout import plots_template_path, write_text_atomic

TEMPLATE = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
<title>recopt: DVC plots</title>
<script type="text/javascript">{bundle}</script>
</head>
<body>
{plot_divs}
</body>
</html>
"""


def offline_template() -> str:
    """The HTML template with Vega, Vega-Lite and Vega-Embed inlined (about 0.9 MB)."""
    import vl_convert

    # DVC fills "{plot_divs}"; the bundle is inserted by plain replacement, so braces in it stay as they are
    return TEMPLATE.replace("{bundle}", vl_convert.javascript_bundle())


def offline_plots(paths: object, revs: list[str], out: Path) -> Path:
    """`dvc plots diff REVS` as a self-contained page under `out`; returns its index.html.

    The template is written once under paths.runs (recopt.layout) and reused."""
    template = plots_template_path(paths)
    if not template.is_file():
        write_text_atomic(template, offline_template())
    cmd = ["dvc", "plots", "diff", *revs, "--html-template", str(template.resolve()), "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RecoptError(f"`{' '.join(cmd)}` failed: {(proc.stderr or proc.stdout).strip()[-2000:]}")
    return out / "index.html"
