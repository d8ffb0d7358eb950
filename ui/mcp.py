"""The dashboard's queries as MCP tools (`python app.py --mcp`), served by Gradio's own MCP server
(`launch(mcp_server=True)`, the `gradio[mcp]` extra) at /gradio_api/mcp/ (streamable HTTP) and
/gradio_api/mcp/sse (SSE).

Gradio makes a tool of every public API endpoint, named after its function and described by its
docstring (the description, then each `Args:` line, then `Returns:`). The page has endpoints an agent
must not see as tools: /stop, /experiment_stop and /replay act on a visitor's open page (an MCP call
has no page), /history_delete and /history_import change the history; and two of its handlers are
named `compare`. So once the server is up, `expose` sets its tools to `TOOLS` by name, which both
listing and calling a tool go by. A tool call goes through Gradio's queue to the same handler as the
page's and an API client's, so every check, the device's gate and a public page's limits apply to it.
"""
from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:                 # imported where it is used: the command line reads PATH before gradio loads
    import gradio as gr

PATH = "/gradio_api/mcp/"
TOOLS = {"compare": "/compare", "experiment": "/experiment",           # tool name -> the page's endpoint
         "history_list": "/history_list", "history_compare": "/history_compare"}
# Gradio's MCP server calls the page through one client of its own: every MCP caller has the same Gradio
# session, so a public page, which scopes the history by session, cannot tell one caller's runs from another's
BY_SESSION = ("history_list", "history_compare")
# The History tab's filters and selection start empty and fill from the saved runs, so the schema Gradio derives
# from their first choices (which an MCP server enforces) would take no preset, device, variant or run id:
# these arguments take plain values instead, as the handlers check them (ui/checks.py)
TEXT = {"type": "string"}
IDS = {"type": "array", "items": {"type": "integer", "minimum": 1}}
ARGUMENTS = {"/history_list": {"preset": TEXT, "device": TEXT, "variant": TEXT, "picked": IDS},
             "/history_compare": {"picked": IDS, "reference": {"type": "integer", "minimum": 0}}}
# Gradio warns that a tool's gr.State input starts from its default at each call: for these tools, a fresh
# Session (no run to stop or replay) is what a call from outside the page should have
warnings.filterwarnings("ignore", message="This MCP server includes a tool that has a gr.State input")


def missing() -> str | None:
    """Why this Python cannot serve MCP (None when it can)."""
    try:
        import mcp  # noqa: F401
    except ImportError:
        return 'the mcp package is not installed: pip install "gradio[mcp]"'
    return None


def tools(public: bool) -> dict[str, str]:
    """The tools an MCP client gets, by name: the endpoint each calls."""
    return {name: endpoint for name, endpoint in TOOLS.items() if not (public and name in BY_SESSION)}


def expose(demo: gr.Blocks, public: bool) -> dict[str, str]:
    """Limit the launched MCP server of `demo` to `tools(public)` (those the page has), their arguments as
    `ARGUMENTS` says; raises RuntimeError when Gradio could not start it."""
    server = demo.mcp_server_obj
    if server is None:
        raise RuntimeError(demo.mcp_error or "Gradio started no MCP server")
    if not isinstance(getattr(server, "tool_to_endpoint", None), dict):        # what Gradio 6.31 lists and calls by
        import gradio as gr
        raise RuntimeError(f"this Gradio ({gr.__version__}) names its MCP tools otherwise: the page cannot choose them")
    named = server.api_info["named_endpoints"]
    for endpoint, arguments in ARGUMENTS.items():
        for parameter in named.get(endpoint, {}).get("parameters", []):
            if parameter["parameter_name"] in arguments:
                parameter["type"] = dict(arguments[parameter["parameter_name"]])
    server.tool_to_endpoint = {name: endpoint for name, endpoint in tools(public).items() if endpoint in named}
    return dict(server.tool_to_endpoint)


def url(demo: gr.Blocks) -> str:
    """The streamable HTTP address of the page's MCP server."""
    return demo.local_url.rstrip("/") + PATH
