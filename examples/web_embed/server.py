"""A site's server for examples/web_embed/index.html: serves the page with the copied client files and
hands the page a call token from gateway-web's ``POST /tokens`` (the API key stays on the server).

    cd services/gateway-web/vp_gateway_web/static
    cp client.js capture-worklet.js playback-worklet.js ../../../../examples/web_embed/ && cd -
    VP_WEB_API_KEY=$(cat .vp/web_api_key) VP_GATEWAY=http://127.0.0.1:8000 \\
        .venv/bin/uvicorn --app-dir examples/web_embed server:app --port 8080
    # and on the gateway: VP_ALLOWED_ORIGINS=http://your-site (localhost origins are allowed already)
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

HERE = Path(__file__).parent


def make_app(gateway: str, api_key: str, robot: str = "pipeline_russian", files: Path = HERE) -> Starlette:
    async def page(request: Request) -> HTMLResponse:
        html = (HERE / "index.html").read_text(encoding="utf-8")
        meta = f'<meta name="vp-gateway" content="{gateway}">\n<meta name="vp-robot" content="{robot}">'
        return HTMLResponse(html.replace("<head>", f"<head>\n{meta}", 1))

    async def voice_token(request: Request) -> JSONResponse:
        # a real site checks its own session here: who may call, and as which caller
        async with httpx.AsyncClient() as client:
            r = await client.post(
                f"{gateway}/tokens", json={"robot": robot}, headers={"Authorization": f"Bearer {api_key}"}
            )
        return JSONResponse(r.json(), status_code=r.status_code)

    return Starlette(
        routes=[
            Route("/", page),
            Route("/voice-token", voice_token, methods=["POST"]),
            Mount("/", StaticFiles(directory=files)),
        ]
    )


app = make_app(os.environ.get("VP_GATEWAY", "http://127.0.0.1:8000"), os.environ.get("VP_WEB_API_KEY", ""))
