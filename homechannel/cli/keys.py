"""``homechannel keygen`` and ``pubkey``: identity keys, and the key-path checks
every command that writes a key makes first."""

import os
import sys

from homechannel import config, keyfiles
from homechannel.errors import ConfigError


def check_key_path(path):
    if os.path.isdir(path):
        raise ConfigError(f"{path} is a directory, not a key file: give the path of the key "
                          f"file itself, e.g. {os.path.join(path, 'server.key')}")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.lexists(parent) and parent != os.path.dirname(parent):
        parent = os.path.dirname(parent)
    if os.path.lexists(parent) and not os.path.isdir(parent):
        raise ConfigError(f"cannot create the key file {path}: {parent} is not a directory")
    return path


def _key_path(args, role):
    if args.key:
        return check_key_path(args.key)
    loader = config.load_server if role == "server" else config.load_coordinator
    return check_key_path(loader(args.config, {"state_dir": args.state_dir}).identity_key)


def cmd_keygen(args):
    path = _key_path(args, args.role)
    key, created = keyfiles.load_or_create_identity_key(path)
    print(("created " if created else "exists: ") + path, file=sys.stderr)
    print(key.text)


def cmd_pubkey(args):
    print(keyfiles.load_identity_key(_key_path(args, args.role)).text)

