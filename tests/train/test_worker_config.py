"""The worker's copy of the service config lies in the shared workspace: it must not carry the
job store's password (the worker gets the whole URL through its environment)."""

from __future__ import annotations

import json
import os

from services.train.scheduler import JOB_STORE_ENV, Scheduler, _without_password
from services.train.worker import load_worker_config
from tests.support import make_config


def test_the_password_is_cut_from_a_url_and_nothing_else():
    assert _without_password("postgresql://win:s3cret@db.example:5432/jobs?sslmode=require") == \
        "postgresql://win@db.example:5432/jobs?sslmode=require"
    assert _without_password("postgresql://:s3cret@db:5432/jobs") == "postgresql://db:5432/jobs"
    assert _without_password("postgresql://win@db/jobs") == "postgresql://win@db/jobs"
    assert _without_password("sqlite") == "sqlite"


def test_the_worker_config_file_has_no_password_and_the_worker_reads_it_from_its_environment(
        tmp_path, monkeypatch):
    url = "postgresql://win:s3cret@127.0.0.1:1/jobs"
    config = make_config(tmp_path / "ws", tmp_path / "model").with_overrides({"storage.job_store": url})
    scheduler = Scheduler.__new__(Scheduler)  # only the config writer is exercised: no store, no loop
    scheduler.config = config
    path = scheduler._write_worker_config(tmp_path)
    text = path.read_text(encoding="utf-8")
    assert "s3cret" not in text
    assert json.loads(text)["data"]["storage"]["job_store"] == "postgresql://win@127.0.0.1:1/jobs"

    monkeypatch.setenv(JOB_STORE_ENV, url)
    assert load_worker_config(str(path)).get("storage.job_store") == url
    monkeypatch.delenv(JOB_STORE_ENV)
    assert load_worker_config(str(path)).get("storage.job_store") == "postgresql://win@127.0.0.1:1/jobs"
    assert os.environ.get(JOB_STORE_ENV) is None
