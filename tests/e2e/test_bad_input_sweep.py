"""Bad input never gets a 500. Every route the gateway publishes in /openapi.json is called
with malformed bodies, wrong-typed fields (one at a time, nested fields too), hostile strings,
bad query and path values, against all five real services behind the real gateway. Each answer
must be a 4xx with the error body (or a 2xx where the value happened to be acceptable): a 5xx
is a bug, whatever the input."""

from __future__ import annotations

import json
import shutil

import httpx
import pytest

from tools.tiny_model import DATASETS_DIR
from tests.gateway.helpers import gateway_over
from tests.support import all_services, make_config

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

HOSTILE_STRINGS = ["", "../../../etc/passwd", "/etc/shadow", "nul\x00byte", "a" * 20000, "%2e%2e/%2e%2e", "😀" * 50]
BAD_BY_TYPE = {
    "integer": ["abc", 1.5, -1, 2**31, 2**63, -(2**63) - 1, True, None, [], {}],
    "number": ["abc", -1, -1e300, 1e300, True, [], {}],
    "string": [123, 1.5, True, [], {}] + HOSTILE_STRINGS,
    "boolean": ["maybe", 2, [], {}],
    "array": ["text", 5, {}, [None], [123], [[]], [{}]],
    "object": ["text", 5, [], {"no_such_field": 1}],
}
WHOLE_BODIES = [b"", b"{", b"[]", b'"text"', b"null", b"123", b'{"a": NaN}', b"\xff\xfe", b"{}" + b" " * 10]


def _resolve(spec: dict, schema: dict) -> dict:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _kind(spec: dict, schema: dict) -> str:
    schema = _resolve(spec, schema)
    if "enum" in schema:
        return "enum"
    if "oneOf" in schema or "anyOf" in schema:
        return "object"
    return schema.get("type", "object")


def _bad_values(spec: dict, schema: dict) -> list:
    kind = _kind(spec, schema)
    if kind == "enum":
        return ["NO_SUCH_VALUE", 99, -1, [], {}]
    return BAD_BY_TYPE.get(kind, BAD_BY_TYPE["object"])


def _body_cases(spec: dict, schema: dict) -> list:
    """One wrong field at a time, one level into nested messages and arrays of messages."""
    schema = _resolve(spec, schema)
    cases = []
    for name, prop in (schema.get("properties") or {}).items():
        for bad in _bad_values(spec, prop):
            cases.append({name: bad})
        inner = _resolve(spec, prop)
        if inner.get("type") == "array" and "items" in inner:
            inner = _resolve(spec, inner["items"])
            wrap = lambda value: [value]  # noqa: E731
        else:
            wrap = lambda value: value  # noqa: E731
        for sub, sub_prop in (inner.get("properties") or {}).items():
            for bad in _bad_values(spec, sub_prop):
                cases.append({name: wrap({sub: bad})})
    return cases


