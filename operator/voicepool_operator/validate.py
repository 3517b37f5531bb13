"""What every parser of a voicepool object checks the same way (pure).

Names a spec gives for objects (Secrets, ServiceAccounts, PriorityClasses) become path
segments of API requests, so each is a DNS-1123 name of the object's own namespace before it
goes anywhere: no "/", "..", "%", blanks or upper case ever pass. The CRDs check the same with
CEL at ``kubectl apply``; this is the second line, for objects stored before a rule existed.
"""

from __future__ import annotations

import re
from typing import Any


class SpecError(ValueError):
    """A spec the operator cannot act on; the message names the field."""


#: A Secret, ServiceAccount or PriorityClass name (DNS-1123 subdomain).
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
#: A key inside a Secret's data.
SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


def local_object_name(value: Any, where: str, what: str = "a Secret", owner: str = "pool") -> str:
    """A name of an object in the ``owner``'s namespace, checked before it reaches any API path."""
    name = str(value or "")
    if len(name) > 253 or not DNS1123_SUBDOMAIN.match(name):
        raise SpecError(
            f"{where}: {name[:80]!r} is not the name of {what} in the {owner}'s namespace "
            "(lowercase letters, digits, '-' and '.', at most 253; no '/' or '..')"
        )
    return name


def secret_key(value: Any, default: str, where: str) -> str:
    """A key of a Secret's data (letters, digits, '-', '_', '.')."""
    key = str(value or default)
    if len(key) > 253 or not SECRET_KEY.match(key) or key in (".", ".."):
        raise SpecError(f"{where}: {key[:80]!r} is not a Secret data key")
    return key
