"""NATS security against a real nats-server started here with the generated users and permissions.

A refused publish is proven by order, not by waiting: a client publishes the forbidden message, then
a permitted one on the same connection; the observer (admin) receives the permitted one, so the
forbidden one would have arrived before it had the server let it through.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy
from prometheus_client import REGISTRY
from pydantic import SecretStr

from voiceplatform import subjects
from voiceplatform.bus.auth import NatsAuth, NatsAuthError, note_permission_denied
from voiceplatform.bus.nats import NatsBus
from voiceplatform.bus.natsconf import ServerTls
from voiceplatform.bus.permissions import (
    ADMIN_USER,
    CALL_EVENTS_USER,
    KEY_HEALTH_BUCKET,
    SERVICE_GRANTS,
    WORK_STREAM,
)
from voiceplatform.config.settings import ServiceSettings
from voiceplatform.credentials import CREDENTIALS_FILE, LocalCredentials
from voiceplatform.wire import AsrFinal, ControlHangup
from voiceplatform_devstack.devinfra import EmbeddedNats

CALL = "authcall1"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "call_events_subscriber.py"


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> LocalCredentials:
    return LocalCredentials.load_or_create(tmp_path_factory.mktemp("vp-data"))


@pytest.fixture(scope="module")
def server(creds: LocalCredentials, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    nats_server = EmbeddedNats.start(tmp_path_factory.mktemp("nats"), passwords=creds.nats)
    try:
        yield nats_server
    finally:
        nats_server.stop()


class Client_:
    """A connection as one user, collecting the permission errors the server reports to it."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.violation = asyncio.Event()
        self.nc: Client | None = None

    async def connect(self, url: str, **options: Any) -> Client:
        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc))
            if "permissions violation" in str(exc).lower():
                self.violation.set()

        self.nc = await nats.connect(url, error_cb=on_error, max_reconnect_attempts=0, **options)
        return self.nc


@pytest.fixture
async def as_user(server: EmbeddedNats, creds: LocalCredentials) -> AsyncIterator[Any]:
    opened: list[Client] = []

    async def connect(user: str) -> Client_:
        client = Client_()
        options = NatsAuth(user, SecretStr(creds.nats[user])).options()
        opened.append(await client.connect(server.url, **options))
        return client

    yield connect
    for nc in opened:
        await nc.close()


class Observer:
    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.seen: asyncio.Queue[Msg] = asyncio.Queue()

    async def watch(self, subject: str) -> None:
        await self.nc.subscribe(subject, cb=self.seen.put)
        await self.nc.flush()

    async def next_subject(self) -> str:
        return (await asyncio.wait_for(self.seen.get(), 20)).subject


@pytest.fixture
async def observer(as_user: Any) -> Observer:
    admin = await as_user(ADMIN_USER)
    watcher = Observer(admin.nc)
    await watcher.watch(">")
    return watcher


# ---- who may connect -----------------------------------------------------------------------------


async def test_an_unauthenticated_client_is_refused(server: EmbeddedNats) -> None:
    with pytest.raises((nats.errors.Error, OSError)):
        await nats.connect(server.url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=5)


async def test_a_wrong_password_is_refused(server: EmbeddedNats) -> None:
    with pytest.raises((nats.errors.Error, OSError)):
        await nats.connect(
            server.url,
            user="tts",
            password="not-the-password",
            allow_reconnect=False,
            max_reconnect_attempts=0,
            connect_timeout=5,
        )


# ---- publishing outside one's subjects ----------------------------------------------------------

# (user, forbidden subject, a subject the same user may publish)
REFUSED = [
    ("tts", subjects.control(CALL), subjects.tts_audio(CALL)),
    ("tts", subjects.audio_in(CALL), subjects.tts_audio(CALL)),
    ("llm", subjects.control(CALL), subjects.llm_sentence(CALL)),
    ("llm", subjects.asr(CALL), subjects.llm_done(CALL)),
    ("asr", subjects.audio_in(CALL), subjects.asr(CALL)),
    ("vad", subjects.control(CALL), subjects.vad(CALL)),
    ("prompt-router", subjects.asr(CALL), subjects.llm_request(CALL)),
    ("prompt-router", subjects.control(CALL), subjects.llm_request(CALL)),
    ("realtime", subjects.audio_in(CALL), subjects.tts_audio(CALL)),
    ("gateway-web", subjects.tts_audio(CALL), subjects.audio_in(CALL)),
    ("gateway-fs", subjects.llm_request(CALL), subjects.control(CALL)),
    ("recorder", subjects.audio_in(CALL), subjects.call_event("call.started")),
    ("recorder", subjects.control(CALL), subjects.call_event("call.started")),
]


