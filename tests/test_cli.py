"""The command line, `python -m engine run`, as a person runs it: a subprocess, its exit code and its output."""
import csv
import io
import json
import os
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest


def rows(report):
    return {row["variant"]: row for row in report["results"]}


def _cli(*args, env_mark):
    env = dict(os.environ, SIDEBYSIDE_TEST_MARK=env_mark, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "engine", "run", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def _processes_marked(mark):
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("SIDEBYSIDE_TEST_MARK") == mark:
                found.append(proc.pid)
        except (psutil.Error, OSError):
            pass
    return found


@pytest.mark.parametrize("args, message", [
    (["--prompt", ""], "the prompt is empty"),
    (["--prompt", "x" * 5000], "more than the context"),
    (["--max-new-tokens", "0"], "max new tokens must be between 1 and 256"),
    (["--max-new-tokens", "9999"], "max new tokens must be between 1 and 256"),
    (["--preset", "nope"], "unknown preset 'nope'"),
    (["--variants", "baseline,warp"], "unknown variant 'warp'"),
    (["--preset", "opt-350m"], "is not in the local Hugging Face cache"),
    (["--threads", "0"], "threads must be at least 1, got 0"),
    (["--timeout", "0"], "--timeout must be a positive number of seconds, got 0.0"),
    (["--timeout", "-5"], "--timeout must be a positive number of seconds, got -5.0"),
    (["--json", "/no/such/folder/run.json"], "the folder /no/such/folder does not exist"),
    (["--json", "/tmp"], "/tmp is a folder: give a file name"),
    (["--preset", "presets"], "presets: is a folder, not a preset file (give a .yaml file, or one of: "),
])
def test_cli_bad_input_exits_2_with_one_line_and_no_worker(args, message):
    mark = uuid.uuid4().hex
    done = _cli(*args, env_mark=mark)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert _processes_marked(mark) == []


@pytest.mark.parametrize("inside", [False, True])
def test_cli_a_model_cache_that_is_a_file_exits_2_with_what_to_do(tmp_path, inside):
    """Issue 30: each variant failed with a raw FileExistsError. Now one line before any worker starts."""
    afile = tmp_path / "cache"
    afile.write_text("not a folder")
    cache = afile / "sub" if inside else afile            # the folder itself, or a parent, is a file
    mark = uuid.uuid4().hex
    done = subprocess.run([sys.executable, "-m", "engine", "run", "--preset", "tiny", "--variants", "baseline,sdpa",
                           "--max-new-tokens", "4", "--threads", "1"], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, SIDEBYSIDE_CACHE=str(cache), SIDEBYSIDE_TEST_MARK=mark))
    assert done.returncode == 2, done.stderr
    said = ("cannot be made (Not a directory)" if inside else "is a file, not a folder")
    assert done.stderr.strip() == (f"error: the model cache {cache} {said}: set $SIDEBYSIDE_CACHE to a folder you "
                                   "can write to"), done.stderr
    assert _processes_marked(mark) == []


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """A `run` and a quick `sweep batch`, run at the same time (each test below reads its own):
    (the finished process, its JSON file) by command."""
    folder = tmp_path_factory.mktemp("cli")
    mark = uuid.uuid4().hex
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    with ThreadPoolExecutor(2) as both:
        run = both.submit(_cli, "--variants", "baseline,sdpa,fa2", "--max-new-tokens", "6", "--threads", "1",
                          "--json", str(folder / "run.json"), "--csv", str(folder / "run.csv"), env_mark=mark)
        sweep = both.submit(subprocess.run, [sys.executable, "-m", "engine", "sweep", "batch", "--preset", "tiny",
                                             "--quick", "--threads", "1", "--json", str(folder / "sweep.json")],
                            capture_output=True, text=True, env=env, timeout=300)
        return {"run": (run.result(), folder / "run.json", mark), "sweep": (sweep.result(), folder / "sweep.json")}


