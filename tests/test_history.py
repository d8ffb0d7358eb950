"""The run history (engine/history.py): real SQLite files, real processes writing at once or killed
mid-write, a committed H200 report imported and compared with a CPU run, and `python -m engine history`
as a person types it."""
import json
import math
import os
import platform
import re
import signal
import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from engine import quality, verdict
from engine.errors import InputError
from engine.history import SCHEMA_V1, SCHEMA_VERSION, History
from engine.history_compare import compare
from engine.history_cli import keep
from engine.history_schema import COLUMNS, SCHEMA_V2
from engine.views.history_tables import QUALITY_NOTE, compare_table, describe, list_table

ROOT = Path(__file__).resolve().parent.parent
H200 = ROOT / "benchmarks" / "results" / "gpu_check-h200-2026-11-26-2.json"


def row(variant, tpot_ms, ttft_ms=(5.0, 5.0, 5.0), memory=(1000, 1000, 1000), **extra):
    """A results row with the report's per-repeat lists; the medians are the middle repeat's."""
    tpot = [t / 1000 for t in tpot_ms]
    ttft = [t / 1000 for t in ttft_ms]
    speed = [8 / (a + 7 * b) for a, b in zip(ttft, tpot)]
    median = lambda values: sorted(values)[len(values) // 2]
    return {"variant": variant, "status": "ok", "reason": None, "output_tokens": 8, "repeats": len(tpot),
            "tpot_s": median(tpot), "tpot_min_s": min(tpot), "tpot_max_s": max(tpot), "tpot_repeats_s": tpot,
            "ttft_s": median(ttft), "ttft_repeats_s": ttft, "tokens_per_s": median(speed),
            "tokens_per_s_repeats": speed, "peak_memory_bytes": max(memory), "peak_memory_repeats_bytes": list(memory),
            **extra}


def report(*rows, preset="tiny", device="CPU: test", created="2026-12-01T10:00:00+0000", **extra):
    """A run report with the real schema's top-level keys."""
    return {"created": created, "device": {"kind": "cpu", "name": device, "driver": None},
            "versions": {"python": "3.11.7", "torch": "2.13.0"},
            "preset": {"name": preset, "title": preset, "random_weights": True}, "prompt": "Hi", "prompt_tokens": 3,
            "mode": "fair", "repeats": len(rows[0]["tpot_repeats_s"]), "batch_size": 1, "cancelled": False,
            "results": list(rows), **extra}


def integrity(path) -> str:
    with sqlite3.connect(path) as db:
        return db.execute("PRAGMA integrity_check").fetchone()[0]


def cli(*args, cache=None):
    """`python -m engine ...` as a subprocess, with its own cache folder (the default history's)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if cache is not None:
        env["SIDEBYSIDE_CACHE"] = str(cache)
        env.pop("SIDEBYSIDE_HISTORY", None)         # the cache folder's history, not the session's (conftest.py)
    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)


def made(report) -> str:
    """When a report was made, as the history stores and lists it (UTC, with a Z)."""
    assert report["created"].endswith("+0000"), report["created"]
    return report["created"].replace("+0000", "Z")


def one_error_line(done, text):
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert text in done.stderr, done.stderr


# --- the store -----------------------------------------------------------------------------------

def test_a_saved_report_reads_back_whole_with_its_provenance(tmp_path):
    path = tmp_path / "h.sqlite"
    saved = report(row("baseline", (10, 11, 12)), row("sdpa", (8, 9, 10)))
    first = History(path).save(saved, "run")
    second = History(path).save(report(row("baseline", (10, 11, 12)), preset="small",
                                       created="2026-12-02T09:30:00+0100"), "bench", session="visitor-1")
    assert (first, second) == (1, 2)
    entry = History(path).get(first)                       # a new object: only the file carries it over
    assert entry.report == saved and entry.kind == "run" and entry.preset == "tiny" and entry.device == "CPU: test"
    assert entry.created == "2026-12-01T10:00:00Z" and entry.versions == {"python": "3.11.7", "torch": "2.13.0"}
    assert entry.settings["variants"] == ["baseline", "sdpa"] and entry.settings["repeats"] == 3
    assert (entry.settings["new_tokens"], entry.settings["prompt_tokens"], entry.settings["mode"]) == (8, 3, "fair")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert entry.git_commit == (head or None) and entry.host == (platform.node() or None)
    assert entry.session is None and entry.source is None
    assert History(path).get(second).created == "2026-12-02T08:30:00Z"   # +0100 read as UTC
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    with pytest.raises(InputError, match="no run #7 in the history"):
        History(path).get(7)
    with pytest.raises(InputError, match="not a report"):
        History(path).save({"results": "nope"}, "run")
    with pytest.raises(ValueError, match="kind must be one of"):
        History(path).save(saved, "guess")


def test_list_filters_by_preset_device_variant_time_and_session(tmp_path):
    history = History(tmp_path / "h.sqlite")
    assert history.list() == [] and not history.path.exists()        # reading makes no file
    a = history.save(report(row("baseline", (10, 11, 12)), row("sdpa", (8, 9, 10))), "run")
    b = history.save(report(row("baseline", (10, 11, 12)), device="NVIDIA H200", created="2026-12-03T00:00:00+0000"),
                     "bench")
    c = history.save(report(row("compiled", (3, 3, 3)), preset="small", created="2026-12-02T00:00:00+0000"), "run",
                     session="s1")
    assert [e.id for e in history.list()] == [b, c, a]                # newest first
    assert all(e.report is None for e in history.list())              # the list leaves the reports out
    assert [e.id for e in history.list(preset="small")] == [c]
    assert [e.id for e in history.list(device="h200")] == [b]          # part of the name, any case
    assert [e.id for e in history.list(variant="sdpa")] == [a]
    assert [e.id for e in history.list(variant="baseline")] == [b, a]
    assert [e.id for e in history.list(since="2026-12-02")] == [b, c]
    assert [e.id for e in history.list(session="s1")] == [c]
    assert [e.id for e in history.list(limit=1)] == [b]
    with pytest.raises(InputError, match="since: expected a date"):
        history.list(since="yesterday")
    with pytest.raises(InputError, match=f"no run #{c}"):
        history.delete(c, session="someone-else")                     # a visitor deletes only their own runs
    with pytest.raises(InputError, match=f"no run #{a}"):
        history.get(a, session="s1")
    history.delete(c, session="s1")
    assert [e.id for e in history.list()] == [b, a] and history.list(variant="compiled") == []
    d = history.save(report(row("baseline", (1, 1, 1))), "run")
    assert d == c + 1                                                 # a deleted id is never given again


def test_a_version_1_file_is_migrated_in_place(tmp_path):
    path = tmp_path / "old.sqlite"
    old = [report(row("baseline", (10, 11, 12)), row("sdpa", (8, 9, 10)), device="NVIDIA H200"),
           report(row("baseline", (10, 11, 12)), preset="small"), report(row("baseline", (1, 2, 3)))]
    with sqlite3.connect(path) as db:
        for statement in SCHEMA_V1:
            db.execute(statement)
        for index, found in enumerate(old):
            db.execute("INSERT INTO runs (created, kind, preset, report_json) VALUES (?, ?, ?, ?)",
                       (f"2026-11-2{index}T10:00:00+0000", "run", found["preset"]["name"], json.dumps(found)))
        db.execute("DELETE FROM runs WHERE id = 3")                   # the id counter stands at 3
        db.execute("PRAGMA user_version = 1")
    history = History(path)
    listed = history.list()                                           # a read migrates it first
    assert [(e.id, e.preset, e.device) for e in listed] == [(2, "small", "CPU: test"), (1, "tiny", "NVIDIA H200")]
    first = history.get(1)
    assert first.report == old[0] and first.created == "2026-11-20T10:00:00Z" and first.kind == "run"
    assert first.settings["variants"] == ["baseline", "sdpa"] and first.versions["torch"] == "2.13.0"
    assert first.git_commit is None and first.host is None           # unknown for rows saved before version 2
    assert [e.id for e in history.list(variant="sdpa")] == [1]
    assert first.quality == {}                                        # its report says nothing of quality
    with sqlite3.connect(path) as db:                                 # version 1 -> 2 -> 3 in one go
        assert db.execute("PRAGMA user_version").fetchone()[0] == 3
        assert {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")} == {
            "runs", "run_variants", "sqlite_sequence"}
        assert db.execute("SELECT count(*) FROM run_variants WHERE quality_status IS NULL").fetchone()[0] == 3
    assert integrity(path) == "ok"
    assert history.save(old[2], "run") == 4                           # the counter survived the rebuild


# --- quality figures: kept per variant, listed, shown, compared -------------------------------------

BASE_POSITIONS = {"top_ids": [1, 2, 3, 4], "token_logprobs": [-0.1, -0.2, -0.3, -0.4]}


def scored(top_ids, kld, logprobs=(-0.1, -0.2, -0.3, -0.4), status="measured"):
    """A variant's quality entry from its per-position values against BASE_POSITIONS, as the engine makes it."""
    return dict(quality.summarize({"top_ids": list(top_ids), "token_logprobs": list(logprobs), "kld": list(kld)},
                                  BASE_POSITIONS, "baseline"), status=status)


REF_Q = scored([1, 2, 3, 4], [0, 0, 0, 0], status="reference")       # the baseline scored on its own answer
Q8 = scored([1, 2, 3, 4], [0.0, 0.001, 0.002, 0.001], (-0.1, -0.2, -0.3, -0.5))
Q4 = scored([1, 2, 3, 9], [0.01, 0.02, 0.03, 0.1], (-0.2, -0.2, -0.3, -0.9))
LONG_KLD = [i / 1000 for i in range(120)]                             # 100 positions or more: a 99th percentile
LONG = quality.summarize({"top_ids": [5] * 120, "token_logprobs": [-0.5] * 120, "kld": LONG_KLD},
                         {"top_ids": [5] * 119 + [6], "token_logprobs": [-0.4] * 120}, "baseline")
SERVED = quality.unmeasured("not reported", quality.NOT_REPORTED, "baseline")


def quantized(q4=Q4, **extra):
    """A run of a real model's quantized variants with their quality entries; sdpa's row has none (made before)."""
    return report(row("baseline", (10, 11, 12), quality=REF_Q), row("bnb-8bit", (12, 13, 14), quality=Q8),
                  row("bnb-4bit", (9, 9, 9), quality=q4), row("sdpa", (8, 8, 8)),
                  row("int4", (5, 5, 5), quality=LONG), row("served", (7, 7, 7), quality=SERVED),
                  preset="smollm2-135m", **extra)


def test_each_variants_quality_is_kept_in_columns_and_read_back_with_the_runs(tmp_path):
    path = tmp_path / "h.sqlite"
    history = History(path)
    run_id = history.save(quantized(), "run")
    assert (Q4["top_token_agreement"], Q4["kld_mean"], Q4["kld_max"], Q4["kld_p99"], Q4["kld_tail"]) == (
        0.75, pytest.approx(0.04), 0.1, None, "max")
    assert (LONG["top_token_agreement"], LONG["kld_tail"]) == (119 / 120, "p99")
    with sqlite3.connect(path) as db:
        stored = db.execute("SELECT variant, quality_status, quality_reference, quality_top_agreement, "
                            "quality_kld_mean, quality_kld_p99, quality_kld_max, quality_perplexity, "
                            "quality_reference_perplexity, quality_positions, quality_note FROM run_variants "
                            "WHERE run_id = ? ORDER BY rowid", (run_id,)).fetchall()
    assert stored[2] == ("bnb-4bit", "measured", "baseline", 0.75, pytest.approx(0.04), None, 0.1,
                         pytest.approx(math.exp(0.4)), pytest.approx(math.exp(0.25)), 4, None)
    assert stored[3] == ("sdpa",) + (None,) * 10                       # its row said nothing of quality
    assert stored[4][1:7] == ("measured", "baseline", 119 / 120, pytest.approx(0.0595),
                              pytest.approx(0.11781), 0.119)
    assert stored[5] == ("served", "not reported", "baseline") + (None,) * 7 + ("not reported by the server",)
    expected = {"baseline": REF_Q, "bnb-8bit": Q8, "bnb-4bit": Q4, "int4": LONG, "served": SERVED}
    listed = history.list()[0]
    assert listed.report is None and listed.quality == expected        # without reading the report
    assert history.get(run_id).quality == expected
    assert list(listed.quality) == ["baseline", "bnb-8bit", "bnb-4bit", "int4", "served"]   # the report's order
    line = list_table(history.list()).splitlines()
    assert line[0].endswith("commit      quality (same top/mean KLD)")
    assert line[1].endswith("bnb-8bit 100%/0.001, bnb-4bit 75%/0.04, int4 99%/0.0595")
    only_reference = history.save(report(row("baseline", (1, 2, 3), quality=REF_Q)), "run")
    noise = history.save(report(row("baseline", (1, 2, 3), quality=quality.unmeasured(
        "not meaningful", quality.RANDOM_WEIGHTS))), "run")
    older = history.save(report(row("baseline", (1, 2, 3))), "run")
    texts = {int(text.split()[0]): text for text in list_table(history.list()).splitlines()[1:]}
    assert texts[only_reference].endswith("reference only: PPL 1.28") and texts[noise].endswith("not meaningful")
    assert texts[older].endswith("-") and history.get(older).quality == {}



def test_a_saved_runs_detail_shows_each_variants_quality_and_why_some_have_none(tmp_path):
    history = History(tmp_path / "h.sqlite")
    lines = describe(history.get(history.save(quantized(), "run"))).splitlines()
    head = lines[5].split()
    assert head[-7:] == ["same", "top", "mean", "KLD", "KLD", "p99/max", "PPL"]
    table = {line.split()[0]: line.split() for line in lines[6:12]}
    assert table["bnb-4bit"][-5:] == ["75%", "0.04", "0.1", "(max)", "1.49"]
    assert table["int4"][-5:] == ["99%", "0.0595", f"{quality.percentile(LONG_KLD, 99):.3g}", "(p99)", "1.65"]
    assert table["baseline"][-4:] == ["reference", "-", "-", "1.28"] and table["sdpa"][-4:] == ["-"] * 4
    assert lines[12] == "  quality of served: not reported by the server"
    plain = describe(history.get(history.save(report(row("baseline", (1, 2, 3))), "run"))).splitlines()
    assert "KLD" not in plain[5] and not any("quality" in line for line in plain)   # saved before quality


def test_compare_sets_the_quality_figures_side_by_side_with_no_range():
    reference = quantized()
    worse = quantized(q4=scored([1, 2, 9, 9], [0.02, 0.04, 0.06, 0.08], (-0.3, -0.3, -0.3, -0.9)))
    found = compare([reference, worse])
    by = {(c.variant, c.metric): c for c in found.changes}
    kld = by["bnb-4bit", "kld_mean"]
    assert kld.values == (pytest.approx(0.04), pytest.approx(0.05)) and kld.percent[1] == pytest.approx(25.0)
    assert kld.verdicts == (None, verdict.NO_RANGE) and kld.within_noise == (None, False)
    agreement = by["bnb-4bit", "agreement"]
    assert agreement.values == (0.75, 0.5) and agreement.percent[1] == pytest.approx(-100 / 3)
    assert by["bnb-4bit", "kld_max"].values == (0.1, 0.08)
    assert by["bnb-4bit", "perplexity"].percent[1] == pytest.approx(
        (worse["results"][2]["quality"]["perplexity"] / Q4["perplexity"] - 1) * 100)
    assert by["bnb-8bit", "kld_mean"].percent == (None, pytest.approx(0.0))
    assert ("bnb-4bit", "kld_p99") not in by and by["int4", "kld_p99"].values[0] == LONG["kld_p99"]
    # the reference variant scored its own answer: only its perplexity is compared
    assert [c.metric for c in found.changes if c.variant == "baseline"] == ["tpot", "ttft", "tokens_per_s", "memory",
                                                                           "perplexity"]
    assert not [c for c in found.changes if c.variant in ("sdpa", "served") and c.metric not in verdict.BY_NAME]
    # a run saved before quality, or without figures, leaves a dash and no percent
    older = report(*(dict(r, quality=None) for r in reference["results"]), preset="smollm2-135m")
    assert by_key(compare([reference, older]))["bnb-4bit", "kld_mean"].percent == (None, None)
    assert not [c for c in compare([older, older]).changes if c.metric not in verdict.BY_NAME]
    lines = compare_table(found, ["#1", "#2"]).splitlines()
    assert "bnb-4bit mean KLD 0.04 0.05 +25.0% no range".split() in [line.split() for line in lines]
    assert "bnb-4bit same top token 75% 50% -33.3% no range".split() in [line.split() for line in lines]
    assert QUALITY_NOTE in lines and QUALITY_NOTE.startswith("quality: each run's variant scored")
    assert QUALITY_NOTE not in compare_table(compare([older, older]), ["#1", "#2"]).splitlines()


def by_key(compared):
    return {(c.variant, c.metric): c for c in compared.changes}


def test_a_version_2_file_gets_its_quality_columns_filled_from_the_reports(tmp_path):
    path = tmp_path / "v2.sqlite"
    with_quality, without = quantized(), report(row("baseline", (10, 11, 12)), row("sdpa", (8, 9, 10)))
    with sqlite3.connect(path) as db:
        for statement in SCHEMA_V2:
            db.execute(statement)
        for run_id, found in ((1, without), (2, with_quality)):
            values = {"kind": "run", "created": f"2026-12-0{run_id}T10:00:00Z", "saved": "2026-12-05T10:00:00Z",
                      "preset": found["preset"]["name"], "versions_json": "{}", "settings_json": "{}",
                      "report_json": json.dumps(found)}
            db.execute(f"INSERT INTO runs (id, {', '.join(COLUMNS)}) VALUES ({', '.join('?' * (len(COLUMNS) + 1))})",
                       (run_id, *(values.get(column) for column in COLUMNS)))
            db.executemany("INSERT INTO run_variants VALUES (?, ?)", [(run_id, r["variant"]) for r in found["results"]])
        db.execute("PRAGMA user_version = 2")
    history = History(path)
    assert [(e.id, e.quality) for e in history.list()] == [
        (2, {"baseline": REF_Q, "bnb-8bit": Q8, "bnb-4bit": Q4, "int4": LONG, "served": SERVED}), (1, {})]
    assert history.get(2).report == with_quality and [e.id for e in history.list(variant="sdpa")] == [2, 1]
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 3
        columns = [r[1] for r in db.execute("PRAGMA table_info(run_variants)")]
        assert columns == ["run_id", "variant", "quality_status", "quality_reference", "quality_top_agreement",
                           "quality_kld_mean", "quality_kld_p99", "quality_kld_max", "quality_perplexity",
                           "quality_reference_perplexity", "quality_positions", "quality_note"]
    assert integrity(path) == "ok"
    assert history.save(without, "run") == 3


def test_a_newer_or_foreign_file_is_refused_with_its_name(tmp_path):
    newer = tmp_path / "newer.sqlite"
    with sqlite3.connect(newer) as db:
        db.execute("PRAGMA user_version = 9")
    with pytest.raises(InputError, match="is a version-9 history, newer than this Side by Side reads"):
        History(newer).list()
    foreign = tmp_path / "other.sqlite"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE t (x)")
    with pytest.raises(InputError, match="an SQLite file but not a run history"):
        History(foreign).save(report(row("baseline", (1, 2, 3))), "run")
    text = tmp_path / "notes.txt"
    text.write_text("hello " * 200)
    with pytest.raises(InputError, match="notes.txt is not a run history"):
        History(text).list()


WRITER = """
import sys, time
from pathlib import Path
from engine.history import History
path, name, count, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
report = {{"created": "2026-12-01T10:00:00+0000", "device": {{"name": "CPU"}}, "versions": {{}},
          "preset": {{"name": "tiny"}}, "mode": "fair", "repeats": 1,
          "results": [{{"variant": "baseline", "status": "ok", "filler": "x" * 20000}}]}}
history = History(path)
while not go.exists():          # both writers start together
    time.sleep(0.005)
for i in range(count):
    history.save(dict(report, prompt=f"{{name}} {{i}}"), "run", session=name)
"""


def test_two_processes_writing_at_once_keep_every_row(tmp_path):
    path, go, count = tmp_path / "h.sqlite", tmp_path / "go", 100
    History(path).save(report(row("baseline", (1, 2, 3))), "run")      # the schema exists: both race on rows only
    writers = [subprocess.Popen([sys.executable, "-c", WRITER.format(), str(path), name, str(count), str(go)],
                                cwd=ROOT, stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    go.touch()
    for writer in writers:
        assert writer.wait(timeout=120) == 0, writer.stderr.read()
    history = History(path)
    for name in ("a", "b"):
        prompts = sorted(history.get(e.id).report["prompt"] for e in history.list(session=name))
        assert prompts == sorted(f"{name} {i}" for i in range(count))
    assert len(history.list()) == 2 * count + 1
    assert len({e.id for e in history.list()}) == 2 * count + 1
    assert integrity(path) == "ok"


def test_two_processes_creating_a_new_file_at_once_make_one_schema(tmp_path):
    path, go = tmp_path / "new.sqlite", tmp_path / "go"
    writers = [subprocess.Popen([sys.executable, "-c", WRITER.format(), str(path), name, "5", str(go)],
                                cwd=ROOT, stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    go.touch()
    for writer in writers:
        assert writer.wait(timeout=120) == 0, writer.stderr.read()
    assert len(History(path).list()) == 10 and integrity(path) == "ok"


KILLED = """
import sys, time
from engine.history import History
history = History(sys.argv[1])
report = {"device": {"name": "CPU"}, "versions": {}, "preset": {"name": "tiny"}, "mode": "fair",
          "results": [{"variant": "baseline", "status": "ok", "filler": "y" * 200000}]}
with history.batch():           # one transaction around several saves: nothing of it is kept until it ends
    for i in range(20):
        history.save(dict(report, prompt=f"uncommitted {i}"), "run")
    print("written", flush=True)
    time.sleep(300)
"""


def test_a_writer_killed_before_its_commit_leaves_the_earlier_rows_readable(tmp_path):
    path = tmp_path / "h.sqlite"
    history = History(path)
    kept = [history.save(report(row("baseline", (i, i + 1, i + 2)), prompt=f"kept {i}"), "run") for i in (1, 2, 3)]
    child = subprocess.Popen([sys.executable, "-c", KILLED, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "written"               # inside its transaction, 4 MB written
    assert Path(f"{path}-wal").stat().st_size > 1_000_000             # ... and spilled into the WAL file
    os.kill(child.pid, signal.SIGKILL)                                # our own child, by its PID
    assert child.wait(timeout=30) == -signal.SIGKILL
    assert integrity(path) == "ok"
    reopened = History(path)
    assert [e.id for e in reopened.list()] == kept[::-1]
    assert [reopened.get(i).report["prompt"] for i in kept] == ["kept 1", "kept 2", "kept 3"]
    assert reopened.save(report(row("baseline", (1, 2, 3))), "run") == 4   # the lock died with it; its ids unused


# --- runs side by side -----------------------------------------------------------------------------

def test_compare_gives_each_change_in_percent_and_the_noise_rule_of_verdict():
    reference = report(row("baseline", (10, 11, 12), memory=(1000, 1000, 1000)), row("sdpa", (8, 9, 10)))
    overlapping = report(row("baseline", (10.5, 11.5, 12.5), memory=(1005, 1005, 1005)), row("sdpa", (4, 4.5, 5)),
                         row("compiled", (2, 2, 2)))
    single = report(row("baseline", (22,), ttft_ms=(5,), memory=(2000,)))
    found = compare([reference, overlapping, single])
    by = {(c.variant, c.metric): c for c in found.changes}
    tpot = by["baseline", "tpot"]
    assert tpot.values == (0.011, 0.0115, 0.022)
    assert tpot.percent[0] is None and tpot.percent[1:] == (pytest.approx(100 / 22), pytest.approx(100))
    assert tpot.verdicts == (None, verdict.NOISE, verdict.NO_RANGE) and tpot.within_noise == (None, True, False)
    assert by["baseline", "memory"].percent[1] == pytest.approx(0.5)
    assert by["baseline", "memory"].verdicts[1] == verdict.NOISE     # the same memory, though ranges do not overlap
    assert by["sdpa", "tpot"].verdicts == (None, verdict.BETTER, None)   # the single-repeat run has no sdpa
    assert by["sdpa", "tpot"].percent[1] == pytest.approx(-50)
    assert by["sdpa", "tokens_per_s"].verdicts[1] == verdict.BETTER
    assert by["sdpa", "ttft"].verdicts[1] == verdict.NOISE            # the same TTFT every repeat
    assert found.left_out == {1: [("compiled", "")]} and found.differs == {"repeats": [3, 3, 1]}
    reverse = compare([reference, overlapping], reference_index=1)
    assert {(c.variant, c.metric): c.verdicts for c in reverse.changes}["sdpa", "tpot"] == (verdict.WORSE, None)
    lines = compare_table(found, ["#1", "#2", "#3"]).splitlines()
    assert lines[0].split() == ["variant", "figure", "#1", "(ref)", "#2", "#3", "#2", "vs", "#1", "#3", "vs", "#1"]
    assert lines[1].split() == ["baseline", "TPOT", "ms", "11.00", "11.50", "22.00", "+4.5%", "within", "noise",
                                "+100%", "no", "range"]
    assert any(line.split()[:3] == ["sdpa", "TPOT", "ms"] and "-50.0% better" in line for line in lines)
    assert "note: left out, as #1 does not have them: #2's compiled" in lines
    with pytest.raises(InputError, match="two runs or more"):
        compare([reference])
    # what sets the pace besides the variant is named when it differs: CPU threads, library versions
    fewer = report(row("baseline", (10, 11, 12), cpu_threads=1))
    newer = report(row("baseline", (10, 11, 12), cpu_threads=2), versions={"torch": "2.14.0"})
    assert compare([fewer, newer]).differs == {"CPU threads": [[1], [2]], "torch": ["2.13.0", "2.14.0"]}


# --- real runs: the command line saves them, the history shows and compares them -----------------

@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A CPU run and a CPU bench on tiny, saved by the commands themselves to a fresh history: run at
    once, from the same new cache folder (the first to need the tiny model makes it, the other waits)."""
    folder = tmp_path_factory.mktemp("history")
    path = folder / "h.sqlite"
    commands = {"run": ("run", "--preset", "tiny", "--variants", "baseline,sdpa", "--max-new-tokens", 4, "--repeats",
                        2, "--json", folder / "run.json", "--history", path),
                "bench": ("bench", "--preset", "tiny", "--variants", "baseline,sdpa", "--prompt-lengths", 128,
                          "--new-tokens", 4, "--repeats", 2, "--json", folder / "bench.json", "--history", path)}
    with ThreadPoolExecutor(2) as both:
        started = {name: both.submit(cli, *args, cache=folder / "cache") for name, args in commands.items()}
        done = {name: future.result() for name, future in started.items()}
    for name, finished in done.items():
        assert finished.returncode == 0, finished.stderr
    return {"folder": folder, "path": path, "done": done, "run": json.loads((folder / "run.json").read_text()),
            "bench": json.loads((folder / "bench.json").read_text())}


def test_run_and_bench_save_their_report_to_the_history_they_are_given(saved):
    said = {name: re.search(r"saved to the history as #(\d+) \((.+)\)\n*$", done.stderr)
            for name, done in saved["done"].items()}
    assert all(found and found[2] == str(saved["path"]) for found in said.values()), said
    ids = {name: int(found[1]) for name, found in said.items()}        # in the order they finished
    assert sorted(ids.values()) == [1, 2]
    history = History(saved["path"])
    # newest report first: the two ran at once, so the one that finished first (#1) may have begun later
    newest_first = sorted(((made(saved[n]), i, n) for n, i in ids.items()), reverse=True)
    assert [(e.id, e.kind) for e in history.list()] == [(i, n) for _, i, n in newest_first]
    assert [e.created for e in history.list()] == [created for created, _, _ in newest_first]
    assert history.get(ids["run"]).report == saved["run"] and history.get(ids["bench"]).report == saved["bench"]
    bench = history.get(ids["bench"])
    assert bench.settings["prompt_lengths"] == [128] and bench.settings["new_tokens"] == 4
    for name in ("run", "bench"):                  # each variant's quality entry, from the row that has one
        kept = {r["variant"]: r["quality"] for r in saved[name]["results"] if isinstance(r.get("quality"), dict)}
        assert history.get(ids[name]).quality == kept
        assert all(q["status"] == "not meaningful" and q["note"] == quality.RANDOM_WEIGHTS for q in kept.values())
    assert not (saved["folder"] / "cache" / "history.sqlite").exists()   # --history chose the file


def test_a_run_saves_to_the_default_history_unless_told_not_to(tmp_path):
    run = ("run", "--preset", "tiny", "--variants", "baseline", "--max-new-tokens", 2, "--repeats", 1)
    with ThreadPoolExecutor(2) as both:                     # two commands, each with its own cache: at once
        kept = both.submit(cli, *run, cache=tmp_path / "kept")
        skipped = both.submit(cli, *run, "--no-history", cache=tmp_path / "skipped")
        kept, skipped = kept.result(), skipped.result()
    assert kept.returncode == 0, kept.stderr
    default = tmp_path / "kept" / "history.sqlite"
    assert f"saved to the history as #1 ({default})" in kept.stderr
    assert History(default).get(1).report["results"][0]["output_tokens"] == 2
    assert skipped.returncode == 0 and "history" not in skipped.stderr
    assert not (tmp_path / "skipped" / "history.sqlite").exists()


def test_sidebyside_history_chooses_the_default_history_and_leaves_the_cache_alone(tmp_path, monkeypatch):
    from engine import history
    assert os.environ["SIDEBYSIDE_HISTORY"] != str(Path.home() / ".cache" / "sidebyside" / "history.sqlite")
    monkeypatch.setenv("SIDEBYSIDE_HISTORY", str(tmp_path / "mine.sqlite"))
    monkeypatch.setenv("SIDEBYSIDE_CACHE", str(tmp_path / "cache"))
    assert history.default_path() == tmp_path / "mine.sqlite" and History().path == tmp_path / "mine.sqlite"
    monkeypatch.delenv("SIDEBYSIDE_HISTORY")
    assert history.default_path() == tmp_path / "cache" / "history.sqlite"


def test_a_failed_save_warns_and_leaves_the_run_alone(tmp_path, capsys):
    import argparse
    folder = tmp_path / "a folder"
    folder.mkdir()
    good = report(row("baseline", (1, 2, 3)))
    assert keep(argparse.Namespace(history=str(folder), no_history=False), good, "run") is None
    assert capsys.readouterr().err.startswith(f"warning: the report was not saved to the history {folder}: ")
    assert keep(argparse.Namespace(history=str(tmp_path / "h.sqlite"), no_history=True), good, "run") is None
    assert not (tmp_path / "h.sqlite").exists()
    assert keep(argparse.Namespace(history=str(tmp_path / "h.sqlite"), no_history=False), good, "run") == 1


def test_an_h200_report_imports_with_its_provenance_and_compares_with_a_cpu_bench(saved, tmp_path):
    """The committed GPU check file holds two bench reports under "runs": each is imported as a run of its
    own; the first (llama-3.1-8b-random, prompts 128 and 2048) compares with a CPU bench. A single
    report imports as one."""
    h200 = json.loads(H200.read_text())["runs"][0]
    history = History(tmp_path / "h.sqlite")
    h200_id, second = history.import_file(H200)
    assert history.get(second).preset == json.loads(H200.read_text())["runs"][1]["preset"]["name"]
    single = tmp_path / "h200-bench.json"
    single.write_text(json.dumps(h200))
    assert history.import_file(single) == [second + 1]
    history.delete(second + 1)
    cpu_id = history.save(saved["bench"], "bench")
    entry = history.get(h200_id)
    assert entry.kind == "imported" and entry.settings["report_kind"] == "bench" and entry.report == h200
    assert (entry.device, entry.driver, entry.preset) == ("NVIDIA H200", "580.159.04", "llama-3.1-8b-random")
    assert entry.versions["torch"] == "2.11.0" and entry.git_commit is None and entry.host is None
    assert entry.source.startswith(f"imported from {H200.resolve()} (report 1 of 2 under 'runs') on 20")
    assert entry.settings["prompt_lengths"] == [128, 2048] and entry.settings["repeats"] == 3
    assert [e.id for e in history.list(device="H200")] == [second, h200_id]      # newest first

    found = compare([entry.report, history.get(cpu_id).report])
    gpu_rows = {(r["variant"], r["prompt_length"]): r for r in h200["results"]}
    cpu_rows = {(r["variant"], r["prompt_length"]): r for r in saved["bench"]["results"]}
    assert {(c.variant, c.cell) for c in found.changes} == {("baseline", "prompt 128"), ("sdpa", "prompt 128")}
    for change in found.changes:
        key = (change.variant, 128)
        field = verdict.BY_NAME[change.metric].field
        assert change.values == (gpu_rows[key][field], cpu_rows[key][field])
        assert change.percent[1] == pytest.approx((cpu_rows[key][field] / gpu_rows[key][field] - 1) * 100)
        expected = verdict.compare(cpu_rows[key], gpu_rows[key], verdict.BY_NAME[change.metric])
        assert change.verdicts[1] == expected.verdict
        if change.metric != "tpot":                  # that H200 file kept per-repeat lists of TPOT only
            assert change.verdicts[1] == verdict.NO_RANGE
    assert set(found.differs) >= {"preset", "device"}
    assert found.left_out[0] and all(cell in ("prompt 128", "prompt 2048") for _, cell in found.left_out[0])


def test_history_commands_on_a_fresh_database(saved, tmp_path):
    path = tmp_path / "fresh.sqlite"
    listed = cli("history", "list", "--history", path)
    assert listed.returncode == 0 and listed.stdout.strip() == f"no runs saved in {path}" and not path.exists()

    run_file = saved["folder"] / "run.json"
    imported = cli("history", "import", run_file, "--history", path)
    assert imported.returncode == 0 and imported.stdout.strip() == f"imported {run_file} as #1 ({path})"
    bench_file = saved["folder"] / "bench.json"
    assert cli("history", "import", bench_file, "--history", path).stdout.startswith(f"imported {bench_file} as #2")

    lines = cli("history", "list", "--history", path).stdout.splitlines()
    assert lines[0].split() == ["id", "created", "kind", "preset", "device", "variants", "mode", "repeats", "prompt",
                                "commit", "quality", "(same", "top/mean", "KLD)"]
    # newest report first (the two were made at once, so the run may be the newer); a tie goes to the higher id
    rows = sorted([(made(saved["run"]), "1"), (made(saved["bench"]), "2")], reverse=True)
    assert [line.split()[:4] for line in lines[1:]] == [[i, created, "imported", "tiny"] for created, i in rows]
    newest = [i for _, i in rows]
    run_line = lines[1 + newest.index("1")]
    assert all("baseline,sdpa" in line for line in lines[1:])
    # its prompt tokens, no commit (imported), and its quality: none on random weights (or from before quality)
    scored = any(isinstance(r.get("quality"), dict) for r in saved["run"]["results"])
    assert re.search(rf"  {saved['run']['prompt_tokens']} +- +(.+)$", run_line)[1] == (
        "not meaningful" if scored else "-")
    assert cli("history", "list", "--variant", "compiled", "--history", path).stdout.startswith("no runs saved")
    both = cli("history", "list", "--preset", "tiny", "--device", "cpu", "--history", path)
    assert [line.split()[0] for line in both.stdout.splitlines()[1:]] == newest

    shown = cli("history", "show", "1", "--history", path)
    assert shown.returncode == 0
    out = shown.stdout.splitlines()
    assert out[0].startswith("#1 imported (run report), created ")
    assert out[1] == f"preset tiny; device {saved['run']['device']['name']}; driver -"
    assert f"torch {saved['run']['versions']['torch']}" in out[2]
    assert out[5] == f"source: imported from {run_file} on " + out[5].split(" on ")[-1]
    table = {line.split()[0]: line.split() for line in out[7:9]}
    for r in saved["run"]["results"]:
        assert table[r["variant"]][1:4] == ["ok", f"{r['ttft_s'] * 1000:.2f}", f"{r['tpot_s'] * 1000:.2f}"]
    assert out[-1] == f"verdict: {saved['run']['comparison']['text']}"

    exported = tmp_path / "out" / "run-1.json"
    exported.parent.mkdir()
    done = cli("history", "export", "1", "--json", exported, "--history", path)
    assert done.returncode == 0 and done.stderr.strip() == f"wrote {exported}"
    written = json.loads(exported.read_text())
    assert written.pop("history")["id"] == 1 and written == saved["run"]
    assert not list(exported.parent.glob(".*partial"))
    again = cli("history", "import", exported, "--history", path)
    assert again.returncode == 0 and History(path).get(3).report == saved["run"]
    assert "; exported from history #1 (imported, saved " in History(path).get(3).source

    side = cli("history", "compare", "1", "3", "--history", path)
    assert side.returncode == 0
    rows = side.stdout.splitlines()
    assert rows[0].split() == ["variant", "figure", "#1", "(ref)", "#3", "#3", "vs", "#1"]
    tpot = next(line.split() for line in rows if line.split()[:3] == ["baseline", "TPOT", "ms"])
    assert tpot[5:] == ["+0.0%", "within", "noise"]           # the same report twice: no difference
    assert len([line for line in rows if line.startswith(("baseline", "sdpa"))]) == 8
    flipped = cli("history", "compare", "1", "2", "--reference", "2", "--history", path).stdout.splitlines()
    assert flipped[0].split()[2:5] == ["#1", "#2", "(ref)"]    # a run and a bench have no cell in common
    assert flipped[1] == "nothing to compare: no variant (and cell) of #2 is in another run"
    assert "note: left out, as only #2 has them: baseline at prompt 128, sdpa at prompt 128" in flipped

    deleted = cli("history", "delete", "3", "--history", path)
    assert deleted.returncode == 0 and deleted.stdout.strip() == f"deleted #3 from {path}"
    assert [e.id for e in History(path).list()] == [int(i) for i in newest]
    assert integrity(path) == "ok"


@pytest.mark.parametrize("args, message", [
    (["show", "9"], "no run #9 in the history"),
    (["delete", "9"], "no run #9 in the history"),
    (["compare", "1", "9"], "no run #9 in the history"),
    (["show", "abc"], "'abc' is not a run id"),
    (["compare", "1"], "compare needs two runs or more"),
    (["import", "missing.json"], "missing.json does not exist: give the JSON that `python -m engine run`"),
    (["import", "{folder}/list.json"], "list.json is not a run, bench or sweep report: expected the JSON"),
    (["import", "{folder}/broken.json"], "broken.json is not JSON (Expecting value"),
    (["export", "9", "--json", "{folder}/x.json"], "no run #9 in the history"),
    (["export", "1", "--json", "/no/such/folder/x.json"], "the folder /no/such/folder does not exist"),
    (["list", "--since", "soon"], "since: expected a date"),
])
def test_history_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    path = tmp_path / "h.sqlite"
    History(path).save(report(row("baseline", (1, 2, 3))), "run")
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "broken.json").write_text("")
    one_error_line(cli("history", *(a.format(folder=tmp_path) for a in args), "--history", path), message)


def test_a_history_path_that_is_not_a_history_is_one_line_and_exit_2(tmp_path):
    notes = tmp_path / "notes.json"
    notes.write_text(json.dumps({"not": "a database"}) * 100)
    one_error_line(cli("history", "list", "--history", notes), f"{notes} is not a run history")


def test_the_settings_read_max_new_tokens_from_the_runs_spec_not_from_the_tokens_made():
    """A run stopped at its end-of-sequence token made fewer tokens than it asked for: the report's
    RunSpec says what was asked; only a report without it falls back on the tokens made."""
    from engine.history import settings
    row = {"variant": "baseline", "status": "ok", "output_tokens": 10}
    report = {"device": {}, "preset": {}, "mode": "fair", "repeats": 1, "max_new_tokens": 64, "ignore_eos": False,
              "results": [row]}
    assert settings(report)["new_tokens"] == 64
    older = {key: value for key, value in report.items() if key != "max_new_tokens"}
    assert settings(older)["new_tokens"] == 10
