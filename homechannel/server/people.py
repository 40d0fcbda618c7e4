"""People and their rights: who a session is, and what the home server lets it do.

Every credential in the enrolled-devices store (``server/devices.py``: a device key,
a native client's sign-in key, a passkey, an invite) belongs to a named person with
:class:`Rights`.  The owner is whoever signs in with the password, or with a
credential enrolled with the owner's rights; other people come in through an invite
the owner makes (from the browser, or ``homechannel people invite``) and enrol a
passkey with the rights the invite carries.

The home server enforces the rights on every app channel (``AppHost.channel_opened``:
an app not allowed is refused; the files app gets the person's roots and read-only
flag in its configuration, so every write operation is refused by the code that
already refuses them on a read-only server).  The browser only hides what is not
allowed.  ``docs/security.md``, "People and rights".
"""

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from homechannel.errors import ConfigError, ProtocolError

OWNER_NAME = "owner"
MAX_PERSON = 40
PERSON = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9 ._@-]{0,39}\Z")
APP_NAMES = ("files", "terminal", "desktop", "forward")
MAX_ROOTS = 16


def check_person(name: object) -> str:
    """A person's name: 1-40 characters, letters, digits, space, ``._@-``."""
    if not isinstance(name, str) or not PERSON.match(name):
        raise ProtocolError("a person's name is 1-40 letters, digits, spaces or ._@- "
                            "(starting with a letter or digit)")
    return name


@dataclass(frozen=True)
class Rights:
    """What a person may do.  ``apps``: the apps they may open (of those the server
    enables); ``roots``: the files app's roots they see (configured paths; empty: all
    of them); ``read_only``: no upload, mkdir, rename or delete; ``invite``: they may
    invite others (with at most their own rights); ``owner``: all of it, and the
    password's standing (enrolling device keys)."""

    apps: frozenset[str] = frozenset()
    read_only: bool = True
    roots: tuple[str, ...] = ()
    invite: bool = False
    owner: bool = False

    def allows_app(self, name: str) -> bool:
        return self.owner or name in self.apps

    def app_config(self, name: str, config):
        """The configuration app *name* runs with for this person: the files app's
        roots narrowed and read-only added; None if the person may not open it (or
        none of the roots is theirs)."""
        if not self.allows_app(name):
            return None
        if name != "files" or self.owner:
            return config
        roots = tuple(r for r in config.roots if not self.roots or r in self.roots)
        if not roots:
            return None
        return dataclasses.replace(config, roots=roots,
                                   read_only=config.read_only or self.read_only)

    def within(self, other: "Rights") -> bool:
        """True if these rights give nothing *other* does not (an invite's bound)."""
        if other.owner:
            return True
        return (not self.owner and self.apps <= other.apps
                and (self.read_only or not other.read_only)
                and (not other.roots or bool(self.roots) and set(self.roots) <= set(other.roots))
                and (not self.invite or other.invite))

    def to_doc(self) -> dict[str, Any]:
        if self.owner:
            return {"owner": True}
        return {"apps": sorted(self.apps), "read_only": self.read_only,
                "roots": list(self.roots), "invite": self.invite}

    @classmethod
    def from_doc(cls, doc: object) -> "Rights":
        """Rights from their JSON form (the store, an invite request); ProtocolError
        saying what is wrong."""
        if not isinstance(doc, dict):
            raise ProtocolError("rights are an object")
        if doc.get("owner") is True:
            return OWNER
        if set(doc) - {"apps", "read_only", "roots", "invite", "owner"} or doc.get("owner"):
            raise ProtocolError("rights are {apps, read_only, roots, invite}")
        apps, roots = doc.get("apps", []), doc.get("roots", [])
        if not isinstance(apps, list) or not all(a in APP_NAMES for a in apps):
            raise ProtocolError(f"apps must be a list of {', '.join(APP_NAMES)}")
        if (not isinstance(roots, list) or len(roots) > MAX_ROOTS
                or not all(isinstance(r, str) and 0 < len(r) <= 4096 for r in roots)):
            raise ProtocolError("roots must be a list of the files app's configured roots")
        read_only, invite = doc.get("read_only", True), doc.get("invite", False)
        if not isinstance(read_only, bool) or not isinstance(invite, bool):
            raise ProtocolError("read_only and invite are true or false")
        return cls(frozenset(apps), read_only, tuple(roots), invite)

    def describe(self) -> str:
        """In words, for ``people list`` and the audit log."""
        if self.owner:
            return "owner (everything)"
        parts = [",".join(sorted(self.apps)) or "no apps"]
        if "files" in self.apps:
            parts.append("files read-only" if self.read_only else "files read-write")
            if self.roots:
                parts.append("roots " + ",".join(self.roots))
        if self.invite:
            parts.append("may invite")
        return "; ".join(parts)


OWNER = Rights(frozenset(APP_NAMES), False, (), True, True)
# A session signed in with an invite: it may only enrol the passkey the invite is for.
ENROL_ONLY = Rights()


def parse_rights_option(apps: str, read_only: bool, roots: list[str], invite: bool,
                        owner: bool) -> Rights:
    """Rights from ``homechannel people invite``'s options; ConfigError saying what is wrong."""
    if owner:
        return OWNER
    names = [a.strip() for a in apps.split(",") if a.strip()]
    try:
        return Rights.from_doc({"apps": names, "read_only": read_only, "roots": list(roots),
                                "invite": invite})
    except ProtocolError as e:
        raise ConfigError(f"--apps/--root: {e}") from None