def test_cli_run_prints_a_table_and_writes_the_json(measured):
    done, out, mark = measured["run"]
    assert done.returncode == 0, done.stderr
    assert "random weights: the text is noise, the timings are real" in done.stderr
    header = done.stdout.splitlines()[0].split()
    assert header[:5] == ["variant", "status", "tokens", "TTFT", "ms"]
    report = json.loads(out.read_text())
    assert {"device", "versions", "preset", "prompt_tokens", "results"} <= set(report)
    assert report["versions"]["torch"] and report["versions"]["transformers"]
    by = rows(report)
    assert by["fa2"]["status"] == "unavailable" and "NVIDIA GPU" in by["fa2"]["reason"]
    required = {"variant", "status", "reason", "text", "output_tokens", "load_s", "ttft_s", "tpot_s", "e2e_s",
                "tokens_per_s", "itl_p50_s", "itl_p90_s", "itl_p99_s", "peak_memory_bytes", "weights_bytes",
                "kv_cache_bytes", "mbu", "first_diff_token", "contended", "placement", "queue_s"}
    for row in report["results"]:
        assert required <= set(row)
    assert by["baseline"]["output_tokens"] == 6
    assert by["baseline"]["cpu_threads"] == 1 == by["sdpa"]["cpu_threads"]      # --threads reached the workers
    assert _processes_marked(mark) == []
    # random weights: every variant's quality entry says why it has no figures, once under the table
    assert all(row["quality"]["status"] == "not meaningful" for row in report["results"])
    assert "  quality of every variant: not meaningful: random weights" in done.stdout.splitlines()
    assert done.stdout.splitlines()[0].split()[-6:] == ["same", "top", "mean", "KLD", "KLD", "p99/max"]
    written = list(csv.DictReader(io.StringIO((out.parent / "run.csv").read_text())))
    assert [line["variant"] for line in written] == ["baseline", "sdpa", "fa2"]
    for line, row in zip(written, report["results"]):
        assert line["tpot_s"] == ("" if row["tpot_s"] is None else str(row["tpot_s"]))
        assert line["quality_note"] == "not meaningful: random weights" and line["quality_kld_mean"] == ""


def test_cli_table_gives_each_variants_quality_figures_and_why_others_have_none():
    from engine import quality
    from engine.__main__ import table
    base = {"top_ids": [1, 2, 3, 4], "token_logprobs": [-0.1, -0.2, -0.3, -0.4]}
    entry = quality.summarize({"top_ids": [1, 2, 3, 9], "token_logprobs": [-0.2, -0.2, -0.3, -0.9],
                               "kld": [0.01, 0.02, 0.03, 0.1]}, base, "baseline")
    own = dict(quality.summarize(dict(base, kld=[0.0] * 4), base, "baseline"), status="reference")
    row = {"variant": "bnb-4bit", "status": "ok", "reason": None, "output_tokens": 4, "ttft_s": 0.004,
           "tpot_s": 0.0012, "tokens_per_s": 800.0, "peak_memory_bytes": 2**30, "weights_bytes": 2**20, "mbu": None,
           "first_diff_token": 3, "placement": "resident", "quality": entry}
    served = quality.unmeasured("not reported", quality.NOT_REPORTED, "baseline")
    lines = table({"results": [dict(row, variant="baseline", quality=own), row,
                               dict(row, variant="served", quality=served)]}).splitlines()
    assert lines[0].split()[-6:] == ["same", "top", "mean", "KLD", "KLD", "p99/max"]
    assert lines[1].split()[-3:] == ["reference", "-", "-"]
    assert lines[2].split()[-4:] == ["75%", "0.04", "0.1", "(max)"] and lines[3].split()[-3:] == ["-", "-", "-"]
    assert lines[4] == "  quality of served: not reported by the server" and len(lines) == 5
    mixed = table({"results": [row, dict(row, variant="sdpa", quality=None)]}).splitlines()
    assert mixed[2].split()[-3:] == ["-", "-", "-"] and len(mixed) == 3       # a row with no entry: dashes
    before = {k: v for k, v in row.items() if k != "quality"}                 # a report made before quality
    assert "KLD" not in table({"results": [before]}).splitlines()[0]
    assert "KLD" not in table({"results": [dict(row, quality=None)]}).splitlines()[0]


