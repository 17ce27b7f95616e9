"""Who is calling: the caller's identity, decided once per request (SPEC §5).

Modes (``[auth] mode``):

- ``none``: one local user.
- ``keys``: ``Authorization: Bearer cp-...``, a proxy key made by ``chatproxy keys create``.
  Only its SHA-256 is stored; lookups are by that hash and compared in constant time. A key's
  state is cached for ``auth.key_cache_seconds``. With ``redis.url`` set, ``chatproxy keys
  revoke`` announces the revoked key's id on the channel ``<redis.prefix>keys:revoked``
  (:func:`announce_revocation`) and every running proxy drops it from its cache at once;
  without Redis (or while it is unreachable) a revocation takes effect within the cache time.
- ``passthrough``: the client's own ``Authorization`` is forwarded upstream; the user is an
  HMAC of that credential under the server's secret (the credential is never stored).
- ``header``: a trusted gateway sets ``X-User-Id`` (or an alias); believed only when the socket
  peer is in ``server.trusted_proxies``.

Before the mode, plugins implementing ``identify(request)`` are asked, in load order; the first
:class:`~chatproxy.plugins.hookspecs.Identity` answered is the caller (its user id checked as
mode ``header`` checks one: an invalid one is ``401 invalid_user_id``; a tier that is not
configured is the default tier), and the user is created on first sight. A plugin refuses by
raising ``AuthenticationError`` (401) or ``PermissionDenied`` (403); a plugin that crashes, or
answers something other than an ``Identity``, is a ``500 plugin_error`` naming it. In mode
``passthrough`` the client's ``Authorization`` is still what goes upstream.

Failures raise :class:`~chatproxy.errors.AuthenticationError` (401, ``invalid_api_key``), whose
message never repeats what the client sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import re
import secrets
import time
from dataclasses import dataclass

from aiohttp import web
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from chatproxy.errors import AuthenticationError, ChatProxyError, NotFoundError
from chatproxy.limits.client_ip import is_trusted_peer, parse_trusted
from chatproxy.plugins.hookspecs import Identity
from chatproxy.plugins.manager import NO_PLUGINS, PluginFailed, Plugins
from chatproxy.settings import Settings
from chatproxy.store.store import Store

__all__ = [
    "LOCAL_USER",
    "USER_ID_RE",
    "Authenticator",
    "Caller",
    "announce_revocation",
    "hash_key",
    "new_api_key",
    "revocation_channel",
    "revoke_key",
]

log = logging.getLogger("chatproxy.auth")

KEY_PREFIX = "cp-"
KEY_PREFIX_LENGTH = 11  # what `keys list` shows of a key: "cp-" and 8 of its characters
MIN_PREFIX_LENGTH = 7  # the shortest start of a prefix that `keys revoke` takes
TOUCH_EVERY_SECONDS = 60.0
USER_ID_RE = re.compile(r"[A-Za-z0-9_.@:-]{1,128}")
USER_ID_RULE = "1 to 128 of A-Z a-z 0-9 _ . @ : -"
USER_NAME_LENGTH = 256  # users.name
SECRET_META_KEY = "passthrough_secret"
KEY_CACHE_SIZE = 100_000
# Listening for revocations: how long to wait for Redis, and the longest pause between two
# attempts to subscribe again.
REDIS_CONNECT_TIMEOUT = 1.0
RESUBSCRIBE_MAX_DELAY = 30.0


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
    return "key_" + secrets.token_urlsafe(12), key, hash_key(key), key[:KEY_PREFIX_LENGTH]


def revocation_channel(redis_prefix: str) -> str:
    """The Redis pub/sub channel on which revoked keys' ids are announced."""
    return f"{redis_prefix}keys:revoked"


async def announce_revocation(settings: Settings, key_id: str) -> str | None:
    """Tell the running proxies, through ``redis.url``, that ``key_id`` is revoked: ``None``
    when it was announced, otherwise why not (Redis cannot be reached)."""
    client = Redis.from_url(
        settings.redis.url,
        socket_connect_timeout=REDIS_CONNECT_TIMEOUT * 2,
        socket_timeout=REDIS_CONNECT_TIMEOUT * 2,
    )
    try:
        await client.publish(revocation_channel(settings.redis.prefix), key_id)
    except (RedisError, OSError) as exc:
        return str(exc) or type(exc).__name__
    finally:
        await client.aclose()
    return None


