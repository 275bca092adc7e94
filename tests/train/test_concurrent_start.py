"""Two StartTraining calls for one output folder at the same moment: exactly one is accepted,
the other gets ALREADY_EXISTS (409) naming output_dir (issue 15 item 2). The folder check and
the insert are one transaction in the job store."""

from __future__ import annotations

import threading

import grpc
import pytest

from services.common.rpc_status import decode_rpc_error
from services.train.store import OutputInUse, TrainJobStore
from tests.train.conftest import start, wait_terminal
from wintrain.train.v1 import train_pb2


def test_the_store_refuses_a_second_live_task_for_one_folder(tmp_path):
    store = TrainJobStore(tmp_path / "jobs.db")
    out = str(tmp_path / "out" / "x")
    store.create(task_id="a", strategy="lora", dataset_path="d", eval_dataset_path="", output_dir="out/x",
                 config={}, resolved={"output_dir": out})
    for clash in (out, out + "/inner", str(tmp_path / "out")):
        with pytest.raises(OutputInUse) as info:
            store.create(task_id="b", strategy="lora", dataset_path="d", eval_dataset_path="", output_dir="o",
                         config={}, resolved={"output_dir": clash})
        assert info.value.task_id == "a"
    assert store.get("b") is None
    store.create(task_id="c", strategy="lora", dataset_path="d", eval_dataset_path="", output_dir="o",
                 config={}, resolved={"output_dir": str(tmp_path / "other")})
    # Requeueing an ended task whose folder a live task now owns is refused the same way.
    assert store.request_cancel("a") == "cancelled"
    store.create(task_id="d", strategy="lora", dataset_path="d", eval_dataset_path="", output_dir="out/x",
                 config={}, resolved={"output_dir": out})
    with pytest.raises(OutputInUse):
        store.requeue("a", resume_from="", message="again")
    assert store.get("a").status == "cancelled"


def test_concurrent_starts_into_one_folder_accept_exactly_one(stub, datasets_dir):
    n = 4
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def one(i: int) -> None:
        barrier.wait()
        try:
            results[i] = start(stub, strategy=train_pb2.STRATEGY_LORA, output="models/x", max_steps=2,
                               logging_steps=1, save_steps=0)
        except grpc.RpcError as exc:
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    accepted = [r for r in results if isinstance(r, train_pb2.StartTrainingResponse)]
    refused = [r for r in results if isinstance(r, grpc.RpcError)]
    assert len(accepted) == 1 and len(refused) == n - 1, results
    for err in refused:
        f = decode_rpc_error(err)
        assert f.code == "ALREADY_EXISTS" and {name for name, _ in f.field_violations} == {"output_dir"}
        assert accepted[0].task_id in f.message
    tasks = stub.ListTrainingTasks(train_pb2.ListTrainingTasksRequest(), timeout=10).tasks
    assert [t.task_id for t in tasks] == [accepted[0].task_id]
    stub.CancelTraining(train_pb2.CancelTrainingRequest(task_id=accepted[0].task_id), timeout=10)
    wait_terminal(stub, accepted[0].task_id)
