"""The run history: every finished report kept in one SQLite file, with what makes it reproducible.

One row per run, bench, sweep, experiment or imported file: the full report JSON beside the
provenance a later reader needs to trust a comparison (device, driver, library versions, the
project's git commit, the host, the settings), and one row per variant with its quality figures
(engine/quality.py), which the list shows without reading the reports. Several processes may write
at once (the dashboard, a command line run beside it): the file is in WAL mode, a writer waits up to
BUSY_TIMEOUT_S for another, and every write is one transaction, so a process killed mid-write leaves
the earlier rows whole and its own write absent. Reads open the file read-only.

The file's tables, schema version and migrations are engine/history_schema.py's: an older file is
migrated in place on first use, a newer one is refused with a message. engine/history_compare.py sets
runs side by side per variant; engine/views/history_tables.py writes them and a saved run as text, and
engine/history_cli.py is `python -m engine history ...`.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import os
import platform
import sqlite3
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import InputError
from engine.history_schema import (BUSY_TIMEOUT_S, COLUMNS, INSERT_VARIANT, KINDS, QUALITY_COLUMNS, SCHEMA_VERSION,
                                   check_version, immediate, parse_moment, prepare, quality_entry, report_kind,
                                   settings, utc_text, variant_rows)
from engine.history_schema import SCHEMA_V1  # noqa: F401  (importable from here too: the tests make a version-1 file)
from engine.source import cache_dir

EXPECTED = ("the JSON that `python -m engine run`, `bench` or `sweep` writes with --json (an object with "
            "'device', 'preset' and 'results' rows)")

HISTORY_ENV = "SIDEBYSIDE_HISTORY"


def default_path() -> Path:
    """Where the history lives unless told: $SIDEBYSIDE_HISTORY, else the cache folder's history.sqlite
    (the variable lets tests, or a second deployment, keep their runs apart without moving the models)."""
    env = os.environ.get(HISTORY_ENV)
    return Path(env) if env else cache_dir() / "history.sqlite"


@functools.cache
def project_commit() -> str | None:
    """The project's commit (`git rev-parse HEAD` in its folder); None outside a git checkout of it or
    without git. Read once per process: the code that runs is the code loaded at start, even if the
    checkout moves on meanwhile."""
    folder = Path(__file__).resolve().parent.parent
    try:
        done = subprocess.run(["git", "rev-parse", "--show-toplevel", "HEAD"], cwd=folder, capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = done.stdout.split()
    # the project's own checkout, not a repository that happens to hold an installed copy
    if done.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() != folder:
        return None
    return lines[1]


def _now() -> str:
    return utc_text(dt.datetime.now(dt.timezone.utc))


@dataclass(frozen=True)
class Entry:
    """One saved run: its provenance, and (from `History.get`) its report."""
    id: int
    kind: str
    created: str
    saved: str
    preset: str | None
    device: str | None
    driver: str | None
    versions: dict
    git_commit: str | None
    host: str | None
    settings: dict
    session: str | None
    source: str | None
    report: dict | None = None
    quality: dict = field(default_factory=dict)   # variant -> its engine/quality.py entry, where the report has one
    verdict: str | None = None                     # a run's verdict line (its report's comparison), for the list

    def provenance(self) -> dict:
        """Everything but the report: what an exported file carries under "history"."""
        return {"id": self.id, "kind": self.kind, "created": self.created, "saved": self.saved,
                "preset": self.preset, "device": self.device, "driver": self.driver, "versions": self.versions,
                "git_commit": self.git_commit, "host": self.host, "settings": self.settings, "source": self.source}


def _entry(row: sqlite3.Row, with_report: bool, quality: dict) -> Entry:
    return Entry(row["id"], row["kind"], row["created"], row["saved"], row["preset"], row["device"], row["driver"],
                 json.loads(row["versions_json"]), row["git_commit"], row["host"], json.loads(row["settings_json"]),
                 row["session"], row["source"], json.loads(row["report_json"]) if with_report else None,
                 quality.get(row["id"], {}), row["verdict"] if "verdict" in row.keys() else None)


def _quality(db: sqlite3.Connection, ids: list[int]) -> dict:
    """run id -> {variant: its quality entry} for the runs `ids`, from run_variants (in the order saved)."""
    found: dict[int, dict] = {}
    for start in range(0, len(ids), 500):                # SQLite's limit on the parameters of one statement
        chunk = ids[start:start + 500]
        for row in db.execute(f"SELECT run_id, variant, {', '.join(c for c, _ in QUALITY_COLUMNS)} FROM run_variants "
                              f"WHERE run_id IN ({', '.join('?' * len(chunk))}) AND quality_status IS NOT NULL "
                              "ORDER BY rowid", chunk):
            found.setdefault(row["run_id"], {})[row["variant"]] = quality_entry(row)
    return found


class History:
    """The run history in the SQLite file at `path` (created on the first write)."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path is not None else default_path()
        self._batch = threading.local()      # .db: the connection of this thread's open `batch()`

    def __repr__(self) -> str:
        return f"History({str(self.path)!r})"

    # --- connections -------------------------------------------------------------------------

    def _open(self, write: bool) -> sqlite3.Connection:
        """A connection in autocommit mode (transactions are begun explicitly); a file that is not a
        history, or cannot be opened, is an InputError naming it."""
        if self.path.is_dir():
            raise InputError(f"{self.path} is a folder: give the history's file, e.g. {self.path / 'history.sqlite'}")
        try:
            if write:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            else:
                db = sqlite3.connect(self.path.resolve().as_uri() + "?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S,
                                     isolation_level=None)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA user_version").fetchone()        # an SQLite file at all? (raises if not)
        except sqlite3.OperationalError as error:
            raise InputError(f"cannot open the history {self.path}: {error}") from None
        except sqlite3.DatabaseError as error:
            raise InputError(f"{self.path} is not a run history ({error})") from None
        if write:
            try:
                prepare(db, self.path)
            except BaseException:
                db.close()
                raise
        return db

    @contextlib.contextmanager
    def _reading(self):
        """A read-only connection, or None when there is no file yet; an older file is migrated first."""
        if not self.path.exists():
            yield None
            return
        db = self._open(write=False)
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            check_version(db, version, self.path)
            if version < SCHEMA_VERSION:
                db.close()
                self._open(write=True).close()               # migrates it in place
                db = self._open(write=False)
            yield db
        finally:
            db.close()

    @contextlib.contextmanager
    def _writing(self):
        """A connection inside a write transaction: the open batch's, or a new one committed on exit."""
        held = getattr(self._batch, "db", None)
        if held is not None:
            yield held
            return
        db = self._open(write=True)
        try:
            with immediate(db):
                yield db
        finally:
            db.close()

    @contextlib.contextmanager
    def batch(self):
        """Several writes of this thread as one transaction: all of them are kept, or (after an error, or
        if the process dies first) none."""
        if getattr(self._batch, "db", None) is not None:
            yield self
            return
        db = self._open(write=True)
        try:
            with immediate(db):
                self._batch.db = db
                yield self
        finally:
            self._batch.db = None
            db.close()

    # --- writes ------------------------------------------------------------------------------

    def save(self, report: dict, kind: str, session: str | None = None) -> int:
        """Keep a finished report; returns its id. `kind`: one of KINDS; `session`: the public page's visitor."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if report_kind(report) is None:
            raise InputError(f"not a report: expected {EXPECTED}")
        return self._insert(report, kind, session, project_commit(), platform.node() or None, None)

    def _insert(self, report: dict, kind: str, session, commit, host, source) -> int:
        device = report["device"]
        created = parse_moment(report.get("created"))
        values = (kind, utc_text(created) if created else _now(), _now(), report["preset"].get("name"),
                  device.get("name"), device.get("driver"), json.dumps(report.get("versions") or {}), commit, host,
                  json.dumps(settings(report)), session, source, json.dumps(report))
        with self._writing() as db:
            run_id = db.execute(f"INSERT INTO runs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                                values).lastrowid
            db.executemany(INSERT_VARIANT, variant_rows(run_id, report))
        return run_id

    def import_file(self, path: str | os.PathLike) -> list[int]:
        """Keep a report file written by `--json` (or exported from a history) as kind "imported", or each
        report of a file that holds several under "runs" (scripts/gpu_check.py's, such as the committed
        H200 results); returns their ids. The provenance they carry is kept; what they do not say (the
        commit, the host) is left unknown."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path} {'is a folder' if path.is_dir() else 'does not exist'}: give {EXPECTED}")
        try:
            found = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise InputError(f"{path} is not JSON ({str(error).splitlines()[0]}): expected {EXPECTED}") from None
        if report_kind(found) is not None:
            reports = [(found, "")]
        else:
            runs = found.get("runs") if isinstance(found, dict) else None
            if not (isinstance(runs, list) and runs and all(report_kind(run) for run in runs)):
                raise InputError(f"{path} is not a run, bench or sweep report: expected {EXPECTED}")
            reports = [(run, f" (report {i + 1} of {len(runs)} under 'runs')") for i, run in enumerate(runs)]
        ids = []
        with self.batch():                                 # all of a file's reports, or none
            for report, which in reports:
                report = dict(report)
                came = report.pop("history", None)         # the provenance of a file `export` wrote
                came = came if isinstance(came, dict) else {}
                source = f"imported from {path.resolve()}{which} on {_now()}"
                if came.get("id") is not None:
                    source += f"; exported from history #{came['id']} ({came.get('kind')}, saved {came.get('saved')})"
                ids.append(self._insert(report, "imported", None, came.get("git_commit"), came.get("host"), source))
        return ids

    def delete(self, run_id: int, session: str | None = None) -> None:
        """Remove a run (with `session`: only if it is that visitor's); an unknown id is an InputError."""
        with self._writing() as db:
            found = db.execute("SELECT id FROM runs WHERE id = ?" + (" AND session = ?" if session else ""),
                               (run_id, session) if session else (run_id,)).fetchone()
            if found is None:
                raise InputError(self._unknown(run_id))
            db.execute("DELETE FROM run_variants WHERE run_id = ?", (run_id,))
            db.execute("DELETE FROM runs WHERE id = ?", (run_id,))

    def forget(self, session: str) -> int:
        """Remove every run of a visitor's session (their page closed); how many were removed."""
        if not session:
            raise ValueError("forget needs a session")
        with self._writing() as db:
            db.execute("DELETE FROM run_variants WHERE run_id IN (SELECT id FROM runs WHERE session = ?)", (session,))
            return db.execute("DELETE FROM runs WHERE session = ?", (session,)).rowcount

    def export(self, run_id: int, path: str | os.PathLike, session: str | None = None) -> Path:
        """Write a run's report (its provenance under "history") to `path`, whole or not at all; importable again."""
        entry = self.get(run_id, session)
        target = Path(path)
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        try:
            with open(partial, "w", encoding="utf-8") as out:
                json.dump({**entry.report, "history": entry.provenance()}, out, indent=1)
                out.flush()
                os.fsync(out.fileno())
            os.replace(partial, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
        return target

    # --- reads -------------------------------------------------------------------------------

    def list(self, preset: str | None = None, device: str | None = None, variant: str | None = None,
             since=None, session: str | None = None, limit: int | None = None) -> list[Entry]:
        """The saved runs, newest first, without their reports. `device` matches part of the name
        (case-insensitive: "h200"); `since`: a datetime or ISO text ("2026-12-01"); `session`: only that
        visitor's runs."""
        moment = parse_moment(since) if since is not None else None
        if since is not None and moment is None:
            raise InputError(f"since: expected a date or time such as 2026-12-01 or 2026-12-01T10:00, got {since!r}")
        asked = [("preset = ?", preset), ("device LIKE ? ESCAPE '\\'", device and f"%{_like(device)}%"),
                 ("id IN (SELECT run_id FROM run_variants WHERE variant = ?)", variant),
                 ("created >= ?", moment and utc_text(moment)), ("session = ?", session)]
        where = [(clause, value) for clause, value in asked if value]
        # not the reports (a list reads many), but each run's verdict line out of its report, in SQLite
        query = (f"SELECT {', '.join(c for c in ('id',) + COLUMNS if c != 'report_json')}, "
                 "json_extract(report_json, '$.comparison.text') AS verdict FROM runs"
                 + (" WHERE " + " AND ".join(clause for clause, _ in where) if where else "")
                 + " ORDER BY created DESC, id DESC")
        params = [value for _, value in where]
        if limit is not None:
            query += f" LIMIT {int(limit)}"
        with self._reading() as db:
            if db is None:
                return []
            rows = db.execute(query, params).fetchall()
            quality = _quality(db, [row["id"] for row in rows])
        return [_entry(row, False, quality) for row in rows]

    def get(self, run_id: int, session: str | None = None) -> Entry:
        """One run with its report (with `session`: only that visitor's); an unknown id is an InputError."""
        with self._reading() as db:
            found = None if db is None else db.execute(
                "SELECT * FROM runs WHERE id = ?" + (" AND session = ?" if session else ""),
                (run_id, session) if session else (run_id,)).fetchone()
            quality = _quality(db, [run_id]) if found is not None else {}
        if found is None:
            raise InputError(self._unknown(run_id))
        return _entry(found, True, quality)

    def _unknown(self, run_id) -> str:
        where = f"the history {self.path}" if self.path.exists() else f"{self.path} (no history there yet)"
        return f"no run #{run_id} in {where}: `python -m engine history list` shows the ids"


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
