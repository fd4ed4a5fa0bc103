"""`python -m runtime generate|chat|serve`: the runtime from a terminal.

generate and chat stream the answer to stdout and print the speed to stderr; errors are one line, no traceback.
"""

import argparse
import ipaddress
import logging
import math
import os
import sys
import time
from collections.abc import Callable

DEFAULT_MAX_TOKENS = 256
DEFAULT_PORT = 8000
MAX_PORT = 65535
EXIT_ERROR, EXIT_INTERRUPTED = 1, 130
log = logging.getLogger(__name__)
API_KEY_ENV = "RUNTIME_API_KEY"  # serve's key when no --api-key is given (as vLLM's VLLM_API_KEY): not in `ps`
# serve's flags for the router's health rounds (runtime/replica/router.py, RouterConfig; default there): flag ->
# (RouterConfig field, type, help)
ROUTER_OPTIONS = {
    "--health-interval": ("health_interval_s", float, "seconds between the router's health rounds (1)"),
    "--health-timeout": ("health_timeout_s", float, "seconds a replica has to answer a round (5)"),
    "--unanswered-rounds": ("unanswered_rounds", int, "rounds in a row a replica leaves unanswered, no token "
                            "streaming from it either, before it counts as late: tried only when none is up (3)"),
    "--stall-after": ("stall_after_s", float, "seconds a replica's step may run before it is stalled: sent new "
                      "requests only when no other replica is up (60)"),
    "--max-prefix-keys": ("max_prefix_keys", int, "prefix keys (heavy jobs) whose replica the router remembers "
                          "(10000)"),
}


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    from runtime.dtypes import AUTO, DTYPE_CHOICES
    from runtime.embedded import DEFAULT_MODEL

    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"name or checkpoint folder (default {DEFAULT_MODEL})")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default=AUTO,
                        help="compute dtype; auto: bfloat16 where the hardware computes it natively, else float32")
    parser.add_argument("--speculative-tokens", type=int, default=None,
                        help="prompt-lookup drafts checked per decode step (default 3; 0 = off)")


def _add_sampling_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--min-p", type=float, default=0.0)
    parser.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeats")
    parser.add_argument("--frequency-penalty", type=float, default=0.0)
    parser.add_argument("--presence-penalty", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=None)


def _port(text: str) -> int:
    """A TCP port, checked before the model loads (bind() refused 70000 only after it)."""
    if not (text.isdigit() and int(text) <= MAX_PORT):
        raise argparse.ArgumentTypeError(f"not a port (0-{MAX_PORT}): {text}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m runtime", description="Run the heavy runtime from a terminal.")
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser("generate", help="continue a raw prompt (streamed)")
    generate.add_argument("prompt")
    chat = commands.add_parser("chat", help="one chat turn through the model's chat template (streamed)")
    chat.add_argument("message")
    chat.add_argument("--system", default=None, help="optional system message")
    for sub in (generate, chat):
        _add_model_options(sub)
        _add_sampling_options(sub)
    serve = commands.add_parser("serve", help="OpenAI-compatible HTTP server")
    _add_model_options(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=_port, default=DEFAULT_PORT)
    serve.add_argument("--replicas", type=int, default=None,
                       help="serve through Ray: this many replicas behind a router (RAY_ADDRESS picks a cluster)")
    serve.add_argument("--ep", type=int, default=None, help="expert-parallel ranks per replica (MoE checkpoints)")
    serve.add_argument("--served-model-name", default=None,
                       help="the name clients ask for in `model` (default: --model as given); others get a 404")
    serve.add_argument("--max-model-len", type=int, default=None,
                       help="prompt + completion tokens of one request, reported in /v1/models (default: 8192, or "
                            "less: what the KV cache holds, the model's max_position_embeddings); refused if "
                            "either cannot hold it")
    serve.add_argument("--kv-cache-gib", type=float, default=None,
                       help="KV-cache memory of the engine (of each rank with --ep), GiB (default 0.5): what holds "
                            "--max-model-len and the sequences served at once (for a GPU: the source repository's "
                            "deploy/README.md, Sizing)")
    serve.add_argument("--hang-timeout", type=float, default=None,
                       help="seconds a step may run before it counts as stuck (300): in process, /health fails; "
                            "with Ray replicas, the rank is restarted")
    serve.add_argument("--api-key", dest="api_keys", action="append", metavar="KEY",
                       help=f"require `Authorization: Bearer KEY` on every route but /health, /ready and /metrics; "
                            f"repeat it to take several keys (a rotation); default: ${API_KEY_ENV}, else none")
    serve.add_argument("--max-body-bytes", type=int, default=None, metavar="N",
                       help="largest request body taken, else a 413 (default: room for one prompt at the full "
                            "context in JSON, 1 MiB + 128 bytes a token: 2 MiB at 8192)")
    compiles = serve.add_argument_group("structured-output compiles (runtime/server/compile_gate.py)")
    compiles.add_argument("--max-spec-chars", type=int, default=None, metavar="N",
                          help="longest JSON schema, regex or grammar taken, else a 400 (default 65536)")
    compiles.add_argument("--compile-threads", type=int, default=None, metavar="N",
                          help="specs compiled at once; a request finding every thread busy past --compile-timeout "
                               "is a 503 (default 2)")
    compiles.add_argument("--compile-timeout", type=float, default=None, metavar="S",
                          help="seconds a request waits for its spec to compile, else a 400 (default 30; the first "
                               "structured request also reads the vocabulary)")
    compiles.add_argument("--grammar-cache-mib", type=float, default=None, metavar="MIB",
                          help="compiled specs kept for reuse, least recently used dropped, per compiler (one per "
                               "set of special tokens a spec writes; with --replicas, in the frontend and in each "
                               "rank): MiB (default 512; a JSON schema over a 151k-token vocabulary takes ~2)")
    router = serve.add_argument_group("router (with --replicas or --ep)")
    for flag, (field, kind, text) in ROUTER_OPTIONS.items():
        router.add_argument(flag, dest=field, type=kind, default=None, metavar="N" if kind is int else "S", help=text)
    return parser


