"""The dashboard's tools for agents: the real app with `--mcp` (tests/app_server.py) on a free local port,
reached with the `mcp` client library over Gradio's streamable HTTP transport (/gradio_api/mcp/).

A tool's result is what Gradio makes of the endpoint's last update: the outputs as text, each dict and
list written as Python writes it (one text of the whole list, or one text per output when the call asks
for progress), read back here with ast.literal_eval. It holds every output of the event, buttons too
(`Outputs.names`, where a gradio_client result leaves the buttons out: `Outputs.api`).
"""
from __future__ import annotations

import ast
import asyncio
import urllib.error
import urllib.request

import pytest
from app_server import serve
from gradio_client import Client

from engine import quality
from engine.history import History
from ui.compare import RUN
from ui.history import COMPARE, LIST

mcp = pytest.importorskip("mcp", reason='the MCP client library comes with gradio[mcp] (requirements.txt)')
from mcp.client.streamable_http import streamable_http_client  # noqa: E402

PROMPT = "Explain the KV cache."
AT = RUN.names.index                  # where an output is in a tool's result
API = RUN.index                       # and in a gradio_client result
HIDDEN = ("stop", "stop_1", "experiment_stop", "replay", "prepare", "on_preset", "on_experiment", "on_quick",
          "history_delete", "delete", "history_import", "import_report", "forget")


async def _session(url: str, work):
    async with streamable_http_client(url + "/gradio_api/mcp/") as (read, write, _):
        async with mcp.ClientSession(read, write) as session:
            await session.initialize()
            return await work(session)


def over_mcp(url: str, work):
    """`await work(session)` in an initialized MCP session of the app at `url`."""
    return asyncio.run(asyncio.wait_for(_session(url, work), timeout=240))


def tools(url: str) -> dict:
    async def listed(session):
        return {tool.name: tool for tool in (await session.list_tools()).tools}
    return over_mcp(url, listed)


def call(url: str, name: str, arguments: dict, progress: bool = False) -> list:
    """A tool's outputs, in the endpoint's API order."""
    async def called(session):
        async def ignore(*_):
            pass
        return await session.call_tool(name, arguments, progress_callback=ignore if progress else None)
    result = over_mcp(url, called)
    assert not result.isError, result.content
    texts = [item.text for item in result.content]
    if len(texts) == 1:
        return ast.literal_eval(texts[0])
    return [_value(text) for text in texts]


def _value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text                                       # an HTML status line, an answer


def compare_args(tokens: int = 4, variants=("baseline", "sdpa"), repeats: int = 1) -> dict:
    return {"prompt_text": PROMPT, "preset_name": "tiny", "selected": list(variants), "max_new_tokens": tokens,
            "run_mode": "fair", "repeats": repeats}


@pytest.fixture(scope="module")
def mcp_history(tmp_path_factory):
    """The history file of the app that `mcp_url` serves."""
    return tmp_path_factory.mktemp("mcp-history") / "history.sqlite"


@pytest.fixture(scope="module")
def mcp_url(mcp_history):
    with serve("--mcp", "--history", str(mcp_history), name="test_mcp") as address:
        yield address


