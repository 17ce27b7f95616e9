"""The built-in ``redact`` plugin: personal data and secrets replaced before anything is stored.

``before_store`` replaces, in a message's text and in every string of its data (content and
its parts, tool call arguments, reasoning, a tool's output), what looks like

- ``email``: an e-mail address;
- ``phone``: a phone number (9 to 15 digits with separators, 8 to 15 after ``+`` or ``00``);
- ``card``: a payment card number (13 to 19 digits, spaces or dashes allowed) that passes the
  Luhn check;
- ``iban``: an IBAN whose check digits are right (ISO 13616, mod 97);
- ``secret``: an API key or token: ``sk-...``, ``Bearer ...``, AWS, GitHub, Slack, Google and
  Stripe key shapes, JSON Web Tokens, private key blocks, and the value of an assignment such
  as ``api_key=...`` or ``password: ...``;

and each configured pattern, with a placeholder. Only what is stored changes: the upstream and
the client see the messages and the answer as they were. Configuration (``[plugin.redact]``):

``placeholder``
    The replacement; ``{kind}`` in it becomes the kind (above, or the pattern's name).
    Default ``"[redacted:{kind}]"``.
``kinds``
    The built-in detectors to run. Default all of them.
``patterns``
    More regular expressions (Python syntax): a list (kind ``pattern``), or a table of name to
    expression (the name is the kind).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from chatproxy.errors import SettingsError
from chatproxy.plugins.hookspecs import StoreRecord, hookimpl

__all__ = ["KINDS", "Redactor", "iban_valid", "luhn_valid", "plugin"]

KINDS = ("secret", "email", "iban", "card", "phone")
_KEYS = ("placeholder", "kinds", "patterns")
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Strings not worth a look: ids and structure, and inline binary (data: URLs, base64 audio).
_SKIP_KEYS = frozenset({"role", "type", "id", "tool_call_id", "detail", "format"})

_SECRET = (
    r"-----BEGIN[A-Z ]{0,40}PRIVATE KEY-----[\s\S]*?-----END[A-Z ]{0,40}PRIVATE KEY-----"
    r"|(?<![\w-])sk-[A-Za-z0-9_-]{16,}"
    r"|(?<![\w-])(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}"
    r"|\bBearer\s+[A-Za-z0-9._~+/-]{16,}=*"
    r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"
    r"|\bgh[pousr]_[A-Za-z0-9]{30,}"
    r"|\bgithub_pat_[A-Za-z0-9_]{22,}"
    r"|\bxox[abprs]-[A-Za-z0-9-]{10,}"
    r"|\bAIza[0-9A-Za-z_-]{35}"
    r"|\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"
)
# ``password = hunter22``: the value only (group ``secret_value``).
_ASSIGNED = (
    r"(?i:\b(?:api[_-]?key|access[_-]?token|auth[_-]?token|secret[_-]?key|client[_-]?secret"
    r"|password|passwd|secret|token)\b[\"']?\s*[:=]\s*[\"']?)(?P<secret_value>[^\s\"',;]{6,})"
)
_EMAIL = r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"
_IBAN = r"\b[A-Z]{2}[0-9]{2}(?:[ ]?[A-Z0-9]){11,30}\b"
# Digits not glued to more digits (a longer number is no card, and a part of one no phone).
_BEFORE = r"(?<![\w+])(?<!\d[ .-])"
_AFTER = r"(?![ .-]?\d)(?!\w)"
_CARD = rf"{_BEFORE}\d(?:[ -]?\d){{12,18}}{_AFTER}"
_PHONE = rf"{_BEFORE}\+?[\d(][\d ().\-/]{{5,22}}\d{_AFTER}"

_DETECTORS = {
    "secret": f"(?P<secret>{_SECRET})|{_ASSIGNED}",
    "email": f"(?P<email>{_EMAIL})",
    "iban": f"(?P<iban>{_IBAN})",
    "card": f"(?P<card>{_CARD})",
    "phone": f"(?P<phone>{_PHONE})",
}
_IPV4 = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
_DATE = re.compile(r"\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{4}")


def luhn_valid(digits: str) -> bool:
    """Whether a string of digits passes the Luhn check."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = ord(ch) - 48
        if i % 2:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


def iban_valid(text: str) -> bool:
    """Whether ``text`` (spaces allowed) is an IBAN with the right check digits."""
    s = text.replace(" ", "").upper()
    if not 15 <= len(s) <= 34 or not s.isalnum():
        return False
    moved = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def _phone_like(text: str) -> bool:
    digits = sum(c.isdigit() for c in text)
    international = text.startswith(("+", "00"))
    if not (8 if international else 9) <= digits <= 15:
        return False
    if not international and (_IPV4.fullmatch(text) or _DATE.match(text)):
        return False
    # A decimal number (one dot, no other separator) is not a phone number.
    return not (text.count(".") == 1 and not re.search(r"[ ()\-/+]", text))


def _card_like(text: str) -> bool:
    digits = re.sub(r"[ -]", "", text)
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


_CHECKS: dict[str, Callable[[str], bool]] = {"card": _card_like, "phone": _phone_like}


