"""Tutorial progress per user: the current lesson, the lessons done and what lessons remember."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ussycode.store.db import Store, utc_now


@dataclass(frozen=True)
class TutorialProgress:
    """`context` contains values that later lessons check, such as the VM made in lesson 1."""

    user_id: int
    current: int = 1
    completed: tuple[int, ...] = ()
    context: dict[str, object] = field(default_factory=dict)
    lesson_started_at: str = ""


class TutorialStore:
    """Queries on `tutorial_progress`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def get(self, user_id: int) -> TutorialProgress | None:
        row = self.store.execute("SELECT * FROM tutorial_progress WHERE user_id = ?", (user_id,)).fetchone()
        if row is None:
            return None
        return TutorialProgress(
            user_id=user_id,
            current=int(row["current"]),
            completed=tuple(json.loads(row["completed"])),
            context=dict(json.loads(row["context"])),
            lesson_started_at=str(row["lesson_started_at"]),
        )

    def save(self, progress: TutorialProgress) -> TutorialProgress:
        """Insert or replace the user's progress; returns it as stored."""
        now = utc_now()
        started = progress.lesson_started_at or now
        self.store.execute(
            "INSERT INTO tutorial_progress (user_id, current, completed, context, lesson_started_at,"
            " updated_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(user_id) DO UPDATE SET"
            " current = excluded.current, completed = excluded.completed, context = excluded.context,"
            " lesson_started_at = excluded.lesson_started_at, updated_at = excluded.updated_at",
            (
                progress.user_id,
                progress.current,
                json.dumps(sorted(set(progress.completed))),
                json.dumps(progress.context, sort_keys=True),
                started,
                now,
            ),
        )
        stored = self.get(progress.user_id)
        assert stored is not None
        return stored

    def reset(self, user_id: int) -> None:
        self.store.execute("DELETE FROM tutorial_progress WHERE user_id = ?", (user_id,))
