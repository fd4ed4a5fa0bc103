"""`python -m runtime`: errors are one line without a traceback; a real chat turn streams an answer (slow)."""

import subprocess
import sys

import pytest

from runtime.dtypes import resolve_dtype


def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime", *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    "args, message",
    [
        (("generate", "--model", "/no/such/folder", "hi"), "neither a known model"),
        (("chat", "--max-tokens", "0", "hi"), "max_tokens must be > 0"),
        (("chat", "--temperature", "-1", "hi"), "temperature must be >= 0"),
        (("chat", "--repetition-penalty", "0", "hi"), "repetition_penalty must be > 0"),
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
    assert result.stderr.strip().splitlines() == ["error: ValueError: hang_timeout_s must be > 0, got 0.0"]
