"""What the integration tests share beyond the stack itself (tests/conftest.py): the real
operator process for a test module, a ``Cluster`` helper per test namespace, and the LiveKit
credentials a pool's ``livekit.credentialsSecretRef`` names, and a livekit-server of a
module's own for the suites that need no Kubernetes.

A module says what its operator needs with marks: ``operator_webhook`` (it serves
livekit-server's signed webhook: scale from zero) and ``sip`` (skip without the local
stack's livekit-sip).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client
from voicepool_devstack.livekit import LiveKitInfo
from voicepool_devstack.stack import LocalStack, StackConfig
from voicepool_devstack.testing import Environment

from . import booking_llm as booking_llm_server
from .llm_server import LlamaServer
from .operator_harness import Cluster, OperatorProcess, install_crds, running_operator

#: The Secret a test pool's ``livekit.credentialsSecretRef`` names.
LIVEKIT_SECRET = "lk"


@pytest.fixture(scope="module")
def operator(
    request: pytest.FixtureRequest, api_client: client.ApiClient, stack_env: Environment
) -> Iterator[OperatorProcess]:
    """One operator process for the whole module, with the CRDs installed."""
    if request.node.get_closest_marker("sip") and stack_env.sip is None:
        pytest.skip("needs the local stack's livekit-sip (an external LiveKit has no SIP here)")
    install_crds(api_client)
    webhook = request.node.get_closest_marker("operator_webhook") is not None
    livekit = stack_env.livekit if webhook else None
    with running_operator(stack_env.kubeconfig, livekit=livekit) as op:
        yield op


@pytest.fixture(scope="module")
def livekit_alone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveKitInfo]:
    """A livekit-server of the module's own (no Kubernetes): the voice loop, the caller."""
    stack = LocalStack(
        StackConfig(workdir=tmp_path_factory.mktemp("livekit"), kubernetes=False, livekit=True)
    )
    try:
        state = stack.start()
        assert state.livekit is not None
        yield state.livekit
    finally:
        stack.stop()


@pytest.fixture()
def cluster(api_client: client.ApiClient, namespace: str) -> Cluster:
    return Cluster(api_client, namespace)


@pytest.fixture()
def livekit_secret(cluster: Cluster, stack_env: Environment) -> str:
    """The stack's LiveKit key and secret in the test namespace (``apiKey``/``apiSecret``)."""
    cluster.livekit_secret(stack_env.livekit, LIVEKIT_SECRET)
    return LIVEKIT_SECRET


@pytest.fixture(scope="session")
def booking_llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """The booking example agent's model server, once per session (booking_llm.py)."""
    server = booking_llm_server.start(tmp_path_factory.mktemp("booking-llm"))
    try:
        yield server
    finally:
        server.stop()
