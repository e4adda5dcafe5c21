"""An HTML page of the pipeline's DVC plots that renders with no network.

``dvc plots show`` writes a page whose scripts load vega, vega-lite and vega-embed from a CDN, so it
stays blank on an offline machine. cmhash builds an HTML template with the three libraries inlined,
taken from the npm registry with ``npm pack`` (once, then cached), and passes it to
``dvc plots show --html-template``. The majors match the vega-lite v5 specs dvc-render writes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from cmhash.atomic import write_text
from cmhash.errors import CmhashError

# npm package -> version range; the file inlined is package/build/<package>.min.js
VEGA_PACKAGES = {"vega": "5", "vega-lite": "5", "vega-embed": "6"}

TEMPLATE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>cmhash plots</title>
    <!-- inlined for offline use: {versions} -->
{inline_scripts}
    <style>
        body {{ font-family: sans-serif; }}
        table {{ border-spacing: 15px; }}
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cmhash"


def _script_tag(source: str) -> str:
    # a literal "</script" inside the code would end the inline element early
    return "<script>\n" + re.sub(r"</(script)", r"<\\/\1", source, flags=re.IGNORECASE) + "\n</script>"


def _npm_pack(destination: Path) -> list[Path]:
    npm = shutil.which("npm")
    if npm is None:
        raise CmhashError("npm was not found: install Node.js and npm (they fetch vega from the npm registry), "
                          "or pass --scripts-dir with vega.min.js, vega-lite.min.js and vega-embed.min.js")
    specs = [f"{name}@{version}" for name, version in VEGA_PACKAGES.items()]
    done = subprocess.run([npm, "pack", *specs, "--pack-destination", str(destination), "--silent"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise CmhashError(f"`npm pack {' '.join(specs)}` failed (is the npm registry reachable?):\n{done.stderr.strip()}")
    return sorted(destination.glob("*.tgz"))


def _scripts_from_tarballs(tarballs: list[Path]) -> dict[str, tuple[str, str]]:
    """package -> (version, minified source) from ``npm pack`` tarballs."""
    scripts = {}
    for tarball in tarballs:
        name, _, version = tarball.stem.rpartition("-")
        if name not in VEGA_PACKAGES:
            continue
        with tarfile.open(tarball) as archive:
            member = f"package/build/{name}.min.js"
            try:
                scripts[name] = (version, archive.extractfile(member).read().decode("utf-8"))
            except KeyError:
                raise CmhashError(f"{tarball.name} has no {member}: its layout changed; pin an older version") from None
    return scripts


def _scripts_from_dir(folder: Path) -> dict[str, tuple[str, str]]:
    scripts = {}
    for name in VEGA_PACKAGES:
        path = folder / f"{name}.min.js"
        if not path.is_file():
            raise CmhashError(f"{path} is missing: --scripts-dir needs {', '.join(f'{n}.min.js' for n in VEGA_PACKAGES)}")
        scripts[name] = ("local file", path.read_text(encoding="utf-8"))
    return scripts


def offline_template(cache_dir: Path, scripts_dir: Path | None = None) -> Path:
    """Path of the offline template, built on first use (from ``scripts_dir`` or the npm registry)."""
    template = cache_dir / "dvc-plots-offline.html"
    if template.is_file() and scripts_dir is None:
        return template
    if scripts_dir is not None:
        scripts = _scripts_from_dir(scripts_dir)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            scripts = _scripts_from_tarballs(_npm_pack(Path(tmp)))
    missing = set(VEGA_PACKAGES) - set(scripts)
    if missing:
        raise CmhashError(f"could not get {', '.join(sorted(missing))} for the offline plots template")
    ordered = [scripts[name] for name in VEGA_PACKAGES]  # vega before vega-lite before vega-embed
    page = TEMPLATE.format(
        refresh_tag="{refresh_tag}", plot_divs="{plot_divs}",
        versions=", ".join(f"{name} {version}" for name, (version, _) in zip(VEGA_PACKAGES, ordered)),
        inline_scripts="\n".join(_script_tag(source) for _, source in ordered),
    )
    write_text(template, page)
    return template


def render_plots_page(root: Path, out_dir: Path, cache_dir: Path, scripts_dir: Path | None = None) -> Path:
    """Run ``dvc plots show`` with the offline template; returns the written index.html."""
    template = offline_template(cache_dir, scripts_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "--html-template", str(template), "-o", str(out_dir.resolve())],
                          cwd=root, capture_output=True, text=True)
    if done.returncode != 0:
        raise CmhashError(f"`dvc plots show` failed in {root}:\n{(done.stderr or done.stdout).strip()}")
    page = out_dir / "index.html"
    if not page.is_file():
        raise CmhashError(f"`dvc plots show` did not write {page}: are there plots (run `dvc repro` first)?")
    return page
