"""A small private CA for the fleet: the broker's server certificate and device certificates.

The district runs its own CA because the broker is reached by IP address or a
private name as often as by a public one, and because in client-certificate
mode the CA *is* the fleet's access list: Mosquitto takes the certificate's
common name as the MQTT username (``use_identity_as_username``), so a device
certificate's CN is the device id and the per-device ACL applies unchanged.

Keys are ECDSA P-256: small certificates on a metered 4G link, fast handshakes
on a Raspberry Pi, and supported by every OpenSSL that Mosquitto and Python
link against. Private keys are written with mode 0600 and never logged.

Files in a CA directory (``CertificateAuthority.save``/``load``):
``ca.crt`` (public, goes to every device and to the broker) and ``ca.key``
(secret, stays on the operator's machine).
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleet_protocol.topics import valid_device_id

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
#: Revocation list: in the CA directory (the record) and next to the broker's certificates.
CRL = "crl.pem"
#: Device certificates issued, one PEM per certificate, named <device>-<serial hex>.crt:
#: what revocation looks up a device's serial numbers in.
ISSUED_DIR = "issued"
#: A CRL past its next-update date makes OpenSSL refuse *every* client
#: certificate, so the list is dated far ahead; it is rewritten on each revocation.
CRL_DAYS = 10 * 365
#: Lifetimes. Devices sit on poles for years and are hard to reach: their
#: certificates outlive a typical web certificate; revoke with a CRL instead.
CA_DAYS = 20 * 365
SERVER_DAYS = 5 * 365
DEVICE_DAYS = 10 * 365
#: Certificates are valid from a little before "now": a controller whose clock
#: is a few minutes behind must not reject a brand-new server certificate.
_BACKDATE = dt.timedelta(hours=1)


class TlsError(Exception):
    """A CA directory, certificate or key that cannot be used; the message names the file."""


@dataclass(frozen=True)
class IssuedCertificate:
    """A certificate and its private key, both PEM. ``key_pem`` is secret."""

    cert_pem: bytes
    key_pem: bytes

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    def write(self, cert_path: Path, key_path: Path) -> None:
        """Write the certificate (mode 0644) and the key (mode 0600)."""
        write_file(cert_path, self.cert_pem, mode=0o644)
        write_file(key_path, self.key_pem, mode=0o600)


def write_file(path: Path, data: bytes, *, mode: int) -> None:
    """Write ``data`` to ``path`` atomically, the file having ``mode`` from its first byte.

    The temporary file is created with ``mode`` already set, so a secret is never
    readable by others, not even for an instant; an existing file is replaced
    by rename, so a reader sees the old or the new content, never half of it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have removed bits from ``mode``
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _spki(public_key: CertificatePublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attrs)


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA certificate with its private key, able to issue server and device certificates."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(
        cls, common_name: str = "loa-fleet CA", *, organization: str = "", days: int = CA_DAYS
    ) -> CertificateAuthority:
        """A new self-signed CA, allowed to sign end-entity certificates only (path length 0)."""
        key = _new_key()
        name = _name(common_name, organization or None)
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + dt.timedelta(days=days))
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
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def save(self, directory: Path) -> None:
        """Write ``ca.crt`` (0644) and ``ca.key`` (0600); refuses to overwrite an existing CA."""
        for name in (CA_CERT, CA_KEY):
            if (directory / name).exists():
                raise TlsError(f"{directory / name}: a CA already exists there, not overwriting")
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_file(directory / CA_KEY, _key_pem(self.key), mode=0o600)
        write_file(directory / CA_CERT, self.cert_pem, mode=0o644)

    @classmethod
    def load(cls, directory: Path) -> CertificateAuthority:
        """Load ``ca.crt`` and ``ca.key`` from ``directory``; TlsError names a bad file."""
        cert_path, key_path = directory / CA_CERT, directory / CA_KEY
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        except OSError as exc:
            raise TlsError(f"{cert_path}: cannot read CA certificate: {exc.strerror}") from exc
        except ValueError as exc:
            raise TlsError(f"{cert_path}: not a PEM certificate") from exc
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except OSError as exc:
            raise TlsError(f"{key_path}: cannot read CA key: {exc.strerror}") from exc
        except (ValueError, TypeError) as exc:
            raise TlsError(f"{key_path}: not an unencrypted PEM private key") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TlsError(f"{key_path}: expected an EC private key, got {type(key).__name__}")
        if _spki(key.public_key()) != _spki(cert.public_key()):
            raise TlsError(f"{key_path}: does not match {cert_path}")
        return cls(cert, key)

    def _issue(
        self,
        subject: x509.Name,
        *,
        days: int,
        usage: x509.ObjectIdentifier,
        sans: Sequence[x509.GeneralName] = (),
    ) -> IssuedCertificate:
        key = _new_key()
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(min(now + dt.timedelta(days=days), self.cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=False,
                    crl_sign=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), False)
        cert = builder.sign(self.key, hashes.SHA256())
        return IssuedCertificate(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))

    def issue_server(self, hosts: Sequence[str], *, days: int = SERVER_DAYS) -> IssuedCertificate:
        """A broker certificate valid for every name and IP address in ``hosts``.

        Clients check the subject alternative names, not the CN, so every name a
        device may use to reach the broker (public name, private name, IP) must
        be listed here.
        """
        if not hosts:
            raise TlsError("a server certificate needs at least one host name or IP address")
        sans: list[x509.GeneralName] = []
        for host in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        return self._issue(
            _name(hosts[0]), days=days, usage=ExtendedKeyUsageOID.SERVER_AUTH, sans=sans
        )

    def issue_device(self, device_id: str, *, days: int = DEVICE_DAYS) -> IssuedCertificate:
        """A client certificate whose CN is ``device_id`` (the broker's MQTT username for it)."""
        if not valid_device_id(device_id):
            # Also what keeps a certificate from ever being issued for "loa_collector".
            raise TlsError(f"invalid device id {device_id!r}: not issuing a certificate")
        return self._issue(_name(device_id), days=days, usage=ExtendedKeyUsageOID.CLIENT_AUTH)

    def crl(self, revoked: Sequence[int]) -> bytes:
        """A CRL (PEM) signed by this CA listing the serial numbers ``revoked``."""
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now - _BACKDATE)
            .next_update(now + dt.timedelta(days=CRL_DAYS))
        )
        for serial in sorted(set(revoked)):
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(now - _BACKDATE)
                .build()
            )
        crl = builder.sign(self.key, hashes.SHA256())
        return crl.public_bytes(serialization.Encoding.PEM)

    def signed(self, cert: x509.Certificate) -> bool:
        """True if ``cert`` was issued by this CA (signature checked)."""
        try:
            cert.verify_directly_issued_by(self.cert)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True


