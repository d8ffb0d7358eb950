"""Served engines as variants, the orchestrator's side: where each is served (`Endpoint`), read from a
preset's `remote:` entries or the `--remote` flag, and checked.

A served variant is a worker process like the others (engine/process.py); its worker side, which
streams and times the server's answers, is worker/served.py. Endpoints come only from preset
files and the command line, never from a page's visitor.
"""
from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from engine.launch import KINDS, Launch
from engine.variants import CATALOG

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,39}")


@dataclass(frozen=True)
class Endpoint:
    """One served model: `name` is its variant name, `base_url` the OpenAI-compatible root (…/v1),
    `model` the served model (None: the server's first), `api_key_env` the environment variable
    holding its key (the key itself is never written in a preset)."""
    name: str
    base_url: str
    model: str | None = None
    api_key_env: str | None = None
    launch: Launch | None = None      # an engine the dashboard starts itself (on a free loopback port)

    @property
    def host(self) -> str:
        return urlsplit(self.base_url).netloc

    @property
    def server_root(self) -> str:
        """The server's own root, where /version, /metrics and /health live (the URL less its /v1)."""
        return re.sub(r"/v1/?$", "", self.base_url.rstrip("/"))

    def headers(self) -> dict:
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        return {"Authorization": f"Bearer {key}"} if key else {}


def endpoint(data: object, origin: str) -> Endpoint:
    """An Endpoint from a preset's `remote:` entry (a mapping); ValueError naming `origin` otherwise."""
    if not isinstance(data, dict):
        raise ValueError(f"{origin}: each entry of 'remote' must be a mapping with name and base_url, "
                         f"got {type(data).__name__}")
    allowed = {"name", "base_url", "model", "api_key_env"}
    unknown = sorted(str(k) for k in data if k not in allowed)
    if unknown:
        raise ValueError(f"{origin}: 'remote' entry has unknown field {unknown[0]!r}; allowed: "
                         f"{', '.join(sorted(allowed))}")
    for key in ("name", "base_url"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise ValueError(f"{origin}: each entry of 'remote' needs {key!r} (a string)")
    for key in ("model", "api_key_env"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise ValueError(f"{origin}: 'remote' field {key!r} must be a string")
    return _checked(Endpoint(data["name"], data["base_url"].rstrip("/"), data.get("model"), data.get("api_key_env")),
                    origin)


def engine_entry(data: object, origin: str) -> Endpoint:
    """An engine to start, from a preset's `engines:` entry ({name, kind, args}): an endpoint on this
    machine's loopback whose port is chosen when its worker starts (engine/launch.py)."""
    if not isinstance(data, dict):
        raise ValueError(f"{origin}: each entry of 'engines' must be a mapping with name and kind, "
                         f"got {type(data).__name__}")
    unknown = sorted(str(k) for k in data if k not in ("name", "kind", "args"))
    if unknown:
        raise ValueError(f"{origin}: 'engines' entry has unknown field {unknown[0]!r}; allowed: args, kind, name")
    if data.get("kind") not in KINDS:
        raise ValueError(f"{origin}: 'engines' entry {data.get('name')!r} has kind {data.get('kind')!r}; "
                         f"known: {', '.join(KINDS)}")
    args = data.get("args", [])
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise ValueError(f"{origin}: 'engines' field 'args' must be a list of strings")
    if not isinstance(data.get("name"), str):
        raise ValueError(f"{origin}: each entry of 'engines' needs 'name' (a string)")
    return _checked(Endpoint(data["name"], "http://127.0.0.1:0/v1", data["name"],
                             launch=Launch(data["kind"], tuple(args))), origin)


def engine_from_flag(text: str) -> Endpoint:
    """An engine to start, from `--engine KIND[,name=N][,args=ARGS]` (engine/launch.py from_flag)."""
    from engine.launch import from_flag as entry
    return engine_entry(entry(text), "--engine")


def at_port(found: Endpoint, port: int) -> Endpoint:
    """A started engine's endpoint, on the port its server listens on."""
    return Endpoint(found.name, f"http://127.0.0.1:{port}/v1", found.model, found.api_key_env, found.launch)


def from_flag(text: str) -> Endpoint:
    """An Endpoint from `--remote URL[,model=M][,name=N][,api_key_env=E]`; the name defaults to
    "remote-" and the URL's host and port."""
    url, *options = [part.strip() for part in text.split(",")]
    values = {"base_url": url}
    for option in options:
        key, equals, value = option.partition("=")
        if not equals or key not in ("model", "name", "api_key_env"):
            raise ValueError(f"--remote {text}: {option!r} is not model=..., name=... or api_key_env=...")
        values[key] = value
    host = urlsplit(url).netloc
    values.setdefault("name", "remote-" + re.sub(r"[^a-z0-9]+", "-", host.lower()).strip("-"))
    return endpoint(values, "--remote")


def _checked(found: Endpoint, origin: str) -> Endpoint:
    parts = urlsplit(found.base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{origin}: base_url {found.base_url!r} must be an http:// or https:// URL, "
                         "e.g. http://host:8000/v1")
    if not NAME_PATTERN.fullmatch(found.name) or found.name in CATALOG:
        raise ValueError(f"{origin}: remote name {found.name!r} must be lower-case letters, digits, '.', '_' "
                         f"or '-' and not a local variant's name ({', '.join(CATALOG)})")
    return found


def on_this_machine(target: Endpoint) -> bool:
    """Whether the endpoint's host is this machine's loopback address: its server shares this machine's
    cores with the local workers."""
    host = urlsplit(target.base_url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
