"""Short-lived signed call tokens: HMAC-SHA256 JWTs (PyJWT) naming the robot, single use by nonce."""

from __future__ import annotations

import secrets
import time
import uuid

import jwt

AUDIENCE = "vp-gateway-web"
ALGORITHM = "HS256"
LEEWAY_S = 2.0  # clock skew between gateway instances sharing the secret


class TokenError(Exception):
    """Why a token is refused: missing, forged, expired, reused or wrong_robot (the close reason)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class CallTokens:
    """Issues and checks call tokens. A token's nonce is remembered until it expires, so it works once.

    The nonce memory is per process: instances sharing ``secret`` accept each other's tokens, and a
    token reused on another instance is caught only there (tokens live ``ttl_s``, one minute by default).
    """

    def __init__(self, secret: str | None, ttl_s: float) -> None:
        self._secret = secret or secrets.token_urlsafe(32)
        self.ttl_s = ttl_s
        self._used: dict[str, float] = {}  # nonce → expiry (epoch seconds)

    def issue(self, robot: str, caller: str = "", now: float | None = None) -> str:
        issued = time.time() if now is None else now
        claims = {
            "aud": AUDIENCE,
            "robot": robot,
            "caller": caller,
            "iat": int(issued),
            "exp": issued + self.ttl_s,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def redeem(self, token: str, robot: str | None) -> dict[str, str]:
        """Check and spend a token; ``robot`` (if the client named one) must be the token's robot."""
        if not token:
            raise TokenError("missing", "a call token is required (POST /tokens or /page-token)")
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                leeway=LEEWAY_S,
                options={"require": ["exp", "jti", "robot"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenError("expired", "the call token has expired") from exc
        except jwt.InvalidTokenError as exc:
            raise TokenError("forged", "the call token is not valid") from exc
        nonce, token_robot = str(claims["jti"]), str(claims["robot"])
        now = time.time()
        self._used = {n: exp for n, exp in self._used.items() if exp + LEEWAY_S > now}
        if nonce in self._used:
            raise TokenError("reused", "the call token was already used")
        if robot and robot != token_robot:
            raise TokenError("wrong_robot", "the call token is for another robot")
        self._used[nonce] = float(claims["exp"])
        return {"robot": token_robot, "caller": str(claims.get("caller", ""))}
