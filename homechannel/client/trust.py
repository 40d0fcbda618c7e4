"""What the native client trusts, and remembers trusting.

- :func:`coordinator_url`: a coordinator's URL checked (https://, or http:// only
  on this machine) and in its one canonical form, the key of what is remembered.
- :class:`KnownCoordinators` (``coordinators.json``): the coordinator key trusted
  per URL.  Without ``--coordinator-key`` the key its ``/config.js`` publishes is
  trusted on first use (:func:`trusted_coordinator_key`), as ssh's known_hosts,
  remembered once a response verifies with it (:func:`remember_key`), and a
  different key later is refused.
- :class:`DeviceStore` (``devices.json``): the device tokens home servers issued
  to this client, keyed by coordinator URL and server (a token is never handed to
  another coordinator's URL than the one it was used with), and the device keys
  they are bound to (``device-keys/``, one 0600 key file per server), so that it
  keeps its own sign-in budget while strangers guess.

Both files are in the state directory with mode 0600, changed under a lock.
"""

import ipaddress
import json
import os
import re
import urllib.parse

from homechannel import crypto
from homechannel.client.api import Coordinator
from homechannel.config import default_state_dir
from homechannel.errors import AuthenticationError, ConfigError, HomeChannelError
from homechannel.keyfiles import replace_secret_file

_CONFIG_KEY = re.compile(r'coordinatorKey\s*=\s*"([A-Za-z0-9_-]+)"')


class _JsonStore:
    """A JSON file ``{name: text}`` in the state directory with mode 0600
    (``keyfiles.replace_secret_file``), changed under an exclusive lock (``FILE.lock``)
    so that two clients saving at once lose nothing.  A missing file is an empty
    store; a damaged one too (replaced on the next save) unless the store is
    ``STRICT``, where it is an error.  *path* None keeps nothing."""

    FILE = ""
    STRICT = False
    WHAT = ""

    def __init__(self, path):
        self.path = path

    @classmethod
    def default(cls):
        return cls(os.path.join(default_state_dir(), cls.FILE))

    def _load(self):
        if not self.path:
            return {}
        try:
            with open(self.path, encoding="utf-8") as f:
                doc = json.load(f)
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            if self.STRICT:
                raise ConfigError(f"cannot read {self.path} ({e}), which holds {self.WHAT}: "
                                  "fix it or delete it (then every key is trusted on first "
                                  "use again)") from None
            return {}
        return doc

    def get(self, name):
        text = self._load().get(name)
        return text if isinstance(text, str) else None

    def put(self, name, text):
        if not self.path:
            return
        import fcntl

        os.makedirs(os.path.dirname(self.path) or ".", mode=0o700, exist_ok=True)
        lock = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            doc = self._load()
            if text is None:
                if doc.pop(name, None) is None:
                    return
            else:
                doc[name] = text
            replace_secret_file(self.path, (json.dumps(doc, indent=2) + "\n").encode())
        finally:
            os.close(lock)


class DeviceStore(_JsonStore):
    """Device tokens the home servers issued to this client: ``{"<coordinator URL>
    <server id>": token}`` (a token is only ever sent to the coordinator URL it was
    kept for), and the device key each is bound to: ``device-keys/<key id of the
    server>.pem`` next to the file (ECDSA P-256, mode 0600, created on first use,
    never replaced; ``keyfiles``).  *path* None keeps nothing: a fresh key in memory."""

    FILE = "devices.json"

    def __init__(self, path):
        super().__init__(path)
        self._keys = {}

    def token(self, url, server_id):
        return self.get(f"{url} {server_id}")

    def keep(self, url, server_id, token):
        """Keep *token* for *url* and *server_id* (None: forget it)."""
        self.put(f"{url} {server_id}", token)

    def device_key(self, server_id):
        """This client's key for the home server *server_id* (an ``IdentityKey``)."""
        key = self._keys.get(server_id)
        if key is None:
            if self.path:
                from homechannel.keyfiles import load_or_create_identity_key

                name = crypto.b64u_encode(crypto.key_id(crypto.parse_server_id(server_id)))
                key, _ = load_or_create_identity_key(os.path.join(
                    os.path.dirname(self.path) or ".", "device-keys", f"{name}.pem"))
            else:
                key = crypto.IdentityKey.generate()
            self._keys[server_id] = key
        return key


