"""The package's shape: no import circles (lazy imports included), nothing imports the command line,
the worker runtime imports no Spark session, Delta, job or CLI code, and JVM-only calls live behind
the session seam. The import rules are also import-linter contracts (pyproject.toml), which
`lint-imports` checks here; the checks below keep what contracts cannot say (an allow-list for the
worker side, text a module must not hold, where JVM calls live)."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys

import pytest
from jobutil import ROOT

PKG = os.path.join(ROOT, "spark_infer")

#: what the worker side (runtime, tasks, model sources) may import of the package
WORKER_PACKAGES = ("spark_infer.runtime", "spark_infer.tasks", "spark_infer.models", "spark_infer.backends")
WORKER_ALLOWED = ("spark_infer.runtime", "spark_infer.tasks", "spark_infer.models", "spark_infer.backends",
                  "spark_infer.errors",
                  "spark_infer.ddl", "spark_infer.log", "spark_infer.redact", "spark_infer.local_cache")


def module_name(path: str) -> str:
    rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
    return rel.removesuffix(".__init__")


def modules() -> dict[str, str]:
    out = {}
    for root, _, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                out[module_name(os.path.join(root, f))] = os.path.join(root, f)
    return out


def imports_of(path: str, known: set[str]) -> set[str]:
    """Package modules imported anywhere in the file (top level and inside functions)."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for n in names:
            if n in known:
                found.add(n)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    g = {m: imports_of(p, known) - {m} for m, p in mods.items()}
    # importing a.b.c runs a/__init__ and a/b/__init__ too
    for m in list(g):
        extra = set()
        for dep in g[m]:
            parts = dep.split(".")
            extra |= {".".join(parts[:i]) for i in range(2, len(parts))} & known
        g[m] |= extra - {m}
    # a package imports its own submodules at top level only through its __init__: that edge is
    # the same import (pkg.sub imports pkg first), not a circle
    for m in list(g):
        g[m] = {d for d in g[m] if not m.startswith(d + ".")}
    return g


def test_no_import_circles_lazy_imports_included():
    g = graph()
    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(g.get(m, ())):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_nothing_imports_the_command_line():
    g = graph()
    importers = sorted(m for m, deps in g.items() if "spark_infer.cli" in deps and m != "spark_infer.__main__")
    assert importers == [], importers


@pytest.mark.parametrize("mod", sorted(m for m in modules() if m.startswith(WORKER_PACKAGES)))
def test_worker_side_imports_no_job_session_delta_or_cli(mod):
    path = modules()[mod]
    deps = imports_of(path, set(modules()))
    bad = sorted(d for d in deps if not d.startswith(WORKER_ALLOWED) and d != "spark_infer")
    assert not bad, f"{mod} imports {bad}"
    src = open(path, encoding="utf-8").read()
    assert not re.search(r"^\s*(from|import) delta\b", src, re.M), f"{mod} imports Delta"
    assert "SparkSession" not in src and "sparkContext" not in src, f"{mod} touches a Spark session"


def test_jvm_only_calls_live_behind_the_session_seam():
    allowed = {"spark_infer.sessions.classic"}
    offenders = []
    for mod, path in modules().items():
        src = open(path, encoding="utf-8").read()
        if mod not in allowed and re.search(r"\.(sparkContext|_jvm|_jsparkSession)\b", src):
            offenders.append(mod)
    assert offenders == [], offenders


def test_public_api_is_exported_and_typed():
    import spark_infer

    for name in ("predict_udf", "predict_frame", "run_job", "JobConfig", "RunSummary", "ConfigError"):
        assert name in spark_infer.__all__
        obj = getattr(spark_infer, name)
        assert obj.__doc__, name
    assert os.path.exists(os.path.join(PKG, "py.typed"))
    import inspect

    for fn in (spark_infer.predict_udf, spark_infer.predict_frame, spark_infer.run_job):
        params = list(inspect.signature(fn).parameters.values())
        positional = [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
        assert len(positional) <= 3, (fn.__name__, positional)  # keyword-only after the essentials
        # each public docstring opens with a runnable example (an indented code line first)
        first_block = fn.__doc__.split("\n\n")[1]
        assert first_block.startswith("    "), (fn.__name__, first_block)


def test_import_contracts_hold():
    """`lint-imports` over pyproject.toml's contracts (function-level imports included: grimp reads
    every import statement)."""
    exe = os.path.join(os.path.dirname(sys.executable), "lint-imports")
    exe = exe if os.path.exists(exe) else shutil.which("lint-imports")
    assert exe, "import-linter is not installed (the test extra)"
    r = subprocess.run([exe, "--config", os.path.join(ROOT, "pyproject.toml"), "--no-cache"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout and "4 kept" in r.stdout, r.stdout[-2000:]


#: a class or function longer than this is doing more than one job: split it along what it does
MAX_CLASS_LINES, MAX_FUNCTION_LINES = 250, 100


def test_no_class_over_250_lines_and_no_function_over_100():
    too_long = []
    for name, path in modules().items():
        tree = ast.parse(open(path, encoding="utf-8").read(), path)
        for node in ast.walk(tree):
            limit = (MAX_CLASS_LINES if isinstance(node, ast.ClassDef) else
                     MAX_FUNCTION_LINES if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) else None)
            if limit is not None and node.end_lineno - node.lineno + 1 > limit:
                too_long.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines (limit {limit})")
    assert not too_long, too_long


def test_the_job_is_split_along_its_pipeline():
    """Each stage is found by its name: the commit protocol in one place, the group scorer in another,
    and ScoringJob only sequences them."""
    job = os.path.join(PKG, "job")
    for stage in ("planner", "shape", "groups", "checks", "commit", "scheduler", "session"):
        assert os.path.exists(os.path.join(job, f"{stage}.py")), stage
    g = graph()
    assert "spark_infer.job" not in g["spark_infer.job.groups"] | g["spark_infer.job.checks"]
    assert not any(d.startswith("spark_infer.job") for d in g["spark_infer.plan"])  # the decisions are pure
