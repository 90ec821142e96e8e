"""A user's code that imports from ``kvsessions`` type-checks under ``mypy --strict``: the public
names are lazy at run time, so the static view in ``kvsessions/__init__.py`` must name them all."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import kvsessions

ROOT = Path(__file__).resolve().parents[1]


def test_every_public_name_resolves_at_run_time() -> None:
    for name in kvsessions.__all__:
        assert getattr(kvsessions, name) is not None, name
    lazy = set(kvsessions._LAZY)
    assert lazy <= set(kvsessions.__all__), sorted(lazy - set(kvsessions.__all__))


def test_a_user_script_passes_mypy_strict(tmp_path: Path) -> None:
    names = ", ".join(kvsessions.__all__)
    script = tmp_path / "user_app.py"
    script.write_text(
        f"from kvsessions import {names}\n"
        "\n"
        "\n"
        "async def main() -> int:\n"
        "    storage: SessionStorage = SQLiteSessionStorage('/tmp/user-app.db')\n"
        "    manager = SessionManager(storage, expiry_hours=24)\n"
        "    session: ChatSession = await manager.create_session('gpt-4')\n"
        "    message: ChatMessage = session.add_message('user', 'hi')\n"
        "    store: KVStore = open_store('memory://')\n"
        "    await store.close()\n"
        "    print(message.content, MemoryStore, CachedStore, migrate_storage)\n"
        "    try:\n"
        "        await manager.shutdown()\n"
        "    except KVSessionsError as exc:\n"
        "        print(exc)\n"
        "    return session.message_count\n"
    )
    # As for an installed package: kvsessions' types are read, errors inside it are not the
    # user's (the package itself is checked by `mypy kvsessions` in the test command).
    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\nstrict = True\n\n[mypy-kvsessions.*]\nfollow_imports = silent\n")
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(config), "--no-incremental",
         "--cache-dir", str(tmp_path / "cache"), str(script)],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
        # An editable install is invisible to mypy; point it at the package as a wheel has it.
        env={**os.environ, "MYPYPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
