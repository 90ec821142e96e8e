"""KVSessionsChatMessageHistory (kvsessions.integrations.langchain) on SQLite, PostgreSQL, Redis
and MongoDB: the behaviour LangChain's own chat-history tests ask of a history (adding, the
async interface, clearing, a second object on the same session, RunnableWithMessageHistory),
messages coming back exactly, and the session kvsessions sees."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.runnables import RunnableLambda
from langchain_core.runnables.history import RunnableWithMessageHistory

from kvsessions.documents.models import ChatSession
from kvsessions.errors import StoreError, ValidationError
from kvsessions.integrations.langchain import KVSessionsChatMessageHistory
from kvsessions.sessions.storage import SessionStorage
from tests.cli import run_kvsessions
from tests.integrations.conftest import IntegrationStore

#: Every kind of LangChain message, with the fields that make round trips hard.
MESSAGES: list[BaseMessage] = [
    SystemMessage("be brief", id="m0"),
    HumanMessage("what is 6 \u00d7 7?", name="ada", additional_kwargs={"lang": "en"}),
    AIMessage("", tool_calls=[{"name": "multiply", "args": {"a": 6, "b": 7}, "id": "c1"}],
              response_metadata={"model": "m", "tokens": [1, 2]}),
    ToolMessage("42", tool_call_id="c1", artifact={"raw": [6, 7]}),
    AIMessage([{"type": "text", "text": "It is 42."}, {"type": "text", "text": "Done."}]),
    FunctionMessage("{}", name="legacy"),
    ChatMessage("noted", role="critic"),
    AIMessageChunk("partial"),
    HumanMessage("nul \x00 and emoji 👩‍👩‍👧"),
]


async def test_messages_round_trip_exactly_and_show_as_a_session(
        integration_store: IntegrationStore) -> None:
    storage = SessionStorage(integration_store.store())
    history = KVSessionsChatMessageHistory("chat:1", storage)
    await history.aadd_messages(MESSAGES)
    assert await history.aget_messages() == MESSAGES
    session = await storage.load_session("chat:1")
    assert session is not None and session.message_count == len(MESSAGES)
    assert [m.role for m in session.messages] == [
        "system", "user", "assistant", "tool", "assistant", "tool", "user", "assistant", "user"]
    assert session.messages[4].content == "It is 42.\nDone."
    assert session.messages[1].metadata["langchain"] == {
        "type": "human", "data": {"name": "ada", "additional_kwargs": {"lang": "en"}}}
    await storage.close()


async def test_async_interface_adds_in_order_and_clears(
        integration_store: IntegrationStore) -> None:
    storage = SessionStorage(integration_store.store())
    history = KVSessionsChatMessageHistory("async", storage)
    assert await history.aget_messages() == []
    await history.aadd_messages([HumanMessage("Hello"), HumanMessage("World")])
    await history.aadd_messages([HumanMessage("!")])
    assert await history.aget_messages() == [HumanMessage("Hello"), HumanMessage("World"),
                                             HumanMessage("!")]
    await history.aclear()
    assert await history.aget_messages() == []
    session = await storage.load_session("async")
    assert session is not None and session.message_count == 0  # the session stays
    await history.aadd_messages([AIMessage("again")])
    assert await history.aget_messages() == [AIMessage("again")]
    await storage.close()


def test_sync_interface_and_a_second_history_on_the_same_session(
        integration_store: IntegrationStore) -> None:
    url = integration_store.url()
    first = KVSessionsChatMessageHistory("s", url)
    first.add_user_message("Hello, AI!")
    first.add_ai_message("Hello, how can I help you?")
    first.add_message(HumanMessage("Tell me a joke."))
    first.add_messages([AIMessage("Why did the chicken cross the road?")])
    second = KVSessionsChatMessageHistory("s", url)
    assert [m.content for m in second.messages] == [
        "Hello, AI!", "Hello, how can I help you?", "Tell me a joke.",
        "Why did the chicken cross the road?"]
    assert isinstance(second.messages[0], HumanMessage)
    assert str(second).startswith("Human: Hello, AI!\nAI: Hello, how can I help you?")
    second.clear()
    assert first.messages == []
    first.close()
    second.close()


async def test_sync_methods_work_inside_a_running_loop_given_a_url(
        integration_store: IntegrationStore) -> None:
    history = KVSessionsChatMessageHistory("inside", integration_store.url())
    history.add_messages([HumanMessage("sync inside a loop")])
    await history.aadd_messages([AIMessage("and async")])
    assert history.messages == await history.aget_messages() == [
        HumanMessage("sync inside a loop"), AIMessage("and async")]
    await history.aclose()


async def test_a_sync_call_inside_the_loop_of_a_callers_store_says_what_to_do(
        integration_store: IntegrationStore) -> None:
    history = KVSessionsChatMessageHistory("s", integration_store.store())
    await history.aadd_messages([HumanMessage("hi")])
    with pytest.raises(StoreError, match="await the async method"):
        history.add_messages([HumanMessage("blocked")])


def test_runnable_with_message_history_keeps_each_conversation(
        integration_store: IntegrationStore) -> None:
    url = integration_store.url()
    histories: dict[str, KVSessionsChatMessageHistory] = {}

    def history_of(session_id: str) -> KVSessionsChatMessageHistory:
        return histories.setdefault(session_id, KVSessionsChatMessageHistory(session_id, url))

    def reply(inputs: dict[str, Any]) -> AIMessage:
        said = [str(m.content) for m in inputs["history"] if isinstance(m, HumanMessage)]
        return AIMessage("you said: " + "\n".join([*said, inputs["input"]]))

    chain = RunnableWithMessageHistory(RunnableLambda(reply), history_of,
                                       input_messages_key="input",
                                       history_messages_key="history")
    one = {"configurable": {"session_id": "1"}}
    assert chain.invoke({"input": "hello"}, one) == AIMessage("you said: hello")
    assert chain.invoke({"input": "good bye"}, one) == AIMessage("you said: hello\ngood bye")
    assert chain.invoke({"input": "meow"}, {"configurable": {"session_id": "2"}}) == AIMessage(
        "you said: meow")
    assert [m.content for m in history_of("1").messages] == [
        "hello", "you said: hello", "good bye", "you said: hello\ngood bye"]
    for history in histories.values():
        history.close()


async def test_runnable_with_message_history_async(integration_store: IntegrationStore) -> None:
    storage = SessionStorage(integration_store.store())

    def reply(messages: list[BaseMessage]) -> str:
        return "you said: " + "\n".join(str(m.content) for m in messages
                                        if isinstance(m, HumanMessage))

    chain = RunnableWithMessageHistory(
        RunnableLambda(reply), lambda session_id: KVSessionsChatMessageHistory(session_id,
                                                                              storage))
    config = {"configurable": {"session_id": "a"}}
    assert await chain.ainvoke([HumanMessage("hello")], config) == "you said: hello"
    assert await chain.ainvoke([HumanMessage("bye")], config) == "you said: hello\nbye"
    await storage.close()


async def test_a_session_written_by_kvsessions_reads_as_a_history(
        integration_store: IntegrationStore) -> None:
    storage = SessionStorage(integration_store.store())
    session = ChatSession.create("gemini")
    session.add_message("system", "rules")
    session.add_message("user", "question")
    session.add_message("assistant", "answer")
    session.add_message("tool", "result")
    await storage.save_session(session)
    history = KVSessionsChatMessageHistory(session.session_id, storage)
    assert await history.aget_messages() == [
        SystemMessage("rules"), HumanMessage("question"), AIMessage("answer"),
        ChatMessage("result", role="tool")]
    await storage.close()


def test_kvsessions_show_and_migrate_read_a_langchain_history(
        integration_store: IntegrationStore, tmp_path: Path) -> None:
    url = integration_store.url()
    history = KVSessionsChatMessageHistory("lc:1", url)
    history.add_messages(MESSAGES[:4])
    history.close()
    shown = run_kvsessions("show", url, "lc:1", "--format", "text")
    assert shown.returncode == 0, shown.stderr
    assert "what is 6" in shown.stdout and "42" in shown.stdout
    copy = f"sqlite:///{tmp_path / 'copy.db'}"
    migrated = run_kvsessions("migrate", url, copy)
    assert migrated.returncode == 0, migrated.stderr
    moved = KVSessionsChatMessageHistory("lc:1", copy)
    assert moved.messages == MESSAGES[:4]
    moved.close()


async def test_bad_input_is_refused_and_nothing_is_stored(
        integration_store: IntegrationStore) -> None:
    store = integration_store.store()
    with pytest.raises(ValidationError, match="session_id"):
        KVSessionsChatMessageHistory("", store)
    history = KVSessionsChatMessageHistory("s", store)
    with pytest.raises(ValidationError, match="not JSON"):
        await history.aadd_messages([HumanMessage("ok"), AIMessage(
            "x", additional_kwargs={"obj": object()})])
    assert await store.keys() == []
    await store.close()
