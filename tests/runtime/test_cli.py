"""`python -m runtime`: errors are one line without a traceback; a real chat turn streams an answer (slow)."""

import subprocess
import sys
from dataclasses import fields

import pytest

from runtime.cli import ROUTER_OPTIONS, _load, main
from runtime.dtypes import resolve_dtype


def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime", *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    "args, message",
    [
        (("generate", "--model", "/no/such/folder", "hi"), "neither a known model"),
        (("chat", "--max-tokens", "0", "hi"), "max_tokens must be > 0"),
        (("chat", "--temperature", "-1", "hi"), "temperature must be finite and >= 0"),
        (("chat", "--repetition-penalty", "0", "hi"), "repetition_penalty must be in [0.01, 100]"),
    ],
)
def test_errors_are_one_line_without_traceback(args, message):
    result = run(*args, timeout=120)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0]
    assert "Traceback" not in result.stderr


def test_usage_error_without_a_command():
    result = run(timeout=60)
    assert result.returncode == 2 and "usage:" in result.stderr


@pytest.mark.slow
def test_chat_streams_an_answer_and_reports_speed():
    result = run("chat", "--max-tokens", "12", "What is the capital of France? Answer in one word.")
    assert result.returncode == 0, result.stderr
    assert "paris" in result.stdout.lower()
    assert "tokens/s" in result.stderr
    assert f"in {str(resolve_dtype('auto')).removeprefix('torch.')}" in result.stderr  # the dtype "auto" loaded


