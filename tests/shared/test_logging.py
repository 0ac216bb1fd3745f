import json
import sys

import structlog

from voiceplatform.logging import bind_call, configure_logging, register_secret


def test_json_logs_carry_call_ids_mask_secrets_and_drop_pii(capsys, monkeypatch):
    monkeypatch.delenv("VP_LOG_PII", raising=False)
    configure_logging("test-svc", json=True)
    register_secret("sk-very-secret-value")
    log = structlog.get_logger("t")
    with bind_call(call_id="web-1", turn_id="t-1"):
        log.info(
            "asr.final", pii_text="у меня собака", api_key="abc123", detail="auth sk-very-secret-value failed"
        )
    log.info("outside")
    lines = [json.loads(x) for x in capsys.readouterr().err.strip().splitlines()]
    first, second = lines[-2], lines[-1]
    assert first["event"] == "asr.final"
    assert first["call_id"] == "web-1" and first["turn_id"] == "t-1" and first["service"] == "test-svc"
    assert "pii_text" not in first
    assert first["api_key"] == "***"
    assert "sk-very-secret-value" not in json.dumps(first) and "***" in first["detail"]
    assert "call_id" not in second


def test_exceptions_are_masked_too(capsys):
    configure_logging("test-svc", json=True)
    register_secret("tok-ABCDEF-123")
    log = structlog.get_logger("t")
    try:
        raise RuntimeError("request with tok-ABCDEF-123 refused")
    except RuntimeError:
        log.exception("provider.failed")
    out = capsys.readouterr().err
    assert "tok-ABCDEF-123" not in out and "provider.failed" in out


def test_library_log_lines_are_masked_by_the_stdlib_filter() -> None:
    import io
    import logging

    from voiceplatform.logging import SecretMaskingFilter, register_secret

    register_secret("lib-secret-value-4242")
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(SecretMaskingFilter())
    lib = logging.getLogger("websockets.client.test")
    lib.addHandler(handler)
    lib.setLevel(logging.DEBUG)
    try:
        lib.debug("> Authorization: %s", "api-key lib-secret-value-4242")
    finally:
        lib.removeHandler(handler)
    assert "lib-secret-value-4242" not in out.getvalue() and "Authorization: api-key ***" in out.getvalue()


def test_the_password_of_a_registered_url_is_masked_on_its_own(capsys):
    configure_logging("test-svc", json=True)
    register_secret("postgresql://postgres:pg-pass-7781@127.0.0.1:5432/vp")
    structlog.get_logger("t").warning("db.login_failed", detail="password pg-pass-7781 refused")
    out = capsys.readouterr().err
    assert "pg-pass-7781" not in out and "db.login_failed" in out


def test_a_log_line_is_written_at_once(monkeypatch) -> None:
    # an unbuffered stderr (PYTHONUNBUFFERED=1, as in the image) turns each write() into a system
    # call: the line and its newline go in one
    class Stderr:
        def __init__(self) -> None:
            self.writes: list[str] = []

        def write(self, text: str) -> int:
            self.writes.append(text)
            return len(text)

        def flush(self) -> None:
            pass

        def isatty(self) -> bool:
            return False

    configure_logging("svc", json=True)
    stderr = Stderr()
    monkeypatch.setattr(sys, "stderr", stderr)  # the logger finds sys.stderr when it writes
    structlog.get_logger("t").info("turn.done", call_id="c-1")
    assert len(stderr.writes) == 1 and stderr.writes[0].endswith("}\n")
    assert json.loads(stderr.writes[0])["call_id"] == "c-1"
