"""A local test CA (root -> intermediate -> server certificates) made with
``cryptography``, laid out as certbot lays out /etc/letsencrypt."""

import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _pem_cert(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


class TestCA:
    """``root_pem`` is what clients trust; ``issue`` makes a server certificate."""

    __test__ = False   # not a pytest class

    def __init__(self):
        now = datetime.datetime.now(datetime.timezone.utc)
        self._now = now
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        self.root = self._sign(_name("HomeChannel Test Root"), self.root_key.public_key(),
                               _name("HomeChannel Test Root"), self.root_key, ca=True)
        self.inter_key = ec.generate_private_key(ec.SECP256R1())
        self.inter = self._sign(_name("HomeChannel Test Intermediate"),
                                self.inter_key.public_key(), self.root.subject,
                                self.root_key, ca=True)
        self.root_pem = _pem_cert(self.root)

    def _sign(self, subject, public_key, issuer, issuer_key, ca=False, names=(), serial=None):
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
             .public_key(public_key).serial_number(serial or x509.random_serial_number())
             .not_valid_before(self._now - datetime.timedelta(minutes=5))
             .not_valid_after(self._now + datetime.timedelta(days=90))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if names:
            alt = []
            for n in names:
                try:
                    alt.append(x509.IPAddress(ipaddress.ip_address(n)))
                except ValueError:
                    alt.append(x509.DNSName(n))
            b = b.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    def issue(self, names, serial):
        """``(key PEM, fullchain PEM, certificate)`` for *names* (DNS names or IPs)."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._sign(_name(names[0]), key.public_key(), self.inter.subject,
                          self.inter_key, names=names, serial=serial)
        return _pem_key(key), _pem_cert(cert) + _pem_cert(self.inter), cert


def certbot_layout(base, name, key_pem, chain_pem, version):
    """Write archive/NAME/{privkey,fullchain}N.pem and point live/NAME/* at them, as
    certbot does on each renewal; return the live paths (key, fullchain)."""
    archive = os.path.join(base, "archive", name)
    live = os.path.join(base, "live", name)
    os.makedirs(archive, exist_ok=True)
    os.makedirs(live, exist_ok=True)
    paths = {}
    for stem, data in (("privkey", key_pem), ("fullchain", chain_pem)):
        target = os.path.join(archive, f"{stem}{version}.pem")
        with open(target, "wb") as f:
            f.write(data)
        link = os.path.join(live, f"{stem}.pem")
        tmp = link + ".new"
        os.symlink(os.path.relpath(target, live), tmp)
        os.replace(tmp, link)
        paths[stem] = link
    os.chmod(paths["privkey"], 0o600)
    return paths["privkey"], paths["fullchain"]
