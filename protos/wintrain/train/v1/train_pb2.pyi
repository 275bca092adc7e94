from google.api import annotations_pb2 as _annotations_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from wintrain.api.v1 import options_pb2 as _options_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Strategy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STRATEGY_UNSPECIFIED: _ClassVar[Strategy]
    STRATEGY_TRL: _ClassVar[Strategy]
    STRATEGY_LORA: _ClassVar[Strategy]
    STRATEGY_DPO: _ClassVar[Strategy]

class TaskStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_STATUS_UNSPECIFIED: _ClassVar[TaskStatus]
    TASK_STATUS_PENDING: _ClassVar[TaskStatus]
    TASK_STATUS_RUNNING: _ClassVar[TaskStatus]
    TASK_STATUS_COMPLETED: _ClassVar[TaskStatus]
    TASK_STATUS_FAILED: _ClassVar[TaskStatus]
    TASK_STATUS_CANCELLED: _ClassVar[TaskStatus]
    TASK_STATUS_INTERRUPTED: _ClassVar[TaskStatus]
    TASK_STATUS_PAUSED: _ClassVar[TaskStatus]

class EventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_KIND_UNSPECIFIED: _ClassVar[EventKind]
    EVENT_KIND_SNAPSHOT: _ClassVar[EventKind]
    EVENT_KIND_STATUS: _ClassVar[EventKind]
    EVENT_KIND_PROGRESS: _ClassVar[EventKind]
    EVENT_KIND_EVAL: _ClassVar[EventKind]
    EVENT_KIND_CHECKPOINT: _ClassVar[EventKind]
    EVENT_KIND_WEBHOOK: _ClassVar[EventKind]
STRATEGY_UNSPECIFIED: Strategy
STRATEGY_TRL: Strategy
STRATEGY_LORA: Strategy
STRATEGY_DPO: Strategy
TASK_STATUS_UNSPECIFIED: TaskStatus
TASK_STATUS_PENDING: TaskStatus
TASK_STATUS_RUNNING: TaskStatus
TASK_STATUS_COMPLETED: TaskStatus
TASK_STATUS_FAILED: TaskStatus
TASK_STATUS_CANCELLED: TaskStatus
TASK_STATUS_INTERRUPTED: TaskStatus
TASK_STATUS_PAUSED: TaskStatus
EVENT_KIND_UNSPECIFIED: EventKind
EVENT_KIND_SNAPSHOT: EventKind
EVENT_KIND_STATUS: EventKind
EVENT_KIND_PROGRESS: EventKind
EVENT_KIND_EVAL: EventKind
EVENT_KIND_CHECKPOINT: EventKind
EVENT_KIND_WEBHOOK: EventKind

class LoraConfig(_message.Message):
    __slots__ = ("r", "lora_alpha", "target_modules", "lora_dropout", "bias", "modules_to_save")
    R_FIELD_NUMBER: _ClassVar[int]
    LORA_ALPHA_FIELD_NUMBER: _ClassVar[int]
    TARGET_MODULES_FIELD_NUMBER: _ClassVar[int]
    LORA_DROPOUT_FIELD_NUMBER: _ClassVar[int]
    BIAS_FIELD_NUMBER: _ClassVar[int]
    MODULES_TO_SAVE_FIELD_NUMBER: _ClassVar[int]
    r: int
    lora_alpha: float
    target_modules: _containers.RepeatedScalarFieldContainer[str]
    lora_dropout: float
    bias: str
    modules_to_save: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, r: _Optional[int] = ..., lora_alpha: _Optional[float] = ..., target_modules: _Optional[_Iterable[str]] = ..., lora_dropout: _Optional[float] = ..., bias: _Optional[str] = ..., modules_to_save: _Optional[_Iterable[str]] = ...) -> None: ...

