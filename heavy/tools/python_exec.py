"""The `python` tool: run a code cell in the sandbox and show its output, exit status and any limit it hit."""

from __future__ import annotations

from heavy.tools.base import ToolContext, ToolResult
from heavy.tools.python_sandbox import PythonSandbox, SandboxOutcome

NO_OUTPUT = "(no output)"


def render_outcome(outcome: SandboxOutcome, wall_s: float) -> str:
    parts = [outcome.output.rstrip() or NO_OUTPUT]
    if outcome.truncated:
        parts.append(f"[output truncated: showing {len(outcome.output)} of {outcome.output_bytes} bytes]")
    if outcome.scratch_full:
        parts.append("[killed: the files written took more room than the scratch directory's limit]")
    elif outcome.timed_out:
        parts.append(f"[killed: wall-clock limit of {wall_s:g}s reached]")
    elif outcome.signal_name in ("SIGXCPU", "SIGKILL"):
        parts.append("[killed: CPU time limit reached]")
    elif outcome.signal_name is not None:
        parts.append(f"[killed by {outcome.signal_name}]")
    elif outcome.exit_code:
        parts.append(f"[exit code {outcome.exit_code}]")
    return "\n".join(parts)


class PythonTool:
    name = "python"
    description = (
        "Run Python 3 code in a sandbox (no network, no files outside a scratch directory, limited CPU time and "
        "memory). Print what you need; the value of a final expression is shown."
    )
    parameters = {
        "type": "object",
        "properties": {"code": {"type": "string", "minLength": 1, "maxLength": 20_000, "description": "Python code"}},
        "required": ["code"],
        "additionalProperties": False,
    }

    def __init__(self, sandbox: PythonSandbox | None = None) -> None:
        self.sandbox = sandbox or PythonSandbox()

    async def run(self, args: dict, ctx: ToolContext) -> ToolResult:
        outcome = await self.sandbox.run(args["code"])
        failed = outcome.timed_out or outcome.signal_name is not None or bool(outcome.exit_code)
        text = render_outcome(outcome, self.sandbox.limits.wall_s)
        return ToolResult(text=text, truncated=outcome.truncated, error=text.splitlines()[-1] if failed else None)
