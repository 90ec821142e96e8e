"""The README is for newcomers: its Python examples run as written, every CLI command is in it,
and its test command is the one .ci/run calls."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kvsessions.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)
SHELL_BLOCKS = re.findall(r"```(?:bash|sh|console)\n(.*?)```", README, flags=re.S)


def cli_commands() -> list[str]:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    return sorted(subparsers.choices)  # type: ignore[arg-type]


def test_readme_has_runnable_examples() -> None:
    assert len(PYTHON_BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_readme_python_example_runs(index: int, tmp_path: Path) -> None:
    block = PYTHON_BLOCKS[index]
    if "mongodb://127.0.0.1:27017" in block:
        # The README says "a MongoDB on its usual port"; the tests run theirs on a free port.
        from urllib.parse import urlsplit

        from tests.mongo_server import mongodb_url
        server = urlsplit(mongodb_url())
        block = block.replace("mongodb://127.0.0.1:27017", f"{server.scheme}://{server.netloc}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STORAGE_")}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, env=env, text=True,
                            capture_output=True, timeout=120)
    assert result.returncode == 0, f"README python block {index} failed:\n{block}\n{result.stderr}"


@pytest.mark.parametrize("command", cli_commands())
def test_every_cli_command_is_documented(command: str) -> None:
    assert re.search(rf"kvsessions {command}\b", README), f"`kvsessions {command}` not in README"


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in ci
    assert "bash scripts/test.sh" in README
    assert "bash scripts/demo.sh" in README