def test_the_page_offers_its_queries_as_tools_described_by_their_docstrings(mcp_url):
    found = tools(mcp_url)
    assert {"compare", "experiment", "history_list", "history_compare"} <= set(found), sorted(found)
    assert not set(HIDDEN) & set(found), sorted(found)
    expected = {"compare": {"prompt_text", "preset_name", "selected", "max_new_tokens", "run_mode", "repeats"},
                "experiment": {"name", "preset_name", "selected", "quick"},
                "history_list": {"preset", "device", "variant", "since", "picked"},
                "history_compare": {"picked", "reference", "ttft_ms", "tpot_ms"}}
    for name, arguments in expected.items():
        schema = found[name].inputSchema["properties"]
        assert set(schema) == arguments, (name, sorted(schema))
        for argument in arguments:                        # each argument said in words, from its Args: line
            assert len(schema[argument].get("description", "")) > 20, (name, argument, schema[argument])
        assert "Returns:" in found[name].description, found[name].description
    assert "greedy" in found["compare"].description and "ttft_s" in found["compare"].description
    assert "goodput" in found["history_compare"].description
    assert '"fair"' in found["compare"].inputSchema["properties"]["run_mode"]["description"]
    # the quality figures, said where an agent reads what a tool gives
    for words in ("quality", "top_token_agreement", "kld_mean", "kld_p99", "kld_max", "perplexity",
                  "reference_perplexity", '"not meaningful" (random weights)'):
        assert words in found["compare"].description, words
    for words in ("quality_top_agreement", "quality_kld_mean", "quality_kld_p99", "quality_kld_max",
                  "quality_perplexity", "quality_note", '"not meaningful: random weights"'):
        assert words in found["experiment"].description, words
    assert "smollm2-135m" in found["experiment"].inputSchema["properties"]["preset_name"]["description"]
    for words in ("quality rows: same top token", "mean KLD", "KLD p99 (or KLD max", "perplexity", '"no range"'):
        assert words in found["history_compare"].description, words
    assert "same-top-token share and mean KLD" in found["history_list"].description


def test_compare_over_mcp_gives_each_variants_figures_and_keeps_the_run(mcp_url):
    outputs = call(mcp_url, "compare", compare_args())
    assert len(outputs) == len(RUN.names), len(outputs)
    message, report = outputs[AT("message")], outputs[AT("report")]
    assert 'data-kind="ok"' in message and "2 of 2 variants answered" in message, message
    rows = {row["variant"]: row for row in report["results"]}
    assert set(rows) == {"baseline", "sdpa"}
    for row in rows.values():
        assert row["status"] == "ok" and row["output_tokens"] == 4, row
        assert 0 < row["ttft_s"] < 30 and 0 < row["tpot_s"] < 5 and row["tokens_per_s"] > 0, row
        assert row["peak_memory_bytes"] > 1 << 20 and row["text"], row
        # each variant's quality entry comes with its figures: on random weights, why there are none
        assert row["quality"] == quality.unmeasured("not meaningful", quality.RANDOM_WEIGHTS), row["quality"]
    assert report["preset"]["name"] == "tiny" and report["repeats"] == 1

    # the same run again, asking for progress this time (Gradio then answers one text per output)
    again = call(mcp_url, "compare", compare_args(), progress=True)
    assert again[AT("report")]["results"][0]["status"] == "ok"

    listed = call(mcp_url, "history_list", {"preset": "tiny", "device": "", "variant": "sdpa", "since": "",
                                            "picked": []})
    assert "2 runs listed" in listed[LIST.index("message")], listed[LIST.index("message")]
    ids = [int(row[0].lstrip("#")) for row in listed[LIST.index("runs")]["data"]]
    # the targets are the History tab's text boxes (empty: none), so their schema type is string
    compared = call(mcp_url, "history_compare", {"picked": ids, "reference": min(ids), "ttft_ms": "1000",
                                                 "tpot_ms": "1000"})
    table = compared[COMPARE.index("comparison")]
    assert any(row[0] == "sdpa" and "TPOT" in row[1] for row in table["data"]), table
    assert any("goodput" in str(row) for row in table["data"]), table


def quantized_run(kld, top_ids, created):
    """A saved run's report with a baseline and a bnb-4bit row, the latter's quality entry made by
    engine/quality.py from per-position values (mean KLD: the mean of `kld`)."""
    base = {"top_ids": [1, 2, 3, 4], "token_logprobs": [-0.1, -0.2, -0.3, -0.4]}
    own = dict(quality.summarize(dict(base, kld=[0.0] * 4), base, "baseline"), status="reference")
    scored = quality.summarize({"top_ids": top_ids, "token_logprobs": [-0.2, -0.2, -0.3, -0.9], "kld": kld}, base,
                               "baseline")

    def row(variant, tpot_s, entry):
        return {"variant": variant, "status": "ok", "reason": None, "output_tokens": 4, "tpot_s": tpot_s,
                "tpot_repeats_s": [tpot_s] * 3, "ttft_s": 0.005, "tokens_per_s": 4 / (0.005 + 3 * tpot_s),
                "peak_memory_bytes": 2**28, "quality": entry}
    return {"created": created, "device": {"name": "CPU: test"}, "versions": {}, "mode": "fair", "repeats": 3,
            "preset": {"name": "smollm2-135m"}, "prompt_tokens": 9,
            "results": [row("baseline", 0.06, own), row("bnb-4bit", 0.09, scored)]}


