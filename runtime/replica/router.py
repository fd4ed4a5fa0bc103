"""The router: one Ray async actor in front of R replicas.

- health: every `health_interval_s` each replica is asked for its state; an answer "down", or a dead actor, marks it
  down; `unanswered_rounds` rounds in a row with neither an answer nor a token from its requests mark it late; one
  whose step has run `stall_after_s` (its answer says so) with no token from it since the last round is stalled;
- choice: a request with a `prefix_key` (a heavy job's id) goes where that key went before, so the trajectories of
  one job share that replica's prefix cache; otherwise, or when that replica is down, to the least-loaded up replica
  (requests this router has in flight there), and the key follows it; a stalled replica only when no other is up
  (its keys move to the others as their requests come), a late one only when none is up (a loaded machine answering
  late is no reason to refuse a request); without a key, the requests of one `group` (an HTTP request's n choices
  or best_of candidates) go where the group's others are in flight, so that replica prefills their prompt once and
  the rest reuse it from its prefix cache;
- faults: a replica that fails a request (it lost a rank) is marked down and the request is sent to another one;
  when none is left the caller gets a retriable NoReplicaAvailableError, never a hang.
"""

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass

import ray
from ray.actor import ActorHandle
from ray.exceptions import ActorUnavailableError, RayActorError

from runtime.engine.llm_engine import Completion, EngineLoad, RequestOutput
from runtime.replica.errors import NoReplicaAvailableError, ReplicaDownError
from runtime.replica.replica import ReplicaHealth, completion_of
from runtime.sampling import SamplingParams

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RouterConfig:
    health_interval_s: float = 1.0
    health_timeout_s: float = 5.0
    # rounds in a row a replica may leave unanswered, its requests producing no token either, before it counts as
    # late (down, but tried when none is up): Ray or a loaded CPU can be slow to serve its answer. One that answers
    # "down", or whose actor died, is down at once; a hung rank is the replica's own hang deadline's to catch.
    unanswered_rounds: int = 3
    max_prefix_keys: int = 10_000  # affinity entries kept, least recently used dropped first
    # a replica whose step has run this long is stalled: sent no new request (its job's keys move) while another is
    # up. Far above a long prefill chunk on a loaded CPU (tens of seconds), far below a step's hang deadline (300 s,
    # which then fails it): a hung step's job waits no longer than this for its next requests to go elsewhere.
    stall_after_s: float = 60.0

    def __post_init__(self):
        for name in ("health_interval_s", "health_timeout_s", "unanswered_rounds", "max_prefix_keys",
                     "stall_after_s"):  # set from `runtime serve`'s flags and heavy's settings too
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):  # nan and inf would make no round, or never time out
                raise ValueError(f"{name} must be a finite number > 0, got {value}")
        for name in ("unanswered_rounds", "max_prefix_keys"):
            if not isinstance(getattr(self, name), int):
                raise ValueError(f"{name} must be a whole number, got {getattr(self, name)}")


@dataclass(frozen=True)
class Availability:
    up: tuple[bool, ...]  # per replica, as the last health round (or a failed request) found it
    down_for_s: tuple[float, ...]  # seconds since each replica was last seen up (0 when up)
    in_flight: tuple[int, ...] = ()  # per replica, requests this router has there now
    loads: tuple[EngineLoad | None, ...] = ()  # per replica, its engine's load at the last health round
    late: tuple[bool, ...] = ()  # per replica, down only because its health rounds went unanswered (still tried)
    stalled: tuple[bool, ...] = ()  # per replica, up but its step has run past stall_after_s (tried last)


@dataclass(frozen=True)
class RoutedOutput:
    output: RequestOutput  # one delta
    replica: int  # index of the replica that produced it
    attempts: int  # replicas tried so far for this request


@dataclass(frozen=True)
class RoutedCompletion:
    completion: Completion
    replica: int  # index of the replica that served it
    attempts: int  # replicas tried (> 1 after a fault)


