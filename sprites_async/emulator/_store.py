"""Sprite records and their SQLite persistence (the ``sprites`` table)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime


@dataclass
class SpriteRecord:
    """What the emulator knows about one sprite (mirrors the API's Sprite object)."""

    id: str
    name: str
    organization: str
    status: str
    url: str
    url_auth: str
    created_at: datetime
    updated_at: datetime
    labels: list[str] = field(default_factory=list)
    version: str | None = None
    last_running_at: datetime | None = None
    last_warming_at: datetime | None = None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS sprites (
    name TEXT PRIMARY KEY,
    id TEXT NOT NULL,
    organization TEXT NOT NULL,
    status TEXT NOT NULL,
    url TEXT NOT NULL,
    url_auth TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    labels TEXT NOT NULL,
    version TEXT,
    last_running_at TEXT,
    last_warming_at TEXT
)
"""

_COLUMNS = (
    "name, id, organization, status, url, url_auth, created_at, updated_at, "
    "labels, version, last_running_at, last_warming_at"
)

_UPSERT = f"INSERT OR REPLACE INTO sprites ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"

Row = tuple[str, str, str, str, str, str, str, str, str, str | None, str | None, str | None]


def _ts(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _parse_ts(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _row(rec: SpriteRecord) -> Row:
    return (
        rec.name,
        rec.id,
        rec.organization,
        rec.status,
        rec.url,
        rec.url_auth,
        rec.created_at.isoformat(),
        rec.updated_at.isoformat(),
        json.dumps(rec.labels),
        rec.version,
        _ts(rec.last_running_at),
        _ts(rec.last_warming_at),
    )


class SpriteStore:
    """Reads and writes sprite records; the connection is in autocommit mode."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        db.execute(_SCHEMA)

    def load_all(self) -> list[SpriteRecord]:
        """Every stored sprite, as records."""
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM sprites").fetchall()
        out: list[SpriteRecord] = []
        for row in rows:
            created = datetime.fromisoformat(row[6])
            out.append(
                SpriteRecord(
                    name=row[0],
                    id=row[1],
                    organization=row[2],
                    status=row[3],
                    url=row[4],
                    url_auth=row[5],
                    created_at=created,
                    updated_at=datetime.fromisoformat(row[7]),
                    labels=list(json.loads(row[8])),
                    version=row[9],
                    last_running_at=_parse_ts(row[10]),
                    last_warming_at=_parse_ts(row[11]),
                )
            )
        return out

    def save(self, rec: SpriteRecord) -> None:
        """Insert or replace one record."""
        self._db.execute(_UPSERT, _row(rec))

    def save_many(self, recs: Iterable[SpriteRecord]) -> None:
        """Insert or replace many records in one transaction (bulk seeding)."""
        # One transaction instead of one fsync'd commit per row: 10k rows in ms.
        with self._transaction():
            self._db.executemany(_UPSERT, (_row(r) for r in recs))

    def delete(self, name: str) -> None:
        """Forget one sprite."""
        self._db.execute("DELETE FROM sprites WHERE name = ?", (name,))

    def set_all_cold(self) -> None:
        """Mark every stored sprite ``cold`` (after a restart no VM is running)."""
        self._db.execute("UPDATE sprites SET status = 'cold' WHERE status != 'cold'")

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