def test_sweep_runs_each_experiment_on_its_own_preset_unless_told():
    from engine.__main__ import parser
    from engine.studies.sweeps import EXPERIMENTS
    assert EXPERIMENTS["quantization"].preset == "smollm2-135m" and EXPERIMENTS["batch"].preset == "tiny"
    assert parser().parse_args(["sweep", "quantization"]).preset is None         # cmd_sweep takes the experiment's
    assert parser().parse_args(["sweep", "quantization", "--preset", "tiny"]).preset == "tiny"
    assert "quantization smollm2-135m" in parser()._subparsers._group_actions[0].choices["sweep"].format_help()


def test_cli_table_shows_the_tpot_range_of_repeats_and_why_a_row_is_slow():
    from engine.__main__ import table
    row = {"variant": "sdpa", "status": "ok", "reason": None, "output_tokens": 8, "ttft_s": 0.004, "tpot_s": 0.0012,
           "tokens_per_s": 800.0, "peak_memory_bytes": 2**30, "weights_bytes": 2**20, "mbu": None,
           "first_diff_token": None, "placement": "resident", "repeats": 3, "tpot_min_s": 0.0011,
           "tpot_max_s": 0.0016, "host_busy": True, "host_others_cores": 1.3}
    lines = table({"results": [row, dict(row, variant="baseline", repeats=1, host_busy=False)]}).splitlines()
    assert "1.2 (1.1-1.6)" in lines[1] and " 1.2 " in lines[2] and "(" not in lines[2]
    assert lines[3].startswith("  sdpa: other processes kept 1.3 of its CPU cores busy") and len(lines) == 4


def test_cli_sweep_tells_each_cell_as_it_is_measured_then_the_table_and_the_claims(measured):
    done, out = measured["sweep"]
    assert done.returncode == 0, done.stderr
    sweep = json.loads(out.read_text())
    progress = [line for line in done.stderr.splitlines() if line.startswith("[")]
    assert done.stderr.startswith("batch on Tiny Llama") and "3 cells x 1 variants x 3 timed requests" in done.stderr
    assert [line.split("] ", 1)[1].split(":")[0] for line in progress] == [
        f"sdpa, batch {row['batch_size']}" for row in sweep["results"]]
    for line, row in zip(progress, sweep["results"]):          # each cell's TPOT median as measured
        assert f"TPOT {row['tpot_s'] * 1000:.2f} (" in line
    assert [float(line[1:].split(" s]")[0]) for line in progress] == sorted(
        float(line[1:].split(" s]")[0]) for line in progress)
    lines = done.stdout.splitlines()
    assert lines[0].split()[:2] == ["variant", "status"] and len([l for l in lines if l.startswith("sdpa ")]) == 3
    claims = [line for line in lines if line.startswith("claim: ")]
    assert claims == [f"claim: {found['claim']}" for found in sweep["trends"]] and len(claims) == 2
    for found in sweep["trends"]:
        assert f"  {found['note']}" in lines and f"  measured: {found['measured']}" in lines
    busy = [row for row in sweep["results"] if row["host_busy"]]
    said = [line for line in lines if "slowed by other processes on the CPU (up to" in line]
    assert len(said) == (1 if busy else 0)
    if busy:
        assert said[0].startswith(f"{len(busy)} of 3 timed rows")


def readme_commands(*sections):
    """The `python -m engine ...` commands in the bash blocks of the README's named sections."""
    import re
    from pathlib import Path
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    found = []
    for part in re.split(r"^## ", text, flags=re.M):
        title = part.split("\n", 1)[0].strip()
        if title not in sections:
            continue
        for block in re.findall(r"```bash\n(.*?)```", part, flags=re.S):
            found += [line for line in block.replace("\\\n", " ").splitlines() if line.startswith("python -m engine")]
    return found


