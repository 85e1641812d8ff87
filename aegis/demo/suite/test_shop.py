"""A toy shop's tests: the sample suite ``aegis demo`` runs with pytest.

``test_checkout_applies_discount`` fails (the shop ignores discount codes), and
``test_login_is_rate_limited`` is flaky: it fails the first time it runs in a directory
and passes from then on, so ``verify`` finds it fixed when it re-runs it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

PRICES = {"book": 40.0, "lamp": 60.0, "mug": 12.5}
CODES = {"SAVE10": 0.10}


def total(items: list[str], code: str | None = None) -> float:
    # the bug the suite finds: the discount code is looked up but never applied
    CODES.get(code or "", 0.0)
    return sum(PRICES[item] for item in items)


@pytest.mark.smoke
def test_cart_adds_prices() -> None:
    assert total(["book", "lamp"]) == 100.0


@pytest.mark.smoke
def test_checkout_applies_discount() -> None:
    assert total(["book", "lamp"], code="SAVE10") == 90.0, "SAVE10 should take 10 % off"


@pytest.mark.smoke
def test_login_is_rate_limited() -> None:
    mark = Path(".login-attempted")  # in the directory the suite runs in
    first_time = not mark.exists()
    mark.touch()
    assert not first_time, "POST /api/login took 5.2 s (limit 2 s)"


@pytest.mark.regression
def test_prices_are_positive() -> None:
    assert all(price > 0 for price in PRICES.values())


@pytest.mark.regression
def test_unknown_codes_change_nothing() -> None:
    assert total(["mug"], code="BOGUS") == 12.5
