"""The package's shape: the public surface, and the import rule of ps_trainer/ARCHITECTURE.md."""
from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
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


def test_ps_trainer_imports_workers_only_in_launch_and_the_config_gate():
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "ps_trainer").rglob("*.py")
                 if p.name not in ("launch.py", "config_gate.py")
                 and any(m.split(".")[0] in ("workers", "ps_trainer_workers")
                         for m in imported_modules(p))]
    assert offenders == []


def test_nothing_imports_the_folder_name_workers():
    """The folder workers/ is installed as ps_trainer_workers; `import workers` would only
    work from a checkout."""
    offenders = [str(p.relative_to(ROOT)) for folder in ("ps_trainer", "workers", "tests")
                 for p in (ROOT / folder).rglob("*.py")
                 if any(m.split(".")[0] == "workers" for m in imported_modules(p))]
    assert offenders == []


def test_the_wheel_installs_ps_trainer_and_ps_trainer_workers_only(tmp_path):
    """What `pip install` puts into site-packages: the two packages, every subpackage of the
    source tree, the map; no top-level `workers` that could clash with another project."""
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                          "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    [wheel] = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if ".dist-info" not in n} == {"ps_trainer",
                                                                          "ps_trainer_workers"}
    for folder, package in (("ps_trainer", "ps_trainer"), ("workers", "ps_trainer_workers")):
        for init in (ROOT / folder).rglob("__init__.py"):
            inside = init.relative_to(ROOT / folder).as_posix()
            assert f"{package}/{inside}" in names, f"{folder}/{inside} is not in the wheel"
    assert "ps_trainer/ARCHITECTURE.md" in names
    assert "ps_trainer_workers/tasks/self_training.py" in names


def test_server_side_modules_know_no_task():
    for name in ("transport/server.py", "core/store.py", "transport/client.py", "core/params.py",
                 "core/optim.py"):
        text = (ROOT / "ps_trainer" / name).read_text()
        for task in ("rotation", "jigsaw", "colorization", "segmentation"):
            assert task not in text, (name, task)


def test_import_is_light_and_public_names_resolve_lazily():
    code = ("import sys, ps_trainer; print('ps_trainer_workers' in sys.modules, "
            "'ray' in sys.modules); ps_trainer.run_local; print('ps_trainer_workers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "False", "True"], out.stderr
    for name in ps_trainer.__all__:
        assert getattr(ps_trainer, name) is not None
    with pytest.raises(AttributeError, match="no_such_name"):
        getattr(ps_trainer, "no_such_name")


# --------------------------------------------------------------------------- layers

# ps_trainer/ARCHITECTURE.md, "Packages and what each may import": lowest first.
LAYERS = ("config", "core", "observe", ("model", "data"), "transport", "ps_trainer_workers",
          "run", "recipes", "tools")


def layer_of(module: str) -> int:
    parts = module.split(".")
    name = "ps_trainer_workers" if parts[0] == "ps_trainer_workers" else parts[1]
    return next(i for i, entry in enumerate(LAYERS) if name == entry or name in entry)


def source_modules() -> dict[str, Path]:
    """Every module of both packages by its dotted name (the facade ps_trainer/__init__ aside)."""
    found = {}
    for folder, package in (("ps_trainer", "ps_trainer"), ("workers", "ps_trainer_workers")):
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts == ("__init__",):
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((package, *parts))] = path
    return found


def internal_imports(path: Path, modules: dict) -> set[str]:
    """The project's modules `path` imports anywhere in it (a `from package import module`
    counts as the module)."""
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module in modules:
            subs = {f"{node.module}.{a.name}" for a in node.names} & modules.keys()
            out |= subs or {node.module}
    return out


def test_no_module_imports_a_layer_below_it():
    modules = source_modules()
    offenders = [(name, target) for name, path in modules.items()
                 for target in internal_imports(path, modules)
                 if layer_of(target) > layer_of(name)]
    assert offenders == []


def test_core_needs_no_ray_and_knows_no_task():
    offenders = [(str(p.relative_to(ROOT)), m) for p in (ROOT / "ps_trainer" / "core").rglob("*.py")
                 for m in imported_modules(p) if m.split(".")[0] in ("ray", "ps_trainer_workers")]
    assert offenders == []


def test_no_import_cycle():
    modules = source_modules()
    graph = {name: internal_imports(path, modules) - {name} for name, path in modules.items()}
    # a package's __init__ that re-exports its modules is not a cycle with them
    for name in graph:
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []
