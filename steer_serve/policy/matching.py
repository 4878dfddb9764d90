"""Patterns that name library entries in a policy: an exact name, a glob, or a content hash.

A glob uses `*`, `?` and `[...]` over the characters library names may contain, so a typo such
as an unclosed `[` is an error at load instead of a pattern that silently matches nothing.
`sha256:<64 hex>` matches a vector whose numbers hash to that value (`content_sha256` in the
library listing), whatever name it was uploaded under.
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase

HASH_PREFIX = "sha256:"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_NAME_CHARS = r"A-Za-z0-9._-"
_GLOB = re.compile(rf"(?:[{_NAME_CHARS}]|\*|\?|\[!?[{_NAME_CHARS}]+\])+")
_EXACT = re.compile(rf"[A-Za-z0-9][{_NAME_CHARS}]{{0,127}}")


def check_pattern(pattern: str) -> str:
    """Return `pattern`, or raise ValueError saying why it is not a name, glob or content hash."""
    if pattern.startswith(HASH_PREFIX):
        if _HEX64.fullmatch(pattern.removeprefix(HASH_PREFIX)) is None:
            raise ValueError(f"{pattern!r}: a content hash is 'sha256:' and 64 lower-case hex digits")
        return pattern
    if is_glob(pattern):
        if _GLOB.fullmatch(pattern) is None:
            raise ValueError(f"bad glob {pattern!r}: use *, ? and closed [...] sets over letters, digits, '.', '_', '-'")
        return pattern
    if _EXACT.fullmatch(pattern) is None:
        raise ValueError(f"{pattern!r} is not a library name (1-128 letters, digits, '.', '_', '-')")
    return pattern


def is_glob(pattern: str) -> bool:
    return any(char in pattern for char in "*?[]")


def is_hash(pattern: str) -> bool:
    return pattern.startswith(HASH_PREFIX)


def matches(pattern: str, name: str, content_sha256: str | None = None) -> bool:
    """Whether `pattern` names the entry `name` (whose numbers hash to `content_sha256`)."""
    if is_hash(pattern):
        return content_sha256 is not None and pattern == HASH_PREFIX + content_sha256
    return fnmatchcase(name, pattern) if is_glob(pattern) else name == pattern


def any_match(patterns: list[str], name: str, content_sha256: str | None = None) -> bool:
    return any(matches(pattern, name, content_sha256) for pattern in patterns)
