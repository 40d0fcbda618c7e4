"""HomeChannel: reach a home machine from a browser over an end-to-end encrypted WebRTC datachannel."""

import os
import sys


def default_static_dir() -> str:
    """Where the browser client (``static/``) lives.

    A source checkout or editable install has ``static/`` next to the
    ``homechannel`` package; a regular install ships it as data files under
    ``<sys.prefix>/share/homechannel/static``.
    """
    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "static")
    if os.path.isdir(here):
        return here
    return os.path.join(sys.prefix, "share", "homechannel", "static")