@pytest.mark.parametrize(("user", "forbidden", "permitted"), REFUSED)
async def test_a_service_cannot_publish_outside_its_subjects(
    as_user: Any, observer: Observer, user: str, forbidden: str, permitted: str
) -> None:
    client = await as_user(user)
    await client.nc.publish(forbidden, b"injected")
    await client.nc.publish(permitted, b"fine")
    await client.nc.flush()
    assert await observer.next_subject() == permitted  # the forbidden one never reached anyone
    await asyncio.wait_for(client.violation.wait(), 20)
    assert any(forbidden in e for e in client.errors), client.errors


async def test_only_gateways_publish_caller_audio_and_control() -> None:
    for user, grant in SERVICE_GRANTS.items():
        gateway = user.startswith("gateway-")
        assert (subjects.ANY_CALLER_AUDIO in grant.publish) == gateway, user
        assert (subjects.ANY_CONTROL in grant.publish) == (gateway or user == "realtime"), user


@pytest.mark.parametrize("user", ["gateway-web", "gateway-fs"])
async def test_a_gateway_publishes_caller_audio_and_a_hangup(
    as_user: Any, observer: Observer, user: str
) -> None:
    client = await as_user(user)
    await client.nc.publish(subjects.audio_in(CALL), b"\0\0")
    bus = NatsBus(client.nc, user)
    await bus.publish(subjects.control(CALL), ControlHangup(call_id=CALL, reason="test"))
    # keypad digits: the gateway publishes the caller turn's transcript itself
    await bus.publish(subjects.asr(CALL), AsrFinal(call_id=CALL, turn_id="k1", text="1", dtmf=True))
    assert await observer.next_subject() == subjects.audio_in(CALL)
    assert await observer.next_subject() == subjects.control(CALL)
    assert await observer.next_subject() == subjects.asr(CALL)
    assert not client.errors


async def test_a_permitted_publish_reaches_a_permitted_subscriber(as_user: Any) -> None:
    tts = await as_user("tts")
    gateway = await as_user("gateway-web")
    got: asyncio.Queue[Msg] = asyncio.Queue()
    await gateway.nc.subscribe(subjects.tts_audio(CALL), cb=got.put)
    await gateway.nc.flush()
    await tts.nc.publish(subjects.tts_audio(CALL), b"pcm")
    assert (await asyncio.wait_for(got.get(), 20)).data == b"pcm"


# ---- the read-only user ----------------------------------------------------------------------------


async def test_the_read_only_user_reads_call_events(as_user: Any) -> None:
    reader = await as_user(CALL_EVENTS_USER)
    recorder = await as_user("recorder")
    got: asyncio.Queue[Msg] = asyncio.Queue()
    await reader.nc.subscribe(subjects.ALL_CALL_EVENTS, cb=got.put)
    await reader.nc.flush()
    await recorder.nc.publish(subjects.call_event("call.ended"), b'{"type": "call.ended"}')
    msg = await asyncio.wait_for(got.get(), 20)
    assert msg.subject == "call_events.call.ended"
    assert not reader.errors


@pytest.mark.parametrize(
    "subject", [subjects.call_event("call.started"), subjects.control(CALL), subjects.audio_in(CALL), "x"]
)
async def test_the_read_only_user_cannot_publish(as_user: Any, observer: Observer, subject: str) -> None:
    reader = await as_user(CALL_EVENTS_USER)
    recorder = await as_user("recorder")
    await reader.nc.publish(subject, b"injected")
    await reader.nc.flush()
    await asyncio.wait_for(reader.violation.wait(), 20)
    await recorder.nc.publish(subjects.call_event("marker"), b"{}")
    assert await observer.next_subject() == "call_events.marker"


