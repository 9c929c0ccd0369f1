"""The usage ledger: counts are visible to the budget at once and reach the store in batches."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ussycode.errors import StoreError
from ussycode.llm.ledger import FLUSH_SECONDS, UsageLedger
from ussycode.store import Store
from ussycode.store.llm import LLMStore

DAY = "2026-12-04"


def make_ledger(tmp_path: Path) -> tuple[UsageLedger, LLMStore, int]:
    store = Store(tmp_path / "store.db")
    user = store.create_user("alice", "SHA256:" + "A" * 43, "ssh-ed25519 AAAAalice")
    rows = LLMStore(store)
    return UsageLedger(rows), rows, user.id


def test_ledger_batches_writes(tmp_path: Path) -> None:
    ledger, rows, user = make_ledger(tmp_path)

    async def scenario() -> None:
        ledger.add(user, "openai", DAY, "platform", input_tokens=10, output_tokens=5)
        ledger.add(user, "openai", DAY, "platform", input_tokens=1, output_tokens=2)
        ledger.add(user, "openai", DAY, "own", input_tokens=100, output_tokens=100)
        assert rows.usage(user) == []
        assert ledger.budget_tokens_used(user, DAY) == 18
        assert ledger.budget_tokens_used(user, "2026-12-05") == 0
        for _ in range(40):
            if rows.usage(user):
                break
            await asyncio.sleep(FLUSH_SECONDS / 4)

    asyncio.run(scenario())
    stored = {(row.source, row.requests, row.input_tokens, row.output_tokens) for row in rows.usage(user)}
    assert stored == {("platform", 2, 11, 7), ("own", 1, 100, 100)}
    assert ledger.budget_tokens_used(user, DAY) == 18


def test_ledger_without_event_loop(tmp_path: Path) -> None:
    ledger, rows, user = make_ledger(tmp_path)
    ledger.add(user, "anthropic", DAY, "platform", input_tokens=3, output_tokens=4)
    assert [(row.requests, row.total_tokens) for row in rows.usage(user)] == [(1, 7)]


def test_ledger_keeps_counts_on_store_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger, rows, user = make_ledger(tmp_path)
    real_add = LLMStore.add_usage

    def failing_add(*args: object, **kwargs: object) -> None:
        raise StoreError("store query failed: disk I/O error")

    monkeypatch.setattr(LLMStore, "add_usage", failing_add)
    ledger.add(user, "openai", DAY, "platform", input_tokens=3, output_tokens=4)
    ledger.add(user, "openai", DAY, "platform", input_tokens=1, output_tokens=1)
    assert ledger.budget_tokens_used(user, DAY) == 9

    monkeypatch.setattr(LLMStore, "add_usage", real_add)
    ledger.flush()
    assert [(row.requests, row.total_tokens) for row in rows.usage(user)] == [(2, 9)]
    assert ledger.budget_tokens_used(user, DAY) == 9
