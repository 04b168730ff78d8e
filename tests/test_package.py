import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

import crossmoe

ROOT = Path(__file__).resolve().parents[1]


def test_public_api_is_exported_by_name():
    for name in crossmoe.__all__:
        assert getattr(crossmoe, name) is not None, name
    modules = ("functional", "losses", "diagnostics", "attention", "routing", "experts", "schedule", "graph", "policy")
    modules = (*modules, "hypergraph", "fusion", "training", "ppo")
    for module in (*modules, "encoders"):
        mod = importlib.import_module(f"crossmoe.{module}")
        for name in mod.__all__:
            assert hasattr(mod, name), f"crossmoe.{module}.{name}"


def test_version_is_defined_once_and_typed_marker_ships():
    assert re.fullmatch(r"\d+\.\d+\.\d+(\S*)?", crossmoe.__version__)
    assert 'dynamic = ["version"]' in (ROOT / "pyproject.toml").read_text()
    assert 'path = "crossmoe/__init__.py"' in (ROOT / "pyproject.toml").read_text()
    assert (ROOT / "crossmoe" / "py.typed").exists()


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.DOTALL)


@pytest.mark.parametrize("doc", ["README.md", "docs/index.md", "docs/nethack.md"])
def test_documented_quickstarts_run(doc):
    if doc == "docs/nethack.md":
        pytest.importorskip("nle")
    blocks = _python_blocks(ROOT / doc)
    assert blocks, f"{doc} has no python example"
    for block in blocks:
        exec(compile(block, doc, "exec"), {"__name__": "__doc_example__"})


def test_quickstart_example_runs_and_prints_diagnostics():
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["update", "phase", "alpha", "temp"]
    phases = [line.split()[1] for line in lines[1:] if line.split() and line.split()[0].isdigit()]
    assert phases[0] == "warmup" and phases[-1] == "finetune"
    assert "aux parts (unweighted)" in result.stdout