def _engine_config(speculative_tokens: int | None = None, max_model_len: int | None = None,
                   kv_cache_gib: float | None = None, grammar_cache_mib: float | None = None):
    """Checked before the model loads, so a bad option fails at once."""
    from runtime.engine.config import EngineConfig

    kv_cache_bytes = None if kv_cache_gib is None else int(kv_cache_gib * 2**30)
    grammar_cache_bytes = None if grammar_cache_mib is None else int(grammar_cache_mib * 2**20)
    given = {"speculative_tokens": speculative_tokens, "max_model_len": max_model_len, "kv_cache_bytes": kv_cache_bytes,
             "grammar_cache_bytes": grammar_cache_bytes}
    return EngineConfig(**{name: value for name, value in given.items() if value is not None})


def _router_config(args: argparse.Namespace, on_replicas: bool):
    """The router's config from the flags given (RouterConfig's defaults for the others), checked before Ray starts;
    refused without replicas, where there is no router to take them."""
    given = {field: getattr(args, field) for field, _, _ in ROUTER_OPTIONS.values() if getattr(args, field) is not None}
    if not on_replicas:
        if given:
            flags = ", ".join(flag for flag, (field, _, _) in ROUTER_OPTIONS.items() if field in given)
            raise ValueError(f"{flags}: the router's settings, for replicas on Ray (--replicas or --ep)")
        return None
    from runtime.replica.router import RouterConfig

    return RouterConfig(**given)


def _request_gate(args: argparse.Namespace) -> tuple[tuple[str, ...], int | None]:
    """serve's API keys (the flags, else $RUNTIME_API_KEY; an empty one is none) and body cap, checked before the
    model loads."""
    from runtime.server.gate import checked_api_keys

    env_key = os.environ.get(API_KEY_ENV, "")
    keys = args.api_keys if args.api_keys is not None else [env_key] if env_key else []
    if args.max_body_bytes is not None and args.max_body_bytes <= 0:
        raise ValueError(f"--max-body-bytes must be > 0, got {args.max_body_bytes}")
    if not keys and not _is_loopback(args.host):
        log.warning("serving on %s without an API key: whoever reaches the port runs the model (--api-key or $%s)",
                    args.host, API_KEY_ENV)
    return checked_api_keys(keys), args.max_body_bytes


def _compile_gate(args: argparse.Namespace):
    """The bounds on compiling structured-output specs from the flags given (CompileGate's defaults for the others),
    checked before the model loads or Ray starts."""
    from runtime.server.compile_gate import CompileGate

    given = {"max_spec_chars": args.max_spec_chars, "workers": args.compile_threads,
             "timeout_s": args.compile_timeout}
    return CompileGate(**{name: value for name, value in given.items() if value is not None})


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr)


