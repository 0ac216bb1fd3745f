"""The operator console and the routes made for it, next to the recorder API (same tokens, same roles).

- ``GET /`` → ``/console/``: the console, static files (HTML, ES modules, CSS) from
  ``vp_recorder/console``; it asks the operator for a token and sends it as a bearer token;
- ``GET /whoami``: ``{"role": "operator" | "readonly"}`` of the token;
- ``GET /calls/{call_id}/recording``: the call's recording (operator only: the caller's voice);
- ``GET /calls/{call_id}/recordings``: the call's recordings with ``deleted_at`` (either role);
- ``GET /live``: public call events as they happen, server-sent events (``live.py``);
- ``GET /stats/latency``: per-turn latency percentiles per time bucket (``bucket=minute|hour``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from vp_recorder.api import RecorderApi, checked_call_id, single_params
from vp_recorder.api_auth import require_operator
from vp_recorder.api_json import JSONResponse
from vp_recorder.call_query import ApiError, filter_value, parse_time
from vp_recorder.recordings import call_recordings, playable

CONSOLE_DIR = Path(__file__).resolve().parent / "console"
# the console loads nothing from elsewhere and runs no inline script; the recording plays from a blob
# fetched with the token; no Referer (a one-time ?token= in the address must not travel on)
CONSOLE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
    "media-src 'self' blob:; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
BUCKETS = {"minute": timedelta(hours=3), "hour": timedelta(days=2)}  # default span of each
MAX_BUCKETS = 2000
STATS_PARAMS = ("bucket", "from", "to", "robot")
# the per-turn figures plotted: end of the caller's speech → ...
FIGURES = ("voice_to_voice_ms", "asr_ms", "llm_first_sentence_ms", "tts_first_audio_ms")

_LATENCY = """
SELECT date_trunc($1, t.speech_end_at) AS bucket, count(t.voice_to_voice_ms) AS turns,
{percentiles}
FROM call_turns t JOIN calls c ON c.call_id = t.call_id
WHERE t.speech_end_at >= $2 AND t.speech_end_at < $3 AND ($4::text IS NULL OR c.robot = $4)
GROUP BY 1 ORDER BY 1
"""
_PERCENTILES = ",\n".join(
    f"round(percentile_cont({q}) WITHIN GROUP (ORDER BY t.{f}))::integer AS {f.removesuffix('_ms')}_p{p}"
    for f in FIGURES
    for q, p in ((0.5, 50), (0.95, 95))
)


async def known_recordings(api: RecorderApi, call_id: str) -> list[dict[str, Any]]:
    found = await call_recordings(api.run, api.files, call_id)
    if found is None:
        raise ApiError(404, f"no call {call_id!r} in postgres")
    return found


class ConsoleFiles(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(CONSOLE_HEADERS)
        return response


def latency_query_args(params: dict[str, str], now: datetime) -> tuple[str, datetime, datetime, str | None]:
    bucket = filter_value(params, "bucket", tuple(BUCKETS)) or "hour"
    until = parse_time(params["to"], "to") if params.get("to") else now
    since = parse_time(params["from"], "from") if params.get("from") else until - BUCKETS[bucket]
    if since >= until:
        raise ApiError(400, "from must be before to")
    step = timedelta(minutes=1) if bucket == "minute" else timedelta(hours=1)
    if (until - since) / step > MAX_BUCKETS:
        raise ApiError(400, f"at most {MAX_BUCKETS} buckets: a shorter range or a larger bucket")
    return bucket, since, until, filter_value(params, "robot")


def console_routes(api: RecorderApi) -> list[BaseRoute]:
    async def root(request: Request) -> Response:
        query = request.url.query  # a one-time ?token= goes along
        return RedirectResponse(f"/console/?{query}" if query else "/console/", status_code=307)

    async def whoami(request: Request) -> Response:
        return JSONResponse({"role": api.auth.role(request)})

    async def recording(request: Request) -> Response:
        require_operator(api.auth.role(request), "a call's recording")
        call_id = checked_call_id(request)
        single_params(request, ())
        chosen = playable(await known_recordings(api, call_id), api.files)
        local = api.files.local(chosen["path"]) if chosen is not None else None
        if local is None or not local.is_file():
            raise ApiError(404, f"call {call_id!r} has no recording kept (none made, or deleted)")
        return FileResponse(
            local, media_type="audio/wav", filename=f"{call_id}.wav", content_disposition_type="inline"
        )

    async def recordings(request: Request) -> Response:
        api.auth.role(request)  # paths, times and durations: no personal data
        call_id = checked_call_id(request)
        single_params(request, ())
        return JSONResponse({"call_id": call_id, "recordings": await known_recordings(api, call_id)})

    async def live_events(request: Request) -> Response:
        role = api.auth.role(request)
        single_params(request, ())
        live = api.live
        if live is None:
            raise ApiError(503, "live events need the recorder's NATS connection")
        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        return StreamingResponse(live.stream(role), media_type="text/event-stream", headers=headers)

    async def latency(request: Request) -> Response:
        api.auth.role(request)  # figures only
        params = single_params(request, STATS_PARAMS)
        bucket, since, until, robot = latency_query_args(params, datetime.now(UTC))
        sql = _LATENCY.format(percentiles=_PERCENTILES)
        rows = await api.run(lambda conn: conn.fetch(sql, bucket, since, until, robot))
        points = [
            {**dict(r.items()), "bucket": r["bucket"].astimezone(UTC).isoformat(timespec="seconds")}
            for r in rows
        ]
        return JSONResponse(
            {
                "bucket": bucket,
                "from": since.isoformat(timespec="seconds"),
                "to": until.isoformat(timespec="seconds"),
                "figures": list(FIGURES),
                "points": points,
            }
        )

    return [
        Route("/", root, methods=["GET"]),
        Route("/whoami", whoami, methods=["GET"]),
        Route("/calls/{call_id}/recording", recording, methods=["GET", "HEAD"]),
        Route("/calls/{call_id}/recordings", recordings, methods=["GET"]),
        Route("/live", live_events, methods=["GET"]),
        Route("/stats/latency", latency, methods=["GET"]),
        Mount("/console", app=ConsoleFiles(directory=CONSOLE_DIR, html=True), name="console"),
    ]
