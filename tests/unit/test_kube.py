"""The one place that builds API paths: each segment quoted, nothing can climb out."""

from __future__ import annotations

import pytest
from voicepool_operator.kube import api_path


def test_segments_are_quoted_whole() -> None:
    assert api_path("api", "v1", "namespaces", "team-a", "secrets", "lk") == (
        "/api/v1/namespaces/team-a/secrets/lk"
    )
    # A name with "/" or an escape stays one segment (the apiserver answers 404, not another
    # namespace's object).
    assert api_path("api", "v1", "namespaces", "a", "secrets", "../../kube-system/secrets/x") == (
        "/api/v1/namespaces/a/secrets/..%2F..%2Fkube-system%2Fsecrets%2Fx"
    )
    assert api_path("secrets", "%2e%2e") == "/secrets/%252e%252e"


@pytest.mark.parametrize("segment", ["..", ".", ""])
def test_segments_that_would_collapse_are_refused(segment: str) -> None:
    with pytest.raises(ValueError, match="refusing an API path"):
        api_path("api", "v1", "namespaces", "a", "secrets", segment)