def _load(model: str, dtype: str, speculative_tokens: int | None = None, max_model_len: int | None = None,
          kv_cache_gib: float | None = None, grammar_cache_mib: float | None = None,
          say: Callable[[str], None] = _to_stderr):
    """The engine; `say` tells its progress (serve's: a log line)."""
    from runtime.embedded import KNOWN_MODELS
    from runtime.engine.config import check_context_held
    from runtime.engine.factory import load_engine

    config = _engine_config(speculative_tokens, max_model_len, kv_cache_gib, grammar_cache_mib)
    note = " (its first use converts it once, about a minute)" if model in KNOWN_MODELS else ""
    say(f"loading {model}{note}...")
    engine = load_engine(model, config, dtype=dtype)  # "auto" looks at the checkpoint (INT4 weights) and the CPU
    check_context_held(max_model_len, engine.max_model_len)
    computed = next(engine.runner.model.parameters()).dtype
    say(f"loaded {model} in {str(computed).removeprefix('torch.')}")
    return engine


def _sampling(args: argparse.Namespace):
    """Checked before the model loads, so a bad option fails at once."""
    from runtime.sampling import SamplingParams

    return SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed,
                          max_tokens=args.max_tokens, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                          frequency_penalty=args.frequency_penalty, presence_penalty=args.presence_penalty)


def _stream(engine, prompt_ids: list[int], params) -> None:
    request_id = engine.add_request(prompt_ids, params)
    start = time.perf_counter()
    first_token_at, produced = None, 0
    while engine.has_unfinished():
        for out in engine.step():
            if out.request_id != request_id:
                continue
            first_token_at = first_token_at or time.perf_counter()
            produced = out.num_completion_tokens
            sys.stdout.write(out.new_text)
            sys.stdout.flush()
    end = time.perf_counter()
    decode_rate = (produced - 1) / (end - first_token_at) if produced > 1 else 0.0
    print(f"\n[{produced} tokens in {end - start:.1f} s: {produced / (end - start):.1f} tokens/s overall, "
          f"{decode_rate:.1f} tokens/s decode, first token after {first_token_at - start:.2f} s]", file=sys.stderr)


def _generate(args: argparse.Namespace) -> None:
    params = _sampling(args)
    engine = _load(args.model, args.dtype, args.speculative_tokens)
    sys.stdout.write(args.prompt)
    _stream(engine, engine.tokenizer.encode(args.prompt), params)


def _chat(args: argparse.Namespace) -> None:
    params = _sampling(args)
    engine = _load(args.model, args.dtype, args.speculative_tokens)
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": args.message}
    ]
    _stream(engine, engine.tokenizer.encode_chat(messages), params)


def _serve(args: argparse.Namespace) -> None:
    from runtime.engine.async_engine import HANG_TIMEOUT_S
    from runtime.server.logs import log_json_lines

    log_json_lines()  # from here on: the model's loading, Ray's start and uvicorn log JSON lines

    hang_timeout_s = HANG_TIMEOUT_S if args.hang_timeout is None else args.hang_timeout
    if not (math.isfinite(hang_timeout_s) and hang_timeout_s > 0):  # before a model loads or Ray starts; nan
        raise ValueError(f"hang_timeout_s must be a finite number > 0, got {hang_timeout_s}")  # never timed out
    served_name = args.served_model_name or str(args.model)
    api_keys, max_body_bytes = _request_gate(args)
    on_replicas = args.replicas is not None or args.ep is not None
    router = _router_config(args, on_replicas)
    compiles = _compile_gate(args)
    if on_replicas:
        from runtime.replica.serving import serve_replicas

        serve_replicas(args.model, host=args.host, port=args.port, replicas=args.replicas or 1, ep=args.ep or 1,
                       dtype=args.dtype, hang_timeout_s=hang_timeout_s, served_name=served_name,
                       engine=_engine_config(args.speculative_tokens, args.max_model_len, args.kv_cache_gib,
                                             args.grammar_cache_mib),
                       max_model_len=args.max_model_len, router=router, api_keys=api_keys,
                       max_body_bytes=max_body_bytes, compiles=compiles)
        return
    from runtime.server.app import serve

    serve(_load(args.model, args.dtype, args.speculative_tokens, args.max_model_len, args.kv_cache_gib,
                args.grammar_cache_mib, say=log.info),
          model_name=served_name, host=args.host, port=args.port, hang_timeout_s=hang_timeout_s, api_keys=api_keys,
          max_body_bytes=max_body_bytes, compiles=compiles)


COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {"generate": _generate, "chat": _chat, "serve": _serve}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a CLI prints one line, never a traceback
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return 0
