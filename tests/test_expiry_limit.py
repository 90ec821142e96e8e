"""A session expiry too large for time arithmetic (issue 11, item 17) is refused where it is
given, with one ``ConfigError`` line, instead of an ``OverflowError`` traceback later: through
``SessionManager``, ``StorageConfig``, ``STORAGE_EXPIRY_HOURS`` and ``kvsessions cleanup``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvsessions.config import StorageConfig
from kvsessions.documents.models import ChatSession
from kvsessions.errors import ConfigError
from kvsessions.sessions.manager import MAX_EXPIRY_HOURS, SessionManager
from kvsessions.sessions.storage import SessionStorage
from kvsessions.testing import StoreFactory

TOO_LARGE = [1e8, MAX_EXPIRY_HOURS + 1, 1e300, float("inf"), float("nan"), 10**30]


@pytest.mark.parametrize("hours", TOO_LARGE)
def test_the_manager_refuses_an_expiry_it_could_not_compute(hours: float) -> None:
    storage = SessionStorage.__new__(SessionStorage)  # never reached: refused first
    with pytest.raises(ConfigError, match="at most 1,000,000") as caught:
        SessionManager(storage, expiry_hours=hours)
    assert "\n" not in str(caught.value)


async def test_the_longest_expiry_allowed_works_on_every_store(
    store_factory: StoreFactory
) -> None:
    storage = SessionStorage(store_factory.new())
    try:
        old = ChatSession.create("m")
        await storage.save_session(old)
        manager = SessionManager(storage, expiry_hours=MAX_EXPIRY_HOURS)
        result = await manager.startup()
        assert result["expired_sessions"] == 0 and result["active_sessions"] == 1
        assert await manager.cleanup_expired_sessions() == 0
    finally:
        await storage.close()
        if store_factory.cleanup is not None:
            await store_factory.cleanup()


@pytest.mark.parametrize("hours", [1e8, "1e8", "1000001", "inf"])
def test_the_configuration_refuses_it(hours: float | str) -> None:
    with pytest.raises(ConfigError, match="at most 1,000,000"):
        StorageConfig(backend="memory", expiry_hours=hours)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"STORAGE_EXPIRY_HOURS='.*at most 1,000,000"):
        StorageConfig.load(environ={"STORAGE_EXPIRY_HOURS": str(hours)})
    assert StorageConfig(backend="memory", expiry_hours=MAX_EXPIRY_HOURS).expiry_hours == \
        MAX_EXPIRY_HOURS


def _kvsessions(*argv: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """The installed ``kvsessions`` command, in a fresh process."""
    command = Path(sys.executable).parent / "kvsessions"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STORAGE_")}
    return subprocess.run([str(command), *argv], cwd=cwd, env={**clean, **env},
                          capture_output=True, text=True, timeout=120)


def test_cleanup_refuses_it_in_one_line_with_exit_2(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/s.db"
    result = _kvsessions("cleanup", url, "--expiry-hours", "1e8", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("kvsessions cleanup: error: --expiry-hours must be a "
                                    "number of hours > 0 and at most 1,000,000")
    assert not (tmp_path / "s.db").exists()  # refused before any store was opened

    result = _kvsessions("cleanup", url, cwd=tmp_path, STORAGE_EXPIRY_HOURS="1e8")
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "STORAGE_EXPIRY_HOURS='1e8' is not allowed" in result.stderr

    result = _kvsessions("cleanup", url, "--expiry-hours", str(MAX_EXPIRY_HOURS), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Marked 0 sessions expired" in result.stdout