async def revoke_key(store: Store, handle: str) -> tuple[str, str]:
    """Revoke the key ``handle`` names: its id, the key itself (found by its hash, as
    requests are), or its prefix as ``keys list`` prints it (or the first 7 characters of
    it, or more, when no other key starts so). Returns the key's ``(id, prefix)``; raises
    :class:`NotFoundError` when it names no active key, ``ChatProxyError`` when several keys
    start with it (naming them). The key itself is never repeated."""
    shown = handle.strip().removesuffix("...").removesuffix("\u2026")
    keys = [key for key, _ in await store.api_keys()]
    if shown.startswith(KEY_PREFIX) and len(shown) > KEY_PREFIX_LENGTH:
        found = await store.api_key_by_hash(hash_key(shown))
        matches = [k for k in keys if found is not None and k.id == found[0]]
        described = "the key given"
    else:
        matches = [k for k in keys if k.id == shown]
        if not matches and shown.startswith(KEY_PREFIX) and len(shown) >= MIN_PREFIX_LENGTH:
            matches = [k for k in keys if k.prefix.startswith(shown)]
        described = repr(shown) if len(shown) <= 40 else f"{shown[:40]!r}..."
    if not matches:
        raise NotFoundError(
            f"no key matches {described}: give a key's id (key_...), its prefix as "
            "`keys list` shows it (cp-...), or the key itself"
        )
    if len(matches) > 1:
        ids = ", ".join(k.id for k in matches[:10]) + (", ..." if len(matches) > 10 else "")
        raise ChatProxyError(f"{len(matches)} keys start with {described} ({ids}): give its id")
    (key,) = matches
    if not await store.revoke_api_key(key.id):
        raise NotFoundError(f"{key.id} ({key.prefix}...) is already revoked")
    return key.id, key.prefix


def _unauthorized(message: str) -> AuthenticationError:
    return AuthenticationError(message, headers={"WWW-Authenticate": "Bearer"})