def test_history_compare_over_mcp_sets_the_quality_figures_side_by_side(mcp_url, mcp_history):
    history = History(mcp_history)                      # the app's own history file, written from here
    ids = [history.save(quantized_run([0.01, 0.02, 0.03, 0.1], [1, 2, 3, 9], "2026-12-01T10:00:00+0000"), "run"),
           history.save(quantized_run([0.02, 0.04, 0.06, 0.08], [1, 2, 9, 9], "2026-12-02T10:00:00+0000"), "run")]
    compared = call(mcp_url, "history_compare", {"picked": ids, "reference": ids[0], "ttft_ms": "", "tpot_ms": ""})
    table = compared[COMPARE.index("comparison")]
    assert table["headers"] == ["variant", "figure", f"#{ids[1]} vs #{ids[0]}", f"#{ids[0]} (ref)", f"#{ids[1]}"]
    rows = {(row[0], row[1]): row[2:] for row in table["data"]}
    assert rows["bnb-4bit", "mean KLD"] == ["+25.0% no range", "0.04", "0.05"]
    assert rows["bnb-4bit", "same top token"] == ["-33.3% no range", "75%", "50%"]
    assert rows["bnb-4bit", "KLD max"] == ["-20.0% no range", "0.1", "0.08"]
    assert rows["baseline", "perplexity"] == ["+0.0% no range", "1.28", "1.28"]
    assert ("baseline", "mean KLD") not in rows                 # the reference's answer scored by itself
    listed = call(mcp_url, "history_list", {"preset": "smollm2-135m", "device": "", "variant": "", "since": "",
                                            "picked": []})
    assert [row[0] for row in listed[LIST.index("runs")]["data"]] == [f"#{ids[1]}", f"#{ids[0]}"]


def test_a_refused_input_gets_the_same_line_over_mcp_as_over_the_api_and_the_queue_is_the_pages(mcp_url):
    refused = call(mcp_url, "compare", compare_args(tokens=0))[AT("message")]
    assert "max new tokens must be a whole number of at least 1, got 0" in refused, refused
    direct = Client(mcp_url, verbose=False).predict(PROMPT, "tiny", ["baseline"], 0, "fair", 1, api_name="/compare")
    assert direct[API("message")] == refused


def test_a_public_page_applies_its_limits_to_mcp_calls_and_keeps_the_history_out(public_app):
    """The shared public app (conftest.py, with --mcp and --history): no history tool, though it has a history."""
    url = public_app.url
    found = tools(url)
    assert {"compare", "experiment"} <= set(found) and not {"history_list", "history_compare"} & set(found)
    for args, expected in ((compare_args(tokens=300), "max new tokens is 300; this page allows 1 to 256"),
                           (compare_args(repeats=5), "repeats must be a whole number from 1 to 3, got 5")):
        over = call(url, "compare", args)[AT("message")]
        assert expected in over and 'data-kind="error"' in over, over
        direct = Client(url, verbose=False).predict(*args.values(), api_name="/compare")
        assert direct[API("message")] == over
    done = call(url, "compare", compare_args(tokens=3, variants=("baseline",)))
    assert done[AT("report")]["results"][0]["status"] == "ok"


def test_without_the_flag_no_mcp_endpoint_is_served(url):
    for path in ("/gradio_api/mcp/", "/gradio_api/mcp/sse", "/gradio_api/mcp/schema"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url + path, timeout=10).read()
        assert refused.value.code == 404, (path, refused.value.code)
    with pytest.raises(Exception):
        tools(url)
