"""The run history's file format: its tables, the schema version (`PRAGMA user_version`) and the
migrations that bring an older file to it in place, and the transactions every write runs in.

engine/history.py is the store built on it: a file is brought to SCHEMA_VERSION when first opened for
writing (prepare); a newer one is refused with a message (check_version).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import sqlite3
import time
from pathlib import Path

from engine import quality
from engine.errors import InputError

SCHEMA_VERSION = 3
KINDS = ("run", "bench", "sweep", "experiment", "imported")
BUSY_TIMEOUT_S = 30.0        # how long a writer waits for another's transaction before giving up

# Version 1: the report and little else. Kept to document what a version-1 file holds (and for tests).
SCHEMA_V1 = ("CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, created TEXT NOT NULL, kind TEXT NOT NULL, "
             "preset TEXT, report_json TEXT NOT NULL)",)

# Version 2: provenance in columns, so that list filters need not parse every report.
SCHEMA_V2 = (
    f"""CREATE TABLE runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused after a delete: an id shown once means one run
        kind TEXT NOT NULL CHECK (kind IN ({", ".join(f"'{k}'" for k in KINDS)})),
        created TEXT NOT NULL,        -- when the report was made, UTC ISO 8601 with a Z: text order is time order
        saved TEXT NOT NULL,          -- when it was saved here, the same format
        preset TEXT,
        device TEXT,                  -- the device's name as the report gives it
        driver TEXT,
        versions_json TEXT NOT NULL,  -- library versions, {{"torch": "2.13.0", ...}}
        git_commit TEXT,              -- the project's commit when saved from a git checkout, else NULL
        host TEXT,
        settings_json TEXT NOT NULL,  -- mode, repeats, new tokens, variants, prompt tokens (settings())
        session TEXT,                 -- the public page's visitor session (each sees their own); NULL elsewhere
        source TEXT,                  -- where an imported report came from
        report_json TEXT NOT NULL)""",
    # one row per variant of a run: the variant filter is an index lookup, not a scan of every report
    "CREATE TABLE run_variants (run_id INTEGER NOT NULL REFERENCES runs (id), variant TEXT NOT NULL, "
    "PRIMARY KEY (run_id, variant))",
    "CREATE INDEX runs_by_created ON runs (created)",
    "CREATE INDEX run_variants_by_variant ON run_variants (variant)",
)
# Version 3 (current): each variant's quality figures (engine/quality.py) in its run_variants row, so that the
# list shows them without parsing every report. NULL where the report says nothing of quality (made before it).
QUALITY_COLUMNS = (("quality_status", "TEXT"),       # engine/quality.py STATUSES
                   ("quality_reference", "TEXT"),    # the variant whose answer was scored (the baseline)
                   *((column, "INTEGER" if key == "positions" else "REAL") for column, key in quality.COLUMNS),
                   ("quality_note", "TEXT"))          # why there are no figures, e.g. "not meaningful: random weights"
SCHEMA_V3 = (
    SCHEMA_V2[0],
    "CREATE TABLE run_variants (run_id INTEGER NOT NULL REFERENCES runs (id), variant TEXT NOT NULL, "
    + "".join(f"{column} {kind}, " for column, kind in QUALITY_COLUMNS) + "PRIMARY KEY (run_id, variant))",
    *SCHEMA_V2[2:],
)
COLUMNS = ("kind", "created", "saved", "preset", "device", "driver", "versions_json", "git_commit", "host",
           "settings_json", "session", "source", "report_json")


def parse_moment(value) -> dt.datetime | None:
    """A datetime from a report's time text ("2026-11-26T10:42:19+0000"), an ISO date, or a datetime."""
    if isinstance(value, dt.datetime):
        return value
    if not isinstance(value, str) or not value.strip():
        return None
    for parse in (lambda t: dt.datetime.strptime(t, "%Y-%m-%dT%H:%M:%S%z"), dt.datetime.fromisoformat):
        with contextlib.suppress(ValueError):
            return parse(value.strip())
    return None


def utc_text(moment: dt.datetime) -> str:
    """UTC ISO 8601 with a Z; a time without a zone is taken as local."""
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------- what a report is and asked for
# (the settings_json column, which the migration from version 1 fills in too)

