"""TLS material of the local stack's secured services, made once under ``stack_dir/tls``.

A private CA signs a server certificate (for 127.0.0.1 and localhost) and a client
certificate (mTLS). A second, unrelated CA exists only so tests can show what a wrong CA
does. The broker reads its key and certificate from a PKCS#12 keystore; everything else is
PEM.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALID_DAYS = 3650


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """Paths of the stack's CA, server and client files (PEM unless named otherwise)."""

    dir: Path

    @property
    def ca_cert(self) -> Path:
        """The CA every secured local service's certificate chains to."""
        return self.dir / "ca.pem"

    @property
    def server_cert(self) -> Path:
        """The services' certificate (127.0.0.1, localhost)."""
        return self.dir / "server.pem"

    @property
    def server_key(self) -> Path:
        """The services' private key (unencrypted PKCS#8)."""
        return self.dir / "server-key.pem"

    @property
    def server_keystore(self) -> Path:
        """The server key and certificate chain as PKCS#12 (for the Kafka broker)."""
        return self.dir / "server.p12"

    @property
    def client_cert(self) -> Path:
        """A client certificate signed by the CA (mTLS)."""
        return self.dir / "client.pem"

    @property
    def client_key(self) -> Path:
        """The client certificate's private key."""
        return self.dir / "client-key.pem"

    @property
    def other_ca_cert(self) -> Path:
        """An unrelated CA: trusting it instead of ``ca_cert`` must fail verification."""
        return self.dir / "other-ca.pem"

    @property
    def keystore_password(self) -> str:
        """The password of ``server_keystore``."""
        return self.secret("keystore-password")

    def secret(self, name: str) -> str:
        """A password generated with the material (``kafka-password``, ``redis-password``)."""
        return (self.dir / name).read_text().strip()


def _name(common: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "memstream local stack"),
            x509.NameAttribute(NameOID.COMMON_NAME, common),
        ]
    )


def _ca(common: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common))
        .issuer_name(_name(common))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(
    common: str,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    *,
    server: bool,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return key, builder.sign(ca_key, hashes.SHA256())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    if private:
        os.chmod(tmp, 0o600)
    tmp.replace(path)


_LOCK = threading.Lock()


def ensure_tls_material(directory: Path) -> TlsMaterial:
    """The stack's TLS files under ``directory``, generated on first use (kept afterwards).

    Made in a folder of their own and renamed into place, so services prepared in parallel
    (or two processes) never see half of them.
    """
    material = TlsMaterial(directory)
    with _LOCK:
        if (directory / "complete").exists():
            return material
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".tls-", dir=directory.parent))
        try:
            _generate(TlsMaterial(staging))
            if directory.exists():  # left incomplete by an interrupted run
                shutil.rmtree(directory)
            staging.rename(directory)
        except OSError:
            if not (directory / "complete").exists():
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return material


def _generate(material: TlsMaterial) -> None:
    directory = material.dir
    ca_key, ca_cert = _ca("memstream local CA")
    server_key, server_cert = _leaf("127.0.0.1", ca_key, ca_cert, server=True)
    client_key, client_cert = _leaf("memstream client", ca_key, ca_cert, server=False)
    _, other_ca = _ca("unrelated CA")
    password = secrets.token_urlsafe(18)
    for name in ("kafka-password", "redis-password"):
        _write(directory / name, secrets.token_urlsafe(18).encode(), private=True)
    _write(material.ca_cert, _pem_cert(ca_cert))
    _write(material.other_ca_cert, _pem_cert(other_ca))
    _write(material.server_cert, _pem_cert(server_cert) + _pem_cert(ca_cert))
    _write(material.server_key, _pem_key(server_key), private=True)
    _write(material.client_cert, _pem_cert(client_cert))
    _write(material.client_key, _pem_key(client_key), private=True)
    _write(directory / "keystore-password", password.encode(), private=True)
    keystore = pkcs12.serialize_key_and_certificates(
        b"server",
        server_key,
        server_cert,
        [ca_cert],
        serialization.BestAvailableEncryption(password.encode()),
    )
    _write(material.server_keystore, keystore, private=True)
    (directory / "complete").write_text("generated by memstream stack up\n")