async def test_the_read_only_user_cannot_listen_to_calls(as_user: Any) -> None:
    reader = await as_user(CALL_EVENTS_USER)
    gateway = await as_user("gateway-web")
    got: asyncio.Queue[Msg] = asyncio.Queue()
    await reader.nc.subscribe(subjects.ALL_CALLS, cb=got.put)
    await reader.nc.subscribe(subjects.ALL_CALL_EVENTS, cb=got.put)
    await reader.nc.flush()
    await asyncio.wait_for(reader.violation.wait(), 20)
    await gateway.nc.publish(subjects.audio_in(CALL), b"secret audio")
    recorder = await as_user("recorder")
    await recorder.nc.publish(subjects.call_event("marker"), b"{}")
    assert (await asyncio.wait_for(got.get(), 20)).subject == "call_events.marker"


# ---- request/reply and JetStream --------------------------------------------------------------------


async def test_assignment_round_trip_through_private_inboxes(as_user: Any) -> None:
    vad = await as_user("vad")
    gateway = await as_user("gateway-web")

    async def answer(msg: Msg) -> None:
        await msg.respond(b"accepted")

    await vad.nc.subscribe(subjects.assign("vad"), queue="vad", cb=answer)
    await vad.nc.flush()
    reply = await gateway.nc.request(subjects.assign("vad"), b"call", timeout=10)
    assert reply.data == b"accepted"
    assert not vad.errors and not gateway.errors


async def test_a_service_cannot_read_another_users_inbox(as_user: Any) -> None:
    tts = await as_user("tts")
    await tts.nc.subscribe("_INBOX.gateway-web.>")
    await tts.nc.flush()
    await asyncio.wait_for(tts.violation.wait(), 20)


async def test_kv_for_its_user_only(as_user: Any) -> None:
    llm = await as_user("llm")
    kv = await NatsBus(llm.nc, "llm").key_value(KEY_HEALTH_BUCKET, ttl_s=60)
    await kv.put("k", b"v")
    assert await kv.get("k") == (b"v", 1)
    tts = await as_user("tts")
    with pytest.raises(Exception):  # noqa: B017 - a refused API request gets no answer
        await NatsBus(tts.nc, "tts").key_value(KEY_HEALTH_BUCKET)
    await asyncio.wait_for(tts.violation.wait(), 20)


async def test_a_worker_takes_work_from_a_stream_it_may_create(as_user: Any) -> None:
    llm = await as_user("llm")
    router = await as_user("prompt-router")
    js = llm.nc.jetstream(timeout=10)
    await js.add_stream(
        name=WORK_STREAM, subjects=[subjects.ANY_LLM_REQUEST], retention=RetentionPolicy.WORK_QUEUE
    )
    await js.add_consumer(WORK_STREAM, ConsumerConfig(durable_name="llm", ack_policy=AckPolicy.EXPLICIT))
    psub = await js.pull_subscribe_bind(durable="llm", stream=WORK_STREAM)
    await router.nc.publish(subjects.llm_request(CALL), b"turn")
    await router.nc.flush()
    (msg,) = await psub.fetch(1, timeout=10)
    assert msg.data == b"turn"
    await msg.ack_sync(timeout=10)
    assert not llm.errors and not router.errors


@pytest.mark.parametrize("user", ["llm", "tts", "prompt-router", "gateway-web"])
async def test_no_other_stream_for_a_worker(as_user: Any, user: str) -> None:
    # a stream's config can republish onto any subject: only the recorder creates streams freely
    client = await as_user(user)
    with pytest.raises(Exception):  # noqa: B017 - a refused API request gets no answer
        await client.nc.jetstream(timeout=3).add_stream(name="EVIL", subjects=["evil.>"])
    await asyncio.wait_for(client.violation.wait(), 20)


async def test_the_recorder_administers_streams(as_user: Any) -> None:
    recorder = await as_user("recorder")
    js = recorder.nc.jetstream(timeout=10)
    await js.add_stream(name="AUTH_TEST", subjects=["vp.call.*.lifecycle"])
    await js.delete_stream("AUTH_TEST")
    assert not recorder.errors


# ---- credentials -----------------------------------------------------------------------------------


def test_credentials_are_private_and_stable(tmp_path: Path) -> None:
    first = LocalCredentials.load_or_create(tmp_path)
    path = tmp_path / CREDENTIALS_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = LocalCredentials.load_or_create(tmp_path)
    assert again.nats == first.nats and again.postgres == first.postgres and again.redis == first.redis
    assert len(set(first.nats.values())) == len(first.nats)  # every user has its own password
    assert first.postgres not in repr(first) and first.nats["tts"] not in repr(first)