def report_kind(report) -> str | None:
    """"run", "bench" or "sweep" for a report the engine wrote (`--json`), None for anything else."""
    if not isinstance(report, dict) or not isinstance(report.get("results"), list):
        return None
    if not isinstance(report.get("device"), dict) or not isinstance(report.get("preset"), dict):
        return None
    if not all(isinstance(row, dict) and "variant" in row and "status" in row for row in report["results"]):
        return None
    if "experiment" in report:
        return "sweep"
    if "prompt_lengths" in report:
        return "bench"
    return "run" if "mode" in report else None


def settings(report: dict) -> dict:
    """What the run was asked to do, as far as its report says: the fields a list shows and filters on."""
    rows = report["results"]
    batch = report.get("batch_size") or 1
    # a report holds its RunSpec's max new tokens; one written before it did (and a sweep's, whose cells
    # differ) has the most any row asked for, or made per sequence, as the best stand-in
    made = [row["output_tokens"] // (row.get("batch_size") or batch) for row in rows if row.get("output_tokens")]
    asked = [row["max_new_tokens"] for row in rows if row.get("max_new_tokens")]
    return {"report_kind": report_kind(report), "mode": report.get("mode"), "repeats": report.get("repeats"),
            "new_tokens": report.get("new_tokens") or report.get("max_new_tokens") or max(asked, default=None)
            or max(made, default=None),
            "variants": list(dict.fromkeys(row["variant"] for row in rows)),
            "prompt_tokens": report.get("prompt_tokens"), "prompt_lengths": report.get("prompt_lengths"),
            "batch_size": report.get("batch_size"), "experiment": report.get("experiment"),
            "cancelled": bool(report.get("cancelled"))}


def variant_rows(run_id: int, report: dict) -> list[tuple]:
    """The run_variants rows of a report: one per variant, with its quality figures from its first row that
    has a `quality` entry (a bench's or sweep's first cell; NULL where none has)."""
    found: dict[str, dict | None] = {}
    for row in report["results"]:
        if found.get(row["variant"]) is None:
            found[row["variant"]] = row.get("quality") if isinstance(row.get("quality"), dict) else None
    return [(run_id, variant, *quality_values(entry)) for variant, entry in found.items()]


def quality_values(entry: dict | None) -> tuple:
    """An entry of engine/quality.py as the QUALITY_COLUMNS' values."""
    if entry is None:
        return (None,) * len(QUALITY_COLUMNS)
    flat = quality.flat(entry)
    return (entry.get("status"), entry.get("reference"), *(flat[column] for column, _ in QUALITY_COLUMNS[2:]))


def quality_entry(row: sqlite3.Row) -> dict | None:
    """A run_variants row's quality columns as an engine/quality.py entry (None: the report said nothing)."""
    if row["quality_status"] is None:
        return None
    entry = quality.unmeasured(row["quality_status"], row["quality_note"], row["quality_reference"])
    entry.update({key: row[column] for column, key in quality.COLUMNS})
    if entry["kld_max"] is not None:      # a 99th percentile from PERCENTILE_POSITIONS positions on, else the maximum
        entry["kld_tail"] = "p99" if entry["kld_p99"] is not None else "max"
    return entry


INSERT_VARIANT = (f"INSERT OR IGNORE INTO run_variants (run_id, variant, {', '.join(c for c, _ in QUALITY_COLUMNS)}) "
                  f"VALUES ({', '.join('?' * (len(QUALITY_COLUMNS) + 2))})")


def _migrate_1_to_2(db: sqlite3.Connection) -> None:
    """Version 1 -> 2: the provenance columns, read back from each stored report where it says them
    (the git commit and host of an old row are unknown: NULL). The table is rebuilt, SQLite's way
    to add constraints, keeping every id and the id counter."""
    counter = 0
    if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'").fetchone():
        found = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'runs'").fetchone()
        counter = found[0] if found else 0
    old = db.execute("SELECT id, created, kind, preset, report_json FROM runs ORDER BY id").fetchall()
    db.execute("ALTER TABLE runs RENAME TO runs_v1")
    for statement in SCHEMA_V2:
        db.execute(statement)
    for row in old:
        report = json.loads(row["report_json"])
        shape = report_kind(report)
        device = report.get("device") if isinstance(report, dict) and isinstance(report.get("device"), dict) else {}
        created = parse_moment(row["created"])
        kind = row["kind"] if row["kind"] in KINDS else (shape or "imported")
        db.execute(f"INSERT INTO runs (id, {', '.join(COLUMNS)}) VALUES ({', '.join('?' * (len(COLUMNS) + 1))})",
                   (row["id"], kind, utc_text(created) if created else row["created"],
                    utc_text(created) if created else row["created"], row["preset"], device.get("name"),
                    device.get("driver"), json.dumps(report.get("versions") or {} if shape else {}), None, None,
                    json.dumps(settings(report) if shape else {}), None, None, row["report_json"]))
        if shape:
            db.executemany("INSERT OR IGNORE INTO run_variants VALUES (?, ?)",
                           [(row["id"], r["variant"]) for r in report["results"]])    # version 2's two columns
    db.execute("DROP TABLE runs_v1")
    db.execute("UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'runs'", (counter,))


def _migrate_2_to_3(db: sqlite3.Connection) -> None:
    """Version 2 -> 3: the quality columns of run_variants, filled from each stored report's rows where they
    have a `quality` entry (an older report has none: NULL). Columns added in place: ids and rows stay."""
    for column, kind in QUALITY_COLUMNS:
        db.execute(f"ALTER TABLE run_variants ADD COLUMN {column} {kind}")
    assign = ", ".join(f"{column} = ?" for column, _ in QUALITY_COLUMNS)
    for run in db.execute("SELECT id, report_json FROM runs WHERE report_json LIKE '%\"quality\"%'").fetchall():
        report = json.loads(run["report_json"])
        if report_kind(report) is None:
            continue
        for run_id, variant, *values in variant_rows(run["id"], report):
            db.execute(f"UPDATE run_variants SET {assign} WHERE run_id = ? AND variant = ?", (*values, run_id, variant))


MIGRATIONS = {1: _migrate_1_to_2, 2: _migrate_2_to_3}    # from version N to N + 1, applied in turn in one transaction


def prepare(db: sqlite3.Connection, path: Path) -> None:
    """WAL mode, then the current schema: created in an empty file, migrated from an older one.
    Inside one immediate transaction, so that two processes opening a new file at once create it once."""
    _wal(db)
    with immediate(db):
        version = db.execute("PRAGMA user_version").fetchone()[0]
        check_version(db, version, path)
        if version == 0:
            for statement in SCHEMA_V3:
                db.execute(statement)
        while 0 < version < SCHEMA_VERSION:
            MIGRATIONS[version](db)
            version += 1
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")    # part of the transaction


def check_version(db: sqlite3.Connection, version: int, path: Path) -> None:
    """Refuse the file at `path` if its schema is newer than this code reads, or it is an SQLite file
    but not a history (version 0 with tables in it)."""
    if version > SCHEMA_VERSION:
        raise InputError(f"{path} is a version-{version} history, newer than this Side by Side reads "
                         f"(up to {SCHEMA_VERSION}): update the project to use it")
    if version == 0 and db.execute("SELECT 1 FROM sqlite_master").fetchone():
        raise InputError(f"{path} is an SQLite file but not a run history: give another --history path")


def _wal(db: sqlite3.Connection) -> None:
    """Put the file in WAL mode (persistent: once per file). Switching needs the file to itself, and
    SQLite answers "database is locked" at once, without its busy wait, when another process is
    creating the same new file: try again until the switch is made or BUSY_TIMEOUT_S has passed."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            if db.execute("PRAGMA journal_mode").fetchone()[0] == "wal" or \
                    db.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal":
                return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) and "busy" not in str(error):
                raise
        if time.monotonic() > deadline:
            raise sqlite3.OperationalError(f"database is locked: no WAL mode after {BUSY_TIMEOUT_S:.0f} s")
        time.sleep(0.02)


@contextlib.contextmanager
def immediate(db: sqlite3.Connection):
    """One write transaction, its lock taken at BEGIN (waiting out another writer by the busy timeout):
    taken later, a reader turned writer could fail at once instead of waiting."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if db.in_transaction:            # SQLite may have rolled it back itself (a full disk, say)
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
