"""Twisted endpoint strings, split and joined (``ssl:443:privateKey=k.pem``).

The syntax is Twisted's: fields separated by ``:``, a backslash escapes the
next character, ``key=value`` fields are keyword arguments.  The daemons
look inside a few endpoints (the admin socket's path and mode, the TLS
certificate files) and build them again; this is the one parser for that.
"""


def split(description: str):
    """``(kind, positional args, keyword args)`` of an endpoint string."""
    fields, current, escaped = [], [], False
    for ch in description:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ":":
            fields.append("".join(current))
            current = []
        else:
            current.append(ch)
    fields.append("".join(current))
    kind, args, kwargs = fields[0], [], {}
    for f in fields[1:]:
        key, sep, value = f.partition("=")
        if sep:
            kwargs[key] = value
        else:
            args.append(f)
    return kind, args, kwargs


def quote(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def join(kind: str, args=(), kwargs=None) -> str:
    parts = [kind] + [quote(a) for a in args]
    parts += [f"{k}={quote(v)}" for k, v in (kwargs or {}).items()]
    return ":".join(parts)
