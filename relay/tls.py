"""The one place SSLContexts are built from configuration.

When no certificate is configured, a self-signed development certificate for
server.hostname is created under data_dir/tls on first start (and reused after).

Imports: ssl, cryptography, stdlib, relay.config.
"""

from __future__ import annotations

import datetime
import os
import ssl
from pathlib import Path

from relay.config import Config


def certificate_paths(config: Config) -> tuple[Path, Path]:
    if config.tls.cert and config.tls.key:
        return config.tls.cert, config.tls.key
    d = config.server.data_dir / "tls"
    return d / "dev-cert.pem", d / "dev-key.pem"


def ensure_certificate(config: Config) -> tuple[Path, Path]:
    """Return (cert, key); create the development pair when none is configured."""
    cert, key = certificate_paths(config)
    if config.tls.cert or (cert.exists() and key.exists()):
        return cert, key
    _make_self_signed(config.server.hostname, cert, key)
    return cert, key


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    ctx.options |= ssl.OP_NO_COMPRESSION
    return ctx


def _make_self_signed(hostname: str, cert_path: Path, key_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_key = key_path.with_suffix(".tmp")
    fd = os.open(tmp_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    os.replace(tmp_key, key_path)
    tmp_cert = cert_path.with_suffix(".tmp")
    tmp_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    os.replace(tmp_cert, cert_path)
