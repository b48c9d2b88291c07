"""Backups to post-quantum keys: age's own `mlkem768x25519` recipients (age 1.3's -pq keys), which
pyrage reaches through this installation's `age-plugin-pq`, run here as the child process age
starts. A file made so opens with age's native post-quantum identities, and the reverse: the
keys and the stanza are checked against the vectors of age's specification."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sqlite3
import subprocess
import sys
import sysconfig
from contextlib import closing
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from bench.audit import build
from linkage import agepq, backup
from linkage.ageplugin import Stanza, Wire
from linkage.clock import SystemClock
from node.backup_log import enter_backups
from node.store import Store
from tests import age_vectors
from tests.harness import make_federation

PLUGIN = str(Path(sysconfig.get_path("scripts")) / "age-plugin-pq")


def test_age_s_post_quantum_keys_and_stanza_are_read_as_its_specification_writes_them() -> None:
    identity = agepq.Identity.parse(age_vectors.IDENTITY)
    assert str(identity) == age_vectors.IDENTITY
    assert str(identity.recipient()) == age_vectors.RECIPIENT
    assert agepq.Recipient.parse(age_vectors.RECIPIENT) == identity.recipient()
    file_key = identity.unwrap(agepq.b64decode(age_vectors.STANZA_ENC), agepq.b64decode(age_vectors.STANZA_BODY))
    assert file_key is not None and len(file_key) == agepq.FILE_KEY_BYTES
    assert agepq.Identity.generate().unwrap(*identity.recipient().wrap(file_key)) is None  # another's key
    for text in ("age1pq1" + age_vectors.RECIPIENT[7:-1] + "q", age_vectors.RECIPIENT[:-40], "AGE-SECRET-KEY-PQ-1"):
        with pytest.raises(agepq.NotAKey):
            (agepq.Recipient if text.startswith("age") else agepq.Identity).parse(text)
    for text in ("YQ==", "YR", "Y Q"):  # padded; stray bits; not base64
        with pytest.raises(ValueError):
            agepq.b64decode(text)
    assert agepq.b64decode("YQ") == b"a" and agepq.b64decode("") == b""


def _plugin(machine: str, said: str) -> list[Stanza]:
    """What age-plugin-pq answers, as a child process, to what the client `said`: its every
    stanza, the client answering each command of the plugin's phase with `ok`."""
    answers = "-> ok\n\n" * 20
    ran = subprocess.run(
        [PLUGIN, f"--age-plugin={machine}"], input=(said + answers).encode(), capture_output=True, check=True
    )
    wire = Wire(io.BytesIO(ran.stdout), io.BytesIO())
    stanzas = []
    while True:
        stanzas.append(wire.receive())
        if stanzas[-1].args == ["done"]:
            return stanzas


def test_the_plugin_opens_age_s_own_stanza_and_refuses_what_is_not_one() -> None:
    plugin_identity = agepq.Identity.parse(age_vectors.IDENTITY).as_plugin()
    stanza = f"-> recipient-stanza 0 mlkem768x25519 {age_vectors.STANZA_ENC}\n{age_vectors.STANZA_BODY}\n"
    said = f"-> add-identity {plugin_identity}\n\n{stanza}-> done\n\n"
    answered = _plugin("identity-v1", said)
    assert [s.args for s in answered] == [["file-key", "0"], ["done"]]
    assert len(answered[0].body) == agepq.FILE_KEY_BYTES
    # Another's stanza (X25519, grease) is left alone; one of ours that is not well formed is said.
    short = f"-> recipient-stanza 1 mlkem768x25519 {age_vectors.STANZA_ENC[:-8]}\n{age_vectors.STANZA_BODY}\n"
    other = "-> recipient-stanza 0 X25519 O6DLx/wDIawpUC978NSPjYvrfDtJVnZApXKp4FMPHCY\n\n-> grease x\n\n"
    answered = _plugin("identity-v1", f"-> add-identity {plugin_identity}\n\n{other}{short}-> done\n\n")
    assert [s.args for s in answered] == [["error", "stanza", "1", "0"], ["done"]]
    answered = _plugin("identity-v1", f"-> add-identity AGE-PLUGIN-PQ-1NOTAKEY\n\n{stanza}-> done\n\n")
    assert [s.args for s in answered] == [["error", "identity", "0"], ["done"]]
    # Sealing: to each recipient, for each file key, as age's own stanza, labelled post-quantum.
    key = agepq.b64encode(os.urandom(16))
    said = f"-> extension-labels\n\n-> add-recipient {age_vectors.RECIPIENT}\n\n-> wrap-file-key\n{key}\n-> done\n\n"
    answered = _plugin("recipient-v1", said)
    expected = [["labels", "postquantum"], ["recipient-stanza", "0", "mlkem768x25519"], ["done"]]
    assert [s.args[:3] for s in answered] == expected
    enc, body = agepq.b64decode(answered[1].args[3]), answered[1].body
    assert agepq.Identity.parse(age_vectors.IDENTITY).unwrap(enc, body) == agepq.b64decode(key)
    answered = _plugin("recipient-v1", f"-> add-recipient age1pq1nokey\n\n-> wrap-file-key\n{key}\n-> done\n\n")
    assert [s.args for s in answered] == [["error", "recipient", "0"], ["done"]]


