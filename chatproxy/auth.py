"""Who is calling: the caller's identity, decided once per request (SPEC §5).

Modes (``[auth] mode``):

- ``none``: one local user.
- ``keys``: ``Authorization: Bearer cp-...``, a proxy key made by ``chatproxy keys create``.
  Only its SHA-256 is stored; lookups are by that hash and compared in constant time. A key's
  state is cached for ``auth.key_cache_seconds``, so a revocation (from the CLI, in another
  process) takes effect within that time.
- ``passthrough``: the client's own ``Authorization`` is forwarded upstream; the user is an
  HMAC of that credential under the server's secret (the credential is never stored).
- ``header``: a trusted gateway sets ``X-User-Id`` (or an alias); believed only when the socket
  peer is in ``server.trusted_proxies``.

Failures raise :class:`~chatproxy.errors.AuthenticationError` (401, ``invalid_api_key``), whose
message never repeats what the client sent.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

from aiohttp import web

from chatproxy.errors import AuthenticationError
from chatproxy.limits.client_ip import is_trusted_peer, parse_trusted
from chatproxy.settings import Settings
from chatproxy.store.store import Store

__all__ = [
    "LOCAL_USER",
    "USER_ID_RE",
    "Authenticator",
    "Caller",
    "hash_key",
    "new_api_key",
]

KEY_PREFIX = "cp-"
TOUCH_EVERY_SECONDS = 60.0
USER_ID_RE = re.compile(r"[A-Za-z0-9_.@:-]{1,128}")
SECRET_META_KEY = "passthrough_secret"


@dataclass(slots=True, frozen=True)
class Caller:
    """The authenticated caller of a request."""

    user_id: str
    name: str
    tier: str | None = None
    # The client's own Authorization header, forwarded upstream in mode "passthrough".
    upstream_authorization: str | None = None


LOCAL_USER = Caller(user_id="local", name="local")


def hash_key(key: str) -> str:
    """The stored form of a proxy key."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_api_key() -> tuple[str, str, str, str]:
    """A new proxy key: ``(id, key, hash, prefix)``; the key itself is shown once, never
    stored."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return "key_" + secrets.token_urlsafe(12), key, hash_key(key), key[:11]


def _unauthorized(message: str) -> AuthenticationError:
    return AuthenticationError(message, headers={"WWW-Authenticate": "Bearer"})


def _bearer(request: web.Request) -> str | None:
    value = request.headers.get("Authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


class Authenticator:
    """Decides the :class:`Caller` of each request under the configured mode."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.mode = settings.auth.mode
        self._settings = settings
        self._store = store
        self._trusted = parse_trusted(settings.server.trusted_proxies)
        self._secret = settings.auth.secret.encode()
        self._cache_for = settings.auth.key_cache_seconds
        self._keys: dict[str, tuple[float, Caller | None, str | None]] = {}
        self._touched: dict[str, float] = {}
        self._known_users: set[str] = set()

    async def start(self) -> None:
        """Load what the mode needs (the passthrough secret) and create the local user."""
        if self.mode == "passthrough" and not self._secret:
            generated = secrets.token_hex(32)
            self._secret = (await self._store.meta_value(SECRET_META_KEY, generated)).encode()
        if self.mode == "none":
            await self._store.ensure_user(LOCAL_USER.user_id, LOCAL_USER.name)

    async def authenticate(self, request: web.Request) -> Caller:
        """The caller of ``request``; raises ``AuthenticationError`` (401)."""
        if self.mode == "none":
            return LOCAL_USER
        if self.mode == "keys":
            return await self._from_key(request)
        if self.mode == "passthrough":
            return await self._from_credential(request)
        return await self._from_gateway(request)

    async def _from_key(self, request: web.Request) -> Caller:
        token = _bearer(request)
        if token is None or not token.startswith(KEY_PREFIX):
            raise _unauthorized("a proxy key is required: Authorization: Bearer cp-...")
        key_hash = hash_key(token)
        now = time.monotonic()
        cached = self._keys.get(key_hash)
        if cached is None or cached[0] < now:
            found = await self._store.api_key_by_hash(key_hash)
            if found is None or found[4]:
                cached = (now + self._cache_for, None, None)
            else:
                key_id, user_id, name, tier, _ = found
                cached = (now + self._cache_for, Caller(user_id, name, tier), key_id)
            if len(self._keys) > 100_000:
                self._keys.clear()
            self._keys[key_hash] = cached
        _, caller, key_id = cached
        if caller is None or key_id is None:
            raise _unauthorized("the proxy key is not valid (unknown or revoked)")
        if self._touched.get(key_id, 0.0) < now:
            self._touched[key_id] = now + TOUCH_EVERY_SECONDS
            self._store.touch_api_key(key_id)
        return caller

    async def _from_credential(self, request: web.Request) -> Caller:
        authorization = request.headers.get("Authorization", "").strip()
        if not authorization:
            raise _unauthorized("an Authorization header is required")
        digest = hmac.new(self._secret, authorization.encode(), hashlib.sha256).hexdigest()
        user_id = "cred_" + digest[:32]
        caller = Caller(user_id, user_id, None, upstream_authorization=authorization)
        await self._ensure(caller)
        return caller

    async def _from_gateway(self, request: web.Request) -> Caller:
        if not is_trusted_peer(request.remote, self._trusted):
            raise _unauthorized("X-User-Id is only accepted from a trusted proxy")
        user_id = None
        for name in self._settings.headers.user_id:
            user_id = request.headers.get(name)
            if user_id is not None:
                break
        if user_id is None or not USER_ID_RE.fullmatch(user_id):
            raise _unauthorized("the trusted proxy did not send a valid user id header")
        caller = Caller(user_id, user_id)
        await self._ensure(caller)
        return caller

    async def _ensure(self, caller: Caller) -> None:
        if caller.user_id not in self._known_users:
            await self._store.ensure_user(caller.user_id, caller.name)
            self._known_users.add(caller.user_id)
