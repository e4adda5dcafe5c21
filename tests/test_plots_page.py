"""The offline plots template: built from npm tarballs or a folder of scripts, with no CDN left."""

import io
import shutil
import tarfile

import pytest

from cmhash.errors import CmhashError
from cmhash.pipeline.plots_page import VEGA_PACKAGES, _scripts_from_tarballs, offline_template


def _npm_tarball(folder, name, version, source):
    """A tarball with npm pack's layout: package/build/<name>.min.js."""
    path = folder / f"{name}-{version}.tgz"
    with tarfile.open(path, "w:gz") as archive:
        data = source.encode()
        info = tarfile.TarInfo(f"package/build/{name}.min.js")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return path


def test_template_inlines_scripts_in_order_and_escapes_script_end(tmp_path):
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    for name in VEGA_PACKAGES:
        (scripts / f"{name}.min.js").write_text(f"var {name.replace('-', '_')} = '</script>';")
    template = offline_template(tmp_path / "cache", scripts).read_text()
    assert template.count("{plot_divs}") == 1 and "{scripts}" not in template  # dvc adds CDN tags at {scripts}
    assert "</script>';" not in template and "<\\/script>';" in template
    assert template.index("var vega =") < template.index("var vega_lite =") < template.index("var vega_embed =")
    assert "https://" not in template


def test_scripts_from_npm_tarballs(tmp_path):
    tarballs = [_npm_tarball(tmp_path, name, "9.1.0", f"/* {name} */") for name in VEGA_PACKAGES]
    scripts = _scripts_from_tarballs(tarballs)
    assert scripts["vega-lite"] == ("9.1.0", "/* vega-lite */")


def test_missing_script_is_a_clear_error(tmp_path):
    with pytest.raises(CmhashError, match="vega.min.js is missing"):
        offline_template(tmp_path / "cache", tmp_path)


def _npm_registry_reachable() -> bool:
    import socket

    try:
        socket.create_connection(("registry.npmjs.org", 443), timeout=5).close()
        return True
    except OSError:
        return False


@pytest.mark.e2e  # downloads from the npm registry (skips, saying so, where it cannot be reached)
@pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed")
def test_template_from_the_npm_registry(tmp_path):
    if not _npm_registry_reachable():
        pytest.skip("the npm registry cannot be reached from here (no network)")
    template = offline_template(tmp_path).read_text()
    assert "vega 5." in template and "vega-embed 6." in template  # versions recorded in a comment
    assert len(template) > 500_000  # the three minified libraries


def _chromium():
    return next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)), None)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("npm") is None or _chromium() is None, reason="needs npm (once, for vega) and Chromium")
def test_the_page_renders_in_a_headless_browser_with_no_network(tmp_path):
    """The page's plots draw with every network request refused: vega is inlined, nothing is fetched."""
    import subprocess
    import sys

    from cmhash.pipeline.plots_page import render_plots_page

    project = tmp_path / "project"
    project.mkdir()
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=project, check=True)
    for name in ("i2t", "t2i"):
        (project / f"{name}.csv").write_text("R,precision\n1,0.9\n10,0.8\n100,0.6\n")
    (project / "dvc.yaml").write_text("plots:\n  - i2t.csv: {x: R, y: precision}\n  - t2i.csv: {x: R, y: precision}\n")
    page = render_plots_page(project, tmp_path / "page", tmp_path / "cache")

    # no proxy reachable and every host unresolvable: any request for a script would fail
    dom = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--proxy-server=127.0.0.1:9",
                          "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=15000", "--dump-dom",
                          page.resolve().as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert dom.count('class="marks"') == 2  # vega-embed drew both plots