class Router:
    """Ray async actor (see `RouterActor`): call `start` once, then `generate`."""

    def __init__(self, replicas: list[ActorHandle], config: RouterConfig | None = None):
        if not replicas:
            raise ValueError("the router needs at least one replica")
        self.replicas = replicas
        self.config = config or RouterConfig()
        self.up = [True] * len(replicas)
        self.last_up = [time.monotonic()] * len(replicas)
        self.in_flight = [0] * len(replicas)
        self.loads: list[EngineLoad | None] = [None] * len(replicas)
        self.unanswered = [0] * len(replicas)  # health rounds in a row each replica left unanswered
        self.late = [False] * len(replicas)  # down only because its rounds went unanswered: tried when none is up
        self.stalled = [False] * len(replicas)  # up, but its step has run past stall_after_s: tried when no other is
        self.produced = [0] * len(replicas)  # deltas each replica has streamed: one making progress is alive
        self._produced_seen = [0] * len(replicas)  # `produced` as the last health round saw it
        self.failures = [0] * len(replicas)  # requests each replica failed (a health answer older than one is stale)
        self.affinity: OrderedDict[str, int] = OrderedDict()
        # group -> (its replica, its requests in flight there); kept only while some are, so a group never crowds
        # the affinity entries out
        self.groups: dict[str, tuple[int, int]] = {}
        self._health_task: asyncio.Task | None = None

    async def start(self) -> list[bool]:
        await self.check_health()
        self._health_task = asyncio.get_running_loop().create_task(self._health_loop())
        return list(self.up)

    async def stop(self) -> None:
        """No more health rounds: the replicas are being shut down, and a round then would report them down."""
        if self._health_task is not None:
            self._health_task.cancel()

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.health_interval_s)
            await self.check_health()

    async def check_health(self) -> list[ReplicaHealth | None]:
        """Ask every replica for its state (None when it did not answer) and mark it up or down."""
        failures = list(self.failures)
        answers = await asyncio.gather(*(self._health(r) for r in self.replicas))
        states = [state for state, _ in answers]
        now = time.monotonic()
        for index, (state, timed_out) in enumerate(answers):
            progressed = self.produced[index] != self._produced_seen[index]
            self._produced_seen[index] = self.produced[index]
            if self.failures[index] != failures[index]:
                # a request failed there during the round, which waits for its slowest replica: this answer may
                # predate the failure, and the next round's will not
                continue
            if timed_out and progressed:  # its answer is late, but its requests' tokens arrive: alive
                self.unanswered[index] = 0
                self._mark_stalled(index, 0.0)
                if self.late[index]:
                    self._mark(index, up=True, late=False, now=now)
                continue
            self.unanswered[index] = self.unanswered[index] + 1 if timed_out else 0
            if timed_out and self.unanswered[index] < self.config.unanswered_rounds:
                continue  # as it was
            self._mark(index, up=state is not None and state.up, late=timed_out, now=now)
            self.loads[index] = state.load if self.up[index] else None
            # a token since the last round: that step ended after the answer
            self._mark_stalled(index, state.step_s if self.up[index] and not progressed else 0.0)
        return states

    def _mark_stalled(self, index: int, step_s: float) -> None:
        stalled = step_s >= self.config.stall_after_s
        if stalled != self.stalled[index]:
            self.stalled[index] = stalled
            if stalled:
                log.warning("replica %d is now stalled (its step has run %.0f s): new requests go elsewhere", index,
                            step_s)
            else:
                log.warning("replica %d is no longer stalled", index)

    def _mark(self, index: int, up: bool, late: bool, now: float) -> None:
        was = (self.up[index], self.late[index])
        self.up[index], self.late[index] = up, late and not up
        self.last_up[index] = now if up else self.last_up[index]
        if was != (self.up[index], self.late[index]):
            state = "up" if up else f"late ({self.unanswered[index]} rounds unanswered)" if late else "down"
            log.warning("replica %d is now %s", index, state)

    async def _health(self, replica: ActorHandle) -> tuple[ReplicaHealth | None, bool]:
        """(its state, or None when it did not answer; whether it was late rather than dead)."""
        try:
            return await asyncio.wait_for(replica.health.remote(), self.config.health_timeout_s), False
        except (TimeoutError, ActorUnavailableError):  # Ray's "may be available later": not a dead actor
            return None, True
        except RayActorError:
            return None, False

    def availability(self) -> Availability:
        """Which replicas are up, for how long the others have been down (what the server's probes read), and each
        one's load (what its metrics show)."""
        now = time.monotonic()
        down_for = (0.0 if up else now - last for up, last in zip(self.up, self.last_up, strict=True))
        loads = (load if up else None for up, load in zip(self.up, self.loads, strict=True))
        return Availability(tuple(self.up), tuple(down_for), tuple(self.in_flight), tuple(loads), tuple(self.late),
                            tuple(self.stalled))

    def choose(self, prefix_key: str | None, exclude: frozenset[int] = frozenset(), group: str | None = None) -> int:
        candidates = [i for i, up in enumerate(self.up) if up and i not in exclude]
        # a stalled one (a step hung, until its deadline fails it) only when no other is up: with one replica, as
        # before; with more, a key or group there follows the choice below
        candidates = [i for i in candidates if not self.stalled[i]] or candidates
        if not candidates:  # one late is still tried: if it is really down, it refuses (retriable) or a rank's
            # hang deadline fails it
            candidates = [i for i, late in enumerate(self.late) if late and i not in exclude]
        if not candidates:
            raise NoReplicaAvailableError(f"no replica is up (of {len(self.replicas)}); retry later")
        if prefix_key is not None and self.affinity.get(prefix_key) in candidates:
            self.affinity.move_to_end(prefix_key)
            return self.affinity[prefix_key]
        if prefix_key is None and group in self.groups and self.groups[group][0] in candidates:
            return self.groups[group][0]
        chosen = min(candidates, key=lambda i: self.in_flight[i])
        if prefix_key is not None:
            self.affinity[prefix_key] = chosen
            self.affinity.move_to_end(prefix_key)
            while len(self.affinity) > self.config.max_prefix_keys:
                self.affinity.popitem(last=False)
        return chosen

    async def generate_stream(self, prompt_token_ids: list[int], params: SamplingParams, *,
                              request_id: str | None = None, prefix_key: str | None = None,
                              group: str | None = None) -> AsyncIterator[RoutedOutput]:
        """The request's deltas from the chosen replica. A replica that fails before the first delta is replaced by
        another; one that fails after it ends the stream with a retriable ReplicaDownError (the text so far
        cannot be taken back). `group`: see the module's docstring."""
        tried: set[int] = set()
        last_error: Exception | None = None
        while True:
            try:
                index = self.choose(prefix_key, frozenset(tried), group)
            except NoReplicaAvailableError as exc:
                if last_error is None:
                    raise
                raise NoReplicaAvailableError(f"{exc}; last failure: {last_error}") from last_error
            tried.add(index)
            self.in_flight[index] += 1
            self._count_in_group(group, index, +1)
            produced, done = 0, False
            stream = self.replicas[index].generate_stream.remote(prompt_token_ids, params, request_id)
            try:
                async for ref in stream:
                    output = await ref
                    produced += 1
                    self.produced[index] += 1
                    yield RoutedOutput(output, index, len(tried))
                done = True
                return
            except (ReplicaDownError, RayActorError) as exc:
                log.warning("replica %d failed request %s (%s)", index, request_id, exc)
                self.up[index], self.late[index] = False, False
                self.failures[index] += 1
                if produced:
                    raise ReplicaDownError(f"replica {index} failed after {produced} token(s): {exc}") from exc
                last_error = exc
            finally:
                self.in_flight[index] -= 1
                self._count_in_group(group, index, -1)
                if not done:  # the caller went away (or the replica failed): stop the replica's stream too
                    # not recursive: the stream's own calls to the ranks (adding the request) must run on every rank
                    ray.cancel(stream, recursive=False)

    def _count_in_group(self, group: str | None, index: int, change: int) -> None:
        """A request of `group` starts (+1) or ends (-1) at replica `index`; the group is forgotten with its last.
        (After a failure, its next request goes where the retry went.)"""
        if group is None:
            return
        replica, count = self.groups.get(group, (index, 0))
        if count + change:
            self.groups[group] = (index if change > 0 else replica, count + change)
        else:
            del self.groups[group]

    async def generate(self, prompt_token_ids: list[int], params: SamplingParams, *, request_id: str | None = None,
                       prefix_key: str | None = None) -> RoutedCompletion:
        """The whole completion; a replica failing mid-way is retried on another one from the start (nothing was
        shown to the caller yet), at most once per replica."""
        for restarts in range(len(self.replicas)):
            routed: list[RoutedOutput] = []
            try:
                async for item in self.generate_stream(prompt_token_ids, params, request_id=request_id,
                                                       prefix_key=prefix_key):
                    routed.append(item)
            except ReplicaDownError as exc:
                failure = exc
                continue
            last = routed[-1]
            return RoutedCompletion(completion_of([r.output for r in routed]), last.replica, last.attempts + restarts)
        raise NoReplicaAvailableError(f"every replica failed this request; last failure: {failure}") from failure


RouterActor = ray.remote(Router)
