"""The offline plots template: built from npm tarballs or a folder of scripts, with no CDN left."""

import io
import shutil
import tarfile

import pytest

from cmhash.errors import CmhashError
from cmhash.plots_page import VEGA_PACKAGES, _scripts_from_tarballs, offline_template


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


@pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed")
def test_template_from_the_npm_registry(tmp_path):
    template = offline_template(tmp_path).read_text()
    assert "vega 5." in template and "vega-embed 6." in template  # versions recorded in a comment
    assert len(template) > 500_000  # the three minified libraries