def _check(failures: list, response: httpx.Response, what: str) -> None:
    if response.status_code >= 500:
        failures.append(f"{what} -> {response.status_code} {response.text[:300]}")
        return
    if response.status_code >= 400:
        try:
            body = response.json()
        except ValueError:
            failures.append(f"{what} -> {response.status_code} with a body that is not JSON: {response.text[:200]}")
            return
        if not (isinstance(body, dict) and (body.get("code") or body.get("error") or body.get("detail"))):
            failures.append(f"{what} -> {response.status_code} without an error body: {response.text[:200]}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model_dir):
    """All five services in process and the gateway in front: (httpx client, workspace)."""
    workspace = tmp_path_factory.mktemp("sweep") / "ws"
    cfg = make_config(workspace, tiny_model_dir, **{"train.worker_threads": 1, "inference.max_new_tokens_cap": 8})
    (workspace / "datasets").mkdir()
    shutil.copy(DATASETS_DIR / "train_sample.jsonl", workspace / "datasets" / "train_sample.jsonl")
    with all_services(cfg) as servers, gateway_over(cfg, servers) as gw, \
            httpx.Client(base_url=gw.url, timeout=120) as client:
        yield client, workspace


def test_no_route_answers_bad_input_with_a_5xx(stack):
    client, _ = stack
    failures: list[str] = []
    calls = 0
    spec = client.get("/openapi.json").json()
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            params = op.get("parameters", [])
            path_params = [p["name"] for p in params if p["in"] == "path"]
            concrete = path
            for name in path_params:
                concrete = concrete.replace("{" + name + "}", "no-such-id")
            # Hostile path values.
            for name in path_params:
                for value in ["..", "%2e%2e", "a" * 5000, "%00", "x y", "😀"]:
                    url = path.replace("{" + name + "}", value)
                    for other in path_params:
                        url = url.replace("{" + other + "}", "no-such-id")
                    calls += 1
                    _check(failures, client.request(method, url), f"{method.upper()} {url[:80]}")
            # Bad query values, one at a time.
            for p in params:
                if p["in"] != "query":
                    continue
                for bad in _bad_values(spec, p.get("schema", {})):
                    if isinstance(bad, (list, dict)) or bad is None:
                        bad = json.dumps(bad)
                    calls += 1
                    _check(failures, client.request(method, concrete, params={p["name"]: str(bad)}),
                           f"{method.upper()} {concrete} ?{p['name']}={str(bad)[:40]!r}")
            body_schema = (op.get("requestBody", {}).get("content", {}).get("application/json", {})
                           .get("schema"))
            if body_schema is None:
                continue
            for raw in WHOLE_BODIES:
                calls += 1
                _check(failures, client.request(method, concrete, content=raw,
                                                headers={"content-type": "application/json"}),
                       f"{method.upper()} {concrete} body {raw[:20]!r}")
            for case in _body_cases(spec, body_schema):
                calls += 1
                what = f"{method.upper()} {concrete} {json.dumps(case, ensure_ascii=False)[:120]}"
                _check(failures, client.request(method, concrete, json=case), what)
    assert calls > 500, calls  # the sweep really covered the routes
    assert not failures, f"{len(failures)} of {calls} calls failed:\n" + "\n".join(failures[:40])


# Dataset files a user may really have: wrong formats, broken encodings, odd shapes.
BAD_DATASETS = {
    "empty.jsonl": b"",
    "blank.jsonl": b"\n   \n\t\n",
    "bom.jsonl": b"\xef\xbb\xbf" + b'{"conversations": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n',
    "latin1.jsonl": '{"conversations": [{"role": "user", "content": "caf\u00e9"}]}\n'.encode("latin-1"),
    "binary.jsonl": bytes(range(256)) * 8,
    "crlf.jsonl": b'{"conversations": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\r\n' * 3,
    "truncated.jsonl": b'{"conversations": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n{"conv',
    "object.json": b'{"conversations": "not a list"}',
    "array_of_junk.json": b'[1, "two", null, [3]]',
    "scalars.jsonl": b"1\n\"text\"\nnull\ntrue\n[]\n",
    "shapes.jsonl": b"\n".join([
        b'{"conversations": {"role": "user"}}',
        b'{"conversations": [{"role": "user"}]}',
        b'{"conversations": [{"content": "no role"}]}',
        b'{"conversations": [{"role": "user", "content": 5}, {"role": "assistant", "content": null}]}',
        b'{"conversations": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}',
        b'{"conversations": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]}',
        b'{"conversations": []}',
        b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}',
        b'{"instruction": "add", "input": "1+1", "output": "2"}',
        b'{"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]}',
        b'{"conversations": [{"role": "assistant", "content": "answer before any question"}]}',
        b'{"conversations": [{"role": "user", "content": "only a question"}]}',
    ]) + b"\n",
    "huge_line.jsonl": b'{"conversations": [{"role": "user", "content": "' + b"x" * (2 << 20) + b'"}]}\n',
    "deep.jsonl": b"[" * 100000 + b"]" * 100000 + b"\n",
}


def test_bad_dataset_files_get_clear_answers_from_every_service(stack):
    """Each bad file through validate, process, training start and evaluation: a clear 4xx (or a
    2xx whose result says what is wrong), never a 5xx, and no training left running."""
    client, workspace = stack
    folder = workspace / "bad"
    folder.mkdir(exist_ok=True)
    (folder / "a_folder.jsonl").mkdir(exist_ok=True)
    for name, content in BAD_DATASETS.items():
        (folder / name).write_bytes(content)
    failures: list[str] = []
    for name in sorted(list(BAD_DATASETS) + ["a_folder.jsonl"]):
        rel = f"bad/{name}"
        r = client.post("/api/data/validate", params={"file_path": rel})
        _check(failures, r, f"validate {name}")
        if r.status_code == 200 and name not in ("bom.jsonl", "crlf.jsonl"):
            data = r.json()["data"]
            if data["is_valid"] and name != "shapes.jsonl":
                failures.append(f"validate {name} -> reported valid: {json.dumps(data)[:200]}")
        _check(failures, client.post("/api/data/process", json={"input_file": rel, "output_dir": f"out/{name}"}),
               f"process {name}")
        r = client.post("/api/train/start", json={"strategy": "lora", "dataset_path": rel, "output_dir": f"m/{name}",
                                                  "config": {"max_steps": 1}})
        _check(failures, r, f"train start {name}")
        if r.status_code == 200:  # accepted (it had usable rows): don't leave it running
            client.post(f"/api/train/cancel/{r.json()['task_id']}")
        _check(failures, client.post("/api/eval/evaluate", json={"dataset_path": rel, "metrics": ["loss"]}),
               f"evaluate {name}")
    assert not failures, "\n".join(failures)