class KnownCoordinators(_JsonStore):
    """The coordinator keys this client trusted, per coordinator URL (trust on first
    use, as ssh's known_hosts): ``{url: base64url key}``."""

    FILE = "coordinators.json"
    STRICT = True
    WHAT = "the coordinator keys this client trusts"


def _is_loopback(host):
    # Exactly "localhost" (from /etc/hosts); "localhost." is an absolute name that
    # glibc sends to DNS, whoever answers that.
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_DEFAULT_PORTS = {"http": 80, "https": 443}


def coordinator_url(url, insecure_http=False):
    """*url* checked as a coordinator's URL, in its one canonical form (the requests'
    base and the key of the coordinators this client trusts): scheme and host in lower
    case, no trailing dot, no default port, no trailing slash; no user, query or
    fragment.  https://, or http:// only on this machine (127.0.0.0/8, ::1, localhost)
    unless *insecure_http* (for tests on private networks): over plain http anyone on
    the way could play the coordinator, hand out its own key, and collect answers and
    proofs over challenges it chose to guess the password offline."""
    expected = "expected https://HOST[:PORT][/PATH]"
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as e:     # e.g. "Invalid IPv6 URL" for an unclosed [
        raise ConfigError(f"--url {url!r} is not a coordinator URL ({e}): {expected}") \
            from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--url {url!r} is not a coordinator URL: {expected} "
                          "(or http:// on this machine)")
    if "@" in parts.netloc or "?" in url or "#" in url:
        raise ConfigError(f"--url {url!r}: a coordinator URL has no user name, query or "
                          f"fragment: {expected}")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"--url {url!r} has a bad port number") from None
    host = parts.hostname       # lower case, without brackets
    if parts.scheme == "http" and not insecure_http and not _is_loopback(host):
        raise ConfigError(f"--url {url!r}: plain http:// to a coordinator on another machine "
                          "lets anyone on the way play the coordinator; use https:// "
                          "(http:// only for 127.0.0.1, ::1 or localhost)")
    host = host.rstrip(".")
    if not host:
        raise ConfigError(f"--url {url!r} is not a coordinator URL: {expected}")
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != _DEFAULT_PORTS[parts.scheme]:
        netloc += f":{port}"
    return f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"


async def trusted_coordinator_key(url, known, notify):
    """The key in ``{url}/config.js``, checked against the one *known* (a
    :class:`KnownCoordinators`) remembers for *url*: trusted on first use, and a
    different key later is refused (``--coordinator-key`` accepts a new one)."""
    published = await fetch_coordinator_key(url)
    text = crypto.b64u_encode(published)
    remembered = known.get(url)
    if remembered is None:
        where = (f" (remembered in {known.path} once it verifies a response)"
                 if known.path else "")
        notify(f"trusting coordinator key {text} from {url}/config.js on first use{where}; "
               "pass --coordinator-key to pin it")
    elif remembered != text:
        raise AuthenticationError(
            f"the coordinator at {url} now publishes the key {text}, not the key {remembered} "
            f"this client trusted before ({known.path}): someone between you and it may be "
            "playing the coordinator. If its operator really changed the key, pass "
            f"--coordinator-key {text} once to accept it", "coordinator-key-changed")
    return published


async def fetch_coordinator_key(url):
    """The key published in ``{url}/config.js``."""
    status, _, body = await Coordinator(url, None).fetch("/config.js")
    match = _CONFIG_KEY.search(body.decode("utf-8", "replace")) if status == 200 else None
    if not match:
        raise ConfigError(f"{url}/config.js does not publish a coordinator key: "
                          "pass --coordinator-key")
    return crypto.parse_server_id(match.group(1))


def remember_key(coordinators, coordinator, notify):
    """Keep the coordinator key once a response verified with it (a first-use key, or
    a new one given with --coordinator-key)."""
    text = crypto.b64u_encode(coordinator.key_raw)
    if not coordinator.verified:
        return
    try:
        if coordinators.get(coordinator.url) != text:
            coordinators.put(coordinator.url, text)
    except OSError as e:
        notify(f"cannot remember the coordinator key in {coordinators.path}: "
               f"{e.strerror or e}")
    except HomeChannelError as e:   # damaged meanwhile: never replaces the outcome
        notify(f"cannot remember the coordinator key: {e}")