class TrainingConfig(_message.Message):
    __slots__ = ("model_path", "per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate", "max_steps", "num_train_epochs", "warmup_steps", "logging_steps", "optim", "weight_decay", "lr_scheduler_type", "seed", "max_length", "resume_from_checkpoint", "lora_config", "save_steps", "save_total_limit", "eval_steps", "num_processes", "group_by_length", "beta", "loss_type", "max_prompt_length", "early_stopping_patience", "early_stopping_threshold", "rpo_alpha")
    MODEL_PATH_FIELD_NUMBER: _ClassVar[int]
    PER_DEVICE_TRAIN_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_ACCUMULATION_STEPS_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    NUM_TRAIN_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    WARMUP_STEPS_FIELD_NUMBER: _ClassVar[int]
    LOGGING_STEPS_FIELD_NUMBER: _ClassVar[int]
    OPTIM_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    LR_SCHEDULER_TYPE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    RESUME_FROM_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    LORA_CONFIG_FIELD_NUMBER: _ClassVar[int]
    SAVE_STEPS_FIELD_NUMBER: _ClassVar[int]
    SAVE_TOTAL_LIMIT_FIELD_NUMBER: _ClassVar[int]
    EVAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    NUM_PROCESSES_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_LENGTH_FIELD_NUMBER: _ClassVar[int]
    BETA_FIELD_NUMBER: _ClassVar[int]
    LOSS_TYPE_FIELD_NUMBER: _ClassVar[int]
    MAX_PROMPT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    EARLY_STOPPING_PATIENCE_FIELD_NUMBER: _ClassVar[int]
    EARLY_STOPPING_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    RPO_ALPHA_FIELD_NUMBER: _ClassVar[int]
    model_path: str
    per_device_train_batch_size: int
    gradient_accumulation_steps: int
    learning_rate: float
    max_steps: int
    num_train_epochs: float
    warmup_steps: int
    logging_steps: int
    optim: str
    weight_decay: float
    lr_scheduler_type: str
    seed: int
    max_length: int
    resume_from_checkpoint: str
    lora_config: LoraConfig
    save_steps: int
    save_total_limit: int
    eval_steps: int
    num_processes: int
    group_by_length: bool
    beta: float
    loss_type: str
    max_prompt_length: int
    early_stopping_patience: int
    early_stopping_threshold: float
    rpo_alpha: float
    def __init__(self, model_path: _Optional[str] = ..., per_device_train_batch_size: _Optional[int] = ..., gradient_accumulation_steps: _Optional[int] = ..., learning_rate: _Optional[float] = ..., max_steps: _Optional[int] = ..., num_train_epochs: _Optional[float] = ..., warmup_steps: _Optional[int] = ..., logging_steps: _Optional[int] = ..., optim: _Optional[str] = ..., weight_decay: _Optional[float] = ..., lr_scheduler_type: _Optional[str] = ..., seed: _Optional[int] = ..., max_length: _Optional[int] = ..., resume_from_checkpoint: _Optional[str] = ..., lora_config: _Optional[_Union[LoraConfig, _Mapping]] = ..., save_steps: _Optional[int] = ..., save_total_limit: _Optional[int] = ..., eval_steps: _Optional[int] = ..., num_processes: _Optional[int] = ..., group_by_length: _Optional[bool] = ..., beta: _Optional[float] = ..., loss_type: _Optional[str] = ..., max_prompt_length: _Optional[int] = ..., early_stopping_patience: _Optional[int] = ..., early_stopping_threshold: _Optional[float] = ..., rpo_alpha: _Optional[float] = ...) -> None: ...

class StartTrainingRequest(_message.Message):
    __slots__ = ("strategy", "dataset_path", "output_dir", "config", "eval_dataset_path")
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    DATASET_PATH_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DIR_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    EVAL_DATASET_PATH_FIELD_NUMBER: _ClassVar[int]
    strategy: Strategy
    dataset_path: str
    output_dir: str
    config: TrainingConfig
    eval_dataset_path: str
    def __init__(self, strategy: _Optional[_Union[Strategy, str]] = ..., dataset_path: _Optional[str] = ..., output_dir: _Optional[str] = ..., config: _Optional[_Union[TrainingConfig, _Mapping]] = ..., eval_dataset_path: _Optional[str] = ...) -> None: ...

class StartTrainingResponse(_message.Message):
    __slots__ = ("task_id", "status", "message", "created_at", "queue_position")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    QUEUE_POSITION_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    status: TaskStatus
    message: str
    created_at: str
    queue_position: int
    def __init__(self, task_id: _Optional[str] = ..., status: _Optional[_Union[TaskStatus, str]] = ..., message: _Optional[str] = ..., created_at: _Optional[str] = ..., queue_position: _Optional[int] = ...) -> None: ...

