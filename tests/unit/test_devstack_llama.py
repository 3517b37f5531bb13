"""The llama-cpp-python build cache: keyed so a change of version or flags never reuses it."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from voicepool_devstack import llama_build


def test_the_wheel_key_covers_version_and_flags() -> None:
    key = llama_build.wheel_key()
    assert key == llama_build.wheel_key()  # stable
    assert key != llama_build.wheel_key(version="0.3.17")
    assert key != llama_build.wheel_key(cmake_args=llama_build.CMAKE_ARGS + " -DGGML_NATIVE=ON")
    assert key != llama_build.wheel_key(project_include="")
    assert "-DGGML_NATIVE=OFF" in llama_build.CMAKE_ARGS  # the native build segfaults on CI


def test_the_project_include_is_found_by_content_not_by_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VOICEPOOL_CACHE", str(tmp_path))
    args = llama_build.build_cmake_args()
    assert args.startswith(llama_build.CMAKE_ARGS)
    flag = shlex.split(args)[-1]
    name, _, path = flag.partition("=")
    assert name == "-DCMAKE_PROJECT_llama.cpp_INCLUDE"  # llama.cpp's project() is "llama.cpp"
    assert Path(path).parent == tmp_path / "llama"
    assert Path(path).read_text() == llama_build.PROJECT_INCLUDE
    assert llama_build.build_cmake_args() == args  # written once, same name each time


def test_the_cache_lives_under_voicepool_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VOICEPOOL_CACHE", str(tmp_path))
    assert llama_build.wheel_dir().parent == tmp_path / "wheels"
    assert llama_build.cached_wheel() is None  # a .partial build dir is never taken for one
    (llama_build.wheel_dir().with_name(llama_build.wheel_dir().name + ".partial")).mkdir(
        parents=True
    )
    assert llama_build.cached_wheel() is None
