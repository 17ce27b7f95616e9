"""Operations on the whole store: usage statistics and retention (SPEC §12)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from tortoise.functions import Count, Sum

from chatproxy.store.models import Chat, Message, Status
from chatproxy.store.purge import purge_chats
from chatproxy.store.store import Store, utcnow

__all__ = ["UsageRow", "parse_age", "prune", "usage"]

_AGE = re.compile(r"^\s*(\d+)\s*([dhwm])\s*$")
_UNITS = {
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
    "w": timedelta(weeks=1),
    "m": timedelta(days=30),
}
PRUNE_BATCH = 500


def parse_age(text: str) -> timedelta:
    """``"90d"`` (also ``h``, ``w``, ``m`` for 30 days) as a duration; raises ``ValueError``."""
    match = _AGE.match(text)
    if not match or int(match.group(1)) == 0:
        raise ValueError("an age such as 90d, 12h, 4w or 6m")
    return int(match.group(1)) * _UNITS[match.group(2)]


@dataclass(slots=True, frozen=True)
class UsageRow:
    """Answers produced for one user with one model."""

    user: str
    model: str
    messages: int
    prompt_tokens: int
    completion_tokens: int
    errors: int


async def usage(store: Store, since: datetime, user_id: str | None = None) -> list[UsageRow]:
    """Answers, tokens and failures per user and model since ``since`` (answers the proxy
    produced: ``instance_id`` is set), most messages first."""

    async def read() -> list[UsageRow]:
        query = Message.filter(
            role="assistant", created_at__gte=since, instance_id__not_isnull=True
        )
        if user_id is not None:
            query = query.filter(user_id=user_id)
        totals = (
            await query.annotate(
                n=Count("id"), prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens")
            )
            .group_by("user_id", "model")
            .values("user_id", "model", "n", "prompt", "completion")
        )
        failed = (
            await query.filter(status=Status.FAILED)
            .annotate(n=Count("id"))
            .group_by("user_id", "model")
            .values("user_id", "model", "n")
        )
        errors = {(r["user_id"], r["model"]): r["n"] for r in failed}
        rows = [
            UsageRow(
                r["user_id"],
                r["model"] or "-",
                r["n"],
                int(r["prompt"] or 0),
                int(r["completion"] or 0),
                errors.get((r["user_id"], r["model"]), 0),
            )
            for r in totals
        ]
        return sorted(rows, key=lambda r: (-r.messages, r.user, r.model))

    return await store.read(read)


async def prune(store: Store, older_than: timedelta, user_id: str | None = None) -> int:
    """Delete the chats not updated for ``older_than`` (with every message and vote), in
    batches of short transactions, then reclaim the space; returns how many."""
    cutoff = utcnow() - older_than

    async def oldest() -> list[str]:
        query = Chat.filter(updated_at__lt=cutoff)
        if user_id is not None:
            query = query.filter(owner_id=user_id)
        return await query.order_by("updated_at").limit(PRUNE_BATCH).values_list("id", flat=True)

    deleted = 0
    while ids := await store.read(oldest):
        deleted += await purge_chats(store, ids)
        if len(ids) < PRUNE_BATCH:
            break
    if deleted:
        await store.reclaim_space()
    return deleted
