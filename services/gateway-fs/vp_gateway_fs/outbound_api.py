"""The outbound HTTP API on gateway-fs's port: campaigns in, results out. Bearer key required.

    POST   /outbound/campaigns        {"robot": ..., "targets": [{"number": ..., "variables": {...}}]
                                       | "csv": "number,name\\n...", "concurrency": 2, "retry": {...},
                                       "hours": {...}, "amd": {...}, "caller_id": ...}   → 201
    GET    /outbound/campaigns/{id}   per number: status and every attempt (outcome, cause, AMD)
    DELETE /outbound/campaigns/{id}   no new attempts (calls in progress go on)

``Authorization: Bearer <VP_FS_DIAL_API_KEY>``, compared in constant time. With no key configured
every request is refused (403): nobody places calls through an open port by default. The
stream endpoints on the same port are guarded by the stream secret (stream.py).
"""

from __future__ import annotations

import hmac
import uuid as uuidlib
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from voiceplatform.config import RobotConfigError
from voiceplatform.outbound.amd import AmdConfig
from voiceplatform.outbound.campaign import (
    CallingHours,
    Campaign,
    DialTarget,
    RetryPolicy,
    make_target,
    parse_targets,
)

if TYPE_CHECKING:
    from vp_gateway_fs.app import GatewayFs

REALM = 'Bearer realm="vp-gateway-fs"'


class TargetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    number: str
    variables: dict[str, str] = Field(default_factory=dict)


class CampaignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    robot: str
    id: str = Field(default="", pattern=r"^[A-Za-z0-9_-]{0,40}$")
    targets: list[TargetIn] = Field(default_factory=list)
    csv: str = ""
    concurrency: int = Field(default=1, ge=1, le=200)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    hours: CallingHours | None = None
    amd: AmdConfig = Field(default_factory=AmdConfig)
    caller_id: str = Field(default="", pattern=r"^\+?[0-9]{0,15}$")


def _authorize(gw: GatewayFs, request: Request) -> None:
    key = gw.settings.fs_dial_api_key.get_secret_value()
    if not key:
        raise HTTPException(403, "outbound dialing is disabled (VP_FS_DIAL_API_KEY is not set)")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
        raise HTTPException(401, "a valid bearer key is required", headers={"WWW-Authenticate": REALM})


def outbound_router(gw: GatewayFs) -> APIRouter:
    router = APIRouter(prefix="/outbound")

    @router.post("/campaigns", status_code=201)
    async def create(request: Request) -> dict[str, Any]:
        _authorize(gw, request)
        try:
            spec = CampaignIn.model_validate(await request.json())
        except (ValidationError, ValueError) as exc:
            raise HTTPException(422, str(exc)[:1000]) from None
        try:
            gw.router.registry.get(spec.robot, new_call=True)
        except RobotConfigError as exc:
            raise HTTPException(422, f"robot {spec.robot!r}: {exc}"[:300]) from None
        try:
            targets: list[DialTarget] = [make_target(t.number, dict(t.variables)) for t in spec.targets]
            if spec.csv:
                targets += parse_targets(spec.csv, "csv")
        except ValueError as exc:
            raise HTTPException(422, str(exc)[:300]) from None
        if not targets:
            raise HTTPException(422, "no numbers to dial")
        if not gw.accepting:
            raise HTTPException(503, "gateway is draining")
        campaign = Campaign(
            spec.id or uuidlib.uuid4().hex[:12],
            targets,
            concurrency=spec.concurrency,
            retry=spec.retry,
            hours=spec.hours,
        )
        try:
            gw.dialer.submit(campaign, robot=spec.robot, amd=spec.amd, caller_id=spec.caller_id)
        except ValueError as exc:
            raise HTTPException(409, str(exc)) from None
        return {"id": campaign.id, "numbers": len(targets)}

    @router.get("/campaigns/{campaign_id}")
    async def status(campaign_id: str, request: Request) -> dict[str, Any]:
        _authorize(gw, request)
        run = gw.dialer.runs.get(campaign_id)
        if run is None:
            raise HTTPException(404, "no such campaign")
        c = run.campaign
        return {"id": c.id, "finished": c.finished, "in_flight": c.in_flight, "results": c.report()}

    @router.delete("/campaigns/{campaign_id}")
    async def cancel(campaign_id: str, request: Request) -> dict[str, Any]:
        _authorize(gw, request)
        if not gw.dialer.cancel(campaign_id):
            raise HTTPException(404, "no such campaign")
        return {"id": campaign_id, "cancelled": True}

    return router
