"""Checks of what a converter leaves on disk."""

from pathlib import Path


def assert_nothing_written(out: Path) -> None:
    """Neither the output folder nor a hidden temporary folder of it exists."""
    assert not out.exists()
    if out.parent.exists():
        assert [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")] == []
