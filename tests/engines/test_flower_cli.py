"""`fedsub flower certs`, and engine: flower's bad input: exit 2 with one line naming the field."""

from __future__ import annotations

import pytest

pytest.importorskip("flwr")

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key  # noqa: E402
from fedsub_fixtures import write_csv_experiment  # noqa: E402

from fedsub.app.cli import main  # noqa: E402
from fedsub.engines.flower.loopback import free_port  # noqa: E402


def test_certs_are_a_ca_a_loopback_server_cert_and_node_keys(tmp_path, capsys):
    assert main(["flower", "certs", str(tmp_path / "c"), "--nodes", "3"]) == 0
    ca = x509.load_pem_x509_certificate((tmp_path / "c" / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((tmp_path / "c" / "server.pem").read_bytes())
    server.verify_directly_issued_by(ca)  # raises if not signed by the CA
    hosts = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in hosts.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert hosts.get_values_for_type(x509.DNSName) == ["localhost"]
    for k in range(3):
        private = load_ssh_private_key((tmp_path / "c" / f"node{k}").read_bytes(), None)
        public = load_ssh_public_key((tmp_path / "c" / f"node{k}.pub").read_bytes())
        assert isinstance(private.curve, ec.SECP384R1) and private.public_key() == public
        assert (tmp_path / "c" / f"node{k}").stat().st_mode & 0o077 == 0  # private keys: owner only
    assert main(["flower", "certs", str(tmp_path / "c")]) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("ca.crt exists; choose an empty folder (certificates are never overwritten)")
    )


def test_superlink_without_tls_or_insecure_is_exit_2(tmp_path, capsys):
    config = write_csv_experiment(tmp_path, ["fedit"])
    assert (
        main(
            [
                "run",
                str(config),
                "--set",
                "engine=flower",
                "--set",
                "flower.superlink=127.0.0.1:9091",
                "--out",
                str(tmp_path / "r"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "flower.root_certificates" in err and "flower.insecure=true" in err


@pytest.mark.slow
def test_unreachable_superlink_is_exit_2_naming_the_address(tmp_path, capsys):
    config = write_csv_experiment(tmp_path, ["fedit"])
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    argv = [
        "run",
        str(config),
        "--quiet",
        "--set",
        "engine=flower",
        "--set",
        f"flower.superlink={address}",
        "--set",
        "flower.insecure=true",
        "--out",
        str(tmp_path / "r"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"field flower.superlink: submitting to {address} failed" in err[0]


def test_certificates_pass_strict_verification(tmp_path):
    """keyUsage, extendedKeyUsage, SKI and AKI present: cryptography's RFC 5280 verifier accepts the
    chain (`openssl verify -x509_strict` did not, before they were added)."""
    from cryptography.x509.verification import PolicyBuilder, Store

    main(["flower", "certs", str(tmp_path / "c"), "--nodes", "1"])
    ca = x509.load_pem_x509_certificate((tmp_path / "c" / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((tmp_path / "c" / "server.pem").read_bytes())
    for host in (x509.DNSName("localhost"), x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))):
        chain = PolicyBuilder().store(Store([ca])).build_server_verifier(host).verify(server, [])
        assert chain[-1] == ca
    usage = server.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [x509.ExtendedKeyUsageOID.SERVER_AUTH]
    )
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert server.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier == ski


def test_private_keys_are_never_readable_by_others_even_briefly(tmp_path, monkeypatch):
    """Created with mode 0600 by open() itself: watch every file's mode at creation."""
    import os

    from fedsub.engines.flower import certs

    created = {}
    real_open = os.open

    def watching_open(path, flags, mode=0o777, **kw):
        created[os.path.basename(path)] = mode
        return real_open(path, flags, mode, **kw)

    monkeypatch.setattr(certs.os, "open", watching_open)
    certs.write_certificates(tmp_path / "c", 2)
    assert {n: m for n, m in created.items()} == {
        "ca.crt": 0o644, "server.pem": 0o644, "server.key": 0o600,
        "node0": 0o600, "node0.pub": 0o644, "node1": 0o600, "node1.pub": 0o644,
    }  # fmt: skip
    assert all((tmp_path / "c" / n).stat().st_mode & 0o777 == m for n, m in created.items())


def test_insecure_with_a_ca_is_refused_and_insecure_to_another_host_warns(tmp_path, capsys):
    from fedsub.engines.flower.deploy import is_loopback, warn_if_insecure_remote

    config = write_csv_experiment(tmp_path, ["fedit"])
    argv = ["run", str(config), "--set", "engine=flower", "--set", "flower.superlink=127.0.0.1:9091"]
    argv += ["--set", "flower.insecure=true", "--set", "flower.root_certificates=ca.crt", "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "flower.insecure: true with flower.root_certificates set" in err
    assert not (tmp_path / "r").exists()
    assert [is_loopback(a) for a in ("127.0.0.1:9091", "127.3.4.5:1", "[::1]:9091", "localhost:1")] == [True] * 4
    assert [is_loopback(a) for a in ("10.0.0.5:9091", "example.org:9091", "[2001:db8::1]:1")] == [False] * 3
    assert not warn_if_insecure_remote("127.0.0.1:9091", True) and not warn_if_insecure_remote("10.0.0.5:1", False)
    assert warn_if_insecure_remote("10.0.0.5:9091", True)
    assert "sends the models in plain text to 10.0.0.5:9091" in capsys.readouterr().err