def test_the_generated_server_config_is_private(server: EmbeddedNats) -> None:
    assert stat.S_IMODE((server.workdir / "nats.conf").stat().st_mode) == 0o600


def test_client_options_only_when_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NATS_USER", "NATS_PASSWORD", "NATS_TLS_CA", "NATS_TLS_CERT", "NATS_TLS_KEY"):
        monkeypatch.delenv(name, raising=False)
    assert NatsAuth.of(ServiceSettings()).options() == {}
    monkeypatch.setenv("NATS_USER", "tts")
    monkeypatch.setenv("NATS_PASSWORD", "s3cret-value")
    settings = ServiceSettings()
    assert "s3cret-value" not in repr(settings)
    options = NatsAuth.of(settings).options()
    assert options["user"] == "tts" and options["password"] == "s3cret-value"
    assert options["inbox_prefix"] == "_INBOX.tts"
    with pytest.raises(NatsAuthError):
        NatsAuth(password=SecretStr("x")).options()
    with pytest.raises(NatsAuthError):
        NatsAuth(user="tts").options()


# ---- TLS -------------------------------------------------------------------------------------------


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key (the client trusts it as its CA)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vp-nats-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "server.pem", folder / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


async def test_tls_for_multi_host(creds: LocalCredentials, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    server = EmbeddedNats.start(tmp_path / "nats", passwords=creds.nats, tls=ServerTls(str(cert), str(key)))
    try:
        assert server.url.startswith("tls://")
        auth = NatsAuth("tts", SecretStr(creds.nats["tts"]), tls_ca=cert)
        bus = await NatsBus.connect(server.url, "tts", **auth.options())
        try:
            assert bus.connected
            await bus.publish_bytes(subjects.tts_audio(CALL), b"pcm")
        finally:
            await bus.close()
        # the right password over an unverified server is refused by the client
        untrusted = NatsAuth("tts", SecretStr(creds.nats["tts"])).options()
        with pytest.raises((nats.errors.Error, OSError)):
            await nats.connect(
                server.url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=5, **untrusted
            )
    finally:
        server.stop()


async def test_the_example_subscriber_follows_events_as_the_read_only_user(
    server: EmbeddedNats, creds: LocalCredentials, as_user: Any
) -> None:
    env = {**os.environ, "NATS_USER": CALL_EVENTS_USER, "NATS_PASSWORD": creds.nats[CALL_EVENTS_USER]}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLE), "--url", server.url, "--count", "1",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None and proc.stdout is not None
    try:
        ready = await asyncio.wait_for(proc.stderr.readline(), 30)
        assert ready.decode().strip() == "subscribed to call_events.>", ready
        recorder = await as_user("recorder")
        event = {"id": "c1:1", "type": "call.started", "v": 1, "call_id": "c1", "ts_ms": 1, "data": {}}
        await recorder.nc.publish(subjects.call_event("call.started"), json.dumps(event).encode())
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
    assert proc.returncode == 0
    assert out.decode().startswith("call.started c1")


async def test_a_refused_publish_is_counted_and_logged_by_the_bus(
    server: EmbeddedNats, creds: LocalCredentials
) -> None:
    labels = {"service": "tts", "operation": "publish", "stage": "control"}
    before = REGISTRY.get_sample_value("vp_nats_permission_denied_total", labels) or 0.0
    auth = NatsAuth("tts", SecretStr(creds.nats["tts"]))
    bus = await NatsBus.connect(server.url, "tts", **auth.options())
    try:
        await bus.publish(subjects.control(CALL), ControlHangup(call_id=CALL, reason="injected"))
        await bus.client.flush()
        for _ in range(400):  # the server's -ERR arrives asynchronously
            if (REGISTRY.get_sample_value("vp_nats_permission_denied_total", labels) or 0.0) > before:
                break
            await asyncio.sleep(0.05)
        assert REGISTRY.get_sample_value("vp_nats_permission_denied_total", labels) == before + 1
        assert bus.connected  # a refused publish does not cost the connection
    finally:
        await bus.close()


def test_permission_errors_are_recognised() -> None:
    detail = "nats: 'Permissions Violation for Subscription to \"vp.call.>\"'"
    assert note_permission_denied("call-events", detail)
    assert not note_permission_denied("tts", "nats: stale connection")