@pytest.mark.parametrize(
    "said",
    ["", "hello\n", "-> add-identity x\n", "-> done\n" + "A" * 65 + "\n", "-> done\n\xff\n", "-> \xe9\n\n"],
    ids=["nothing", "no stanza", "no body", "a long line", "not ascii", "not ascii either"],
)
@pytest.mark.parametrize("machine", ["recipient-v1", "identity-v1"])
def test_the_plugin_told_what_is_not_age_s_protocol_stops_and_says_so(machine: str, said: str) -> None:
    ran = subprocess.run([PLUGIN, f"--age-plugin={machine}"], input=said.encode("latin-1"), capture_output=True)
    assert ran.returncode == 1 and ran.stdout == b""
    assert ran.stderr.startswith(b"age-plugin-pq: ") and b"Traceback" not in ran.stderr, ran.stderr


def test_a_backup_to_a_post_quantum_key_opens_only_with_it_and_restores_whole(tmp_path: Path) -> None:
    """Through the command line, from a shell whose PATH does not hold this installation: the key
    made, the backup taken to it (age's post-quantum stanza alone), checked, refused to another
    key, and restored."""
    federation = make_federation(tmp_path / "fed", SystemClock(), nodes=("amh",))
    amh = backup.Member.of(federation.node_configs["amh"])
    config = amh.data_dir / "node.toml"
    build(amh.store, 300)
    before = _audit(amh.store)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}

    def linkage(*args: str | Path) -> str:
        ran = subprocess.run(
            [sys.executable, "-m", "linkage", *map(str, args)], capture_output=True, text=True, env=env, check=False
        )
        assert ran.returncode == 0, ran.stderr
        return ran.stdout

    key, other, sealed = tmp_path / "pq.key", tmp_path / "other.key", tmp_path / "amh.age"
    public = linkage("backup", "keygen", "--post-quantum", "--out", key).split()[-1]
    assert public.startswith("age1pq1") and key.read_text().splitlines()[-1].startswith("AGE-SECRET-KEY-PQ-1")
    assert "encrypted to 1 post-quantum key(s)" in linkage(
        "backup", "create", "--config", config, "--to", public, "--out", sealed
    )
    header = sealed.read_bytes().split(b"\n---", 1)[0].decode()
    kinds = [line.split()[1] for line in header.splitlines() if line.startswith("-> ")]
    assert kinds.count("mlkem768x25519") == 1 and not {"X25519", "scrypt"} & set(kinds), kinds  # and age's grease
    assert "opens and is whole" in linkage("backup", "check", "--from", sealed, "--identity", key)
    linkage("backup", "keygen", "--post-quantum", "--out", other)
    with pytest.raises(backup.BackupError, match="none of the keys given opens it"):
        backup.restore_store(amh, sealed, backup.identities(other), 2)
    amh.store.write_bytes(b"")  # lost
    assert "OK: restored the store" in linkage(
        "backup", "restore", "--config", config, "--from", sealed, "--identity", key
    )
    assert _audit(amh.store) == before


def _audit(store: Path) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(store)) as db:
        return db.execute("SELECT * FROM audit ORDER BY seq").fetchall()


