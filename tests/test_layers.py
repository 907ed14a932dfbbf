"""The layers of ``../shared/design.md`` hold: every import in ``dreamcore/`` and ``systems/`` (the package
``dreamcore.systems``) goes to the same layer or to one below it, no module takes part in an import cycle, and the
registry's table of built-in parts agrees with the ``@register`` decorators in the code. Read with ``ast``: nothing
is imported to check it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# a module's layer: its package under dreamcore/ (systems/ is dreamcore.systems), else the table's entry for the
# single module
CORE = {"dreamcore", "dreamcore.errors", "dreamcore.files", "dreamcore.trust", "dreamcore.schedule", "dreamcore.registry",
        "dreamcore.builtins", "dreamcore.config", "dreamcore.cameras", "dreamcore.views", "dreamcore.packed", "dreamcore.rng",
        "dreamcore.precision", "dreamcore.reference_image"}
SINGLE_MODULES = {**{m: "core" for m in CORE}, "dreamcore.metrics": "metrics", "dreamcore.cli": "top",
                  "dreamcore.api": "top", "dreamcore.system": "contract"}

# which layers each layer may import (its own included): the design's picture, bottom to top
BELOW = {
    "core": {"core"},
    "meshes": {"core", "meshes"},
    "representations": {"core", "meshes", "representations"},
    "renderers": {"core", "meshes", "representations", "renderers"},
    "priors": {"core", "meshes", "priors"},  # a prior sees image tensors: no scene, no render
    "guidance": {"core", "priors", "renderers", "guidance"},  # renderers: the RenderOutput it is handed
    "export": {"core", "meshes", "export"},
    "metrics": {"core", "meshes", "metrics"},
    # the system contract (dreamcore/system.py): what the runner asks of a system; systems implement it
    "contract": {"core", "meshes", "representations", "renderers", "priors", "guidance", "export", "contract"},
    "systems": {"core", "meshes", "representations", "renderers", "priors", "guidance", "export", "metrics",
                "contract", "systems"},
    "runner": {"core", "meshes", "representations", "renderers", "priors", "guidance", "export", "metrics",
               "contract", "runner"},
    # the batch layer: many runs (the runner's folders) on local processes or Ray; the CLI sits beside it
    "batch": {"core", "meshes", "representations", "renderers", "priors", "guidance", "export", "metrics",
              "contract", "systems", "runner", "batch"},
    # the studio (web app): its job queue runs each job as a batch worker process
    "studio": {"core", "meshes", "representations", "renderers", "priors", "guidance", "export", "metrics",
               "contract", "systems", "runner", "batch", "studio"},
    "top": {"core", "meshes", "representations", "renderers", "priors", "guidance", "export", "metrics",
            "contract", "systems", "runner", "batch", "studio", "top"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] == "systems":  # installed as dreamcore/systems (pyproject's package-dir)
        parts = ["dreamcore", *parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer(module: str) -> str:
    if module in SINGLE_MODULES:
        return SINGLE_MODULES[module]
    parts = module.split(".")
    assert parts[0] == "dreamcore" and len(parts) > 1, f"{module}: add it to SINGLE_MODULES in {__file__}"
    assert parts[1] in BELOW, f"{module}: package dreamcore.{parts[1]} has no layer in {__file__}"
    return parts[1]


def sources() -> dict[str, Path]:
    # dreamcore/systems/__init__.py only loads systems/ under its package name in a checkout (never installed)
    stand_in = ROOT / "dreamcore" / "systems"
    files = [p for p in sorted((ROOT / "dreamcore").rglob("*.py")) if stand_in not in p.parents]
    files += sorted((ROOT / "systems").rglob("*.py"))
    return {module_name(p): p for p in files}


def project_imports(path: Path, known: set[str]) -> set[str]:
    """The project modules ``path`` imports anywhere in its body (function-level imports included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # ``from pkg import name`` names a module or something in pkg
                t = t.rpartition(".")[0]
            if t:
                out.add(t)
    return out


def graph() -> dict[str, set[str]]:
    src = sources()
    return {m: project_imports(p, set(src)) - {m} for m, p in src.items()}


def test_every_import_goes_to_the_same_layer_or_below():
    bad = [f"{m} ({layer(m)}) imports {t} ({layer(t)})" for m, targets in graph().items() for t in sorted(targets)
           if layer(t) not in BELOW[layer(m)]]
    assert not bad, "imports against the layers:\n" + "\n".join(bad)


def test_no_module_is_part_of_an_import_cycle():
    g = graph()
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_layer_table_covers_every_package():
    for m in sources():
        layer(m)  # asserts with a message naming the module


def decorated_registrations() -> dict[str, dict[str, str]]:
    """kind → name → module for every ``@register("kind", "name")`` in dreamcore/ and systems/."""
    out: dict[str, dict[str, str]] = {}
    for m, p in sources().items():
        for node in ast.walk(ast.parse(p.read_text())):
            if not isinstance(node, ast.ClassDef):
                continue
            for dec in node.decorator_list:
                if (isinstance(dec, ast.Call) and getattr(dec.func, "id", getattr(dec.func, "attr", "")) == "register"
                        and len(dec.args) == 2 and all(isinstance(a, ast.Constant) for a in dec.args)):
                    out.setdefault(dec.args[0].value, {})[dec.args[1].value] = m
    return out


def test_the_builtin_table_lists_exactly_what_the_code_registers():
    from dreamcore.builtins import BUILTINS

    assert decorated_registrations() == BUILTINS


def test_the_registry_imports_a_part_only_when_it_is_asked_for():
    code = ("import sys\n"
            "from dreamcore import registry\n"
            "from dreamcore.config import load_config\n"
            "assert 'guidance' in registry.kinds() and 'sds' in registry.names('guidance')\n"
            "assert not any(m.startswith(('dreamcore.guidance', 'dreamcore.priors', 'dreamcore.systems'))\n"
            "               for m in sys.modules)\n"
            "cls = registry.lookup('guidance', 'sds')\n"
            "assert cls.__module__ == 'dreamcore.guidance.sds' and 'dreamcore.guidance.vsd' not in sys.modules\n"
            "registry.load_builtins()\n"
            "assert registry.lookup('system', 'mesh').__module__ == 'dreamcore.systems.mesh'\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_a_plugin_cannot_take_a_builtin_name():
    import pytest

    from dreamcore.errors import DreamcoreError
    from dreamcore.registry import register

    class Fake:
        Config = object

    with pytest.raises(DreamcoreError, match="built-in name"):
        register("guidance", "sds")(Fake)
