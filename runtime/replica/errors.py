"""Errors of replicas and the router. The retriable ones mean: the same request may succeed if sent again later."""


class RetriableError(RuntimeError):
    """The request did not complete for a transient reason (a replica went down); sending it again may succeed."""


class ReplicaDownError(RetriableError):
    """The replica lost a rank (or is recovering from that); its in-flight requests were dropped."""


class NoReplicaAvailableError(RetriableError):
    """Every replica is down or already failed this request."""


class ReplicaDesyncError(RuntimeError):
    """The ranks of one replica produced different tokens for the same step: they no longer run in lock-step."""


class RankHungError(RuntimeError):
    """A rank did not answer a call (a step, a new request) within the replica's hang timeout; it was restarted."""
