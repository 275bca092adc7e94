"""cli.paths: an existing path typed from the current folder inside the workspace is sent
workspace-relative; anything else is sent as typed. Then the README's form end to end:
`wintrain data validate var/datasets/…` from the folder above the workspace."""

from __future__ import annotations

import os

from cli.client import EXIT_OK
from cli.paths import to_workspace
from tests.support import make_config


def test_existing_paths_inside_the_workspace_become_workspace_relative(tmp_path):
    ws = tmp_path / "var"
    (ws / "datasets").mkdir(parents=True)
    (ws / "datasets" / "a.jsonl").write_text("{}\n")
    (tmp_path / "README.md").write_text("x")
    config = make_config(ws, ws / "models" / "m")
    assert to_workspace("var/datasets/a.jsonl", config, cwd=tmp_path) == "datasets/a.jsonl"
    assert to_workspace("./var/datasets/../datasets/a.jsonl", config, cwd=tmp_path) == "datasets/a.jsonl"
    # already workspace-relative from inside the workspace, or missing, or outside it: as typed
    assert to_workspace("datasets/a.jsonl", config, cwd=ws) == "datasets/a.jsonl"
    assert to_workspace("datasets/a.jsonl", config, cwd=tmp_path) == "datasets/a.jsonl"
    assert to_workspace("var/datasets/missing.jsonl", config, cwd=tmp_path) == "var/datasets/missing.jsonl"
    assert to_workspace("README.md", config, cwd=tmp_path) == "README.md"
    assert to_workspace("var", config, cwd=tmp_path) == "var"
    assert to_workspace(str(ws / "datasets" / "a.jsonl"), config, cwd=tmp_path) == str(ws / "datasets" / "a.jsonl")
    assert to_workspace("", config) == "" and to_workspace(None, config) is None


def test_validate_takes_the_path_typed_from_above_the_workspace(stack, wintrain, monkeypatch):
    monkeypatch.setenv("WINTRAIN__STORAGE__WORKSPACE", str(stack.workspace))
    monkeypatch.chdir(stack.workspace.parent)
    typed = f"{stack.workspace.name}/datasets/train_sample.jsonl"
    assert os.path.isfile(typed)
    run = wintrain("data", "validate", typed, "--json")
    assert run.code == EXIT_OK, run.out + run.err
    assert run.json()["is_valid"] is True and run.json()["total_samples"] == 5
