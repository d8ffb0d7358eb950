"""The layout the design promises, checked on the files: the orchestrator side loads neither torch nor
any worker module, and the engine's modules import one another without a cycle (type-checking
imports aside)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ORCHESTRATOR = ("engine.pool", "engine.presets", "engine.remote", "engine.report", "engine.spec", "engine.schedule",
                "engine.outcomes", "engine.process", "engine.budget", "engine.source", "engine.variants",
                "engine.verdict", "engine.limits", "engine.history", "engine.history_cli", "engine.history_compare",
                "engine.slo", "engine.hardware", "engine.telemetry", "engine.topology", "engine.load_times",
                "engine.__main__", "engine.studies.sweeps", "engine.studies.bench", "engine.studies.experiments",
                "engine.studies.trends", "engine.studies.targets", "engine.views.run", "engine.views.summary",
                "engine.views.tables", "engine.views.run_charts", "engine.views.sweep_charts",
                "engine.views.history_tables", "engine.views.history_charts", "engine.quality", "engine.scoring", "engine.launch",
                "engine.quality_table")

HOOK = """
import sys
asked = []

class Watch:
    def find_spec(self, name, path=None, target=None):
        asked.append(name)
        return None

sys.meta_path.insert(0, Watch())
import importlib
for name in {names!r}:
    importlib.import_module(name)
worker = sorted({{n for n in asked if n.startswith("engine.worker")}})
torch = sorted({{n for n in sys.modules if n == "torch" or n.startswith("torch.") or n == "transformers"}})
print(repr((worker, torch)))
"""


def test_the_orchestrator_side_imports_neither_torch_nor_a_worker_module():
    """Every orchestrator module imported in a fresh interpreter, an import hook recording each module
    asked for: no engine.worker module is even looked for, and torch and transformers stay unloaded."""
    found = subprocess.run([sys.executable, "-c", HOOK.format(names=ORCHESTRATOR)], cwd=ROOT, capture_output=True,
                           text=True, timeout=120)
    assert found.returncode == 0, found.stderr[-2000:]
    worker, torch = eval(found.stdout.strip().splitlines()[-1])
    assert worker == [] and torch == [], (worker, torch)


def _imports(path: Path, package: str) -> set[str]:
    """The engine modules a file imports anywhere (functions included), outside `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text())
    skipped = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
               and "TYPE_CHECKING" in ast.unparse(block.test) for node in ast.walk(block)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module if node.level == 0 else f"{package}.{node.module}"
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {name for name in found if name.startswith("engine")}


def test_the_engine_has_no_import_cycle_at_run_time():
    modules = {".".join(path.relative_to(ROOT).with_suffix("").parts): path for path in (ROOT / "engine").rglob("*.py")}
    packages = {name.removesuffix(".__init__") for name in modules if name.endswith(".__init__")}
    modules = {name.removesuffix(".__init__"): path for name, path in modules.items()}
    # `from engine import events` names the package too, whose __init__ Python runs before any of its
    # modules: an edge to a package is no edge of the graph
    graph = {name: {m for m in _imports(path, name.rpartition(".")[0]) if m in modules and m != name
                    and m not in packages} for name, path in modules.items()}
    cycles, state = [], {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for other in sorted(graph[name]):
            if state.get(other) == "open":
                cycles.append(trail[trail.index(other):] + [name, other] if other in trail else [name, other])
            elif other not in state:
                visit(other, trail + [name])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    assert cycles == [], cycles
