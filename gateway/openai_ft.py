"""OpenAI's fine-tuning jobs API on TrainService (issue 19): `/v1/fine_tuning/jobs`.

A job is a training task: `POST /v1/fine_tuning/jobs` answers with a job `ftjob-<uuid>` in
`validating_files`, and once its files are valid calls StartTraining (same pre-flight, worker
and store as `/api/train/start`); the task id is in the record (`wintrain.task_id`), so the job
is in `/api/train/tasks`, WatchTraining, the dashboard and the CLI too. What OpenAI's job object
has and a task has not (model name, file ids, suffix, metadata, method and the resolved
hyperparameters) is kept in the workspace, one JSON file per job under
`openai/jobs/<job_id>.json`, written atomically.

Mapping (documented in the README):

- `method.type`: `supervised` -> strategy `lora` (the default) or `trl` (full fine-tune)
  with `wintrain.strategy: "full"`; `dpo` -> strategy `dpo` (LoRA by default, full with
  `wintrain.strategy: "full"`); `reinforcement` is refused naming `method.type`.
- hyperparameters: `batch_size` -> per_device_train_batch_size (gradient accumulation 1),
  `n_epochs` -> num_train_epochs, `learning_rate_multiplier` x the base rate (2e-4 LoRA,
  2e-5 full) -> learning_rate, `beta` -> beta. `"auto"` from the training file's row count n:
  batch_size = clamp(n // 32, 1, 8), n_epochs = clamp(ceil(300 / n), 3, 10),
  learning_rate_multiplier = 1, beta = 0.1.
- the extension field `wintrain`: `{"strategy": "lora" | "full", "lora": {r, lora_alpha,
  lora_dropout, target_modules, bias}, ...}` plus any other TrainingConfig setting by name
  (max_steps, save_steps, eval_steps, logging_steps, max_length, save_total_limit, ...).
- status: pending -> `queued`, running -> `running`, completed -> `succeeded`, failed ->
  `failed`, cancelled -> `cancelled`, paused -> `paused`, interrupted (the service
  restarted) -> `failed` with error code `interrupted` (resume continues it).
- `fine_tuned_model`: `ft:<model>:<suffix>:<job id>` (`ft:<model>:<job id>` without a
  suffix); a checkpoint is `<that>:ckpt-step-<N>`. Both are model ids of
  `/v1/chat/completions` and `/v1/models` (a model source of `gateway.openai_compat`).
- validating_files: the create call checks the request (body, file ids, purposes) and
  answers at once with a job in `validating_files` (id `ftjob-<uuid>`, the task id is in
  `wintrain.task_id` once started). In the background the data service's ValidateDataset
  reads the training (then the validation) file -- the training copy of an upload, whose line
  numbers are the upload's -- and then StartTraining runs (its pre-flight as for
  `/api/train/start`) and the job is `queued`. A file either refuses makes the job `failed`
  with `error: {code: invalid_training_file | invalid_validation_file, message, param}`, the
  message naming the line and the field; a setting the pre-flight refuses fails it with
  `error.code` `invalid_request` and `param` the OpenAI field. Cancel during validation
  cancels the job (no task is ever started). Each transition rewrites the job's record
  atomically; a job found in `validating_files` when the gateway starts is validated again
  and started (its StartTraining request is in its record). Without a data service the
  train pre-flight alone checks the rows.
- result_files: a CSV (step, train_loss, train_accuracy, valid_loss,
  valid_mean_token_accuracy) written into the Files store when the job has succeeded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
import uuid
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.errors import GatewayError
from gateway.openai_files import (FileStore, atomic_write, invalid, limit_of, not_found, openai_error, openai_json,
                                  openai_words, page)
from gateway.openai_protocol import CHECKPOINTS_PAGE, EVENTS_PAGE, JOBS_PAGE, RequestInvalid, parse_job_create
from gateway.transcoder import Transcoder, parse_json_object, read_body, request_id_of
from services.common.timestamps import parse_iso
from wintrain.data.v1 import data_pb2
from wintrain.train.v1 import train_pb2

log = logging.getLogger(__name__)

TRAIN = "wintrain.train.v1.TrainService"
VALIDATE = "wintrain.data.v1.DataService.ValidateDataset"
JOB_PREFIX = "ftjob-"
JOB_ID = re.compile(r"^ftjob-[0-9a-f-]{1,64}$")
STATUS = {"pending": "queued", "running": "running", "completed": "succeeded", "failed": "failed",
          "cancelled": "cancelled", "interrupted": "failed", "paused": "paused"}
BASE_LR = {"lora": 2e-4, "full": 2e-5}
HP_KEYS = {"supervised": ("batch_size", "learning_rate_multiplier", "n_epochs"),
           "dpo": ("batch_size", "learning_rate_multiplier", "n_epochs", "beta")}
# TrainingConfig settings the OpenAI fields own (set them there, not in `wintrain`).
OWNED = {"per_device_train_batch_size": "batch_size", "num_train_epochs": "n_epochs",
         "learning_rate": "learning_rate_multiplier", "seed": "seed", "beta": "beta", "lora_config": "wintrain.lora",
         "model_path": "model", "resume_from_checkpoint": None}


def _ts(iso: str) -> int | None:
    if not iso:
        return None
    try:
        return int(parse_iso(iso))
    except ValueError:
        return None


def _status_word(task: train_pb2.TrainingTask) -> str:
    return train_pb2.TaskStatus.Name(task.status).removeprefix("TASK_STATUS_").lower()


def conflict(message: str) -> GatewayError:
    return GatewayError("FAILED_PRECONDITION", message, [("fine_tuning_job_id", message)])


def resolve_auto(hp: dict[str, Any], kind: str, rows: int) -> dict[str, Any]:
    n = max(rows, 1)
    auto = {"batch_size": min(8, max(1, n // 32)), "n_epochs": min(10, max(3, math.ceil(300 / n))),
            "learning_rate_multiplier": 1.0, "beta": 0.1}
    return {key: auto[key] if hp.get(key, "auto") == "auto" else hp[key] for key in HP_KEYS[kind]}


def count_rows(path: Path) -> int:
    with open(path, "rb") as handle:
        return sum(1 for line in handle if line.strip())


class JobIndex:
    """The OpenAI side of each job, in `<workspace>/openai/jobs/<job_id>.json`."""

    def __init__(self, workspace: Path):
        self.folder = Path(workspace) / "openai" / "jobs"

    def put(self, record: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        record.setdefault("_order", time.time_ns())
        atomic_write(self.folder / f"{record['id']}.json", json.dumps(record, ensure_ascii=False).encode())

    def get(self, job_id: str) -> dict | None:
        if not JOB_ID.match(job_id or ""):
            return None
        try:
            return json.loads((self.folder / f"{job_id}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def all(self) -> list[dict]:
        """Every job, newest first."""
        if not self.folder.is_dir():
            return []
        found = [self.get(p.stem) for p in self.folder.glob(f"{JOB_PREFIX}*.json")]
        return sorted((r for r in found if r), key=lambda r: (r.get("_order", 0), r["created_at"], r["id"]),
                      reverse=True)


def ft_model_id(record: dict) -> str:
    parts = ["ft", record["model"]] + ([record["suffix"]] if record.get("suffix") else []) + [record["id"]]
    return ":".join(parts)


def parse_model_id(model_id: str) -> tuple[str, int | None] | None:
    """(job id, checkpoint step or None) of an `ft:` model id; None when it is not one."""
    if not model_id.startswith("ft:"):
        return None
    parts = model_id.split(":")
    step = None
    if parts[-1].startswith("ckpt-step-"):
        tail = parts.pop()[len("ckpt-step-"):]
        if not tail.isdigit():
            return None
        step = int(tail)
    if len(parts) < 3 or not parts[-1].startswith(JOB_PREFIX):
        return None
    return parts[-1], step


class OpenAIFineTuning:
    """The routes, and a model source for `ft:` ids (see the module docstring)."""

    def __init__(self, transcoder: Transcoder, files: FileStore, default_aliases: set[str]):
        self.transcoder = transcoder
        self.files = files
        self.workspace = Path(transcoder.config.workspace)
        self.index = JobIndex(self.workspace)
        self.default_aliases = default_aliases
        self.base_name = transcoder.config.base_model_path.name
        # Jobs in `validating_files`: their background validation, and a lock per job that
        # orders its transitions (validation's end, the start, a cancel).
        self.background: dict[str, asyncio.Task] = {}
        self.locks: dict[str, asyncio.Lock] = {}

    # -- backend calls ----------------------------------------------------------------------
    async def call(self, method: str, message, request: Request | None = None):
        spec = self.transcoder.by_method[f"{TRAIN}.{method}"]
        return await self.transcoder.unary(spec, message, request_id_of(request) if request is not None else "")

    async def task_of(self, record: dict, request: Request | None = None) -> train_pb2.TrainingTask | None:
        if not record.get("task_id"):
            return None
        return await self.call("GetTrainingStatus", train_pb2.GetTrainingStatusRequest(task_id=record["task_id"]),
                               request)

    def record_of(self, request: Request) -> dict:
        job_id = request.path_params["job_id"]
        record = self.index.get(job_id)
        if record is None:
            raise not_found("fine_tuning_job_id", f"No fine-tuning job {job_id!r}")
        return record

    # -- the job object ---------------------------------------------------------------------
    async def job_object(self, record: dict, task: train_pb2.TrainingTask | None,
                         request: Request | None = None) -> dict:
        status = record.get("status", "failed") if task is None else STATUS[_status_word(task)]
        error = record.get("error")
        word = _status_word(task) if task is not None else ""
        if task is not None and word == "failed":
            error = {"code": "training_failed", "message": (task.error_message or task.message)[:2000], "param": None}
        elif word == "interrupted":
            error = {"code": "interrupted", "message": task.error_message or task.message, "param": None}
        elif task is not None:
            error = None
        finished = _ts(task.completed_at) if task is not None and word in STATUS and status in (
            "succeeded", "failed", "cancelled") else record.get("finished_at")
        estimated = None
        if task is not None and word == "running" and task.eta_seconds > 0:
            estimated = int(time.time() + task.eta_seconds)
        result_files: list[str] = []
        trained_tokens = None
        if status == "succeeded":
            result_files = [await self.result_file(record, request)]
            tokens = task.metrics.get("num_tokens") if task is not None else None
            trained_tokens = int(tokens) if tokens else None
        return {
            "id": record["id"], "object": "fine_tuning.job", "created_at": record["created_at"],
            "finished_at": finished, "estimated_finish": estimated, "error": error,
            "fine_tuned_model": ft_model_id(record) if status == "succeeded" else None,
            "hyperparameters": {k: v for k, v in record["hyperparameters"].items() if k != "beta"},
            "method": record["method"], "model": record["model"], "organization_id": "org-wintrain",
            "result_files": result_files, "seed": record["seed"], "status": status,
            "trained_tokens": trained_tokens, "training_file": record["training_file"],
            "validation_file": record.get("validation_file"), "integrations": [],
            "metadata": record.get("metadata") or None, "suffix": record.get("suffix"),
            # Extensions: the task behind the job, and its progress.
            "wintrain": {"task_id": record.get("task_id") or None,
                         "progress": round(task.progress, 2) if task is not None else 0.0,
                         "current_step": task.current_step if task is not None else 0,
                         "total_steps": task.total_steps if task is not None else 0},
        }

    # -- create -----------------------------------------------------------------------------
    def _file_param(self, file_id: Any, param: str) -> dict:
        if not isinstance(file_id, str) or not file_id:
            raise invalid(param, "must be a file id (from POST /v1/files)")
        obj = self.files.get(file_id)
        if obj is None:
            raise invalid(param, f"invalid {param}: no file {file_id!r}")
        if obj["purpose"] != "fine-tune":
            raise invalid(param, f"file {file_id!r} has purpose {obj['purpose']!r}; upload it with purpose fine-tune")
        return obj

    def _extension(self, raw: Any) -> tuple[str, dict, dict]:
        """(strategy word lora|full, TrainingConfig JSON, LoraConfig JSON) of `wintrain`."""
        if raw is None:
            return "lora", {}, {}
        if not isinstance(raw, dict):
            raise invalid("wintrain", "must be an object")
        raw = dict(raw)
        kind = raw.pop("strategy", "lora")
        if kind not in ("lora", "full"):
            raise invalid("wintrain.strategy", f"must be lora or full, got {json.dumps(kind)}")
        lora = raw.pop("lora", None) or {}
        if not isinstance(lora, dict):
            raise invalid("wintrain.lora", "must be an object")
        if lora and kind == "full":
            raise invalid("wintrain.lora", "is for strategy lora; this job is a full fine-tune")
        fields = train_pb2.TrainingConfig.DESCRIPTOR.fields_by_name
        by_json = {f.json_name: f.name for f in train_pb2.TrainingConfig.DESCRIPTOR.fields}
        config: dict[str, Any] = {}
        for key, value in raw.items():
            name = key if key in fields else by_json.get(key)
            if name is None:
                raise invalid(f"wintrain.{key}", "is not a training setting (see TrainingConfig in /docs)")
            if name in OWNED:
                where = OWNED[name]
                raise invalid(f"wintrain.{key}", f"is set by {where}" if where else "is not settable here")
            config[name] = value
        lora_fields = train_pb2.LoraConfig.DESCRIPTOR.fields_by_name
        for key in lora:
            if key not in lora_fields:
                raise invalid(f"wintrain.lora.{key}", f"is not a LoRA setting (known: {', '.join(lora_fields)})")
        for message, data, param in ((train_pb2.TrainingConfig, config, "wintrain"),
                                     (train_pb2.LoraConfig, lora, "wintrain.lora")):
            try:
                json_format.ParseDict(data, message())
            except json_format.ParseError as exc:
                raise invalid(param, str(exc).split("\n")[0][:300]) from None
        return kind, config, lora

    def parse_create(self, body: dict) -> dict:
        # Types, bounds, unknown fields: the declared request model (gateway.openai_protocol,
        # also the OpenAPI schema); what needs the stores or the service is checked here.
        try:
            req = parse_job_create(body)
        except RequestInvalid as exc:
            raise GatewayError.invalid(exc.violations) from None
        model = req.model
        if not model.strip():
            raise invalid("model", "is required: the base model to fine-tune")
        if model.startswith("ft:"):
            raise invalid("model", "fine-tuning a fine-tuned model is not supported; name a base model")
        training = self._file_param(req.training_file, "training_file")
        validation = None
        if req.validation_file is not None:
            validation = self._file_param(req.validation_file, "validation_file")
            if validation["id"] == training["id"]:
                raise invalid("validation_file", "must not be the training file")
        for key in req.metadata or {}:
            if len(key) > 64:
                raise invalid(f"metadata.{key[:20]}", "keys are at most 64 characters")

        def given(hp) -> dict[str, Any]:
            return hp.model_dump(exclude_unset=True) if hp is not None else {}

        legacy = req.hyperparameters
        if req.method is None:
            kind, hp = "supervised", given(legacy)
        else:
            kind = req.method.type
            if kind == "dpo" and not hasattr(train_pb2, "STRATEGY_DPO"):
                raise invalid("method.type", "dpo needs a preference strategy, which this training service lacks")
            other = "dpo" if kind == "supervised" else "supervised"
            if other in req.method.model_fields_set:
                raise invalid(f"method.{other}", f"does not belong to a {kind} method")
            inner = getattr(req.method, kind)
            hp = given(inner.hyperparameters if inner is not None else None)
            if legacy is not None:
                if kind != "supervised":
                    raise invalid("hyperparameters", "the deprecated top-level hyperparameters are supervised; "
                                  "use method.dpo.hyperparameters")
                hp = {**given(legacy), **hp}
        suffix, seed, metadata = req.suffix, req.seed, req.metadata
        strategy, config, lora = self._extension(body.get("wintrain"))
        return {"model": model, "training": training, "validation": validation, "suffix": suffix, "seed": seed,
                "metadata": metadata or {}, "kind": kind, "hp": hp, "strategy": strategy, "config": config,
                "lora": lora}

    def _param_of(self, field: str, kind: str) -> str:
        hp = f"method.{kind}.hyperparameters"
        if field == "dataset_path":
            return "training_file"
        if field == "eval_dataset_path":
            return "validation_file"
        if field == "strategy":
            return "method.type"
        if field.startswith("config."):
            name = field[len("config."):].split(".")[0].split("[")[0]
            if name == "model_path":
                return "model"
            if name == "seed":
                return "seed"
            if name in OWNED and OWNED[name] and name not in ("lora_config",):
                return f"{hp}.{OWNED[name]}"
            if name == "lora_config":
                return "wintrain.lora" + field[len("config.lora_config"):]
            return "wintrain." + field[len("config."):]
        return field

    async def create(self, request: Request) -> Response:
        try:
            body = parse_json_object(await read_body(request, self.transcoder.max_body))
            job = self.parse_create(body)
            kind, rows = job["kind"], count_rows(self.files.content_path(job["training"]["id"]))
            hp = resolve_auto(job["hp"], kind, rows)
            seed = job["seed"] if job["seed"] is not None else 42
            config = dict(job["config"])
            config.update(per_device_train_batch_size=hp["batch_size"], num_train_epochs=hp["n_epochs"],
                          learning_rate=hp["learning_rate_multiplier"] * BASE_LR[job["strategy"]], seed=seed)
            config.setdefault("gradient_accumulation_steps", 1)
            if kind == "dpo":
                config["beta"] = hp["beta"]
            if job["model"] not in self.default_aliases:
                config["model_path"] = job["model"]
            if job["strategy"] == "lora":
                config["lora_config"] = job["lora"]
            strategy = ("STRATEGY_DPO" if kind == "dpo" else
                        "STRATEGY_LORA" if job["strategy"] == "lora" else "STRATEGY_TRL")
            message = train_pb2.StartTrainingRequest(
                strategy=getattr(train_pb2, strategy),
                dataset_path=self.files.relative_path(job["training"]["id"]),
                output_dir=f"openai/models/{uuid.uuid4().hex}")
            json_format.ParseDict(config, message.config)
            if job["validation"] is not None:
                message.eval_dataset_path = self.files.relative_path(job["validation"]["id"])
            method = {"type": kind, kind: {"hyperparameters": hp}}
            record = {"created_at": int(time.time()), "model": job["model"], "training_file": job["training"]["id"],
                      "validation_file": job["validation"]["id"] if job["validation"] else None,
                      "suffix": job["suffix"], "seed": seed, "metadata": job["metadata"], "method": method,
                      "hyperparameters": hp, "wintrain": {"strategy": job["strategy"], **config}}
            record.update(id=f"{JOB_PREFIX}{uuid.uuid4()}", task_id="", status="validating_files",
                          start=json_format.MessageToDict(message, preserving_proto_field_name=True))
            self.index.put(record)
            self.launch(record["id"])
            return openai_json(await self.job_object(record, None, request))
        except GatewayError as err:
            return openai_error(err)

    # -- validating_files, in the background ------------------------------------------------
    def lock_of(self, job_id: str) -> asyncio.Lock:
        return self.locks.setdefault(job_id, asyncio.Lock())

    def launch(self, job_id: str) -> None:
        task = asyncio.get_running_loop().create_task(self.validate_and_start(job_id), name=f"validate {job_id}")
        self.background[job_id] = task
        task.add_done_callback(lambda _t: self.background.pop(job_id, None))

    def resume_pending(self) -> None:
        """At gateway start-up: a job left in `validating_files` by a restart is validated
        again and started (its StartTraining request is in its record)."""
        for record in self.index.all():
            if record.get("status") == "validating_files" and not record.get("task_id"):
                if record.get("start"):
                    self.launch(record["id"])
                else:
                    self.fail(record, {"code": "interrupted", "param": None,
                                       "message": "the gateway restarted while validating the files"})

    def stop(self) -> None:
        """At gateway shutdown: validations stop; their jobs stay in `validating_files` and
        resume_pending takes them up at the next start."""
        for task in list(self.background.values()):
            task.cancel()

    def fail(self, record: dict, error: dict) -> None:
        record.update(status="failed", finished_at=int(time.time()), error=error)
        self.index.put(record)

    async def validate_file(self, record: dict, param: str) -> dict | None:
        """The OpenAI error of the file under `param` from the data service's ValidateDataset
        (of the training copy, whose lines are the upload's), or None when it is valid (or the
        data service is not there: the train pre-flight reads every row too)."""
        file_id = record[param]
        spec = self.transcoder.by_method.get(VALIDATE)
        if spec is None:
            return None
        try:
            reply = await self.transcoder.unary(spec, data_pb2.ValidateDatasetRequest(
                file_path=self.files.relative_path(file_id)), "")
        except GatewayError as err:
            if err.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "UNIMPLEMENTED"):
                log.warning("data service unavailable; %s is checked by the train pre-flight", record["id"])
                return None
            return {"code": f"invalid_{param.removesuffix('_file')}_file", "param": param,
                    "message": f"{param} {file_id}: " + openai_words(err.message)}
        if reply.is_valid:
            return None
        if reply.issues:
            issue = reply.issues[0]
            text = issue.message or f"line {issue.line}: {issue.field} {issue.code}"
            if f"line {issue.line}" not in text:
                text = f"line {issue.line}: {text}"
        else:
            text = (reply.error_messages[0] if reply.error_messages else "the file has no rows")
        more = f" ({reply.invalid_samples} of {reply.total_samples} rows invalid)" if reply.invalid_samples > 1 else ""
        return {"code": f"invalid_{param.removesuffix('_file')}_file", "param": param,
                "message": f"{param} {file_id}: " + openai_words(text) + more}

    async def validate_and_start(self, job_id: str) -> None:
        try:
            await self._validate_and_start(job_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never leave a job in validating_files
            log.exception("fine-tuning job %s: validation failed unexpectedly", job_id)
            await self.fail_validating(job_id, {"code": "internal", "param": None,
                                                "message": f"validation failed: {exc}"})

    async def fail_validating(self, job_id: str, error: dict) -> None:
        """Fail the job with `error` unless it left `validating_files` meanwhile (a cancel)."""
        async with self.lock_of(job_id):
            record = self.index.get(job_id)
            if record is not None and record.get("status") == "validating_files":
                self.fail(record, error)

    async def _validate_and_start(self, job_id: str) -> None:
        record = self.index.get(job_id)
        if record is None or record.get("status") != "validating_files":
            return
        for param in ("training_file", "validation_file"):
            if record.get(param):
                error = await self.validate_file(record, param)
                if error is not None:
                    await self.fail_validating(job_id, error)
                    return
        async with self.lock_of(job_id):
            record = self.index.get(job_id)
            if record is None or record.get("status") != "validating_files":
                return  # cancelled meanwhile: no task ever starts
            message = json_format.ParseDict(record["start"], train_pb2.StartTrainingRequest())
            kind = record["method"]["type"]
            try:
                started = await self.call("StartTraining", message)
            except GatewayError as err:
                fields = [f for f, _ in err.violations]
                if err.code == "INVALID_ARGUMENT" and fields and fields[0] in ("dataset_path", "eval_dataset_path"):
                    param = self._param_of(fields[0], kind)
                    which = "training" if param == "training_file" else "validation"
                    self.fail(record, {"code": f"invalid_{which}_file", "param": param,
                                       "message": f"{param} {record[param]}: " + openai_words(
                                           err.message.removeprefix(f"{fields[0]}: ").replace(
                                               message.dataset_path if which == "training"
                                               else message.eval_dataset_path, record[param]))})
                    return
                param = self._param_of(fields[0], kind) if fields else None
                text = err.violations[0][1] if err.violations else err.message
                self.fail(record, {"code": "invalid_request" if err.code == "INVALID_ARGUMENT" else err.code.lower(),
                                   "param": param, "message": f"{param}: {text}" if param else text})
                return
            record.update(task_id=started.task_id, status="queued")
            self.index.put(record)

    # -- read -------------------------------------------------------------------------------
    async def retrieve(self, request: Request) -> Response:
        try:
            record = self.record_of(request)
            return openai_json(await self.job_object(record, await self.task_of(record, request), request))
        except GatewayError as err:
            return openai_error(err)

    async def list(self, request: Request) -> Response:
        try:
            limit = limit_of(request, JOBS_PAGE)
            wanted = {}
            for key, value in request.query_params.multi_items():
                m = re.fullmatch(r"metadata\[(.+)\]", key)
                if m:
                    wanted[m.group(1)] = value
                elif key not in ("after", "limit"):
                    raise invalid(key, "is not a parameter of this list (after, limit, metadata[k])")
            records = [r for r in self.index.all()
                       if all((r.get("metadata") or {}).get(k) == v for k, v in wanted.items())]
            listed = page(records, request.query_params.get("after"), limit)
            listed["data"] = [await self.job_object(r, await self.task_of(r, request), request) for r in listed["data"]]
            return openai_json(listed)
        except GatewayError as err:
            return openai_error(err)

    # -- controls ---------------------------------------------------------------------------
    async def _control(self, request: Request, method: str, message_class, verb: str) -> Response:
        try:
            record = self.record_of(request)
            if not record.get("task_id"):
                async with self.lock_of(record["id"]):
                    record = self.record_of(request)
                    if record.get("status") == "validating_files" and method == "CancelTraining":
                        record.update(status="cancelled", finished_at=int(time.time()))
                        self.index.put(record)
                        task = self.background.get(record["id"])
                        if task is not None:
                            task.cancel()
                        return openai_json(await self.job_object(record, None, request))
            if not record.get("task_id"):
                if record.get("status") == "validating_files":
                    raise conflict(f"job {record['id']} is validating its files; it cannot be {verb} yet")
                if record.get("status") == "cancelled":
                    raise conflict(f"job {record['id']} was cancelled while validating its files; "
                                   f"it cannot be {verb}")
                raise conflict(f"job {record['id']} failed validation and never ran; it cannot be {verb}")
            try:
                await self.call(method, message_class(task_id=record["task_id"]), request)
            except GatewayError as err:
                if err.code == "FAILED_PRECONDITION":
                    return openai_error(conflict(f"job {record['id']} cannot be {verb}: {err.message}"), 409)
                raise
            return openai_json(await self.job_object(record, await self.task_of(record, request), request))
        except GatewayError as err:
            return openai_error(err, 409 if err.code == "FAILED_PRECONDITION" else None)

    async def cancel(self, request: Request) -> Response:
        return await self._control(request, "CancelTraining", train_pb2.CancelTrainingRequest, "cancelled")

    async def pause(self, request: Request) -> Response:
        return await self._control(request, "PauseTraining", train_pb2.PauseTrainingRequest, "paused")

    async def resume(self, request: Request) -> Response:
        return await self._control(request, "ResumeTraining", train_pb2.ResumeTrainingRequest, "resumed")

    # -- events, checkpoints, results -------------------------------------------------------
    async def stored_events(self, task_id: str, request: Request | None) -> list[train_pb2.TrainingEvent]:
        out, after = [], 0
        while True:
            reply = await self.call("ListTrainingEvents", train_pb2.ListTrainingEventsRequest(
                task_id=task_id, after_sequence=after, page_size=1000), request)
            out += reply.events
            if not reply.has_more or not reply.events:
                return out
            after = reply.events[-1].sequence

    def openai_events(self, record: dict, events: list[train_pb2.TrainingEvent]) -> list[dict]:
        """Oldest first; the caller reverses."""
        out = [{"id": f"ftevent-{record['id'][len(JOB_PREFIX):]}-0", "object": "fine_tuning.job.event",
                "created_at": record["created_at"], "level": "info", "type": "message", "data": {},
                "message": f"Created fine-tuning job: {record['id']}"}]
        train: dict[str, float] = {}
        valid: dict[str, float] = {}
        for event in events:
            kind = train_pb2.EventKind.Name(event.kind).removeprefix("EVENT_KIND_").lower()
            base = {"id": f"ftevent-{record['id'][len(JOB_PREFIX):]}-{event.sequence}",
                    "object": "fine_tuning.job.event", "created_at": _ts(event.timestamp) or record["created_at"]}
            if kind == "progress" and event.loss > 0:
                train = {"train_loss": event.loss}
                if "mean_token_accuracy" in event.metrics:
                    train["train_mean_token_accuracy"] = event.metrics["mean_token_accuracy"]
            elif kind == "eval" and "eval_loss" in event.metrics:
                valid = {"valid_loss": event.metrics["eval_loss"], "full_valid_loss": event.metrics["eval_loss"]}
                if "eval_mean_token_accuracy" in event.metrics:
                    acc = event.metrics["eval_mean_token_accuracy"]
                    valid.update(valid_mean_token_accuracy=acc, full_valid_mean_token_accuracy=acc)
            if (kind == "progress" and event.loss > 0) or (kind == "eval" and valid):
                data = {"step": event.current_step, "total_steps": event.total_steps, **train, **valid}
                message = f"Step {event.current_step}/{event.total_steps}: " + ", ".join(
                    f"{k}={v:.4f}" for k, v in (*train.items(), *valid.items()) if not k.startswith("full_"))
                out.append({**base, "level": "info", "type": "metrics", "data": data, "message": message})
                continue
            level = "error" if event.status == train_pb2.TASK_STATUS_FAILED else "info"
            if kind == "webhook" and "failed" in event.message:
                level = "warn"
            out.append({**base, "level": level, "type": "message", "data": {"step": event.current_step},
                        "message": event.message or kind})
        if record.get("error") and not record.get("task_id"):
            out.append({"id": f"ftevent-{record['id'][len(JOB_PREFIX):]}-1", "object": "fine_tuning.job.event",
                        "created_at": record.get("finished_at") or record["created_at"], "level": "error",
                        "type": "message", "data": {}, "message": record["error"]["message"]})
        return out

    async def events(self, request: Request) -> Response:
        try:
            record = self.record_of(request)
            limit = limit_of(request, EVENTS_PAGE)
            stored = await self.stored_events(record["task_id"], request) if record.get("task_id") else []
            items = list(reversed(self.openai_events(record, stored)))
            return openai_json(page(items, request.query_params.get("after"), limit))
        except GatewayError as err:
            return openai_error(err)

    async def task_checkpoints(self, record: dict, request: Request | None) -> list[train_pb2.Checkpoint]:
        if not record.get("task_id"):
            return []
        reply = await self.call("ListCheckpoints", train_pb2.ListCheckpointsRequest(task_id=record["task_id"]), request)
        return list(reply.checkpoints)

    def checkpoint_object(self, record: dict, ckpt: train_pb2.Checkpoint) -> dict:
        metrics: dict[str, float] = {"step": float(ckpt.step)}
        for ours, theirs in (("train_loss", "train_loss"), ("mean_token_accuracy", "train_mean_token_accuracy"),
                             ("eval_loss", "valid_loss"), ("eval_mean_token_accuracy", "valid_mean_token_accuracy"),
                             ("eval_loss", "full_valid_loss"),
                             ("eval_mean_token_accuracy", "full_valid_mean_token_accuracy")):
            if ckpt.HasField(ours):
                metrics[theirs] = getattr(ckpt, ours)
        return {"id": f"ftckpt-{record['id'][len(JOB_PREFIX):]}-{ckpt.step}", "object": "fine_tuning.job.checkpoint",
                "created_at": _ts(ckpt.created_at) or record["created_at"],
                "fine_tuned_model_checkpoint": f"{ft_model_id(record)}:ckpt-step-{ckpt.step}",
                "fine_tuning_job_id": record["id"], "step_number": ckpt.step, "metrics": metrics,
                # Extensions: what native clients use.
                "wintrain": {"path": ckpt.path, "size_bytes": ckpt.size_bytes, "best": ckpt.best}}

    async def checkpoints(self, request: Request) -> Response:
        try:
            record = self.record_of(request)
            limit = limit_of(request, CHECKPOINTS_PAGE)
            found = await self.task_checkpoints(record, request)
            items = [self.checkpoint_object(record, c) for c in reversed(found)]
            return openai_json(page(items, request.query_params.get("after"), limit))
        except GatewayError as err:
            return openai_error(err)

    async def result_file(self, record: dict, request: Request | None) -> str:
        """The id of the job's result CSV, written into the Files store once."""
        file_id = f"file-results-{record['task_id']}"
        if self.files.get(file_id) is not None:
            return file_id
        rows: dict[int, dict[str, float]] = {}
        for event in await self.stored_events(record["task_id"], request):
            kind = train_pb2.EventKind.Name(event.kind)
            row = rows.setdefault(event.current_step, {})
            if kind == "EVENT_KIND_PROGRESS" and event.loss > 0:
                row["train_loss"] = event.loss
                if "mean_token_accuracy" in event.metrics:
                    row["train_accuracy"] = event.metrics["mean_token_accuracy"]
            elif kind == "EVENT_KIND_EVAL" and "eval_loss" in event.metrics:
                row["valid_loss"] = event.metrics["eval_loss"]
                if "eval_mean_token_accuracy" in event.metrics:
                    row["valid_mean_token_accuracy"] = event.metrics["eval_mean_token_accuracy"]
        columns = ("train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy")
        lines = ["step," + ",".join(columns)]
        for step in sorted(s for s, r in rows.items() if r):
            lines.append(",".join([str(step), *(f"{rows[step][c]:.6g}" if c in rows[step] else "" for c in columns)]))
        self.files.add(("\n".join(lines) + "\n").encode(), "step_metrics.csv", "fine-tune-results", file_id=file_id)
        return file_id

    # -- model source (gateway.openai_compat) ----------------------------------------------------
    async def resolve(self, model_id: str) -> str | None:
        parsed = parse_model_id(model_id)
        if parsed is None:
            return None
        job_id, step = parsed
        record = self.index.get(job_id)
        if record is None or not model_id.startswith(ft_model_id(record)):
            raise not_found("model", f"The model {model_id!r} does not exist")
        task = await self.task_of(record)
        if step is not None:
            for ckpt in await self.task_checkpoints(record, None):
                if ckpt.step == step:
                    return ckpt.path
            raise not_found("model", f"The model {model_id!r} does not exist (job {job_id} has no checkpoint at "
                                     f"step {step} now; only the latest few are kept)")
        if model_id != ft_model_id(record) or task is None or _status_word(task) != "completed":
            raise not_found("model", f"The model {model_id!r} does not exist (yet: job {job_id} has not succeeded)")
        return task.output_dir

    async def list_models(self) -> list[dict]:
        cards = []
        for record in self.index.all():
            if not record.get("task_id"):
                continue
            try:
                task = await self.task_of(record)
            except GatewayError:
                continue
            if task is not None and _status_word(task) == "completed":
                cards.append({"id": ft_model_id(record), "object": "model",
                              "created": _ts(task.completed_at) or record["created_at"], "owned_by": "wintrain"})
        return cards

    def routes(self) -> list[Route]:
        jobs = "/v1/fine_tuning/jobs"
        return [
            Route(jobs, self.create, methods=["POST"], name="openai-ft-create"),
            Route(jobs, self.list, methods=["GET"], name="openai-ft-list"),
            Route(jobs + "/{job_id}", self.retrieve, methods=["GET"], name="openai-ft-get"),
            Route(jobs + "/{job_id}/cancel", self.cancel, methods=["POST"], name="openai-ft-cancel"),
            Route(jobs + "/{job_id}/pause", self.pause, methods=["POST"], name="openai-ft-pause"),
            Route(jobs + "/{job_id}/resume", self.resume, methods=["POST"], name="openai-ft-resume"),
            Route(jobs + "/{job_id}/events", self.events, methods=["GET"], name="openai-ft-events"),
            Route(jobs + "/{job_id}/checkpoints", self.checkpoints, methods=["GET"], name="openai-ft-checkpoints"),
        ]


def install(gateway) -> list[Route]:
    """Wire Files and fine-tuning jobs into a `gateway.app.Gateway`: their routes (returned),
    and `ft:` model ids for /v1/models and /v1/chat/completions."""
    from gateway.openai_files import OpenAIFiles

    files = OpenAIFiles(gateway.config)
    jobs = OpenAIFineTuning(gateway.transcoder, files.store, gateway.openai.default_aliases)
    gateway.openai.add_model_source(jobs)
    gateway.openai_files, gateway.openai_ft = files, jobs
    return [*files.routes(), *jobs.routes()]
