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
