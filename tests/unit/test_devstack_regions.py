"""Named stacks beside the default one (``voicepool-devstack up --name``): plain values only."""

from __future__ import annotations

import pytest
from voicepool_devstack import cli
from voicepool_devstack.errors import DevstackError
from voicepool_devstack.regions import check_name, named_dir
from voicepool_devstack.versions import REPO_ROOT


@pytest.mark.parametrize("name", ["b", "eu-west", "r2", "a" * 32])
def test_names_that_make_a_directory_and_a_region(name: str) -> None:
    assert check_name(name) == name
    assert named_dir(name) == REPO_ROOT / f".devstack-{name}"


@pytest.mark.parametrize("name", ["", "B", "-b", "b-", "a/b", "..", "a" * 33, "b c"])
def test_other_names_are_refused(name: str) -> None:
    with pytest.raises(DevstackError, match="stack name"):
        check_name(name)


def test_a_named_stack_never_lives_inside_the_default_one() -> None:
    """`make cluster-down` removes .devstack: a second stack must survive it."""
    default = REPO_ROOT / ".devstack"
    assert default not in named_dir("b").parents


def test_the_cli_refuses_a_bad_name_before_starting_anything(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        cli.main(["up", "--name", "../x"])
    assert "stack name" in capsys.readouterr().err
