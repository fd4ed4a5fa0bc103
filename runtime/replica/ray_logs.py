"""Ray's lines in a process that logs JSON lines (`runtime serve --replicas`, `heavy up`/`heavy worker` over runtime
replicas): Ray's own driver lines and what its actors and tasks print, forwarded to the driver, go through the
process's handlers instead of Ray's plain text. A process that configured no logging keeps Ray's.

The forwarding goes through Ray's private API (checked against Ray 2.60): the dispatcher `ray.init` registers its
printer on, its log deduplicator and its autoscaler-event filter. If a Ray release moves any of them, the process
says so in a WARNING line and Ray goes on printing its workers' lines itself, as plain text."""

import atexit
import logging
import re
import threading

import ray

# what ray.init (log_to_driver) registers to print the workers' lines, and ray.shutdown removes by this name
PRINT_HANDLER = "ray_print_logs"
WORKER_OUTPUT = logging.getLogger("ray.worker_output")
# how Ray's deduplicator writes a line that more workers printed within its window (DedupState.formatted): the
# latest one, then in green " [repeated Nx across cluster]", the first time with a hint on RAY_DEDUP_LOGS
REPEATED = re.compile(r"(?P<line>.*)\x1b\[32m \[repeated (?P<count>\d+)x across cluster\](?P<hint>.*)\x1b\[0m",
                      re.DOTALL)
log = logging.getLogger(__name__)


def ray_lines_through_ours() -> bool:
    """Before ray.init: `import ray` gives the `ray` logger a plain-text handler of its own and stops it propagating,
    so its auth-token warning and "Started a local Ray instance" missed the process's handlers. True when they now
    go through them (the process set some up)."""
    if not logging.getLogger().handlers:
        return False
    ray_logger = logging.getLogger("ray")
    ray_logger.handlers.clear()
    ray_logger.propagate = True  # its level stays Ray's (INFO): its warnings and its start line are kept
    return True


def worker_output_through_ours() -> bool:
    """After ray.init: each line an actor or a task wrote, forwarded to the driver, as a record of WORKER_OUTPUT
    rather than a plain `(Actor pid=...) line` Ray prints itself. False, leaving Ray's printer, when log_to_driver is
    off or Ray's private API moved (then with a WARNING saying so)."""
    try:
        from ray._private import ray_constants, ray_logging

        dispatcher = ray_logging.global_worker_stdstream_dispatcher
        registered = any(name == PRINT_HANDLER for name, _ in dispatcher.handlers)
        output = WorkerOutput()
    except (ImportError, AttributeError, TypeError, ValueError) as exc:
        _moved(f"{type(exc).__name__}: {exc}")
        return False
    if not registered:
        if getattr(ray_constants, "RAY_LOG_TO_DRIVER", True):
            _moved(f"ray.init registered no {PRINT_HANDLER!r} handler on its dispatcher")
        return False
    dispatcher.remove_handler(PRINT_HANDLER)
    dispatcher.add_handler(PRINT_HANDLER, output)
    atexit.register(output.flush)  # before Ray's exit hook, registered when ray was imported (atexit runs LIFO)
    return True


def _moved(what: str) -> None:
    log.warning("Ray %s moved the private API that routes its workers' lines (%s): they are printed as Ray prints "
                "them, in plain text, not as JSON lines", ray.__version__, what)


class WorkerOutput:
    """Ray's printer as records: filtered as it filters (of the autoscaler monitor only its events, not its status
    every 5 s; a line repeated across workers once, then counted), by deduplicators of its own, so Ray's, which
    ray.shutdown flushes to stdout as plain text, stay empty."""

    def __init__(self) -> None:
        from ray._private import ray_logging, worker

        def deduplicator():
            return ray_logging.LogDeduplicator(ray_logging.RAY_DEDUP_LOGS_AGG_WINDOW_S,
                                               ray_logging.RAY_DEDUP_LOGS_ALLOW_REGEX,
                                               ray_logging.RAY_DEDUP_LOGS_SKIP_REGEX)

        self.stdout, self.stderr = deduplicator(), deduplicator()
        self.autoscaler_events = worker.filter_autoscaler_events
        self.lock = threading.Lock()  # the flush at exit runs beside Ray's log thread, which is still delivering

    def __call__(self, data: dict) -> None:
        with self.lock:
            if data.get("pid") == "autoscaler":
                self._log([{**data, "lines": list(self.autoscaler_events(data.get("lines", [])))}])
            else:
                self._log((self.stderr if data.get("is_err") else self.stdout).deduplicate(data))

    def flush(self) -> None:
        """The repeated lines still counted within the window: at exit, or they would be lost."""
        with self.lock:
            self._log([*self.stdout.flush(), *self.stderr.flush()])

    @staticmethod
    def _log(batches: list[dict]) -> None:
        """One record per line, WARNING for its stderr (where Python's warnings and tracebacks go), named as Ray
        would; a line Ray counted as repeated carries its count as field `repeated`, and no colour codes."""
        for batch in batches:
            source = " ".join(filter(None, (batch.get("actor_name") or batch.get("task_name"),
                                            f"pid={batch.get('pid')}")))
            level = logging.WARNING if batch.get("is_err") else logging.INFO
            for line in batch.get("lines", ()):
                repeated = REPEATED.fullmatch(line)
                if repeated is None:
                    WORKER_OUTPUT.log(level, "(%s, ip=%s) %s", source, batch.get("ip"), line)
                    continue
                count = int(repeated["count"])
                WORKER_OUTPUT.log(level, "(%s, ip=%s) %s [repeated %dx across cluster]%s", source, batch.get("ip"),
                                  repeated["line"], count, repeated["hint"], extra={"json_fields": {"repeated": count}})
