"""The pure core imports neither QGIS nor torch (nor anything outside the standard library)."""
import ast
import os
import subprocess
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "core"

PROBE = r"""
import importlib, pkgutil, sys
import geovlm, geovlm.core
for mod in pkgutil.iter_modules(geovlm.core.__path__):
    importlib.import_module("geovlm.core." + mod.name)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {"qgis", "torch", "numpy", "PyQt5", "rasterio"})
print(",".join(heavy))
"""


def test_core_modules_import_no_qgis_or_torch():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"the core pulled in: {out.stdout.strip()}"


def test_core_imports_only_the_standard_library():
    stdlib = set(sys.stdlib_module_names)
    for path in CORE.glob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in stdlib | {"__future__"}, f"{path.name} imports {name}"


def test_root_package_imports_without_qgis():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('qgis', 'PyQt5', 'torch'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import geovlm, geovlm.cli\n"
        "print(geovlm.__version__, callable(geovlm.classFactory))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0.1.0", "True"]


def test_the_plugin_imports_without_the_engines_packages():
    """Code that runs inside QGIS uses PyQGIS, Qt and numpy only: every module of plugin/ and ui/ imports with
    torch, rasterio, geopandas and the rest of the engine's packages blocked."""
    root = Path(__file__).resolve().parents[1]
    modules = [f"geovlm.{p.parent.name}.{p.stem}" for d in ("plugin", "ui") for p in sorted((root / d).glob("*.py"))
               if p.stem != "__init__"]
    code = (
        "import importlib, sys\n"
        "BLOCKED = ('torch', 'rasterio', 'geopandas', 'transformers', 'onnxruntime', 'onnx', 'pyproj', 'shapely',\n"
        "           'pyogrio', 'fastapi', 'uvicorn', 'safetensors', 'tokenizers', 'PIL', 'nltk', 'tqdm')\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in BLOCKED:\n"
        "            raise ModuleNotFoundError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print('ok', len(sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "QT_QPA_PLATFORM": "offscreen"}, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("ok")
