"""Ray's lines in a process that logs JSON lines (`runtime serve --replicas`, `heavy up`/`heavy worker` over runtime
replicas): Ray's own driver lines and what its actors and tasks print, forwarded to the driver, go through the
process's handlers instead of Ray's plain text. A process that configured no logging keeps Ray's."""

import logging

from ray._private.ray_logging import global_worker_stdstream_dispatcher
from ray._private.worker import filter_autoscaler_events, stderr_deduplicator, stdout_deduplicator

# what ray.init (log_to_driver) registers to print the workers' lines, and ray.shutdown removes by this name
PRINT_HANDLER = "ray_print_logs"
WORKER_OUTPUT = logging.getLogger("ray.worker_output")


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


def worker_output_through_ours() -> None:
    """After ray.init: each line an actor or a task wrote, forwarded to the driver, as a record of WORKER_OUTPUT
    rather than a plain `(Actor pid=...) line` Ray prints itself. Nothing when log_to_driver is off."""
    if any(name == PRINT_HANDLER for name, _ in global_worker_stdstream_dispatcher.handlers):
        global_worker_stdstream_dispatcher.remove_handler(PRINT_HANDLER)
        global_worker_stdstream_dispatcher.add_handler(PRINT_HANDLER, _log_worker_output)


def _log_worker_output(data: dict) -> None:
    """One record per line, WARNING for its stderr (where Python's warnings and tracebacks go), named as Ray would,
    and filtered as Ray's own printer does: of the autoscaler monitor only its events (not its status every 5 s),
    and a line repeated across workers once, with Ray's "[repeated Nx across cluster]" later."""
    if data.get("pid") == "autoscaler":
        batches = [{**data, "lines": list(filter_autoscaler_events(data.get("lines", [])))}]
    else:
        batches = (stderr_deduplicator if data.get("is_err") else stdout_deduplicator).deduplicate(data)
    for batch in batches:
        source = " ".join(filter(None, (batch.get("actor_name") or batch.get("task_name"),
                                        f"pid={batch.get('pid')}")))
        level = logging.WARNING if batch.get("is_err") else logging.INFO
        for line in batch.get("lines", ()):
            WORKER_OUTPUT.log(level, "(%s, ip=%s) %s", source, batch.get("ip"), line)
