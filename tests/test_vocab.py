"""The shared words: storage resolution and URL parsing."""

from pathlib import Path

import pytest
import sqlalchemy as sa

from oialr.vocab import DEFAULT_STORAGE, mask_url, resolve_storage, sqlite_file


def test_storage_is_the_flag_then_the_environment_then_the_default():
    assert (
        resolve_storage("sqlite:///a.db", {"OIALR_STORAGE": "sqlite:///b.db"}) == "sqlite:///a.db"
    )
    assert resolve_storage(None, {"OIALR_STORAGE": "sqlite:///b.db"}) == "sqlite:///b.db"
    assert resolve_storage(None, {}) == DEFAULT_STORAGE


def test_sqlite_file_of_a_url():
    assert sqlite_file("sqlite:///runs/x.db") == Path("runs/x.db")
    assert sqlite_file("sqlite:////abs/x.db") == Path("/abs/x.db")
    assert sqlite_file("sqlite:///:memory:") is None and sqlite_file("sqlite://") is None
    assert sqlite_file("postgresql+psycopg://u:p@h/db") is None
    with pytest.raises(sa.exc.ArgumentError):
        sqlite_file("not a url")


@pytest.mark.parametrize(
    "url, masked",
    [
        (
            "postgresql+psycopg://me:secret@db:5432/oialr",
            "postgresql+psycopg://me:***@db:5432/oialr",
        ),
        ("garbage://me:p@ss@host/x", "garbage://me:***@host/x"),
        ("sqlite:///oialr.db", "sqlite:///oialr.db"),
        (
            "postgresql://u@h/db?password=secret&sslmode=require",
            "postgresql://u@h/db?password=***&sslmode=require",
        ),
    ],
)
def test_mask_url_hides_passwords_even_in_garbage(url, masked):
    assert mask_url(url) == masked