class TrainingTask(_message.Message):
    __slots__ = ("task_id", "status", "strategy", "dataset_path", "output_dir", "config", "created_at", "started_at", "completed_at", "error_message", "progress", "current_step", "total_steps", "loss", "metrics", "learning_rate", "epoch", "grad_norm", "tokens_per_second", "eta_seconds", "queue_position", "eval_dataset_path", "last_checkpoint", "message")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    DATASET_PATH_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DIR_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_AT_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    ETA_SECONDS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_POSITION_FIELD_NUMBER: _ClassVar[int]
    EVAL_DATASET_PATH_FIELD_NUMBER: _ClassVar[int]
    LAST_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    status: TaskStatus
    strategy: Strategy
    dataset_path: str
    output_dir: str
    config: TrainingConfig
    created_at: str
    started_at: str
    completed_at: str
    error_message: str
    progress: float
    current_step: int
    total_steps: int
    loss: float
    metrics: _containers.ScalarMap[str, float]
    learning_rate: float
    epoch: float
    grad_norm: float
    tokens_per_second: float
    eta_seconds: float
    queue_position: int
    eval_dataset_path: str
    last_checkpoint: str
    message: str
    def __init__(self, task_id: _Optional[str] = ..., status: _Optional[_Union[TaskStatus, str]] = ..., strategy: _Optional[_Union[Strategy, str]] = ..., dataset_path: _Optional[str] = ..., output_dir: _Optional[str] = ..., config: _Optional[_Union[TrainingConfig, _Mapping]] = ..., created_at: _Optional[str] = ..., started_at: _Optional[str] = ..., completed_at: _Optional[str] = ..., error_message: _Optional[str] = ..., progress: _Optional[float] = ..., current_step: _Optional[int] = ..., total_steps: _Optional[int] = ..., loss: _Optional[float] = ..., metrics: _Optional[_Mapping[str, float]] = ..., learning_rate: _Optional[float] = ..., epoch: _Optional[float] = ..., grad_norm: _Optional[float] = ..., tokens_per_second: _Optional[float] = ..., eta_seconds: _Optional[float] = ..., queue_position: _Optional[int] = ..., eval_dataset_path: _Optional[str] = ..., last_checkpoint: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class GetTrainingStatusRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class ListTrainingTasksRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListTrainingTasksResponse(_message.Message):
    __slots__ = ("tasks", "next_page_token")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[TrainingTask]
    next_page_token: str
    def __init__(self, tasks: _Optional[_Iterable[_Union[TrainingTask, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchTrainingRequest(_message.Message):
    __slots__ = ("task_id", "from_sequence", "replay")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    REPLAY_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    from_sequence: int
    replay: bool
    def __init__(self, task_id: _Optional[str] = ..., from_sequence: _Optional[int] = ..., replay: _Optional[bool] = ...) -> None: ...

class TrainingEvent(_message.Message):
    __slots__ = ("sequence", "task_id", "kind", "status", "progress", "current_step", "total_steps", "loss", "learning_rate", "epoch", "grad_norm", "tokens_per_second", "eta_seconds", "metrics", "message", "timestamp")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    ETA_SECONDS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    task_id: str
    kind: EventKind
    status: TaskStatus
    progress: float
    current_step: int
    total_steps: int
    loss: float
    learning_rate: float
    epoch: float
    grad_norm: float
    tokens_per_second: float
    eta_seconds: float
    metrics: _containers.ScalarMap[str, float]
    message: str
    timestamp: str
    def __init__(self, sequence: _Optional[int] = ..., task_id: _Optional[str] = ..., kind: _Optional[_Union[EventKind, str]] = ..., status: _Optional[_Union[TaskStatus, str]] = ..., progress: _Optional[float] = ..., current_step: _Optional[int] = ..., total_steps: _Optional[int] = ..., loss: _Optional[float] = ..., learning_rate: _Optional[float] = ..., epoch: _Optional[float] = ..., grad_norm: _Optional[float] = ..., tokens_per_second: _Optional[float] = ..., eta_seconds: _Optional[float] = ..., metrics: _Optional[_Mapping[str, float]] = ..., message: _Optional[str] = ..., timestamp: _Optional[str] = ...) -> None: ...

class CancelTrainingRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class ResumeTrainingRequest(_message.Message):
    __slots__ = ("task_id", "checkpoint")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    checkpoint: str
    def __init__(self, task_id: _Optional[str] = ..., checkpoint: _Optional[str] = ...) -> None: ...

class ListCheckpointsRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class Checkpoint(_message.Message):
    __slots__ = ("step", "created_at", "train_loss", "eval_loss", "mean_token_accuracy", "eval_mean_token_accuracy", "size_bytes", "path", "best")
    STEP_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    TRAIN_LOSS_FIELD_NUMBER: _ClassVar[int]
    EVAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    MEAN_TOKEN_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    EVAL_MEAN_TOKEN_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    BEST_FIELD_NUMBER: _ClassVar[int]
    step: int
    created_at: str
    train_loss: float
    eval_loss: float
    mean_token_accuracy: float
    eval_mean_token_accuracy: float
    size_bytes: int
    path: str
    best: bool
    def __init__(self, step: _Optional[int] = ..., created_at: _Optional[str] = ..., train_loss: _Optional[float] = ..., eval_loss: _Optional[float] = ..., mean_token_accuracy: _Optional[float] = ..., eval_mean_token_accuracy: _Optional[float] = ..., size_bytes: _Optional[int] = ..., path: _Optional[str] = ..., best: _Optional[bool] = ...) -> None: ...

class ListCheckpointsResponse(_message.Message):
    __slots__ = ("checkpoints",)
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    checkpoints: _containers.RepeatedCompositeFieldContainer[Checkpoint]
    def __init__(self, checkpoints: _Optional[_Iterable[_Union[Checkpoint, _Mapping]]] = ...) -> None: ...

class SaveCheckpointRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class PauseTrainingRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class ListTrainingEventsRequest(_message.Message):
    __slots__ = ("task_id", "after_sequence", "page_size")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    after_sequence: int
    page_size: int
    def __init__(self, task_id: _Optional[str] = ..., after_sequence: _Optional[int] = ..., page_size: _Optional[int] = ...) -> None: ...

class ListTrainingEventsResponse(_message.Message):
    __slots__ = ("events", "has_more")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    HAS_MORE_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[TrainingEvent]
    has_more: bool
    def __init__(self, events: _Optional[_Iterable[_Union[TrainingEvent, _Mapping]]] = ..., has_more: _Optional[bool] = ...) -> None: ...