class Redactor:
    """Replaces what its detectors find, in a string or in every string of a JSON value."""

    def __init__(
        self,
        placeholder: str = "[redacted:{kind}]",
        kinds: tuple[str, ...] = KINDS,
        patterns: Mapping[str, str] | None = None,
    ) -> None:
        self._placeholder = placeholder
        parts = [_DETECTORS[k] for k in KINDS if k in kinds]
        self._groups: dict[str, str] = {}  # regex group -> kind, for configured patterns
        for i, (name, expression) in enumerate((patterns or {}).items()):
            group = f"p{i}"
            self._groups[group] = name
            parts.append(f"(?P<{group}>{expression})")
        self._regex = re.compile("|".join(parts)) if parts else None
        self._phones = "phone" in kinds
        self._cache: dict[str, str] = {}

    def _mark(self, kind: str) -> str:
        mark = self._cache.get(kind)
        if mark is None:
            mark = self._cache[kind] = self._placeholder.replace("{kind}", kind)
        return mark

    def _replace(self, match: re.Match[str]) -> str:
        kind = match.lastgroup
        assert kind is not None
        if kind == "secret_value":
            start = match.start("secret_value") - match.start()
            return match.group()[:start] + self._mark("secret")
        found = match.group(kind)
        if kind == "iban":
            # The expression runs on into a following word of capitals: the longest run of
            # its space-separated groups that is an IBAN.
            groups = found.split(" ")
            for n in range(len(groups), 0, -1):
                candidate = " ".join(groups[:n])
                if iban_valid(candidate):
                    return self._mark("iban") + found[len(candidate) :]
            return found
        check = _CHECKS.get(kind)
        if check is not None and not check(found):
            # A number that is no card (Luhn) may still be a phone number.
            if kind == "card" and self._phones and _phone_like(found):
                return self._mark("phone")
            return found
        return self._mark(self._groups.get(kind, kind))

    def text(self, value: str) -> str:
        """``value`` with what the detectors find replaced."""
        if self._regex is None or len(value) < 6:
            return value
        return self._regex.sub(self._replace, value)

    def data(self, value: Any) -> Any:
        """A JSON value with every string in it replaced by :meth:`text` (in place where it is
        a list or an object; the value is returned)."""
        if isinstance(value, str):
            return value if value.startswith("data:") else self.text(value)
        if isinstance(value, dict):
            audio = "format" in value  # input_audio: {"data": base64, "format": "wav"}
            for key, child in value.items():
                if key in _SKIP_KEYS or (audio and key == "data"):
                    continue
                if isinstance(child, str | dict | list):
                    value[key] = self.data(child)
        elif isinstance(value, list):
            for i, child in enumerate(value):
                if isinstance(child, str | dict | list):
                    value[i] = self.data(child)
        return value

    @hookimpl
    def before_store(self, record: StoreRecord) -> None:
        """Redact the record's text and data."""
        record.text = self.text(record.text)
        record.data = self.data(record.data)


def _kinds(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(k, str) and k in KINDS for k in value):
        raise SettingsError("plugin.redact.kinds", f"a list of {', '.join(KINDS)}", value)
    return tuple(value)


def _pattern(key: str, expression: Any) -> str:
    if not isinstance(expression, str) or not expression:
        raise SettingsError(key, "a regular expression", expression)
    try:
        compiled = re.compile(expression)
    except re.error as exc:
        raise SettingsError(key, f"a regular expression ({exc})", expression) from None
    if compiled.groupindex:
        raise SettingsError(key, "a regular expression without named groups", expression)
    if compiled.fullmatch(""):
        raise SettingsError(key, "a regular expression that matches some text", expression)
    return expression


def _patterns(value: Any) -> dict[str, str]:
    """The configured patterns as ``{kind: expression}``."""
    key = "plugin.redact.patterns"
    if isinstance(value, list):
        found = [_pattern(f"{key}[{i}]", e) for i, e in enumerate(value)]
        return {"pattern": "|".join(f"(?:{e})" for e in found)} if found else {}
    if isinstance(value, Mapping):
        for name in value:
            if not isinstance(name, str) or not _NAME.fullmatch(name):
                raise SettingsError(f"{key}.{name}", "a name of 1 to 64 A-Z a-z 0-9 _ -", None)
        return {name: _pattern(f"{key}.{name}", e) for name, e in value.items()}
    raise SettingsError(key, "a list of regular expressions, or a table of them", value)


def plugin(config: Mapping[str, Any]) -> Redactor:
    """The plugin for its ``[plugin.redact]`` table (see the module's docstring)."""
    for key in config:
        if key not in _KEYS:
            raise SettingsError(f"plugin.redact.{key}", "", None, unknown=True)
    placeholder = config.get("placeholder", "[redacted:{kind}]")
    if not isinstance(placeholder, str):
        raise SettingsError("plugin.redact.placeholder", "a string", placeholder)
    kinds = _kinds(config["kinds"]) if "kinds" in config else KINDS
    patterns = _patterns(config["patterns"]) if "patterns" in config else {}
    return Redactor(placeholder, kinds, patterns)