def test_readme_commands_of_the_command_line_and_experiments_parse_as_pasted():
    import shlex
    from engine.__main__ import parser
    commands = readme_commands("Command line", "Experiments")
    assert {shlex.split(c)[3] for c in commands} == {"run", "bench", "sweep"}, commands
    for command in commands:
        words = shlex.split(command)             # as the shell splits it: no [--option] or a|b left over
        assert not any(w.startswith("[") or "|" in w for w in words), command
        parser().parse_args(words[3:])           # exits (SystemExit) if the command line is refused
        outputs = [words[i + 1] for i, word in enumerate(words) if word in ("--json", "--csv", "--html")]
        assert all(path.startswith("runs/") for path in outputs), command       # the ignored folder, not the repo


def test_outputs_go_into_a_folder_made_for_them_and_a_busy_machine_leaves_a_core_spare(tmp_path, capsys):
    """`--json runs/run.json` makes runs/ when only it is missing; with other processes keeping the cores busy and no
    --threads, a worker computes on all cores but one, as on the page, and the command line says so."""
    from argparse import Namespace
    from engine import __main__ as cli, topology
    from engine.errors import InputError
    cli.check_inputs(Namespace(json=str(tmp_path / "runs" / "run.json"), csv=None))
    assert (tmp_path / "runs").is_dir()
    with pytest.raises(InputError, match="does not exist"):             # two levels missing: a typo, refused
        cli.check_inputs(Namespace(json=str(tmp_path / "no" / "such" / "run.json"), csv=None))
    assert cli.spare_cores(Namespace(threads=2)) == 0                   # asked for: never second-guessed
    cores = topology.usable_cores()
    if len(cores) < 2:
        pytest.skip("one core: nothing to leave spare")
    spin = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in cores]     # our own children
    try:
        import time
        time.sleep(0.3)
        assert cli.spare_cores(Namespace(threads=None)) == 1
    finally:
        for child in spin:
            child.kill()
            child.wait(10)
    said = capsys.readouterr().err
    assert "the machine is busy: other processes kept" in said and f"computes on {len(cores) - 1}" in said


def test_cli_refuses_a_prompt_that_is_not_utf8_and_outputs_that_share_a_path(tmp_path):
    done = subprocess.run([sys.executable.encode(), b"-m", b"engine", b"run", b"--prompt", b"caf\xe9"],
                          capture_output=True, timeout=120)
    assert done.returncode == 2 and b"the prompt is not valid UTF-8 text" in done.stderr
    same = str(tmp_path / "out")
    done = subprocess.run([sys.executable, "-m", "engine", "sweep", "batch", "--quick", "--json", same, "--csv", same],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "two outputs share one path" in done.stderr and not os.path.exists(same)


def test_ctrl_c_during_a_sweep_writes_what_was_measured_and_says_so(tmp_path):
    import signal
    import time
    out = tmp_path / "sweep.json"
    process = subprocess.Popen([sys.executable, "-m", "engine", "sweep", "kv-cache", "--preset", "tiny", "--json",
                                str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, HF_HUB_OFFLINE="1"),
                               # as from a terminal: a shell's background job would hand it SIGINT ignored
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:                  # the first (variant, cell) measured: then Ctrl-C
        line = process.stderr.readline()
        lines.append(line)
        if " ms" in line and "TPOT" in line or not line:
            break
    process.send_signal(signal.SIGINT)                  # our own child, by its handle
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, "".join(lines) + stderr
    assert "interrupted: the results measured until then are shown and written" in stderr
    sweep = json.loads(out.read_text())
    assert sweep["cancelled"] is True and any(r["status"] == "ok" for r in sweep["results"])
    assert not list(tmp_path.glob(".*partial"))         # written whole
