"""The package works outside the repository: schemas ship in the wheel, drivers load lazily,
the conformance suite is importable."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHECK = r"""
import asyncio, sys, kvsessions
from kvsessions.documents import codec, models
from kvsessions.documents.validation import schema_names, validate_document
assert "site-packages" in kvsessions.__file__, kvsessions.__file__
assert schema_names() == ["checkpoint.v1.json", "checkpoint_writes.v1.json", "file.v1.json",
                        "index.v1.json", "message.v1.json", "session.v1.json",
                        "session.v2.json", "state.v1.json"]
session = models.ChatSession.create("m")
validate_document(codec.session_to_document(session))
try:
    validate_document({**codec.session_to_document(session), "status": "nope"})
except kvsessions.ValidationError as exc:
    assert exc.path == "status"
else:
    raise SystemExit("invalid document accepted")
async def main():
    async with kvsessions.open_store(sys.argv[1]) as store:
        await store.put("k", b'{"a": 1}')
        assert await store.get("k") == b'{"a": 1}'
asyncio.run(main())
for driver in ("asyncpg", "pymongo", "redis"):
    assert driver not in sys.modules, driver
import kvsessions.integrations
for integration, extra in (("langgraph", "langgraph"), ("langchain", "langchain")):
    try:
        __import__(f"kvsessions.integrations.{integration}")
    except kvsessions.MissingDependencyError as exc:  # the framework is an optional extra
        assert f"pip install 'kvsessions[{extra}]'" in str(exc), str(exc)
    else:
        raise SystemExit(f"kvsessions.integrations.{integration} imported without its extra")
print("wheel ok")
"""


@pytest.mark.slow
def test_wheel_installs_in_a_fresh_venv_and_validates(tmp_path: Path) -> None:
    wheelhouse = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheelhouse), str(ROOT)], check=True, cwd=tmp_path)
    [wheel] = list(wheelhouse.glob("kvsessions-*.whl"))
    import zipfile
    names = zipfile.ZipFile(wheel).namelist()
    assert "kvsessions/documents/schemas/session.v1.json" in names
    assert "kvsessions/py.typed" in names
    assert "kvsessions/testing/contract.py" in names
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names), names
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", str(wheel)], check=True,
                   cwd=tmp_path, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    url = f"sqlite:///{tmp_path}/wheel.db"
    result = subprocess.run([str(python), "-c", CHECK, url], cwd=tmp_path, text=True,
                            capture_output=True)
    assert result.returncode == 0, result.stderr
    assert "wheel ok" in result.stdout
