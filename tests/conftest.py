"""Fixtures that start the real servers (or adopt VOICEPOOL_KUBECONFIG) once per session."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from kubernetes import client, config
from voicepool_devstack.errors import DevstackError
from voicepool_devstack.testing import Environment, create_namespace, environment

pytest_plugins = ["tests.suite_times"]


@pytest.fixture(scope="session")
def stack_env() -> Iterator[Environment]:
    try:
        with environment() as env:
            yield env
    except DevstackError as e:  # a clear message, not a stack trace
        pytest.exit(f"could not start the local stack: {e}", returncode=3)


@pytest.fixture(scope="session")
def api_client(stack_env: Environment) -> Iterator[client.ApiClient]:
    cfg = client.Configuration()
    config.load_kube_config(config_file=stack_env.kubeconfig, client_configuration=cfg)
    with client.ApiClient(cfg) as api:
        yield api


@pytest.fixture(scope="session")
def core(api_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api_client)


@pytest.fixture()
def namespace(core: client.CoreV1Api) -> Iterator[str]:
    """A fresh namespace per test, ready for pods (its default ServiceAccount exists)."""
    name = create_namespace(core, f"t-{uuid.uuid4().hex[:8]}")
    yield name
    core.delete_namespace(name, propagation_policy="Background")
