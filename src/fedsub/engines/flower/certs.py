"""`fedsub flower certs DIR`: TLS certificates and SuperNode keys for a loopback deployment.

Writes a self-signed CA (ca.crt), a SuperLink certificate signed by it for 127.0.0.1 / localhost
(server.pem, server.key) and, per SuperNode, an EC P-384 key pair in OpenSSH format (nodeK, nodeK.pub),
the kind flwr 1.41's SuperNode authentication reads (`flower-supernode --auth-supernode-private-key`,
`flwr supernode register nodeK.pub`). For tests and single-machine trials; a real federation uses
certificates from its own CA. Uses `cryptography`, which flwr depends on.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fedsub.errors import ConfigError

VALID_DAYS = 30


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(subject: str, key, issuer: str, issuer_key, *, ca: bool, hosts: list[str] = ()) -> x509.Certificate:
    """A CA or a TLS server certificate with the extensions strict verifiers require (RFC 5280, and
    `openssl verify -x509_strict`): basicConstraints, keyUsage, extendedKeyUsage (server), subject
    and authority key identifiers."""
    now = dt.datetime.now(dt.timezone.utc)
    usage = dict.fromkeys(
        ("content_commitment", "key_encipherment", "data_encipherment", "key_agreement", "encipher_only",
         "decipher_only"), False,
    )  # fmt: skip
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=ca, crl_sign=ca, **usage), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    )
    if not ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    if hosts:
        names = [x509.IPAddress(ipaddress.ip_address(h)) if h[0].isdigit() else x509.DNSName(h) for h in hosts]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem_key(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def write_certificates(out: Path, nodes: int, hosts: list[str] = ("127.0.0.1", "localhost")) -> list[Path]:
    """The files listed in the module docstring; refuses to overwrite an existing ca.crt."""
    out = Path(out)
    if (out / "ca.crt").exists():
        raise ConfigError(f"{out}/ca.crt exists; choose an empty folder (certificates are never overwritten)")
    if nodes < 1:
        raise ConfigError(f"--nodes {nodes}: give at least 1 SuperNode")
    out.mkdir(parents=True, exist_ok=True)
    ca_key, server_key = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    ca = _certificate("fedsub loopback CA", ca_key, "fedsub loopback CA", ca_key, ca=True)
    server = _certificate(hosts[0], server_key, "fedsub loopback CA", ca_key, ca=False, hosts=list(hosts))
    written = {
        "ca.crt": ca.public_bytes(serialization.Encoding.PEM),
        "server.pem": server.public_bytes(serialization.Encoding.PEM),
        "server.key": _pem_key(server_key),
    }
    for k in range(nodes):
        key = ec.generate_private_key(ec.SECP384R1())
        written[f"node{k}"] = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
        written[f"node{k}.pub"] = (
            key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n"
        )
    paths = []
    for name, data in written.items():
        private = not name.endswith((".crt", ".pem", ".pub"))
        paths.append(write_new(out / name, data, 0o600 if private else 0o644))
    return paths


def write_new(path: Path, data: bytes, mode: int) -> Path:
    """Create `path` with `mode` from the first byte (a private key is never readable by others, not
    even for an instant, whatever the umask widens: O_EXCL, then fchmod before writing)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # exactly `mode`, whatever the umask
        os.write(fd, data)
    finally:
        os.close(fd)
    return path
