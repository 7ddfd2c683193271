"""``from modelfab import ...`` is the documented API: sorted, complete, every name importable."""

from __future__ import annotations

import modelfab


def test_all_is_sorted_and_importable() -> None:
    names = modelfab.__all__
    assert names == sorted(names)
    for name in names:
        assert getattr(modelfab, name) is not None, name


def test_every_error_derives_from_the_base_and_has_a_status() -> None:
    from modelfab import errors

    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, modelfab.ModelfabError)
        assert 400 <= cls.status_code < 600
