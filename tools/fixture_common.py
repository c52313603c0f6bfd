"""What the fixture scripts share: the end of `--check` (regenerate into a temporary directory,
compare with the tree, say which files differ)."""

from __future__ import annotations


def report_differences(bad: list[str]) -> int:
    """Prints the files that differ from the tree (exit status 1), or that the fixtures are up to date (0)."""
    if bad:
        print("differs from the tree:\n  " + "\n  ".join(bad))
        return 1
    print("fixtures are up to date")
    return 0
