"""The example systemd units of conf/systemd/: ``unit_text(name)`` reads one, and
``directives(text)`` maps each directive to its values (in order)."""

import os

from helpers import REPO


def unit_text(name):
    with open(os.path.join(REPO, "conf", "systemd", name)) as f:
        return f.read()


def directives(text):
    found = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found
