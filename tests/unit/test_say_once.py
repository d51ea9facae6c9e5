"""SaidOnce: each key said once, bounded, news again after a recovery."""

import pytest

from oomguard.say_once import SaidOnce


def test_each_key_is_said_once() -> None:
    said: SaidOnce[str] = SaidOnce()
    assert [said.first(k) for k in ("a", "b", "a", "b", "c")] == [True, True, False, False, True]


def test_a_full_memory_forgets_everything_so_hostile_keys_cannot_grow_it() -> None:
    said: SaidOnce[int] = SaidOnce(limit=3)
    for key in range(10_000):
        said.first(key)
        assert len(said) <= 3
    assert said.first(0)  # forgotten: said once more, the worst case


def test_forget_keeps_only_what_is_asked() -> None:
    said: SaidOnce[str] = SaidOnce()
    for key in ("not found a", "timeout", "not found b"):
        said.first(key)
    said.forget(keep=lambda key: key.startswith("not found "))
    assert said.first("timeout")
    assert not said.first("not found a")
    said.forget()
    assert said.first("not found a")


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError):
        SaidOnce(0)
