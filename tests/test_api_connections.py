"""The bound on the API server's connections and the file limit it is computed from."""

from __future__ import annotations

import resource

import pytest

from aegis.api.connections import DESCRIPTORS_KEPT, connection_budget, raise_file_limit


@pytest.mark.parametrize(
    ("configured", "descriptors", "budget"),
    [
        (1000, None, 1000),  # no limit known: as configured
        (1000, 1_048_576, 1000),
        (1000, 1024, 1024 - DESCRIPTORS_KEPT),  # `ulimit -n 1024`: room is kept for the rest
        (1000, 256, 128),  # a small limit: half of it
        (5, 1024, 5),
        (1000, 1, 1),
    ],
)
def test_the_budget_leaves_descriptors_for_everything_else(
    configured: int, descriptors: int | None, budget: int
) -> None:
    assert connection_budget(configured, descriptors) == budget


class Limits:
    def __init__(self, soft: int, hard: int, refuse_above: int | None = None) -> None:
        self.soft, self.hard, self.refuse_above = soft, hard, refuse_above

    def get(self, which: int) -> tuple[int, int]:
        assert which == resource.RLIMIT_NOFILE
        return self.soft, self.hard

    def set(self, which: int, limits: tuple[int, int]) -> None:
        if self.refuse_above is not None and limits[0] > self.refuse_above:
            raise ValueError("not allowed")
        self.soft = limits[0]


def test_the_soft_file_limit_is_raised_to_the_hard_one() -> None:
    limits = Limits(1024, 524_288)
    assert raise_file_limit(limits.get, limits.set) == 524_288 == limits.soft


def test_an_unlimited_hard_limit_gets_the_largest_soft_one_the_kernel_takes() -> None:
    limits = Limits(256, resource.RLIM_INFINITY, refuse_above=24_576)
    assert raise_file_limit(limits.get, limits.set) == 10240 == limits.soft


def test_a_soft_limit_already_at_the_hard_one_stays() -> None:
    limits = Limits(1024, 1024)
    assert raise_file_limit(limits.get, limits.set) == 1024
    refused = Limits(1024, 4096, refuse_above=1024)
    assert raise_file_limit(refused.get, refused.set) == 1024


def test_the_real_limit_is_raised_in_this_process() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    now = raise_file_limit()
    assert now == resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= soft
    assert hard == resource.RLIM_INFINITY or now == hard
