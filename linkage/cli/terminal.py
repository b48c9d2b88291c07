"""What the command line prints, made harmless to the terminal it reaches.

Much of what it prints was written at another agency: a summary's texts, a question, the
reason in a receipt. A control character in it must not act on the reader's terminal: an
escape sequence can move the cursor, rewrite or hide a line, or retitle the window; a
carriage return can print "LOW" over "HIGH"; a bidirectional override shows text in another
order than it reads ("Trojan Source"). Each is printed as its escape (\\u001b, \\u202e),
which a person can see and which reads the same inside a JSON string."""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator
from typing import TextIO

# C0 controls but tab and newline, DEL and the C1 controls; the bidirectional embeddings,
# overrides and isolates (the marks, which reorder nothing on their own, stay).
UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def harmless(text: str) -> str:
    return UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


class HarmlessText:
    """A text stream that writes what it is given through `harmless`."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(harmless(text))
        return len(text)

    def __getattr__(self, name: str) -> object:  # flush, fileno, isatty, encoding...
        return getattr(self.stream, name)


@contextlib.contextmanager
def harmless_output() -> Iterator[None]:
    """Standard output and error, for the length of a command, through `harmless`."""
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = HarmlessText(out), HarmlessText(err)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = out, err
