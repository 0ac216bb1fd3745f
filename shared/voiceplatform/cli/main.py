"""`vp` entry point."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vp", description="voice-platform command line")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start infrastructure (embedded when no URLs are set) and every service")
    up.add_argument("--robots", type=Path, default=Path("robots"), help="robots folder")
    up.add_argument("--workdir", type=Path, default=Path(".vp"), help="data and logs of embedded servers")
    up.add_argument("--port", type=int, default=8000, help="gateway-web port")
    up.add_argument(
        "--scale", action="append", default=[], metavar="SERVICE=N", help="instances of a worker, e.g. asr=2"
    )
    up.add_argument(
        "--demo", action="store_true", help="once ready, play a recorded Russian caller and print turns"
    )
    up.add_argument("--exit-after-demo", action="store_true", help="stop everything after the demo call")
    up.add_argument("--ready-timeout", type=float, default=180.0)
    up.add_argument("--status-port", type=int, default=8100, help="vp up's own /health (restarts, give-ups)")

    call = sub.add_parser("call", help="play a recorded caller (WAV) into a robot exactly as a browser would")
    call.add_argument(
        "--robot",
        required=True,
        help="robot folder (robots/pipeline_russian: in the robots folder the platform serves) or robot name",
    )
    call.add_argument(
        "--wav",
        required=True,
        type=Path,
        help="caller audio: WAV (any sample format), MP3, OGG or FLAC, any rate",
    )
    call.add_argument(
        "--url",
        default=None,
        help="gateway WebSocket URL (web: ws://127.0.0.1:8000/ws; --phone: ws://127.0.0.1:8090/call)",
    )
    call.add_argument("--out", type=Path, default=None, help="where to save the robot's audio (WAV)")
    call.add_argument("--json", action="store_true", help="print the result as JSON")
    call.add_argument(
        "--tail-s", type=float, default=20.0, help="max seconds to wait for replies after the WAV"
    )
    call.add_argument(
        "--phone",
        action="store_true",
        help="call through gateway-fs as FreeSWITCH would (8 kHz; ESL password from VP_FS_ESL_PASSWORD)",
    )
    call.add_argument("--esl-port", type=int, default=8021, help="--phone: Event Socket port to listen on")
    call.add_argument("--number", default="7000", help="--phone: the dialed number (DNIS)")

    from voiceplatform.cli import authoring, dial

    authoring.add_check_arguments(
        sub.add_parser("check", help="check robot folders for every mistake a call would hit (exit 1 if any)")
    )
    authoring.add_new_arguments(
        sub.add_parser("new", help="scaffold from a template: vp new robot NAME --from T")
    )

    dial.add_arguments(sub.add_parser("dial", help="place outbound calls from a list through gateway-fs"))

    from voiceplatform.cli import load_view

    load_view.add_arguments(
        sub.add_parser("load", help="every running service instance and its load (calls, queue, turn time)")
    )

    from voiceplatform.bus import natsconf

    natsconf.add_arguments(
        sub.add_parser("nats-config", help="print the compose nats.conf (users, permissions); fill a .env")
    )

    args = parser.parse_args(argv)
    if args.command == "nats-config":
        return natsconf.run(args)
    if args.command == "load":
        return load_view.run_load(args)
    if args.command == "check":
        return authoring.run_check(args)
    if args.command == "new":
        return authoring.run_new(args)
    if args.command == "dial":
        return dial.run_dial(args)
    if args.command == "up":
        from voiceplatform.cli.up import run_up

        return run_up(args)
    if args.url is None:
        args.url = "ws://127.0.0.1:8090/call" if args.phone else "ws://127.0.0.1:8000/ws"
    from voiceplatform.cli.call import run_call

    return run_call(args)


if __name__ == "__main__":
    sys.exit(main())
