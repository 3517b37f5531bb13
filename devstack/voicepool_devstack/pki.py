"""Certificates and keys for one local control plane, generated fresh for every stack.

Each component gets its own client certificate with the identity the RBAC bootstrap roles
expect (``system:kube-controller-manager``, ``system:kube-scheduler``), so the local stack
exercises real authentication and RBAC rather than an insecure port.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = dt.timedelta(days=2)


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _pem_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path

    def cert_pem(self) -> bytes:
        return self.cert.read_bytes()

    def key_pem(self) -> bytes:
        return self.key.read_bytes()


@dataclass(frozen=True)
class Pki:
    ca: CertPair
    apiserver: CertPair
    admin: CertPair
    controller_manager: CertPair
    scheduler: CertPair
    kwok: CertPair
    #: The apiserver's client identity towards kubelets (exec, logs, port-forward).
    kubelet_client: CertPair
    sa_private: Path
    sa_public: Path


class _Issuer:
    def __init__(self, directory: Path, ca: CertPair | None = None) -> None:
        self.dir = directory
        now = dt.datetime.now(dt.UTC)
        self.not_before = now - dt.timedelta(minutes=5)
        self.not_after = now + _VALIDITY
        if ca is not None:  # issue more certificates from an existing stack's CA
            self.ca_cert = x509.load_pem_x509_certificate(ca.cert_pem())
            loaded = serialization.load_pem_private_key(ca.key_pem(), password=None)
            assert isinstance(loaded, ec.EllipticCurvePrivateKey)
            self.ca_key = loaded
            self.not_after = min(self.not_after, self.ca_cert.not_valid_after_utc)
            return
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        subject = _name("voicepool-devstack-ca")
        self.ca_cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.not_before)
            .not_valid_after(self.not_after)
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
            .sign(self.ca_key, hashes.SHA256())
        )

    def write(self, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> CertPair:
        pair = CertPair(self.dir / f"{stem}.crt", self.dir / f"{stem}.key")
        pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        pair.key.write_bytes(_pem_key(key))
        pair.key.chmod(0o600)
        return pair

    def issue(
        self,
        stem: str,
        cn: str,
        *,
        org: str | None = None,
        server: bool = False,
        dns: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
    ) -> CertPair:
        key = ec.generate_private_key(ec.SECP256R1())
        usage = [ExtendedKeyUsageOID.SERVER_AUTH] if server else [ExtendedKeyUsageOID.CLIENT_AUTH]
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn, org))
            .issuer_name(self.ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.not_before)
            .not_valid_after(self.not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        )
        if dns or ips:
            sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
            sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return self.write(stem, builder.sign(self.ca_key, hashes.SHA256()), key)


def generate(directory: Path, service_ip: str = "10.96.0.1") -> Pki:
    """Write a CA, serving/client certs and the service-account signing key pair."""
    directory.mkdir(parents=True, exist_ok=True)
    issuer = _Issuer(directory)
    ca = issuer.write("ca", issuer.ca_cert, issuer.ca_key)
    apiserver = issuer.issue(
        "apiserver",
        "kube-apiserver",
        server=True,
        dns=(
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ),
        ips=("127.0.0.1", service_ip),
    )
    admin = issuer.issue("admin", "voicepool-admin", org="system:masters")
    kcm = issuer.issue("controller-manager", "system:kube-controller-manager")
    sched = issuer.issue("scheduler", "system:kube-scheduler")
    kwok = issuer.issue("kwok", "voicepool-kwok", org="system:masters")
    kubelet_client = issuer.issue(
        "apiserver-kubelet-client", "kube-apiserver-kubelet-client", org="system:masters"
    )
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sa_private = directory / "sa.key"
    sa_public = directory / "sa.pub"
    sa_private.write_bytes(_pem_key(sa_key))
    sa_private.chmod(0o600)
    sa_public.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return Pki(ca, apiserver, admin, kcm, sched, kwok, kubelet_client, sa_private, sa_public)


def issue_from_ca(
    directory: Path, stem: str, cn: str, org: str | None = None, *, server: bool = False
) -> CertPair:
    """A further certificate signed by the stack's CA in ``directory`` (e.g. the real node's
    ``system:node:localhost`` identity, which the Node authorizer and NodeRestriction check)."""
    ca = CertPair(directory / "ca.crt", directory / "ca.key")
    return _Issuer(directory, ca).issue(stem, cn, org=org, server=server)