def test_a_backup_is_never_made_to_post_quantum_and_classic_keys_at_once(tmp_path: Path) -> None:
    """Either could open it, so it would be no safer than the classic one: refused before anything
    is written, whichever comes first."""
    pq = backup.generate_key(tmp_path / "pq.key", "", post_quantum=True)
    classic = backup.generate_key(tmp_path / "classic.key", "")
    for keys in ([pq, classic], [classic, pq]):
        with pytest.raises(backup.BackupError, match="both post-quantum"):
            backup.recipients(keys)
    with pytest.raises(backup.BackupError, match="is not a key: its Bech32 checksum is wrong"):
        backup.recipients([pq[:-1] + ("q" if pq[-1] != "q" else "p")])
    both = tmp_path / "both.key"
    both.write_text((tmp_path / "pq.key").read_text() + (tmp_path / "classic.key").read_text())
    assert len(backup.identities(both)) == 2  # one file may hold both kinds of private key


@given(
    args=st.lists(st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1), min_size=1),
    body=st.binary(max_size=300),
)
@example(args=["x"], body=b"")
@example(args=["x"], body=bytes(48))
@example(args=["x"], body=bytes(96))
def test_a_stanza_the_plugin_writes_reads_back_the_same_whatever_its_length(args: list[str], body: bytes) -> None:
    """Bodies of 48 bytes and their multiples fill every line, so age ends them with an empty one."""
    written = io.BytesIO()
    Wire(io.BytesIO(), written).send(*args, body=body)
    lines = written.getvalue().split(b"\n")[1:-1]
    assert all(len(line) == 64 for line in lines[:-1]) and len(lines[-1]) < 64
    read = Wire(io.BytesIO(written.getvalue()), io.BytesIO()).receive()
    assert (read.args, read.body) == (args, body)


def test_without_its_plugin_a_post_quantum_key_is_refused_saying_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = tmp_path / "pq.key"
    public = backup.generate_key(key, "", post_quantum=True)
    monkeypatch.setattr(sysconfig, "get_path", lambda name: str(tmp_path))  # an install without it
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    for call in (lambda: backup.recipients([public]), lambda: backup.identities(key)):
        with pytest.raises(backup.BackupError, match="age cannot find age-plugin-pq"):
            call()
    assert os.environ["PATH"] == "/usr/bin:/bin"


@pytest.mark.parametrize("suite", ["classic", "hybrid"])
def test_a_federation_that_seals_post_quantum_is_told_when_its_backup_is_to_a_classic_key(
    tmp_path: Path, suite: str
) -> None:
    federation = make_federation(tmp_path / "fed", SystemClock(), nodes=("amh",), suite=suite)
    amh = backup.Member.of(federation.node_configs["amh"])
    asyncio.run(_node_store(amh.store))  # as the node leaves it: the register reads it
    said = {}
    for post_quantum in (False, True):
        public = backup.generate_key(tmp_path / f"{post_quantum}.key", "", post_quantum=post_quantum)
        args = ["backup", "create", "--config", str(amh.data_dir / "node.toml"), "--to", public]
        ran = subprocess.run(
            [sys.executable, "-m", "linkage", *args, "--out", str(tmp_path / f"{post_quantum}.age")],
            capture_output=True,
            text=True,
            check=True,
        )
        said[post_quantum] = "warning: this federation seals its messages post-quantum" in ran.stdout
    assert said == {False: suite == "hybrid", True: False}
    # The register, for the record of processing, states the sealing and the latest backup's keys.
    asyncio.run(_enter_backups(amh.store))
    register = [sys.executable, "-m", "linkage", "audit", "register", "--config", str(amh.data_dir / "node.toml")]
    kept = json.loads(subprocess.run([*register, "--json"], capture_output=True, text=True, check=True).stdout)
    assert ("HPKE with ML-KEM-768 and X25519 (post-quantum)" in kept["protection"]["in transit"]) == (suite == "hybrid")
    assert kept["protection"]["backups"].endswith("encrypted with age to 1 post-quantum key(s)")  # the later one


async def _node_store(path: Path) -> None:
    store = await Store.open(path, SystemClock())
    try:
        async with store.tx() as tx:
            await tx.audit("case.opened", rationale="synthetic")
    finally:
        await store.close()


async def _enter_backups(path: Path) -> None:
    """As the node does when it starts, or on SIGHUP."""
    store = await Store.open(path, SystemClock())
    try:
        assert await enter_backups(store) == 2
    finally:
        await store.close()
