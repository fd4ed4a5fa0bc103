"""Tool calls in model output: the `ToolCall` value and parsers for the Qwen and Kimi K2 formats (and one that reads
no calls, only the reasoning)."""

from runtime.toolcalls.kimi import KimiStreamParser, parse_kimi, render_tool_calls
from runtime.toolcalls.qwen import QwenStreamParser, parse_qwen
from runtime.toolcalls.stream import ReasoningParser
from runtime.toolcalls.types import ParsedOutput, ToolCall, ToolCallParseError

__all__ = [
    "KimiStreamParser",
    "ParsedOutput",
    "QwenStreamParser",
    "ReasoningParser",
    "ToolCall",
    "ToolCallParseError",
    "parse_kimi",
    "parse_qwen",
    "render_tool_calls",
]
