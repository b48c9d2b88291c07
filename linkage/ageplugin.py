"""`age-plugin-pq`: age's post-quantum recipient type (linkage/agepq.py) as an age plugin, the
way any age client without it natively (pyrage among them) reaches it.

The client starts it with `--age-plugin=recipient-v1` to seal file keys, or `identity-v1` to
open them, and the two speak age stanzas over its standard input and output (c2sp.org/
age-plugin): first the client says everything it has, then the plugin answers, one command at
a time, each acknowledged. The stanzas it writes are age's own `mlkem768x25519`, so a file made
through it opens with age 1.3's native identities too, and the reverse.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import BinaryIO

from linkage.agepq import (
    BODY_BYTES,
    ENC_BYTES,
    LABEL,
    STANZA,
    Identity,
    NotAKey,
    Recipient,
    b64decode,
    b64encode,
)

USAGE = """age-plugin-pq: age's post-quantum recipients (age1pq1...) for age clients that lack them.
It is started by an age client (--age-plugin=recipient-v1 or identity-v1), not by hand."""
_LINE = 64  # a stanza body's base64 is cut in lines of this many characters


@dataclass
class Stanza:
    args: list[str]
    body: bytes = b""


class ProtocolError(Exception):
    """The client said what this protocol does not allow."""


@dataclass
class Wire:
    read: BinaryIO
    write: BinaryIO

    def receive(self) -> Stanza:
        line = self.read.readline()
        if not line:
            raise ProtocolError("the client went away")
        if not line.startswith(b"-> ") or not line.endswith(b"\n") or not line.isascii():
            raise ProtocolError("not a stanza")
        args = line[3:-1].decode("ascii").split(" ")
        text = b""
        while True:  # the body ends with its first line shorter than a full one
            part = self.read.readline()
            if not part.endswith(b"\n") or len(part) > _LINE + 1 or not part.isascii():
                raise ProtocolError("a stanza's body is cut short, or not in lines of age's base64")
            text += part[:-1]
            if len(part) <= _LINE:
                break
        try:
            return Stanza(args, b64decode(text.decode("ascii")))
        except ValueError:
            raise ProtocolError("a stanza's body is not age's base64") from None

    def send(self, *args: str, body: bytes = b"") -> None:
        text = b64encode(body)
        lines = [text[i : i + _LINE] for i in range(0, len(text), _LINE)]
        if not lines or len(lines[-1]) == _LINE:
            lines.append("")
        self.write.write(("-> " + " ".join(args) + "\n" + "\n".join(lines) + "\n").encode("ascii"))
        self.write.flush()

    def ask(self, *args: str, body: bytes = b"") -> Stanza:
        """A command of the plugin's phase, and the client's answer to it."""
        self.send(*args, body=body)
        return self.receive()

    def phase(self) -> list[Stanza]:
        """The client's phase: every command until `done`."""
        said = []
        while (stanza := self.receive()).args[0] != "done":
            said.append(stanza)
        return said


@dataclass
class _Told:
    recipients: list[str] = field(default_factory=list)
    identities: list[str] = field(default_factory=list)
    file_keys: list[bytes] = field(default_factory=list)
    labels: bool = False


def wrap(wire: Wire) -> None:
    """recipient-v1: seal each file key to each recipient (and each identity's recipient)."""
    told = _Told()
    for stanza in wire.phase():
        command, args = stanza.args[0], stanza.args[1:]
        if command == "add-recipient" and len(args) == 1:
            told.recipients.append(args[0])
        elif command == "add-identity" and len(args) == 1:
            told.identities.append(args[0])
        elif command == "wrap-file-key":
            told.file_keys.append(stanza.body)
        elif command == "extension-labels":
            told.labels = True
        # anything else is a later version's, or grease: ignored, as the protocol asks
    to: list[Recipient] = []
    for kind, texts, parse in (
        ("recipient", told.recipients, Recipient.parse),
        ("identity", told.identities, lambda text: Identity.parse(text).recipient()),
    ):
        for index, text in enumerate(texts):
            try:
                to.append(parse(text))
            except NotAKey as exc:
                wire.ask("error", kind, str(index), body=str(exc).encode())
                wire.send("done")
                return
    if told.labels:
        wire.ask("labels", LABEL)
    for index, file_key in enumerate(told.file_keys):
        for recipient in to:
            enc, body = recipient.wrap(file_key)
            wire.ask("recipient-stanza", str(index), STANZA, b64encode(enc), body=body)
    wire.send("done")


def unwrap(wire: Wire) -> None:
    """identity-v1: open each file's file key with any identity given, from its own stanzas."""
    texts: list[str] = []
    files: dict[int, list[Stanza]] = {}
    for stanza in wire.phase():
        command, args = stanza.args[0], stanza.args[1:]
        if command == "add-identity" and len(args) == 1:
            texts.append(args[0])
        elif command == "recipient-stanza" and args and args[0].isdigit():
            files.setdefault(int(args[0]), []).append(Stanza(args[1:], stanza.body))
    identities = []
    for index, text in enumerate(texts):
        try:
            identities.append(Identity.parse(text))
        except NotAKey as exc:
            wire.ask("error", "identity", str(index), body=str(exc).encode())
    if len(identities) < len(texts):  # none is tried while any is not one (the protocol's rule)
        wire.send("done")
        return
    for file_index, stanzas in sorted(files.items()):
        file_key = _opened(wire, file_index, stanzas, identities)
        if file_key is not None:
            wire.ask("file-key", str(file_index), body=file_key)
    wire.send("done")


def _opened(wire: Wire, file_index: int, stanzas: list[Stanza], identities: list[Identity]) -> bytes | None:
    """The file key, if a stanza of ours opens with an identity; a stanza of ours that is not
    well formed is said, and leaves the whole file unopened (as age asks, against oracles)."""
    ours = [(i, s) for i, s in enumerate(stanzas) if s.args and s.args[0] == STANZA]
    sealed = []
    for stanza_index, stanza in ours:
        try:
            enc = b64decode(stanza.args[1]) if len(stanza.args) == 2 else b""
        except ValueError:
            enc = b""
        if len(enc) != ENC_BYTES or len(stanza.body) != BODY_BYTES:
            problem = f"a {STANZA} stanza must carry a {ENC_BYTES}-byte key and a {BODY_BYTES}-byte body"
            wire.ask("error", "stanza", str(file_index), str(stanza_index), body=problem.encode())
            return None
        sealed.append((enc, stanza.body))
    for enc, body in sealed:
        for identity in identities:
            file_key = identity.unwrap(enc, body)
            if file_key is not None:
                return file_key
    return None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    machines = {"--age-plugin=recipient-v1": wrap, "--age-plugin=identity-v1": unwrap}
    if len(args) != 1 or args[0] not in machines:
        print(USAGE, file=sys.stderr)
        return 1
    try:
        machines[args[0]](Wire(sys.stdin.buffer, sys.stdout.buffer))
    except ProtocolError as exc:
        print(f"age-plugin-pq: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
