"""Imports run one way: the library (gan_modules, datamodules) <- scripts (train.py, study, benchmarks)
<- tests, and the tests find the scripts through pytest's `pythonpath`, not by editing sys.path."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("gan_modules", "datamodules")
SCRIPTS = ("train", "study", "benchmarks")
TESTS = {"tests", *(p.stem for p in (ROOT / "tests").glob("*.py"))}  # conftest, ddp_helpers, test_*


def imported_roots(path: Path) -> set[str]:
    """Top-level names of the modules ``path`` imports, anywhere in the file (lazy imports too)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def files(*roots: str) -> list[Path]:
    found = []
    for root in roots:
        path = ROOT / root
        found += sorted(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]
    return [p for p in found if p.is_file()]


def test_the_library_imports_no_script_and_no_test() -> None:
    found = {str(p.relative_to(ROOT)): sorted(imported_roots(p) & {*SCRIPTS, *TESTS}) for p in files(*LIBRARY)}
    assert not {k: v for k, v in found.items() if v}, "the library (gan_modules, datamodules) imports scripts or tests"


def test_no_script_imports_a_test() -> None:
    found = {str(p.relative_to(ROOT)): sorted(imported_roots(p) & TESTS) for p in files("train", "study", "benchmarks")}
    assert not {k: v for k, v in found.items() if v}, "a script imports from tests/: move the helper down to it"


def test_tests_leave_sys_path_to_pytest() -> None:
    # setup.cfg's `pythonpath = .` puts the repository root on sys.path: `from benchmarks import step_overhead`.
    edits = [str(p.relative_to(ROOT)) for p in files("tests") for node in ast.walk(ast.parse(p.read_text()))
             if isinstance(node, ast.Call) and ast.unparse(node.func) in ("sys.path.insert", "sys.path.append")]
    assert not edits, "these tests edit sys.path: import the script as a package module (benchmarks.x, study.x)"
