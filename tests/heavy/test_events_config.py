"""Events serialise with a schema version and round-trip; settings come from HEAVY_* variables."""

import pytest
from pydantic import ValidationError

from heavy.config import Settings
from heavy.events import EVENT_TYPES, SCHEMA_VERSION, JobStarted, ToolResultEvent, event_from_dict


def test_every_design_event_type_exists():
    assert set(EVENT_TYPES) == {"job_started", "trajectory_step", "tool_call", "tool_result", "trajectory_done",
                                "aggregating", "report_ready", "job_failed", "job_cancelled"}


def test_events_round_trip_through_json_dicts():
    event = ToolResultEvent(job_id="j", trajectory=2, step=1, call_id="c", tool="search", ok=True, chars=10,
                            truncated=False, sources=[{"url": "http://a"}])
    data = event.to_dict()
    assert data["type"] == "tool_result" and data["schema_version"] == SCHEMA_VERSION
    assert event_from_dict(data) == event


def test_fields_a_newer_service_added_are_passed_over():
    event = ToolResultEvent(job_id="j", trajectory=2, step=1, call_id="c", tool="search", ok=True, chars=10,
                            truncated=False, sources=[{"url": "http://a"}])
    assert event_from_dict({**event.to_dict(), "added_later": 1, "seq": 5}) == event


def test_newer_schema_versions_are_refused():
    data = JobStarted(job_id="j", question="q", mode="answer", trajectories=8).to_dict()
    with pytest.raises(ValueError, match="newer"):
        event_from_dict({**data, "schema_version": SCHEMA_VERSION + 1})


def test_settings_read_the_heavy_prefix(monkeypatch):
    monkeypatch.setenv("HEAVY_TRAJECTORIES", "3")
    monkeypatch.setenv("HEAVY_BACKEND", "openai")
    monkeypatch.setenv("HEAVY_ALLOWED_TOOLS", '["search"]')
    settings = Settings()
    assert (settings.trajectories, settings.backend, settings.allowed_tools) == (3, "openai", ("search",))
    monkeypatch.setenv("HEAVY_TRAJECTORIES", "9")
    with pytest.raises(ValidationError):
        Settings()
    monkeypatch.setenv("HEAVY_TRAJECTORIES", "3")
    monkeypatch.setenv("HEAVY_MIN_MAJORITY", "1")
    monkeypatch.setenv("HEAVY_READ_ON_MAJORITY", "true")
    assert (Settings().min_majority, Settings().read_on_majority) == (1, True)
    monkeypatch.setenv("HEAVY_MIN_MAJORITY", "0")
    with pytest.raises(ValidationError):
        Settings()
    monkeypatch.setenv("HEAVY_MIN_MAJORITY", "1")
    assert Settings().runtime_dtype == "auto"
    monkeypatch.setenv("HEAVY_RUNTIME_DTYPE", "float32")
    assert Settings().runtime_dtype == "float32"
    monkeypatch.setenv("HEAVY_RUNTIME_DTYPE", "float8")
    with pytest.raises(ValidationError, match="runtime_dtype"):
        Settings()


def test_reasoning_room_reaches_trajectories_the_worker_and_the_aggregator(monkeypatch):
    from heavy.aggregate import AggregationConfig
    from heavy.scheduler import JobSpec
    from heavy.store.records import JobRecord
    from heavy.worker.runner import job_spec

    monkeypatch.setenv("HEAVY_REASONING_TOKENS", "4096")
    monkeypatch.setenv("HEAVY_CONTEXT_TOKENS", "16384")
    settings = Settings()
    assert JobSpec.from_settings(settings, job_id="j", question="q").limits.reasoning_tokens == 4096
    assert AggregationConfig.from_settings(settings).reasoning_tokens == 4096
    params = {"max_steps": 3, "step_tokens": 256, "trajectory_tokens": 50_000, "deadline_s": 60, "trajectories": 2,
              "tools": ["search"], "job_tokens": 100_000}
    job = JobRecord(id="j", tenant="t", status="running", question="q", mode="answer", params=params, created=0.0,
                    updated=0.0)
    assert job_spec(job, settings, frozenset({"search"}), 100_000, now=0.0).limits.reasoning_tokens == 4096
    monkeypatch.setenv("HEAVY_CONTEXT_TOKENS", "4096")  # no room left for a prompt
    with pytest.raises(ValidationError, match="reasoning_tokens"):
        Settings()
