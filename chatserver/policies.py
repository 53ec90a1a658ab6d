"""Session timeout policies: named policies, a custom `timeout_seconds`, or a resolver hook."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from chatserver.config import CUSTOM_POLICY, Settings
from chatserver.errors import BadRequest, ErrorCode

# Returns seconds for metadata it has a rule for, None to fall back to the standard rules.
TimeoutResolver = Callable[[Mapping[str, Any]], int | None]


@dataclass(frozen=True, slots=True)
class Timeout:
    policy: str
    seconds: int


@dataclass(frozen=True)
class TimeoutPolicies:
    seconds_by_name: Mapping[str, int]
    default_policy: str
    min_seconds: int
    max_seconds: int
    resolver: TimeoutResolver | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, resolver: TimeoutResolver | None = None
    ) -> TimeoutPolicies:
        policies = cls(
            seconds_by_name=settings.policy_seconds(),
            default_policy=settings.default_timeout_policy,
            min_seconds=settings.min_timeout_seconds,
            max_seconds=settings.max_timeout_seconds,
            resolver=resolver,
        )
        if policies.default_policy not in policies.seconds_by_name:
            raise ValueError(f"default timeout policy {policies.default_policy!r} is unknown")
        return policies

    def resolve(self, metadata: Mapping[str, Any]) -> Timeout:
        if self.resolver is not None:
            dynamic = self.resolver(metadata)
            if dynamic is not None:
                # The application's rule, not the client's input: keep it within the bounds
                # rather than blaming the request.
                return Timeout(CUSTOM_POLICY, min(max(dynamic, self.min_seconds), self.max_seconds))
        custom = metadata.get("timeout_seconds")
        if custom is not None:
            if isinstance(custom, bool) or not isinstance(custom, int):
                raise BadRequest("timeout_seconds must be an integer number of seconds")
            return Timeout(CUSTOM_POLICY, self._bounded(custom))
        name = metadata.get("timeout_policy", self.default_policy)
        if not isinstance(name, str) or name not in self.seconds_by_name:
            known = ", ".join(sorted(self.seconds_by_name))
            raise BadRequest(
                f"unknown timeout_policy {name!r}; known policies: {known}",
                ErrorCode.UNKNOWN_POLICY,
            )
        return Timeout(name, self.seconds_by_name[name])

    def _bounded(self, seconds: int) -> int:
        if not self.min_seconds <= seconds <= self.max_seconds:
            raise BadRequest(
                f"timeout_seconds must be between {self.min_seconds} and {self.max_seconds}"
            )
        return seconds
