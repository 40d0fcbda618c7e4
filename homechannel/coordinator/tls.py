"""The coordinator's own HTTPS endpoint, with certificates that can be replaced
while it runs (certbot renews them every 60-90 days).

``web.listen = "ssl:443:privateKey=KEY:certKey=CERT"`` is Twisted's syntax; the
coordinator builds that endpoint itself around :class:`ReloadableCertificate`,
which re-reads both files on SIGHUP (``systemctl reload``, a certbot deploy
hook).  New TLS connections get the new certificate; open connections, the
UDP registry and every session are untouched.  A bad pair of files (a key that
does not match, a half-written file) is refused with a log line and the old
certificate stays in use.

The certificate file may hold the whole chain (certbot's ``fullchain.pem``):
the first certificate is the server's, the rest are sent as its chain
(``extraCertChain=FILE`` adds more).
"""

import signal

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from homechannel.ops import endpoints
from homechannel.errors import ConfigError
from homechannel.ops.logsafe import Logger

log = Logger()

_KNOWN = {"privateKey", "certKey", "extraCertChain", "interface", "backlog"}


def _read(path, what):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"cannot read the TLS {what} {path}: {e.strerror}") from None


def load_pair(key_path, cert_path, chain_path=None):
    """``(private key, [certificates])`` as cryptography objects, checked to match."""
    try:
        key = serialization.load_pem_private_key(_read(key_path, "private key"), None)
    except (ValueError, TypeError):
        raise ConfigError(f"{key_path} is not an unencrypted PEM private key") from None
    try:
        certs = x509.load_pem_x509_certificates(_read(cert_path, "certificate"))
        if chain_path:
            certs += x509.load_pem_x509_certificates(_read(chain_path, "certificate chain"))
    except ValueError:
        raise ConfigError(f"{cert_path} is not a PEM certificate (chain)") from None
    pub = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if certs[0].public_key().public_bytes(*pub) != key.public_key().public_bytes(*pub):
        raise ConfigError(f"the private key {key_path} does not belong to the certificate "
                          f"{cert_path}")
    return key, certs


class ReloadableCertificate:
    """An OpenSSL context factory whose certificate can be replaced at run time."""

    def __init__(self, key_path, cert_path, chain_path=None):
        self.key_path, self.cert_path, self.chain_path = key_path, cert_path, chain_path
        self._options = None
        self.certificate = None
        self.load()

    def load(self):
        """Read the files; raise ConfigError (and keep the old certificate) if they are bad."""
        from OpenSSL import crypto as ossl
        from twisted.internet.ssl import CertificateOptions

        key, certs = load_pair(self.key_path, self.cert_path, self.chain_path)
        self._options = CertificateOptions(
            privateKey=ossl.PKey.from_cryptography_key(key),
            certificate=ossl.X509.from_cryptography(certs[0]),
            extraCertChain=[ossl.X509.from_cryptography(c) for c in certs[1:]])
        self.certificate = certs[0]

    def reload(self):
        """SIGHUP: load the files again; log the outcome.  Never raises."""
        try:
            self.load()
        except ConfigError as e:
            log.error("TLS certificate not reloaded, the old one stays in use: {err}", err=e)
            return False
        except Exception:
            log.failure("TLS certificate not reloaded, the old one stays in use")
            return False
        log.info("TLS certificate reloaded: serial {serial:x}, valid until {until}",
                 serial=self.certificate.serial_number,
                 until=self.certificate.not_valid_after_utc.isoformat())
        return True

    # IOpenSSLContextFactory (what TLSMemoryBIOFactory asks for each connection)
    def getContext(self):
        return self._options.getContext()


def is_tls(listen: str) -> bool:
    return endpoints.split(listen)[0] == "ssl"


def server_endpoint(reactor, listen):
    """``(endpoint, ReloadableCertificate)`` for an ``ssl:`` endpoint string."""
    from twisted.internet.endpoints import SSL4ServerEndpoint

    kind, args, kw = endpoints.split(listen)
    unknown = set(kw) - _KNOWN
    if kind != "ssl" or len(args) != 1 or not args[0].isdigit() or unknown:
        raise ConfigError(f"web.listen {listen!r}: expected ssl:PORT:privateKey=KEY[:certKey="
                          "CERT][:extraCertChain=CHAIN][:interface=ADDR]"
                          + (f" (unknown: {', '.join(sorted(unknown))})" if unknown else ""))
    if "privateKey" not in kw:
        raise ConfigError(f"web.listen {listen!r}: privateKey=FILE is required")
    cert = ReloadableCertificate(kw["privateKey"], kw.get("certKey", kw["privateKey"]),
                                 kw.get("extraCertChain"))
    endpoint = SSL4ServerEndpoint(reactor, int(args[0]), cert,
                                  backlog=int(kw.get("backlog", 50)),
                                  interface=kw.get("interface", ""))
    return endpoint, cert


def reload_on_sighup(reactor, callback):
    """Run *callback* in the reactor thread on each SIGHUP."""
    def handler(signum, frame):
        reactor.callFromThread(callback)
    signal.signal(signal.SIGHUP, handler)
