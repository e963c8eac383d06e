"""What the QGIS plugin repository checks: metadata, licence, the release zip."""
import configparser
import subprocess
import zipfile
from pathlib import Path

import tomllib

import geovlm

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = ("name", "qgisMinimumVersion", "qgisMaximumVersion", "description", "about", "version", "author",
            "email", "repository", "tracker", "homepage", "hasProcessingProvider", "tags", "licence")


def test_metadata_is_complete_and_versions_agree():
    meta = configparser.ConfigParser()
    meta.read(ROOT / "metadata.txt", encoding="utf-8")
    general = meta["general"]
    for key in REQUIRED:
        assert general.get(key, "").strip(), f"metadata.txt lacks {key}"
    assert general["qgisMinimumVersion"] == "3.40" and general["qgisMaximumVersion"] == "4.99"
    for key in ("repository", "tracker", "homepage"):  # no placeholder links: README sections until a public home
        assert "example." not in general[key], f"metadata.txt {key} is a placeholder"
        if not general[key].startswith("https://"):
            path, _, anchor = general[key].partition("#")
            assert (ROOT / path).is_file() and anchor
    assert general["hasProcessingProvider"] == "yes"
    assert (ROOT / general["icon"]).is_file()
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert general["version"] == version == geovlm.__version__
    assert "GNU GENERAL PUBLIC LICENSE" in (ROOT / "LICENSE").read_text()[:200]


def test_release_zip_holds_one_geovlm_folder_without_tests(tmp_path):
    out = tmp_path / "geovlm.zip"
    subprocess.run(["python3", str(ROOT / "scripts" / "make_zip.py"), str(out)], check=True, capture_output=True)
    names = zipfile.ZipFile(out).namelist()
    assert names and all(n.startswith("geovlm/") for n in names)
    assert "geovlm/metadata.txt" in names and "geovlm/__init__.py" in names and "geovlm/LICENSE" in names
    assert "geovlm/pyproject.toml" in names and "geovlm/README.md" in names  # the engine set-up installs from them
    assert not any(n.startswith(("geovlm/tests/", "geovlm/.venv/", "geovlm/bench/")) for n in names)
