"""The package's floor plan holds: a module imports only from its own layer or the layers below it,
and the configs and data readers import no torch (the import-linter contracts in pyproject.toml,
drawn in docs/ARCHITECTURE.md). A planted import of a higher layer must break the contract."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(src: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` over the package found at ``src`` (a copy, or the real one)."""
    if not LINT.exists():
        pytest.skip("import-linter is not installed (pip install 'metabert[test]')")
    env = {"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"}
    return subprocess.run([str(LINT), "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_package_keeps_its_layers():
    result = lint(ROOT / "src")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize("module, planted, broken", [
    ("data/batching.py", "from metabert.training import config as _planted  # noqa", "layers"),
    ("engine/loop.py", "import metabert.deploy.runners as _planted  # noqa", "layers"),
    ("training/config.py", "import torch as _planted  # noqa", "import no torch"),
])
def test_a_lower_layer_importing_a_higher_one_breaks_the_contract(tmp_path, module, planted, broken):
    copy = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "metabert", copy / "metabert", ignore=shutil.ignore_patterns("__pycache__"))
    path = copy / "metabert" / module
    path.write_text(path.read_text() + "\n" + planted + "\n")
    result = lint(copy)
    assert result.returncode != 0
    assert "1 broken" in result.stdout
    broken_line = next(line for line in result.stdout.splitlines() if line.endswith("BROKEN"))
    assert broken in broken_line
