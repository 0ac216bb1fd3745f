"""How a client of gateway-web gets a call token before it opens ``/ws``.

With an API key (argument, ``VP_WEB_API_KEY``, or the key `vp up` keeps in ``.vp/web_api_key``) it
asks ``POST /tokens`` as an embedding site's server would; without one it asks ``POST /page-token``
as the bundled page does (from the gateway's own origin; works while page tokens are on).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from voiceplatform import web_protocol
from voiceplatform.cli.up import WEB_API_KEY_FILE

API_KEY_FILE = Path(".vp") / WEB_API_KEY_FILE  # written by `vp up` in its default work dir (mode 0600)


class CallTokenError(RuntimeError):
    pass


def http_base(ws_url: str) -> str:
    """``ws://host:port/ws`` → ``http://host:port`` (wss → https)."""
    parts = urlsplit(ws_url)
    scheme = "https" if parts.scheme in ("wss", "https") else "http"
    return f"{scheme}://{parts.netloc}"


def local_api_key() -> str | None:
    """The key from ``VP_WEB_API_KEY``, else the one `vp up` wrote in this folder's ``.vp``."""
    key = os.environ.get("VP_WEB_API_KEY", "").strip()
    if not key and API_KEY_FILE.is_file():
        key = API_KEY_FILE.read_text().strip()
    return key or None


async def fetch_call_token(ws_url: str, robot: str, api_key: str | None = None, caller: str = "") -> str:
    """A fresh single-use token for one call to ``robot`` on the gateway at ``ws_url`` (no key: a page
    token)."""
    base = http_base(ws_url)
    key = api_key
    body = {"robot": robot, "caller": caller}
    if key:
        path, headers = web_protocol.TOKEN_PATH, {"Authorization": f"Bearer {key}"}
    else:
        path, headers = web_protocol.PAGE_TOKEN_PATH, {"Origin": base}
    async with httpx.AsyncClient(timeout=10.0) as client:
        response = await client.post(base + path, json=body, headers=headers)
    if response.status_code != 200:
        try:
            detail = str(response.json().get("error", ""))
        except ValueError:
            detail = response.text[:200]
        raise CallTokenError(f"{path} answered {response.status_code}: {detail}")
    return str(response.json()["token"])
