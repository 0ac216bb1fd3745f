"""HTTP endpoints that issue call tokens: POST /tokens (an embedding site, with its API key) and
POST /page-token (the bundled page, from an allowed Origin). Body: ``{"robot": "...", "caller": "..."}``
(both optional); answer: ``{"token", "robot", "expires_in"}``."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter
from starlette.requests import Request
from starlette.responses import JSONResponse

from voiceplatform import web_protocol
from voiceplatform.config import RobotConfigError
from vp_gateway_web.guard import BadMessage, parse_event

if TYPE_CHECKING:
    from vp_gateway_web.app import GatewayWeb

TOKENS = Counter("vp_gateway_web_tokens_total", "Call token requests by outcome", ["endpoint", "outcome"])
MAX_BODY_BYTES = 2048
Endpoint = Callable[[Request], Awaitable[JSONResponse]]


def token_routes(gateway: GatewayWeb) -> list[tuple[str, Endpoint]]:
    settings = gateway.settings

    async def issue(request: Request, endpoint: str) -> JSONResponse:
        body = await request.body()
        try:
            fields: dict[str, Any] = (
                parse_event(body.decode("utf-8", "replace"), MAX_BODY_BYTES, 2) if body.strip() else {}
            )
            robot = str(fields.get("robot") or settings.default_robot)
            gateway.robots.get(robot, new_call=True)
        except (BadMessage, RobotConfigError) as exc:
            TOKENS.labels(endpoint, "bad_request").inc()
            return JSONResponse({"error": str(exc)}, status_code=400)
        token = gateway.tokens.issue(robot, str(fields.get("caller", ""))[:64])
        TOKENS.labels(endpoint, "issued").inc()
        return JSONResponse({"token": token, "robot": robot, "expires_in": settings.call_token_ttl_s})

    async def site_token(request: Request) -> JSONResponse:
        key = settings.web_api_key
        if key is None or not key.get_secret_value():
            TOKENS.labels("api", "no_key").inc()
            return JSONResponse({"error": "no API key is configured here (VP_WEB_API_KEY)"}, status_code=503)
        auth = request.headers.get("authorization", "")
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if not hmac.compare_digest(given.encode(), key.get_secret_value().encode()):
            TOKENS.labels("api", "unauthorized").inc()
            return JSONResponse(
                {"error": "a valid API key is required (Authorization: Bearer …)"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return await issue(request, "api")

    async def page_token(request: Request) -> JSONResponse:
        origin = request.headers.get("origin")
        if (
            not settings.page_tokens
            or origin is None
            or not gateway.origins.allowed(origin, request.headers.get("host"))
        ):
            TOKENS.labels("page", "forbidden").inc()
            return JSONResponse({"error": "page tokens are only for the gateway's own page"}, status_code=403)
        return await issue(request, "page")

    return [(web_protocol.TOKEN_PATH, site_token), (web_protocol.PAGE_TOKEN_PATH, page_token)]
