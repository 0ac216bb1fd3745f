"""`vp dial`: hand a call list to gateway-fs's outbound API and follow the campaign.

    vp dial --list debtors.csv --robot collector --concurrency 4 --attempts 3 --interval 600 \\
            --hours 09:00-21:00 --tz Europe/Moscow --on-voicemail message \\
            --voicemail-text "{name}, перезвоните нам" --wait

The list is CSV (a ``number`` column; the other columns are the call's variables) or JSON; the key
comes from ``VP_FS_DIAL_API_KEY`` (never from the command line, where other users could read it).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Literal

import httpx

from voiceplatform.outbound.campaign import parse_targets

KEY_ENV = "VP_FS_DIAL_API_KEY"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--list", required=True, type=Path, help="numbers: .csv (number,name,...) or .json")
    parser.add_argument("--robot", required=True, help="robot name (robots/<name>)")
    parser.add_argument("--url", default="http://127.0.0.1:8091", help="gateway-fs HTTP base URL")
    parser.add_argument("--id", default="", help="campaign id (default: generated)")
    parser.add_argument("--concurrency", type=int, default=1, help="calls in flight at once")
    parser.add_argument("--attempts", type=int, default=3, help="attempts per number in all")
    parser.add_argument("--interval", type=float, default=600.0, help="seconds between attempts")
    parser.add_argument(
        "--retry-on", default="busy,no_answer,failed", help="outcomes to retry (busy,no_answer,failed)"
    )
    parser.add_argument("--hours", default="", help="calling hours HH:MM-HH:MM (default: any time)")
    parser.add_argument("--tz", default="Europe/Moscow", help="time zone of --hours")
    parser.add_argument("--caller-id", default="", help="the number the callee sees")
    parser.add_argument("--no-amd", action="store_true", help="greet at once, no answering-machine detection")
    parser.add_argument("--on-voicemail", choices=["hangup", "message"], default="hangup")
    parser.add_argument("--voicemail-text", default="", help="said after the beep ({name} etc. filled)")
    parser.add_argument("--wait", action="store_true", help="follow the campaign until it has finished")


def build_request(args: argparse.Namespace) -> dict[str, Any]:
    fmt: Literal["csv", "json"] = "json" if args.list.suffix.lower() == ".json" else "csv"
    targets = parse_targets(args.list.read_text(encoding="utf-8"), fmt)  # checked here, clear errors
    body: dict[str, Any] = {
        "robot": args.robot,
        "targets": [{"number": t.number, "variables": t.variables} for t in targets],
        "concurrency": args.concurrency,
        "retry": {
            "attempts": args.attempts,
            "interval_s": args.interval,
            "on": [o.strip() for o in args.retry_on.split(",") if o.strip()],
        },
        "amd": {
            "enabled": not args.no_amd,
            "on_voicemail": args.on_voicemail,
            "voicemail_text": args.voicemail_text,
        },
        "caller_id": args.caller_id,
    }
    if args.id:
        body["id"] = args.id
    if args.hours:
        start, sep, end = args.hours.partition("-")
        if not sep:
            raise ValueError("--hours is HH:MM-HH:MM")
        body["hours"] = {"start": start.strip(), "end": end.strip(), "tz": args.tz}
    return body


def run_dial(args: argparse.Namespace) -> int:
    key = os.environ.get(KEY_ENV, "")
    if not key:
        print(f"vp dial: set {KEY_ENV} (the gateway's outbound API key)", file=sys.stderr)
        return 2
    try:
        body = build_request(args)
    except (OSError, ValueError) as exc:
        print(f"vp dial: {exc}", file=sys.stderr)
        return 2
    headers = {"Authorization": f"Bearer {key}"}
    base = args.url.rstrip("/")
    with httpx.Client(timeout=30.0) as client:
        reply = client.post(f"{base}/outbound/campaigns", json=body, headers=headers)
        if reply.status_code != 201:
            print(f"vp dial: {reply.status_code} {reply.text[:500]}", file=sys.stderr)
            return 1
        campaign_id = reply.json()["id"]
        print(f"campaign {campaign_id}: {len(body['targets'])} numbers")
        if not args.wait:
            return 0
        while True:
            status = client.get(f"{base}/outbound/campaigns/{campaign_id}", headers=headers).json()
            if status.get("finished"):
                break
            time.sleep(2.0)
    for row in status["results"]:
        last = row["attempts"][-1] if row["attempts"] else {}
        print(
            f"{row['number']}\t{row['status']}\tattempts={len(row['attempts'])}"
            f"\toutcome={last.get('outcome')}\tamd={last.get('amd') or '-'}"
        )
    return 0