@pytest.mark.parametrize("ray", [False, True])
def test_a_hang_timeout_that_is_not_positive_is_refused_before_anything_starts(tiny_kimi_path, ray):
    replicas = ("--replicas", "1") if ray else ()
    result = run("serve", "--model", str(tiny_kimi_path), *replicas, "--hang-timeout", "0", timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: ValueError: hang_timeout_s must be a finite number > 0, got 0.0"]


def test_a_hang_timeout_of_nan_is_refused_not_a_watchdog_that_never_fires(monkeypatch, capsys, tiny_kimi_path):
    monkeypatch.setattr("runtime.cli._load", lambda *_, **__: pytest.fail("a model loaded"))
    assert main(["serve", "--model", str(tiny_kimi_path), "--hang-timeout", "nan"]) == 1
    assert capsys.readouterr().err.strip() == "error: ValueError: hang_timeout_s must be a finite number > 0, got nan"


def test_a_max_model_len_the_kv_cache_cannot_hold_is_refused(tiny_kimi_path):
    """Clients size their prompts to the context /v1/models reports: one the cache cannot hold is no context."""
    result = run("serve", "--model", str(tiny_kimi_path), "--max-model-len", "100000000", "--port", "0", timeout=120)
    assert result.returncode == 1, result.stderr
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "max_model_len 100000000 does not fit: the engine holds" in error


def test_a_max_model_len_the_kv_cache_holds_is_the_engines_context(tiny_kimi_path):
    assert _load(str(tiny_kimi_path), "auto", max_model_len=100).max_model_len == 100


@pytest.mark.parametrize("ray", [False, True])
def test_speculative_tokens_reach_the_engine_config_with_or_without_ray(tiny_kimi_path, ray):
    """The replicas' engine config was built apart from `--speculative-tokens`, which they ignored: a bad value is
    refused before Ray starts, as it is before a model loads in process."""
    replicas = ("--replicas", "1") if ray else ()
    result = run("serve", "--model", str(tiny_kimi_path), *replicas, "--port", "0", "--speculative-tokens", "-1",
                 timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: EngineConfigError: speculative_tokens must be >= 0, got -1"]


def test_kv_cache_gib_sizes_the_cache_that_holds_the_context(tiny_kimi_path):
    """Without it the cache was always 0.5 GiB: 7.6K tokens of Kimi K2, whatever --max-model-len a GPU asks for."""
    small = _load(str(tiny_kimi_path), "auto", max_model_len=100)
    block_bytes = small.runner.kv_cache.bytes_per_token * small.config.block_size
    four_blocks = _load(str(tiny_kimi_path), "auto", kv_cache_gib=4 * block_bytes / 2**30)
    assert four_blocks.max_model_len == 4 * small.config.block_size


def test_serve_sets_the_routers_health_rounds_from_its_flags(monkeypatch, tiny_kimi_path):
    """RouterConfig (stall bound, health interval and timeout, rounds) was the router's defaults whatever was run."""
    from runtime.replica import serving
    from runtime.replica.router import RouterConfig

    served = []
    monkeypatch.setattr(serving, "serve_replicas", lambda model, **options: served.append(options["router"]))
    assert main(["serve", "--model", str(tiny_kimi_path), "--replicas", "2", "--stall-after", "45",
                 "--health-timeout", "2.5", "--unanswered-rounds", "4"]) == 0
    assert main(["serve", "--model", str(tiny_kimi_path), "--ep", "1"]) == 0
    assert served == [RouterConfig(stall_after_s=45.0, health_timeout_s=2.5, unanswered_rounds=4), RouterConfig()]
    assert {field for field, _, _ in ROUTER_OPTIONS.values()} == {field.name for field in fields(RouterConfig)}


@pytest.mark.parametrize("args, message", [
    (("--replicas", "1", "--stall-after", "0"), "ValueError: stall_after_s must be a finite number > 0, got 0.0"),
    (("--replicas", "1", "--health-timeout", "nan"), "ValueError: health_timeout_s must be a finite number > 0"),
    (("--replicas", "1", "--health-interval", "inf"), "ValueError: health_interval_s must be a finite number > 0"),
    (("--replicas", "1", "--unanswered-rounds", "0"), "ValueError: unanswered_rounds must be a finite number > 0"),
    (("--stall-after", "30",), "ValueError: --stall-after: the router's settings, for replicas on Ray"),
])
def test_router_flags_out_of_range_or_without_replicas_are_refused_in_one_line_before_anything_starts(
        args, message, monkeypatch, capsys, tiny_kimi_path):
    from runtime.replica import serving

    monkeypatch.setattr(serving, "serve_replicas", lambda *_, **__: pytest.fail("Ray started"))
    monkeypatch.setattr("runtime.cli._load", lambda *_, **__: pytest.fail("a model loaded"))
    assert main(["serve", "--model", str(tiny_kimi_path), *args]) == 1
    (error,) = capsys.readouterr().err.strip().splitlines()
    assert error.startswith(f"error: {message}")


def test_serve_bounds_structured_output_compiles_by_its_flags_in_process_and_over_ray(monkeypatch, tiny_kimi_path):
    """The compile gate's size cap, threads and deadline were compile_gate.py's defaults whatever was run."""
    from runtime.replica import serving
    from runtime.server import app

    gates = []
    monkeypatch.setattr(serving, "serve_replicas", lambda model, **options: gates.append(options["compiles"]))
    monkeypatch.setattr(app, "serve", lambda engine, **options: gates.append(options["compiles"]))
    monkeypatch.setattr("runtime.cli._load", lambda *_, **__: "engine")
    flags = ["--max-spec-chars", "1000", "--compile-threads", "3", "--compile-timeout", "7.5"]
    assert main(["serve", "--model", str(tiny_kimi_path), "--replicas", "1", *flags]) == 0
    assert main(["serve", "--model", str(tiny_kimi_path), *flags]) == 0
    assert main(["serve", "--model", str(tiny_kimi_path)]) == 0
    bounds = [(gate.max_spec_chars, gate._pool._max_workers, gate.timeout_s) for gate in gates]
    assert bounds == [(1000, 3, 7.5), (1000, 3, 7.5), (65536, 2, 30.0)]


def test_serve_bounds_the_grammar_compile_cache_by_its_flag_in_process_and_over_ray(monkeypatch, tiny_kimi_path):
    """xgrammar's compile cache was 512 MiB per compiler whatever was run: too much for a small deployment."""
    from runtime.replica import serving
    from runtime.sampling import StructuredOutput
    from runtime.server import app
    from runtime.structured import GRAMMAR_CACHE_BYTES

    engines, configs = [], []
    monkeypatch.setattr(serving, "serve_replicas", lambda model, **options: configs.append(options["engine"]))
    monkeypatch.setattr(app, "serve", lambda engine, **options: engines.append(engine))
    for flags in (["--grammar-cache-mib", "64"], []):
        assert main(["serve", "--model", str(tiny_kimi_path), "--replicas", "1", *flags]) == 0
        assert main(["serve", "--model", str(tiny_kimi_path), *flags]) == 0
    assert [config.grammar_cache_bytes for config in configs] == [64 << 20, None]
    bounds = []
    for engine in engines:
        engine.grammars.matcher(StructuredOutput("regex", "a+"))
        bounds.append([compiler.cache_limit_bytes for compiler in engine.grammars._compilers.values()])
    assert bounds == [[64 << 20], [GRAMMAR_CACHE_BYTES]]


@pytest.mark.parametrize("args, message", [
    (("--compile-threads", "0"), "ValueError: compile workers must be > 0, got 0"),
    (("--grammar-cache-mib", "0", "--replicas", "1"), "EngineConfigError: grammar_cache_bytes must be > 0, got 0"),
    (("--compile-timeout", "nan"), "ValueError: compile timeout_s must be a finite number > 0, got nan"),
    (("--compile-timeout", "0"), "ValueError: compile timeout_s must be a finite number > 0, got 0.0"),
    (("--max-spec-chars", "-1", "--replicas", "1"), "ValueError: max_spec_chars must be > 0, got -1"),
])
def test_compile_flags_out_of_range_are_refused_in_one_line_before_anything_starts(args, message, monkeypatch, capsys,
                                                                                   tiny_kimi_path):
    from runtime.replica import serving

    monkeypatch.setattr(serving, "serve_replicas", lambda *_, **__: pytest.fail("Ray started"))
    monkeypatch.setattr("runtime.cli._load", lambda *_, **__: pytest.fail("a model loaded"))
    assert main(["serve", "--model", str(tiny_kimi_path), *args]) == 1
    assert capsys.readouterr().err.strip() == f"error: {message}"
