"""Ray's forwarded worker lines as records (runtime/replica/ray_logs.py), through the private API of the installed
Ray but without starting one: its dispatcher stands in for `ray.init`'s, fed the batches Ray's log monitor sends."""

import atexit
import json
import logging

import pytest
from ray._private import ray_logging

from heavy.logs import JsonLines as HeavyJsonLines
from runtime.replica import ray_logs
from runtime.server.logs import JsonLines


@pytest.fixture
def dispatcher(monkeypatch):
    """Ray's dispatcher holding only Ray's printer, as ray.init leaves it (its handlers are given back after), and
    the exit hooks the routing registers (run by the test instead of at exit)."""
    dispatcher = ray_logging.global_worker_stdstream_dispatcher
    rays_printer = (ray_logs.PRINT_HANDLER, lambda data: pytest.fail(f"Ray's printer got {data}"))
    monkeypatch.setattr(dispatcher, "handlers", [rays_printer])
    exit_hooks = []
    monkeypatch.setattr(atexit, "register", exit_hooks.append)
    monkeypatch.setattr(dispatcher, "exit_hooks", exit_hooks, raising=False)
    return dispatcher


@pytest.fixture
def records():
    caught = []
    handler = logging.Handler()
    handler.emit = caught.append
    ray_logs.WORKER_OUTPUT.addHandler(handler)
    yield caught
    ray_logs.WORKER_OUTPUT.removeHandler(handler)


def _batch(pid: int, *lines: str) -> dict:
    return {"ip": "10.0.0.7", "pid": pid, "actor_name": "EPRank", "task_name": None, "is_err": False,
            "lines": list(lines)}


def test_a_line_printed_by_three_workers_is_logged_once_then_with_its_count_as_a_field(dispatcher, records):
    """Ray's own printer shows such a line once, then `... [repeated 2x across cluster]` (in green) when its window
    ends or at ray.shutdown; forwarded as records the count was in the text only, with its colour codes, and the
    lines still counted at shutdown were printed by Ray, as plain text, after the routing was gone."""
    ray_logs.worker_output_through_ours()
    for pid in (101, 102, 103):
        dispatcher.emit(_batch(pid, "rank ready to serve", f"id-{pid}"))
    own_lines = [f"(EPRank pid={pid}, ip=10.0.0.7) id-{pid}" for pid in (101, 102, 103)]
    assert [r.getMessage() for r in records] == ["(EPRank pid=101, ip=10.0.0.7) rank ready to serve", *own_lines]
    for hook in dispatcher.exit_hooks:
        hook()
    assert not ray_logging.stdout_deduplicator.flush()  # nothing left for ray.shutdown to print itself
    [repeated] = records[4:]
    assert repeated.getMessage().startswith("(EPRank pid=103, ip=10.0.0.7) rank ready to serve [repeated 2x across "
                                            "cluster]")
    for formatter in (JsonLines(), HeavyJsonLines()):
        line = json.loads(formatter.format(repeated))
        assert line["repeated"] == 2 and "\x1b" not in line["msg"], line
    assert "repeated" not in json.loads(JsonLines().format(records[0]))


def test_rays_private_api_moved_is_said_in_a_warning_and_rays_printer_kept(dispatcher, records, monkeypatch, caplog):
    monkeypatch.delattr(ray_logging, "LogDeduplicator")
    with caplog.at_level(logging.WARNING, logger=ray_logs.__name__):
        assert not ray_logs.worker_output_through_ours()
    [warning] = caplog.records
    assert "moved the private API" in warning.getMessage() and "LogDeduplicator" in warning.getMessage()
    [(name, printer)] = dispatcher.handlers
    assert name == ray_logs.PRINT_HANDLER and not isinstance(printer, ray_logs.WorkerOutput)


def test_no_printer_where_ray_init_registers_one_is_said_in_a_warning(dispatcher, monkeypatch, caplog):
    dispatcher.remove_handler(ray_logs.PRINT_HANDLER)  # as if a Ray release registered it under another name
    with caplog.at_level(logging.WARNING, logger=ray_logs.__name__):
        assert not ray_logs.worker_output_through_ours()
    assert "registered no 'ray_print_logs' handler" in caplog.text
    assert not dispatcher.handlers
