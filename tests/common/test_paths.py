"""Path policy: everything a client names must resolve inside the allowed roots."""

from __future__ import annotations

import os

import pytest

from services.common.errors import InvalidArgument, NotFound, PermissionDenied
from services.common.paths import resolve_allowed_path
from tests.support import make_config


@pytest.fixture
def cfg(tmp_path):
    return make_config(tmp_path / "ws", tmp_path / "model")


def test_relative_path_resolves_inside_workspace(cfg):
    (cfg.workspace / "datasets").mkdir()
    (cfg.workspace / "datasets" / "a.jsonl").write_text("{}\n")
    p = resolve_allowed_path("datasets/a.jsonl", cfg, field="file_path", must_exist=True, expect="file")
    assert p == cfg.workspace / "datasets" / "a.jsonl"


def test_dotdot_escape_is_denied(cfg):
    with pytest.raises(PermissionDenied) as err:
        resolve_allowed_path("datasets/../../secret.txt", cfg, field="file_path")
    assert "file_path" in err.value.message and str(cfg.workspace) in err.value.message


def test_absolute_path_outside_roots_is_denied(cfg):
    with pytest.raises(PermissionDenied):
        resolve_allowed_path("/etc/passwd", cfg, field="file_path")


def test_symlink_escape_is_denied(cfg, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "data.jsonl").write_text("{}\n")
    os.symlink(outside, cfg.workspace / "link")
    with pytest.raises(PermissionDenied):
        resolve_allowed_path("link/data.jsonl", cfg, field="file_path")


def test_extra_allowed_root(cfg, tmp_path):
    extra = tmp_path / "models"
    extra.mkdir()
    cfg2 = cfg.with_overrides({"storage.allowed_roots": [str(cfg.workspace), str(extra)]})
    assert resolve_allowed_path(str(extra), cfg2, field="model_path") == extra


def test_missing_empty_and_wrong_kind(cfg):
    with pytest.raises(NotFound):
        resolve_allowed_path("nope.jsonl", cfg, field="file_path", must_exist=True)
    with pytest.raises(InvalidArgument) as err:
        resolve_allowed_path("  ", cfg, field="file_path")
    assert err.value.field_violations == [("file_path", "must not be empty")]
    with pytest.raises(InvalidArgument, match="directory"):
        resolve_allowed_path(".", cfg, field="file_path", must_exist=True, expect="file")


@pytest.mark.parametrize("raw,needle", [
    ("a" * 300, "component is too long"),
    ("datasets/" + "/".join(["b" * 200] * 25), "path is too long"),
], ids=["long-name", "long-path"])
def test_names_the_filesystem_cannot_hold_are_invalid_argument_not_os_errors(cfg, raw, needle):
    with pytest.raises(InvalidArgument) as err:
        resolve_allowed_path(raw, cfg, field="output_dir", must_exist=True)
    [(field, description)] = err.value.field_violations
    assert field == "output_dir" and needle in description


def test_a_symlink_loop_is_invalid_argument(cfg):
    os.symlink(cfg.workspace / "loop-b", cfg.workspace / "loop-a")
    os.symlink(cfg.workspace / "loop-a", cfg.workspace / "loop-b")
    with pytest.raises(InvalidArgument) as err:
        resolve_allowed_path("loop-a/file.jsonl", cfg, field="file_path", must_exist=True)
    assert "file_path" in err.value.message


def test_a_very_long_missing_path_is_shown_shortened(cfg):
    raw = "x" * 200
    with pytest.raises(NotFound) as err:
        resolve_allowed_path(raw, cfg, field="file_path", must_exist=True)
    assert "(200 characters)" in err.value.message and raw not in err.value.message
