"""Config: file + WINTRAIN__ environment overrides, failing fast on bad values."""

from __future__ import annotations

import subprocess
import sys

import pytest

from services.common.config import REPO_ROOT, ConfigError, load_config


def test_repository_config_loads_with_original_keys():
    cfg = load_config(REPO_ROOT / "config.yaml", env={})
    assert cfg.get("api.port") == 8801
    assert [cfg.get(f"services.{n}.port") for n in ("data", "train", "inference", "eval", "export")] == [
        50051, 50052, 50053, 50054, 50055]
    for key in ("model.base_model_path", "model.save_path", "model.checkpoint_path", "inference.auto_load"):
        assert cfg.get(key) is not None, key
    assert cfg.workspace == (REPO_ROOT / "var").resolve()
    assert cfg.allowed_roots == [cfg.workspace]


def test_environment_overrides_any_key():
    cfg = load_config(REPO_ROOT / "config.yaml", env={
        "WINTRAIN__SERVICES__TRAIN__PORT": "60052",
        "WINTRAIN__INFERENCE__AUTO_LOAD": "false",
        "WINTRAIN__STORAGE__ALLOWED_ROOTS": "[/data, /models]",
    })
    assert cfg.get("services.train.port") == 60052
    assert cfg.get("inference.auto_load") is False
    assert [str(p) for p in cfg.allowed_roots] == ["/data", "/models"]


@pytest.mark.parametrize("env,needle", [
    ({"WINTRAIN__SERVICES__TRAIN__PORT": "not-a-port"}, "services.train.port"),
    ({"WINTRAIN__API__PORT": "70000"}, "api.port"),
    ({"WINTRAIN__INFERENCE__AUTO_LOAD": "maybe"}, "inference.auto_load"),
    ({"WINTRAIN__MODEL__DEVICE": "tpu"}, "model.device"),
    ({"WINTRAIN__STORAGE__WORKSPACE": ""}, "storage.workspace"),
    ({"WINTRAIN__SERVER__GRACE_SECONDS": "-1"}, "server.grace_seconds"),
    ({"WINTRAIN__MODEL__TORCH_THREADS": "0"}, "model.torch_threads"),
    ({"WINTRAIN__TRAIN__WORKER_THREADS": "two"}, "train.worker_threads"),
    ({"WINTRAIN__SERVICES__DATA__HOST": "::"}, "services.data.host"),  # unquoted IPv6: a YAML mapping
    ({"WINTRAIN__API__HOST": "[]"}, "api.host"),
])
def test_bad_value_fails_naming_the_key(env, needle):
    with pytest.raises(ConfigError) as err:
        load_config(REPO_ROOT / "config.yaml", env=env)
    assert needle in str(err.value)


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml", env={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("services: [unclosed", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad, env={})


def test_service_process_refuses_to_start_on_bad_config():
    env = {"WINTRAIN__SERVICES__DATA__PORT": "banana", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", "from services.common.server import run_service; "
                           "run_service('data', lambda rt: [])"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "services.data.port" in proc.stderr and "banana" in proc.stderr


def test_torch_threads_setting_reaches_torch():
    """model.torch_threads becomes the thread count of torch in a service process, whether
    torch is imported before the setting is applied or after (through OMP_NUM_THREADS)."""
    code = (
        "import os, sys\n"
        "from services.common.config import load_config\n"
        "from services.common.server import apply_torch_threads\n"
        "early = sys.argv[1] == 'early'\n"
        "if early: import torch\n"
        "applied = apply_torch_threads(load_config())\n"
        "import torch\n"
        "print(applied, torch.get_num_threads(), os.environ['OMP_NUM_THREADS'])\n"
    )
    for order in ("early", "late"):
        env = {"PATH": "/usr/bin:/bin", "WINTRAIN__MODEL__TORCH_THREADS": "1", "OMP_NUM_THREADS": "2"}
        proc = subprocess.run([sys.executable, "-c", code, order], cwd=REPO_ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == ["1", "1", "1"], (order, proc.stdout)


def test_torch_threads_null_leaves_torch_alone():
    cfg = load_config(REPO_ROOT / "config.yaml", env={})
    assert cfg.get("model.torch_threads") is None
    from services.common.server import apply_torch_threads
    assert apply_torch_threads(cfg) is None


def test_quoted_ipv6_host_is_accepted():
    cfg = load_config(REPO_ROOT / "config.yaml", env={"WINTRAIN__SERVICES__DATA__HOST": "'::'"})
    assert cfg.get("services.data.host") == "::"


def test_service_process_names_an_unquoted_ipv6_host():
    env = {"WINTRAIN__SERVICES__DATA__HOST": "::", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", "from services.common.server import run_service; "
                           "run_service('data', lambda rt: [])"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "services.data.host" in proc.stderr and "Traceback" not in proc.stderr
