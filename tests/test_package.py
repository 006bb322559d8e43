"""The package's shape: the public surface, and the import rule of ps_trainer/ARCHITECTURE.md."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import ps_trainer

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_ps_trainer_imports_workers_only_in_launch():
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "ps_trainer").rglob("*.py")
                 if p.name != "launch.py"
                 and any(m == "workers" or m.startswith("workers.") for m in imported_modules(p))]
    assert offenders == []


def test_server_side_modules_know_no_task():
    for name in ("server.py", "store.py", "client.py", "params.py", "optim.py"):
        text = (ROOT / "ps_trainer" / name).read_text()
        for task in ("rotation", "jigsaw", "colorization", "segmentation"):
            assert task not in text, (name, task)


def test_import_is_light_and_public_names_resolve_lazily():
    code = ("import sys, ps_trainer; print('workers' in sys.modules, 'ray' in sys.modules); "
            "ps_trainer.run_local; print('workers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "False", "True"], out.stderr
    for name in ps_trainer.__all__:
        assert getattr(ps_trainer, name) is not None
    with pytest.raises(AttributeError, match="no_such_name"):
        getattr(ps_trainer, "no_such_name")
