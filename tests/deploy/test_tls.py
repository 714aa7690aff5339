"""collector/tls.py: the fleet CA, its certificates, revocation list and file modes."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from collector.tls import (
    CertificateAuthority,
    TlsError,
    issued_serials,
    main,
    record_issued,
    revoke,
    revoked_serials,
)


def test_ca_round_trips_through_its_directory_with_private_key_modes(
    tmp_path: Path, fleet_ca: CertificateAuthority
) -> None:
    fleet_ca.save(tmp_path / "ca")
    assert stat.S_IMODE((tmp_path / "ca" / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "ca").stat().st_mode) == 0o700
    loaded = CertificateAuthority.load(tmp_path / "ca")
    assert loaded.cert == fleet_ca.cert
    with pytest.raises(TlsError, match="already exists"):
        fleet_ca.save(tmp_path / "ca")


def test_bad_ca_directories_are_named(tmp_path: Path, fleet_ca: CertificateAuthority) -> None:
    with pytest.raises(TlsError, match=r"ca\.crt: cannot read"):
        CertificateAuthority.load(tmp_path)
    other = CertificateAuthority.create("other")
    fleet_ca.save(tmp_path / "a")
    other.save(tmp_path / "b")
    (tmp_path / "a" / "ca.key").write_bytes((tmp_path / "b" / "ca.key").read_bytes())
    with pytest.raises(TlsError, match="does not match"):
        CertificateAuthority.load(tmp_path / "a")
    (tmp_path / "a" / "ca.crt").write_text("garbage")
    with pytest.raises(TlsError, match="not a PEM certificate"):
        CertificateAuthority.load(tmp_path / "a")


def test_server_certificate_names_every_host(fleet_ca: CertificateAuthority) -> None:
    cert = fleet_ca.issue_server(["mqtt.example.vn", "203.0.113.10"]).certificate
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["mqtt.example.vn"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("203.0.113.10")]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert fleet_ca.signed(cert)
    with pytest.raises(TlsError):
        fleet_ca.issue_server([])


def test_device_certificate_cn_is_the_device_id(fleet_ca: CertificateAuthority) -> None:
    cert = fleet_ca.issue_device("lt-xuanhuy-03").certificate
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "lt-xuanhuy-03"
    assert not CertificateAuthority.create("other").signed(cert)
    # Never a certificate that the broker would take for the collector.
    with pytest.raises(TlsError, match="invalid device id"):
        fleet_ca.issue_device("loa_collector")


def test_revocation_accumulates_per_device(tmp_path: Path, fleet_ca: CertificateAuthority) -> None:
    fleet_ca.save(tmp_path)
    first = fleet_ca.issue_device("dev-001")
    record_issued(tmp_path, "dev-001", first)
    # A device whose id extends another's (ids may contain "-") is not confused with it.
    record_issued(tmp_path, "dev-001-a", fleet_ca.issue_device("dev-001-a"))
    assert issued_serials(tmp_path, "dev-001") == [first.certificate.serial_number]
    assert revoked_serials(tmp_path) == []
    revoke(fleet_ca, tmp_path, [first.certificate.serial_number])
    revoke(fleet_ca, tmp_path, [7])
    assert sorted(revoked_serials(tmp_path)) == sorted([first.certificate.serial_number, 7])
    crl = x509.load_pem_x509_crl((tmp_path / "crl.pem").read_bytes())
    assert crl.is_signature_valid(fleet_ca.key.public_key())


def test_cli_creates_ca_and_broker_files(tmp_path: Path) -> None:
    assert main(["ca", "--ca-dir", str(tmp_path / "ca")]) == 0
    assert (
        main(["server", "--ca-dir", str(tmp_path / "ca"), "--out", str(tmp_path / "b"), "h"]) == 0
    )
    assert {p.name for p in (tmp_path / "b").iterdir()} == {
        "ca.crt",
        "server.crt",
        "server.key",
        "crl.pem",
    }
    assert stat.S_IMODE((tmp_path / "b" / "server.key").stat().st_mode) == 0o600
    assert main(["ca", "--ca-dir", str(tmp_path / "ca")]) == 2
