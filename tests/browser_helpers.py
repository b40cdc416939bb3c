"""Helpers every browser test shares."""

from __future__ import annotations


def choose(root, elem_id: str, option: str) -> None:
    """Open the dropdown ``elem_id`` (inside ``root``: the page or a tab) and click ``option`` in its own list: a list
    another dropdown opened may not have closed yet, and may hold an option of the same name (seen in CI)."""
    dropdown = root.locator(f"#{elem_id}")
    dropdown.locator("input").first.click()
    dropdown.get_by_role("option", name=option, exact=True).click()
