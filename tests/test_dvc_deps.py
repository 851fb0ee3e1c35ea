"""dvc.yaml's deps name every project module a stage's command runs, so `dvc repro` re-runs what a code change touches.

The modules are found in the code, not listed by hand: from each stage's ``python -m
pipeline.<stage>``, every ``import`` and ``from ... import`` (at the top of a module or inside a
function, absolute or relative, and ``importlib.import_module("...")`` with a literal name) is
followed through every module of this repository it reaches. A package's ``__init__.py`` counts
as a module, since importing anything from the package runs it.
"""

import ast
import json
import shlex
from collections import deque
from pathlib import Path

import pytest
import yaml

from conftest import REPO_ROOT
from project import copy_of, dvc

# Modules a stage imports that cannot change what it writes, so editing them need not re-run it.
EXEMPT = {
    "src/__init__.py": "a docstring only",
    "pipeline/__init__.py": "a docstring only",
    "src/cli.py": "sets up logging and signal handling and turns errors into one line and an exit code",
    "src/errors.py": "exception classes and their docstrings only",
}


def module_file(root: Path, name: str) -> Path | None:
    """The file of this repository that ``import name`` runs last (``a/b.py`` or ``a/b/__init__.py``); None outside it."""
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_name(base.name + ".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _with_parents(name: str) -> list[str]:
    """``a.b.c`` -> a, a.b, a.b.c: importing a module runs each enclosing package's __init__ first."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def imported_names(path: Path, name: str) -> set[str]:
    """Every module name ``path`` (the module ``name``) may import, anywhere in its code."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # kept only where it is a module
        elif (isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name))
              and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.add(node.args[0].value)
    return {parent for imported in found for parent in _with_parents(imported)}


def project_modules(root: Path, entry: str) -> dict[str, list[str]]:
    """The repository's files that ``python -m entry`` may run, each with the import chain that reaches it."""
    chains: dict[str, list[str]] = {}
    queue = deque((name, []) for name in _with_parents(entry))
    while queue:
        name, chain = queue.popleft()
        path = module_file(root, name)
        if path is None:
            continue
        relative = path.relative_to(root).as_posix()
        if relative in chains:
            continue
        chains[relative] = [*chain, relative]
        queue.extend((imported, chains[relative]) for imported in sorted(imported_names(path, name)))
    return chains


def command_module(cmd: str) -> str:
    """The module a stage's ``python -m module ...`` (or ``python path/to/script.py ...``) command runs."""
    words = shlex.split(cmd)
    assert words and words[0] in ("python", "python3"), f"not a python command: {cmd}"
    if words[1] == "-m":
        return words[2]
    assert words[1].endswith(".py"), f"neither `python -m module` nor `python script.py`: {cmd}"
    return words[1].removesuffix(".py").replace("/", ".")


def covers(dep: str, module: str) -> bool:
    dep = dep.rstrip("/")
    return module == dep or module.startswith(dep + "/")


def missing_deps(root: Path) -> list[str]:
    """One line per (stage, module) whose command imports a project module its deps do not list."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    problems = []
    for stage_name, stage in stages.items():
        deps = stage.get("deps", [])
        for module, chain in project_modules(root, command_module(stage["cmd"])).items():
            if module not in EXEMPT and not any(covers(dep, module) for dep in deps):
                problems.append(f"stage {stage_name}: {module} is not in its deps (imported via {' -> '.join(chain)})")
    return problems


def test_every_stage_lists_every_module_it_imports():
    problems = missing_deps(REPO_ROOT)
    assert not problems, "add each module to the stage's deps in dvc.yaml (or to EXEMPT, with the reason):\n" + \
        "\n".join(problems)


def test_no_stage_lists_code_it_does_not_run():
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    stale = []
    for stage_name, stage in stages.items():
        modules = project_modules(REPO_ROOT, command_module(stage["cmd"]))
        stale += [f"stage {stage_name}: {dep}" for dep in stage.get("deps", [])
                  if dep.endswith(".py") and dep not in modules]
    assert stale == [], "deps on code the stage never imports re-run it for nothing"


def test_every_exemption_is_a_module_some_stage_imports():
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    imported = set().union(*(project_modules(REPO_ROOT, command_module(stage["cmd"])) for stage in stages.values()))
    assert set(EXEMPT) - imported == set()


def test_function_local_imports_are_followed():
    # src.batching is imported only inside a function of src.training, and src.training only
    # inside pipeline.train's functions
    modules = project_modules(REPO_ROOT, "pipeline.train")
    assert modules["src/batching.py"] == ["pipeline/train.py", "src/training.py", "src/batching.py"]
    assert "src/serving.py" not in modules and "src/download.py" not in modules


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    return root


def test_every_form_of_import_is_followed(tmp_path):
    root = _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/app/__init__.py": "",
        "pkg/app/main.py": "import json\nfrom pkg.lib import plain\n\ndef run():\n    from .helpers import helper\n",
        "pkg/app/helpers.py": "from . import sibling\nimport pkg.lib.deep.module\n",
        "pkg/app/sibling.py": "from ..lib.parent_relative import x\n",
        "pkg/lib/__init__.py": "import importlib\nimportlib.import_module('pkg.lib.dynamic')\n",
        "pkg/lib/plain.py": "",
        "pkg/lib/parent_relative.py": "",
        "pkg/lib/dynamic.py": "",
        "pkg/lib/deep/__init__.py": "",
        "pkg/lib/deep/module.py": "",
        "pkg/lib/unused.py": "",
    })
    assert sorted(project_modules(root, "pkg.app.main")) == [
        "pkg/__init__.py", "pkg/app/__init__.py", "pkg/app/helpers.py", "pkg/app/main.py", "pkg/app/sibling.py",
        "pkg/lib/__init__.py", "pkg/lib/deep/__init__.py", "pkg/lib/deep/module.py", "pkg/lib/dynamic.py",
        "pkg/lib/parent_relative.py", "pkg/lib/plain.py",
    ]


def test_a_module_missing_from_deps_is_named_with_its_stage(tmp_path):
    root = _write(tmp_path, {
        "pipeline/__init__.py": "",
        "pipeline/fit.py": "import src.model\n",
        "src/__init__.py": "",
        "src/model.py": "def build():\n    from src import batching\n",
        "src/batching.py": "",
        "dvc.yaml": yaml.safe_dump({"stages": {
            "fit": {"cmd": "python -m pipeline.fit --out x", "deps": ["pipeline/fit.py", "src/model.py"]},
            "whole": {"cmd": "python pipeline/fit.py", "deps": ["pipeline", "src/"]},
        }}),
    })
    assert missing_deps(root) == [
        "stage fit: src/batching.py is not in its deps (imported via pipeline/fit.py -> src/model.py -> src/batching.py)",
    ]


# --- what DVC makes of it, in a tiny project ---------------------------------------------------------

@pytest.mark.slow
def test_editing_the_batching_code_makes_train_and_evaluate_stale(trained_project, tmp_path):
    root = copy_of(trained_project[0], tmp_path / "project")
    assert dvc(root, "status").stdout.strip() == "Data and pipelines are up to date."
    batching = root / "src" / "batching.py"
    batching.write_text(batching.read_text(encoding="utf-8").replace("BUCKET_WIDTH = 16", "BUCKET_WIDTH = 8"),
                        encoding="utf-8")
    status = json.loads(dvc(root, "status", "--json").stdout)
    assert sorted(status) == ["evaluate", "train"]
    for stage in ("train", "evaluate"):
        assert {"changed deps": {"src/batching.py": "modified"}} in status[stage], status
