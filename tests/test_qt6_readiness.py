"""QGIS 4 (Qt 6) readiness, checked statically: no QGIS 4 package is installable here.

The plugin's QGIS-side code (`plugin/`, `ui/` and the package's `__init__.py`) is scanned for what breaks
under PyQt6, as peer plugins broke on it (QGIS's own `scripts/pyqt5_to_pyqt6/pyqt5_to_pyqt6.py` lists the
same kinds): Qt imported other than through `qgis.PyQt`; QAction, QActionGroup and QShortcut taken from
QtWidgets (Qt 6 moved them to QtGui; `qgis.PyQt.QtGui` offers them on Qt 5 too); `exec_()`; `QVariant.Type`
(gone in PyQt6: QGIS 3.38+ takes QMetaType.Type); classes removed in Qt 6; and enum values reached by their
short name (`Qt.AlignLeft`), which PyQt6 only knows fully qualified (`Qt.AlignmentFlag.AlignLeft`). The
short names are found by introspection of the installed PyQt5/PyQGIS: an attribute whose value is a member
of an enum type nested in the same class, reached without naming that enum type.
"""
import ast
import enum
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QT_SIDE = sorted([ROOT / "__init__.py", *(ROOT / "plugin").rglob("*.py"), *(ROOT / "ui").rglob("*.py")])
MOVED_TO_QTGUI = {"QAction", "QActionGroup", "QShortcut"}
REMOVED_IN_QT6 = {"QRegExp", "QRegExpValidator", "QDesktopWidget", "QStringRef", "QTextCodec", "QGLWidget"}
REMOVED_METHODS = {"exec_", "setMargin", "print_"}


def _imports(tree):
    """name -> (module, attribute or None) for every import in a module."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                names[alias.asname or alias.name] = (node.module, alias.name, node.level)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                names[alias.asname or alias.name.split(".")[0]] = (alias.name, None, 0)
    return names


def _resolve(entry):
    module, attr, level = entry
    if level or not module.startswith("qgis"):
        return None
    try:
        obj = importlib.import_module(module)
        return getattr(obj, attr) if attr else obj
    except (ImportError, AttributeError):
        return None


def _chain(node):
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *reversed(parts)]
    return None


def _is_enum_type(kind) -> bool:
    """A Python enum or a sip-wrapped C++ enum (PyQt5's metaclass is sip.enumtype)."""
    return isinstance(kind, type) and (issubclass(kind, enum.Enum) or type(kind).__name__ == "enumtype")


def _short_enum(owner, part):
    """The fully qualified name to write when `owner.part` is an enum value reached without its enum type
    (`Qt.AlignLeft`, `QgsWkbTypes.Polygon`), else None."""
    if not isinstance(owner, type) or _is_enum_type(owner):
        return None
    try:
        value = getattr(owner, part)
    except AttributeError:
        return None
    kind = type(value)
    if not _is_enum_type(kind):
        return None
    return f"{kind.__qualname__}.{part}"


def qt6_problems(path: Path):
    """The constructs in one file that fail under PyQt6, as 'file:line: what' strings."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    rel = path.relative_to(ROOT)
    problems = []
    imports = _imports(tree)
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for module in modules:
                if module.split(".")[0] in ("PyQt5", "PyQt6", "PySide2", "PySide6", "sip"):
                    problems.append(f"{rel}:{line}: imports {module} directly (use qgis.PyQt)")
            if isinstance(node, ast.ImportFrom) and (node.module or "").endswith("QtWidgets"):
                for alias in node.names:
                    if alias.name in MOVED_TO_QTGUI:
                        problems.append(f"{rel}:{line}: {alias.name} from QtWidgets (Qt 6 has it in QtGui)")
            for alias in node.names:
                if alias.name in REMOVED_IN_QT6:
                    problems.append(f"{rel}:{line}: {alias.name} is removed in Qt 6")
        elif isinstance(node, ast.Attribute):
            if node.attr in REMOVED_METHODS:
                problems.append(f"{rel}:{line}: .{node.attr} is removed in Qt 6")
            chain = _chain(node)
            if not chain or chain[0] not in imports:
                continue
            if chain[:2] == ["QVariant", "Type"]:
                problems.append(f"{rel}:{line}: QVariant.Type is gone in PyQt6 (use QMetaType.Type)")
                continue
            owner = _resolve(imports[chain[0]])
            for part in chain[1:]:
                if owner is None:
                    break
                alias = getattr(owner, part, None)
                if isinstance(owner, type) and _is_enum_type(alias) and \
                        alias.__qualname__ != f"{owner.__qualname__}.{part}":
                    problems.append(f"{rel}:{line}: {'.'.join(chain)} reaches {alias.__qualname__} through a "
                                    f"deprecated alias (write {alias.__qualname__})")
                    break
                qualified = _short_enum(owner, part)
                if qualified:
                    problems.append(f"{rel}:{line}: {'.'.join(chain)} is a short enum name (write {qualified})")
                    break
                owner = getattr(owner, part, None)
    return sorted(set(problems))


@pytest.mark.parametrize("path", QT_SIDE, ids=lambda p: str(p.relative_to(ROOT)))
def test_qgis_side_code_has_no_construct_that_fails_under_pyqt6(path):
    assert qt6_problems(path) == []


def test_the_check_finds_each_kind_of_problem():
    bad = ROOT / "plugin" / "_qt6_probe_tmp.py"
    bad.write_text(
        "from PyQt5.QtCore import QTimer\n"
        "from qgis.PyQt.QtWidgets import QAction, QDialog\n"
        "from qgis.PyQt.QtCore import Qt, QVariant, QRegExp\n"
        "from qgis.core import Qgis, QgsWkbTypes\n"
        "a = Qt.AlignLeft\n"
        "b = Qt.AlignmentFlag.AlignLeft\n"
        "c = QgsWkbTypes.Polygon\n"
        "d = Qgis.Info\n"
        "e = QVariant.Type.Int\n"
        "QDialog().exec_()\n"
        "f = QgsWkbTypes.Type.Polygon\n"
    )
    try:
        found = "\n".join(qt6_problems(bad))
    finally:
        bad.unlink()
    for expected in ("imports PyQt5.QtCore directly", "QAction from QtWidgets", "QRegExp is removed",
                     ":5: Qt.AlignLeft is a short enum name (write Qt.AlignmentFlag.AlignLeft)",
                     ":7: QgsWkbTypes.Polygon is a short enum name", ":8: Qgis.Info is a short enum name",
                     ":9: QVariant.Type is gone", ":10: .exec_ is removed",
                     ":11: QgsWkbTypes.Type.Polygon reaches Qgis.WkbType through a deprecated alias"):
        assert expected in found
    assert ":6:" not in found


def test_metadata_claims_qt6_support_only_with_the_check_passing():
    metadata = (ROOT / "metadata.txt").read_text()
    problems = [p for path in QT_SIDE for p in qt6_problems(path)]
    assert ("supportsQt6=True" in metadata) == (not problems)
