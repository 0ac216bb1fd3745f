"""The gateway's checks on their own: token signing, JSON bounds, Origin policy, the audio bucket."""

from __future__ import annotations

import time

import jwt
import pytest

from vp_gateway_web.calls import Admission
from vp_gateway_web.guard import AudioRate, BadMessage, OriginPolicy, json_depth, parse_event
from vp_gateway_web.tokens import ALGORITHM, AUDIENCE, CallTokens, TokenError

SECRET = "a test secret that is long enough for HS256"


def test_a_token_names_its_robot_and_works_once():
    tokens = CallTokens(SECRET, 60)
    token = tokens.issue("bot", caller="c-1")
    assert tokens.redeem(token, None) == {"robot": "bot", "caller": "c-1"}
    with pytest.raises(TokenError) as reused:
        tokens.redeem(token, None)
    assert reused.value.reason == "reused"
    with pytest.raises(TokenError) as other:
        tokens.redeem(tokens.issue("bot"), "bot2")
    assert other.value.reason == "wrong_robot"


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"aud": "someone-else", "robot": "bot", "jti": "n1"}, "forged"),
        ({"aud": AUDIENCE, "jti": "n2"}, "forged"),  # no robot
        ({"aud": AUDIENCE, "robot": "bot"}, "forged"),  # no nonce
    ],
)
def test_a_signed_token_without_the_right_claims_is_refused(claims, reason):
    token = jwt.encode({**claims, "exp": time.time() + 60}, SECRET, algorithm=ALGORITHM)
    with pytest.raises(TokenError) as refused:
        CallTokens(SECRET, 60).redeem(token, None)
    assert refused.value.reason == reason


def test_an_unsigned_token_is_refused():
    token = jwt.encode(
        {"aud": AUDIENCE, "robot": "bot", "jti": "x", "exp": time.time() + 60}, None, algorithm="none"
    )
    with pytest.raises(TokenError) as refused:
        CallTokens(SECRET, 60).redeem(token, None)
    assert refused.value.reason == "forged"


def test_json_depth_skips_strings_and_never_recurses():
    assert json_depth('{"a": [1, {"b": "[[[[{{{{"}]}') == 3
    assert json_depth("[" * 100_000 + "]" * 100_000) == 100_000
    with pytest.raises(BadMessage) as deep:
        parse_event('{"x": [[[[[[[[[1]]]]]]]]]}', 8192, 8)
    assert deep.value.reason == "too_deep"
    with pytest.raises(BadMessage) as big:
        parse_event('{"x": "' + "я" * 5000 + '"}', 8192, 8)  # 10 kB of UTF-8 in 5 k characters
    assert big.value.reason == "too_large"
    with pytest.raises(BadMessage) as odd:
        parse_event('{"x": "\\', 8192, 8)
    assert odd.value.reason == "not_json"
    assert parse_event('{"type": "hangup"}', 8192, 8) == {"type": "hangup"}


@pytest.mark.parametrize(
    ("origin", "host", "allowed"),
    [
        (None, "gw.example:8000", True),  # not a browser: the token decides
        ("http://gw.example:8000", "gw.example:8000", True),  # the gateway's own page
        ("https://shop.example", "gw.example:8000", True),  # listed
        ("http://localhost:5173", "gw.example:8000", True),
        ("http://127.0.0.1:9", "gw.example:8000", True),
        ("https://evil.example", "gw.example:8000", False),
        ("http://gw.example:8001", "gw.example:8000", False),  # another port is another origin
        ("null", "gw.example:8000", False),  # sandboxed iframes, file:// pages
        ("http://localhost.evil.example", "gw.example:8000", False),
    ],
)
def test_origin_policy(origin, host, allowed):
    assert OriginPolicy("https://shop.example/", allow_localhost=True).allowed(origin, host) is allowed


def test_localhost_origins_can_be_switched_off():
    assert not OriginPolicy("", allow_localhost=False).allowed("http://localhost:3000", "gw.example")


def test_the_audio_bucket_takes_real_time_plus_the_burst():
    rate = AudioRate(32000, 0.5)  # 16 kHz 16-bit: 32 kB/s, 0.5 s burst
    taken = sum(rate.take(640) for _ in range(100))  # 2 s at once
    assert 25 <= taken < 100  # the burst (25 frames), plus what real time added meanwhile
    assert rate.dropped_bytes == (100 - taken) * 640


def test_admission_counts_per_gateway_and_robot():
    admission = Admission(max_calls=3, max_per_robot=2)
    assert [admission.admit(r) for r in ("a", "a", "a", "b", "b")] == [None, None, "robot", None, "gateway"]
    admission.release("a")
    assert admission.admit("b") is None and admission.total == 3