def record_issued(ca_dir: Path, device_id: str, issued: IssuedCertificate) -> Path:
    """Keep a copy of a device certificate in the CA directory, for revocation by device id."""
    cert = issued.certificate
    path = ca_dir / ISSUED_DIR / f"{device_id}-{cert.serial_number:x}.crt"
    write_file(path, issued.cert_pem, mode=0o644)
    return path


def issued_serials(ca_dir: Path, device_id: str) -> list[int]:
    """Serial numbers of the certificates recorded for ``device_id``."""
    return [
        int(p.stem.rpartition("-")[2], 16)
        for p in sorted((ca_dir / ISSUED_DIR).glob(f"{device_id}-*.crt"))
        if p.stem.rpartition("-")[0] == device_id
    ]


def revoked_serials(ca_dir: Path) -> list[int]:
    """Serial numbers in the CA directory's CRL ([] when there is none yet)."""
    path = ca_dir / CRL
    if not path.exists():
        return []
    try:
        crl = x509.load_pem_x509_crl(path.read_bytes())
    except ValueError as exc:
        raise TlsError(f"{path}: not a PEM CRL") from exc
    return [r.serial_number for r in crl]


def revoke(ca: CertificateAuthority, ca_dir: Path, serials: Sequence[int]) -> bytes:
    """Add ``serials`` to the CA directory's CRL (written back); returns the new CRL PEM."""
    pem = ca.crl([*revoked_serials(ca_dir), *serials])
    write_file(ca_dir / CRL, pem, mode=0o644)
    return pem


def install_broker_files(
    ca: CertificateAuthority, config_dir: Path, hosts: Sequence[str]
) -> IssuedCertificate:
    """Write ``ca.crt``, ``server.crt``, ``server.key`` and ``crl.pem`` for the broker config.

    ``config_dir`` is ``BrokerLayout.config_dir`` (``/etc/mosquitto/loa`` in
    production). The CRL is written empty unless one exists there already: the
    client-certificate listener checks every certificate against it, and
    without a CRL for the CA OpenSSL would refuse them all. Returns the issued
    server certificate.
    """
    server = ca.issue_server(hosts)
    write_file(config_dir / CA_CERT, ca.cert_pem, mode=0o644)
    server.write(config_dir / "server.crt", config_dir / "server.key")
    if not (config_dir / CRL).exists():
        write_file(config_dir / CRL, ca.crl([]), mode=0o644)
    return server


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m collector.tls ca|server``: create the fleet CA and the broker's certificate."""
    parser = argparse.ArgumentParser(
        prog="python -m collector.tls", description="loa-fleet private CA for the MQTT broker"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_ca = sub.add_parser("ca", help="create a new CA (ca.crt, ca.key) in --ca-dir")
    p_ca.add_argument("--ca-dir", type=Path, required=True)
    p_ca.add_argument("--name", default="loa-fleet CA", help="the CA's common name")
    p_ca.add_argument("--organization", default="")
    p_srv = sub.add_parser(
        "server", help="issue the broker's certificate into --out (ca.crt, server.crt, server.key)"
    )
    p_srv.add_argument("--ca-dir", type=Path, required=True)
    p_srv.add_argument("--out", type=Path, required=True)
    p_srv.add_argument(
        "hosts", nargs="+", help="every DNS name and IP address devices use to reach the broker"
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "ca":
            CertificateAuthority.create(args.name, organization=args.organization).save(args.ca_dir)
            print(f"CA created in {args.ca_dir} (keep {CA_KEY} offline and backed up)")
        else:
            ca = CertificateAuthority.load(args.ca_dir)
            install_broker_files(ca, args.out, args.hosts)
            # The broker gets the CA's current revocation list, signed afresh.
            write_file(args.out / CRL, ca.crl(revoked_serials(args.ca_dir)), mode=0o644)
            print(f"server certificate for {', '.join(args.hosts)} written to {args.out}")
    except TlsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
