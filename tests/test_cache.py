"""The stage cache: content keys, skip-if-present, and atomic writes."""

from __future__ import annotations

import pytest

from east.cache import StageCache, stage_key


def test_key_depends_on_config_and_inputs_only():
    assert stage_key("s", {"a": 1, "b": 2}, ["x"]) == stage_key("s", {"b": 2, "a": 1}, ["x"])
    assert stage_key("s", {"a": 1}, ["x"]) != stage_key("s", {"a": 2}, ["x"])
    assert stage_key("s", {"a": 1}, ["x"]) != stage_key("s", {"a": 1}, ["y"])
    assert stage_key("s", {"a": 1}, []) != stage_key("t", {"a": 1}, [])


def test_built_once_then_reused(tmp_path):
    cache = StageCache(tmp_path)
    calls = []

    def build(d):
        calls.append(d)
        (d / "out.txt").write_text("hello")

    first = cache.run("stage", {"x": 1}, [], build)
    second = cache.run("stage", {"x": 1}, [], build)
    assert (first.cached, second.cached) == (False, True)
    assert len(calls) == 1 and (second.path / "out.txt").read_text() == "hello"
    assert cache.run("stage", {"x": 2}, [], build).cached is False


def test_a_failed_build_leaves_nothing_behind(tmp_path):
    cache = StageCache(tmp_path)

    def broken(d):
        (d / "half.txt").write_text("partial")
        raise KeyboardInterrupt  # a killed run

    with pytest.raises(KeyboardInterrupt):
        cache.run("stage", {"x": 1}, [], broken)
    assert list((tmp_path / "stage").iterdir()) == []
    rebuilt = cache.run("stage", {"x": 1}, [], lambda d: (d / "ok.txt").write_text("ok"))
    assert rebuilt.cached is False and (rebuilt.path / "ok.txt").exists()
