"""HTTPS endpoints: a private CA (ca_file), an untrusted server, verify=False, and mutual TLS."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

import pytest

from rayfun.remote import HttpEndpoint, RemoteFunctionClient, RemoteFunctionError, make_app
from rayfun.remote.client import InvocationResult, MissingStates
from tests.remote import rayfun_functions
from tests.remote.bad_server import running_app
from tests.remote.conftest import INT, STRING, run

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402

pytestmark = pytest.mark.timeout(60)


def _write_key(key, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def _issue(path: Path, name: str, ca_key, ca_name, usage, server: bool) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    cert_path, key_path = path / f"{name}.pem", path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, key_path)
    return cert_path, key_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """A throwaway CA with a server certificate (127.0.0.1, localhost) and a client certificate."""
    path = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rayfun test CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
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
        .sign(ca_key, hashes.SHA256())
    )
    (path / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    server_cert, server_key = _issue(path, "server", ca_key, ca_name, ExtendedKeyUsageOID.SERVER_AUTH, True)
    client_cert, client_key = _issue(path, "client", ca_key, ca_name, ExtendedKeyUsageOID.CLIENT_AUTH, False)
    return {
        "ca": path / "ca.pem",
        "server_cert": server_cert,
        "server_key": server_key,
        "client_cert": client_cert,
        "client_key": client_key,
    }


def server_context(pki, require_client_cert: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki["server_cert"], pki["server_key"])
    if require_client_cert:
        ctx.load_verify_locations(pki["ca"])
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


async def greet(base: str, **endpoint_kw):
    endpoint_kw.setdefault("call_timeout", 3)
    client = RemoteFunctionClient(HttpEndpoint("example/*", f"{base}/statefun", **endpoint_kw))
    try:
        return await client.invoke("example/greeter", "bob", [("seen", INT, None)], [(None, STRING, "bob")])
    finally:
        await client.close()


def test_https_with_custom_ca(pki):
    async def scenario():
        async with running_app(make_app(rayfun_functions.functions), server_context(pki)) as base:
            assert base.startswith("https://")
            result = await greet(base, ca_file=str(pki["ca"]))
            assert isinstance(result, InvocationResult) and result.state_mutations == [("seen", INT, 1)]
            # without our CA the server is untrusted: one attempt, a clear message, no retry storm
            with pytest.raises(RemoteFunctionError) as info:
                await greet(base)
            err = info.value
            assert err.attempts == 1
            assert "certificate" in str(err) and "ca_file" in str(err) and base in str(err)
            # verify=False accepts any certificate
            assert isinstance(await greet(base, verify=False), InvocationResult)

    run(scenario())


def test_mutual_tls(pki):
    async def scenario():
        async with running_app(make_app(rayfun_functions.functions), server_context(pki, True)) as base:
            result = await greet(
                base, ca_file=str(pki["ca"]), client_cert=str(pki["client_cert"]), client_key=str(pki["client_key"])
            )
            assert isinstance(result, (InvocationResult, MissingStates))
            with pytest.raises(RemoteFunctionError):
                await greet(base, ca_file=str(pki["ca"]), max_retries=1)

    run(scenario())


def test_unreadable_tls_files_fail_early(tmp_path):
    with pytest.raises(ValueError, match="cannot load TLS files"):
        RemoteFunctionClient(
            HttpEndpoint("example/*", "https://127.0.0.1:1/statefun", ca_file=str(tmp_path / "missing.pem"))
        )
