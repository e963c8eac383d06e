"""The release zip for the QGIS plugin repository: the tracked files under one folder `geovlm/`,
without tests, benchmarks, CI or development files."""
import subprocess  # nosec B404 - runs git, a fixed command
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LEFT_OUT_DIRS = ("tests/", "bench/", ".ci/", "scripts/", "docs/")
# pyproject.toml stays: "Set up the local engine…" pip-installs the plugin folder's engine extra from it.
LEFT_OUT_FILES = {"Makefile", ".gitignore"}


def main(out: Path) -> int:
    files = subprocess.run(  # nosec B603 B607 - git from PATH, fixed arguments
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    keep = [f for f in files if not f.startswith(LEFT_OUT_DIRS) and f not in LEFT_OUT_FILES and (ROOT / f).is_file()]
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(keep):
            zf.write(ROOT / name, f"geovlm/{name}")
    print(f"{out} ({len(keep)} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "dist" / "geovlm.zip"))