def _bearer(request: web.Request) -> str | None:
    value = request.headers.get("Authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


class Authenticator:
    """Decides the :class:`Caller` of each request under the configured mode.

    In mode ``keys`` with ``redis.url`` set, it listens for revoked keys from :meth:`start`
    to :meth:`close`.
    """

    def __init__(self, settings: Settings, store: Store, plugins: Plugins = NO_PLUGINS) -> None:
        self.mode = settings.auth.mode
        self._settings = settings
        self._store = store
        self._plugins = plugins
        self._identify = plugins.implements("identify")
        self._unknown_tiers: set[tuple[str, str]] = set()  # warned about once each
        self._trusted = parse_trusted(settings.server.trusted_proxies)
        self._secret = settings.auth.secret.encode()
        self._cache_for = settings.auth.key_cache_seconds
        # key hash -> (valid until, caller or None for unknown/revoked, key id)
        self._keys: dict[str, tuple[float, Caller | None, str | None]] = {}
        self._hash_of: dict[str, str] = {}  # key id -> hash, for the cached valid keys
        self._revocations = 0  # revocations heard: a store read that overlaps one is not cached
        self._touched: dict[str, float] = {}
        self._known_users: set[str] = set()
        self._listener: asyncio.Task[None] | None = None
        self._first_attempt: asyncio.Future[None] | None = None

    async def start(self) -> None:
        """Load what the mode needs (the passthrough secret, the local user); in mode ``keys``
        with Redis, subscribe to revocations (waiting for the first attempt only, so that a
        revocation announced once this returns is heard; an unreachable Redis is retried in
        the background)."""
        if self.mode == "passthrough" and not self._secret:
            generated = secrets.token_hex(32)
            self._secret = (await self._store.meta_value(SECRET_META_KEY, generated)).encode()
        if self.mode == "none":
            await self._store.ensure_user(LOCAL_USER.user_id, LOCAL_USER.name)
        if self.mode == "keys" and self._settings.redis.url and self._listener is None:
            self._first_attempt = asyncio.get_running_loop().create_future()
            self._listener = asyncio.create_task(self._listen(), name="chatproxy-key-revocations")
            await asyncio.wait(
                [self._listener, self._first_attempt], return_when=asyncio.FIRST_COMPLETED
            )

    async def close(self) -> None:
        """Stop listening for revocations (idempotent)."""
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None

    async def _listen(self) -> None:
        redis = self._settings.redis
        channel = revocation_channel(redis.prefix)
        delay, failing = 0.5, False
        while True:
            client = Redis.from_url(
                redis.url,
                socket_connect_timeout=REDIS_CONNECT_TIMEOUT,
                socket_keepalive=True,
                client_name=f"{redis.prefix}key-revocations",  # to be found in CLIENT LIST
                # No silent reconnection: what is missed while away must be noticed here.
                retry=Retry(NoBackoff(), 0),
            )
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(channel)
                if failing:
                    # What was announced while nobody listened is lost: forget every key.
                    self._forget_all()
                    log.warning("listening for revoked keys on Redis again")
                    failing = False
                delay = 0.5
                self._attempted()
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self._revoked(message["data"])
            except (RedisError, OSError) as exc:
                if not failing:
                    log.warning(
                        "cannot listen for revoked keys on Redis (%s): until it is back, a "
                        "revoked key keeps working for up to auth.key_cache_seconds (%g s)",
                        exc,
                        self._cache_for,
                    )
                    failing = True
                self._attempted()
            finally:
                await pubsub.aclose()
                await client.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESUBSCRIBE_MAX_DELAY)

    def _attempted(self) -> None:
        if self._first_attempt is not None and not self._first_attempt.done():
            self._first_attempt.set_result(None)

    def _revoked(self, key_id: bytes | str) -> None:
        """A key was revoked (announced through Redis): forget it now."""
        if isinstance(key_id, bytes):
            key_id = key_id.decode(errors="replace")
        self._revocations += 1
        key_hash = self._hash_of.pop(key_id, None)
        if key_hash is not None:
            self._keys.pop(key_hash, None)

    def _forget_all(self) -> None:
        self._revocations += 1
        self._keys.clear()
        self._hash_of.clear()

    async def authenticate(self, request: web.Request) -> Caller:
        """The caller of ``request``; raises ``AuthenticationError`` (401), or a plugin's
        refusal."""
        if self._identify:
            caller = await self._from_plugins(request)
            if caller is not None:
                return caller
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
            revocations = self._revocations
            found = await self._store.api_key_by_hash(key_hash)
            if found is None or found[4]:
                cached = (now + self._cache_for, None, None)
            else:
                key_id, user_id, name, tier, _ = found
                cached = (now + self._cache_for, Caller(user_id, name, tier), key_id)
            # A revocation heard while the store was read may be this key's: not cached then.
            if revocations == self._revocations:
                if len(self._keys) > KEY_CACHE_SIZE:
                    self._keys.clear()
                    self._hash_of.clear()
                self._keys[key_hash] = cached
                if cached[2] is not None:
                    self._hash_of[cached[2]] = key_hash
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

    async def _from_plugins(self, request: web.Request) -> Caller | None:
        found = await self._plugins.first_answer("identify", request=request)
        if found is None:
            return None
        plugin, identity = found
        if not _well_typed(identity):
            problem = TypeError(f"identify answered {type(identity).__name__}, not an Identity")
            self._plugins.failed(plugin, "identify", problem)
            raise PluginFailed(plugin, "identify")
        user_id = identity.user_id
        if not USER_ID_RE.fullmatch(user_id):
            # Taken from the credential, most likely (a token's subject): not one we can use.
            log.warning("plugin %r identified a caller by an invalid user id", plugin)
            raise AuthenticationError(
                f"the credential names no valid user: a user id is {USER_ID_RULE}",
                code="invalid_user_id",
                headers={"WWW-Authenticate": "Bearer"},
            )
        tier = identity.tier
        if tier is not None and tier not in self._settings.limits.tiers:
            if (plugin, tier) not in self._unknown_tiers and len(self._unknown_tiers) < 100:
                self._unknown_tiers.add((plugin, tier))
                log.warning(
                    "plugin %r gave the tier %r, which is not configured: limits.default_tier "
                    "applies",
                    plugin,
                    tier[:64],
                )
            tier = None
        name = identity.name[:USER_NAME_LENGTH] if identity.name else user_id
        forwarded = None
        if self.mode == "passthrough":
            forwarded = request.headers.get("Authorization", "").strip() or None
        caller = Caller(user_id, name, tier, upstream_authorization=forwarded)
        await self._ensure(caller)
        return caller

    async def _ensure(self, caller: Caller) -> None:
        if caller.user_id not in self._known_users:
            await self._store.ensure_user(caller.user_id, caller.name, caller.tier)
            if len(self._known_users) > KEY_CACHE_SIZE:
                self._known_users.clear()
            self._known_users.add(caller.user_id)


def _well_typed(identity: object) -> bool:
    """Whether a plugin's answer is an :class:`Identity` with fields of the right types."""
    return (
        isinstance(identity, Identity)
        and isinstance(identity.user_id, str)
        and isinstance(identity.tier, str | None)
        and isinstance(identity.name, str | None)
    )
