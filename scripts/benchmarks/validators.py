"""Which JSON Schema validator: the three candidates on a 2 KB session document."""

from __future__ import annotations

import time
from typing import Any

import fastjsonschema
import jsonschema
import jsonschema_rs

from benchmarks.harness import BenchContext
from kvsessions.documents.codec import CURRENT_VERSIONS, session_to_document
from kvsessions.documents.models import ChatSession
from kvsessions.documents.validation import load_schema


def session_document_2kb() -> dict[str, Any]:
    session = ChatSession.create("gemini-2.5-flash")
    session.metadata = {"user": "ada", "tags": [f"tag-{i}" for i in range(40)],
                        "notes": "n" * 1200, "settings": {"temperature": 0.7, "top_k": 40}}
    return session_to_document(session)


def per_second(check: Any, document: dict[str, Any], n: int) -> float:
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(n):
            check(document)
        best = max(best, n / (time.perf_counter() - start))
    return best


async def run(ctx: BenchContext) -> None:
    schema = load_schema("session", CURRENT_VERSIONS["session"])  # what the codec writes
    document = session_document_2kb()
    rs = jsonschema_rs.validator_for(schema)
    fast = fastjsonschema.compile(schema)
    slow = jsonschema.Draft202012Validator(schema)
    rs_rate = per_second(rs.validate, document, ctx.n(50_000))
    for name, check, n in (("jsonschema-rs", rs.validate, 50_000),
                           ("fastjsonschema", fast, 20_000),
                           ("jsonschema", slow.validate, 2_000)):
        rate = rs_rate if name == "jsonschema-rs" else per_second(check, document, ctx.n(n))
        ctx.row("validator", "validate 2 KB session", name, rate, rs_rate,
                note="raw column = jsonschema-rs")
