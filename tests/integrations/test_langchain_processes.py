"""Two processes share one LangChain history (one kvsessions session), through the sync API:
both adding at once (the first add of each also races to create the session), and one adding
while the other clears. Nothing is lost, each process's messages keep their order, and the
session's count is exactly the number of messages stored. Run as a script, this module is one
of the processes."""

from __future__ import annotations

import subprocess
import sys

from langchain_core.messages import AIMessage, HumanMessage

from kvsessions.integrations.langchain import KVSessionsChatMessageHistory
from kvsessions.sessions.storage import SessionStorage
from tests.integrations.conftest import IntegrationStore, child_environment

#: Calls each adding process makes (one or three messages each).
CALLS = 30
SESSION = "shared:chat"


def messages_of(worker: str) -> list[str]:
    """What ``add`` stores, in order: call i adds one message, or three when i % 3 == 0."""
    return [f"{worker}{i}.{j}" for i in range(CALLS) for j in range(3 if i % 3 == 0 else 1)]


def add(url: str, worker: str) -> None:
    history = KVSessionsChatMessageHistory(SESSION, url)
    for i in range(CALLS):
        if i % 3 == 0:
            history.add_messages([HumanMessage(f"{worker}{i}.{j}") for j in range(3)])
        else:
            history.add_message(AIMessage(f"{worker}{i}.0"))
    history.close()


def clear(url: str, worker: str) -> None:
    history = KVSessionsChatMessageHistory(SESSION, url)
    for _ in range(CALLS):
        history.clear()
    history.close()


def run(url: str, *roles: tuple[str, str]) -> None:
    children = [subprocess.Popen([sys.executable, "-m", __name__, url, role, worker],
                                 env=child_environment(), stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT) for role, worker in roles]
    for child in children:
        output, _ = child.communicate(timeout=300)
        assert child.returncode == 0, output.decode(errors="replace")


async def stored(url: str) -> tuple[list[str], int]:
    """The contents of the session's messages, and its count."""
    async with SessionStorage.from_url(url) as storage:
        session = await storage.load_session(SESSION)
        assert session is not None
        head = await storage.list_sessions()
        assert [s.session_id for s in head] == [SESSION]
        return [m.content for m in session.messages], head[0].message_count


async def test_two_processes_adding_lose_nothing(integration_store: IntegrationStore) -> None:
    url = integration_store.url()
    run(url, ("add", "a"), ("add", "b"))
    contents, count = await stored(url)
    for worker in "ab":
        assert [c for c in contents if c.startswith(worker)] == messages_of(worker)
    assert len(contents) == count == 2 * len(messages_of("a"))


async def test_one_process_adding_while_another_clears_keeps_the_count_exact(
        integration_store: IntegrationStore) -> None:
    url = integration_store.url()
    first = KVSessionsChatMessageHistory(SESSION, url)
    await first.aadd_messages([HumanMessage("before")])
    await first.aclose()
    run(url, ("add", "a"), ("clear", "b"))
    contents, count = await stored(url)
    assert len(contents) == count
    assert contents == [c for c in messages_of("a") if c in set(contents)]  # in order
    last = KVSessionsChatMessageHistory(SESSION, url)
    await last.aadd_messages([AIMessage("after")])
    await last.aclose()
    contents, count = await stored(url)
    assert contents[-1] == "after" and len(contents) == count


if __name__ == "__main__":
    {"add": add, "clear": clear}[sys.argv[2]](sys.argv[1], sys.argv[3])
