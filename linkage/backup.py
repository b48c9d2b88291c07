"""Encrypted backups of a node's or the gateway's store and files, checked when taken and
again before they are restored.

A backup is one file, encrypted with age (age-encryption.org/v1, through pyrage) to public
keys whose private halves are kept away from the machine: a copy that leaves the building,
or is found on a share, reveals nothing. X-Road's security servers keep their backups the
same way. Inside is a tar archive of
- `manifest.json`: what it is (node or gateway, which member of which federation, when) and
  what its store held (size, SHA-256, and its log's length and root or head);
- `store.sqlite`: the store as SQLite's online backup API copies it, a consistent snapshot
  taken while the server runs, checked (SQLite's integrity check, the log's hash chain)
  before it is kept;
- `bundle/...`: the member's other files (configuration, keys, certificates, directory),
  so that a machine lost entirely can be rebuilt from the backup alone.

It is written whole or not at all, readable by its owner only. The plaintext it passes
through is kept in a private folder beside the store, where the same data already lies,
and removed however the command ends."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import shutil
import sqlite3
import sys
import sysconfig
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pyrage
from pyrage import plugin, x25519

from linkage import agepq
from linkage.auditlog import metalog_anchor, verify_metalog, verify_store
from linkage.config import GatewayConfig, NodeConfig
from linkage.exclusive import Exclusive, InUse
from linkage.files import PRIVATE, fsync_dir, fsync_file, write_private, written_whole_bytes
from linkage.ids import uuid7
from linkage.readonly import connect_read_only
from linkage.store_notes import BackupRecord, leave, mark

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

FORMAT = "linkage-backup/1"
MANIFEST, STORE, BUNDLE = "manifest.json", "store.sqlite", "bundle"
# A store's own files: the store, its journal and lock, the copies migrations keep, and the
# records and marks beside it for the node to act on (store.sqlite.*, files or folders).
# Never in a bundle, and refused in one.
STORE_FILES = (NodeConfig.STORE_NAME, GatewayConfig.STORE_NAME)
LOGS = {"node": "audit", "gateway": "metalog"}  # each kind's store, known by its hash-chained log


T = TypeVar("T")


class BackupError(Exception):
    """A backup that cannot be taken, opened or restored: the message says why and what to do."""


@dataclass(frozen=True)
class Member:
    """A node or the gateway, as its configuration places it."""

    kind: str  # "node" or "gateway"
    member_id: str
    federation_id: str
    data_dir: Path
    store: Path
    outside: tuple[Path, ...] = ()  # files the configuration names outside its folder: not backed up

    @classmethod
    def of(cls, config: NodeConfig | GatewayConfig) -> Member:
        outside = tuple(sorted({p for p in _paths(config) if p.exists() and not _within(p, config.data_dir)}))
        node = isinstance(config, NodeConfig)
        member_id = config.node_id if isinstance(config, NodeConfig) else config.gateway_id
        federation_id = config.federation.federation_id
        return cls("node" if node else "gateway", member_id, federation_id, config.data_dir, config.store_path, outside)


def _paths(value: object) -> Iterator[Path]:
    """Every path a configuration names, however deep."""
    if isinstance(value, Path):
        yield value
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from _paths(getattr(value, f.name))
    elif isinstance(value, tuple | list):
        for item in value:
            yield from _paths(item)


def _within(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


@dataclass(frozen=True)
class StoreFacts:
    bytes: int
    sha256: str
    log_entries: int
    log_root: str  # a node's: the Merkle root `audit verify` prints; the gateway's: the chain's head


@dataclass(frozen=True)
class Manifest:
    format: str
    kind: str
    member_id: str
    federation_id: str
    taken_at_ms: int
    store: StoreFacts
    files: list[str]

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        try:
            raw: dict[str, Any] = json.loads(data)
            if raw.get("format") != FORMAT:
                raise BackupError(f"a backup of format {raw.get('format')!r}; this release reads {FORMAT}")
            if raw.get("kind") not in LOGS:
                raise BackupError(f"a backup of a {raw.get('kind')!r}, neither a node nor the gateway")
            return cls(**{**raw, "store": StoreFacts(**raw["store"])})
        except (ValueError, TypeError, KeyError) as exc:
            raise BackupError(f"the backup's manifest cannot be read ({exc})") from None


# -- keys --------------------------------------------------------------------------------


def generate_key(out: Path, now_iso: str, post_quantum: bool = False) -> str:
    """A new age identity, written to `out` (private), in age-keygen's format (age-keygen -pq's,
    if `post_quantum`) so that the age tools can open the backups too. Returns its public key,
    the recipient to back up to."""
    if out.exists():
        raise BackupError(f"{out} exists: a backup key is never written over (backups made to it would be lost)")
    identity: agepq.Identity | x25519.Identity
    identity = agepq.Identity.generate() if post_quantum else x25519.Identity.generate()
    recipient = str(identity.recipient() if isinstance(identity, agepq.Identity) else identity.to_public())
    write_private(out, f"# created: {now_iso}\n# public key: {recipient}\n{identity}\n".encode())
    return recipient


@dataclass(frozen=True)
class Recipients:
    """The keys a backup is encrypted to: as given, and as age takes them."""

    keys: list[str]
    for_age: list[x25519.Recipient | plugin.RecipientPluginV1]

    @property
    def post_quantum(self) -> bool:
        return any(key.startswith(PQ_RECIPIENT) for key in self.keys)


PQ_RECIPIENT = agepq.RECIPIENT_HRP + "1"
PLUGIN_COMMAND = f"age-plugin-{agepq.PLUGIN}"
PrivateKey = x25519.Identity | plugin.IdentityPluginV1  # as age takes it


def recipients(given: list[str]) -> Recipients:
    """Each `age1...` key given, or each in a file given (one a line, # comments): classic keys or
    post-quantum ones (`age1pq1...`), never both, or the backup is only as safe as the classic."""
    keys = []
    for value in given:
        keys += _lines(Path(value)) if not value.startswith("age1") else [value]
    if not keys:
        raise BackupError("no recipient: give --to age1... (the public key `linkage backup keygen` printed)")
    post_quantum = [key for key in keys if key.startswith(PQ_RECIPIENT)]
    if post_quantum and len(post_quantum) < len(keys):
        raise BackupError(
            "both post-quantum (age1pq1...) and classic keys given: a backup to both could be opened by "
            "breaking the classic one; back up to one kind"
        )
    if post_quantum:
        parsed = []
        for key in post_quantum:
            try:
                parsed.append(str(agepq.Recipient.parse(key)))
            except agepq.NotAKey as exc:
                raise BackupError(f"{key[:20]!r}... is {exc}") from None
        plugins = [plugin.Recipient.from_str(key) for key in parsed]
        with _plugins_found():  # age looks the plugin up here
            return Recipients(parsed, [plugin.RecipientPluginV1(agepq.PLUGIN, plugins, [], _NoPrompts())])
    found: list[x25519.Recipient | plugin.RecipientPluginV1] = []
    for key in keys:
        try:
            found.append(x25519.Recipient.from_str(key))
        except pyrage.RecipientError:
            raise BackupError(f"{key[:20]!r} is not an age public key (age1...)") from None
    return Recipients([str(r) for r in found], found)


def identities(path: Path) -> list[PrivateKey]:
    """The private keys in an identity file, classic and post-quantum, as age takes them."""
    classic: list[PrivateKey] = []
    post_quantum = []
    for line in _lines(path):
        try:
            if line.upper().startswith(agepq.IDENTITY_HRP):
                post_quantum.append(plugin.Identity.from_str(agepq.Identity.parse(line).as_plugin()))
            else:
                classic.append(x25519.Identity.from_str(line))
        except (pyrage.IdentityError, agepq.NotAKey):
            raise BackupError(
                f"{path} holds a line that is not an age secret key (AGE-SECRET-KEY-1... or AGE-SECRET-KEY-PQ-1...)"
            ) from None
    if not classic and not post_quantum:
        raise BackupError(f"{path} holds no age secret key")
    if post_quantum:
        with _plugins_found():  # age looks the plugin up here
            return [*classic, plugin.IdentityPluginV1(agepq.PLUGIN, post_quantum, _NoPrompts())]
    return classic


class _NoPrompts:
    """What age asks of a person for a plugin: the post-quantum one asks nothing."""

    def display_message(self, message: str) -> None:
        print(f"age: {message}", file=sys.stderr)

    def confirm(self, message: str, yes_string: str, no_string: str | None) -> bool | None:
        return None

    def request_public_string(self, description: str) -> str | None:
        return None

    def request_passphrase(self, description: str) -> str | None:
        return None


@contextlib.contextmanager
def _plugins_found() -> Iterator[None]:
    """age finds a plugin on PATH: this installation's own (age-plugin-pq) first, wherever
    `linkage` was started from."""
    before = os.environ.get("PATH", "")
    os.environ["PATH"] = sysconfig.get_path("scripts") + os.pathsep + before
    try:
        yield
    except (pyrage.EncryptError, pyrage.DecryptError):
        raise BackupError(
            f"age cannot find {PLUGIN_COMMAND}, which post-quantum keys need: it is installed with linkage "
            f"(in {sysconfig.get_path('scripts')}); reinstall linkage, or put its folder on PATH"
        ) from None
    finally:
        os.environ["PATH"] = before


def _lines(path: Path) -> list[str]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise BackupError(f"cannot read {path}: {exc.strerror or exc}") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


# -- taking a backup ----------------------------------------------------------------------


def take(member: Member, out: Path, to: Recipients, now_ms: int) -> Manifest:
    """Back up `member`'s store and files to `out`, encrypted to `to`, while its server runs."""
    if not member.store.exists():
        raise BackupError(f"no store at {member.store}: nothing to back up")
    if _within(out.absolute(), member.data_dir):
        raise BackupError(
            f"{out} is inside the {member.kind}'s folder: write backups elsewhere (there, each would be "
            "in every later backup, and lost with the machine)"
        )
    with _staging(member.data_dir) as staging:
        copy = staging / STORE
        _copy_store(member.store, copy)
        facts = check_store(copy, member.kind)
        files = _bundle_files(member)
        manifest = Manifest(FORMAT, member.kind, member.member_id, member.federation_id, now_ms, facts, files)

        def archive(pipe: io.BufferedWriter) -> None:
            with tarfile.open(fileobj=pipe, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                _add_bytes(tar, MANIFEST, manifest.to_json())
                tar.add(copy, STORE)
                for name in files:
                    tar.add(member.data_dir / name, f"{BUNDLE}/{name}", recursive=False)

        with written_whole_bytes(out) as written:
            sealed = _Digested(written)
            _piped(archive, lambda plain: pyrage.encrypt_io(plain, sealed, to.for_age))
    # For the node to enter in its audit log, or the gateway in its metadata log.
    record = BackupRecord(
        backup_id=uuid7(now_ms),
        taken_at_ms=now_ms,
        file=out.name,
        sha256=sealed.sha256.hexdigest(),
        size=sealed.size,
        recipients=to.keys,
        store_sha256=facts.sha256,
        log_entries=facts.log_entries,
        log_root=facts.log_root,
    )
    leave(member.store, record)
    return manifest


class _Digested(io.BufferedIOBase):
    """A file passed through, hashed on the way: a backup's digest, without reading it twice."""

    def __init__(self, inner: io.BufferedIOBase) -> None:
        self.inner, self.sha256, self.size = inner, hashlib.sha256(), 0

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def read(self, size: int | None = -1, /) -> bytes:
        data = self.inner.read(size)
        self._saw(memoryview(data))
        return data

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        count = self.inner.readinto(buffer)
        self._saw(memoryview(buffer)[:count])
        return count

    def write(self, data: ReadableBuffer, /) -> int:
        self._saw(memoryview(data))
        return self.inner.write(data)

    def _saw(self, data: memoryview) -> None:
        self.sha256.update(data)
        self.size += data.nbytes


def _piped(produce: Callable[[io.BufferedWriter], None], consume: Callable[[io.BufferedReader], T]) -> T:
    """`consume` reading what `produce` writes, through a pipe, `produce` in a thread of its
    own: an archive on its way into or out of age is never on disk, as a second plaintext
    copy of the store's size. The writer's failure is raised, unless it only met the reader
    stopping: a part must never pass for the whole."""
    read_end, write_end = os.pipe()
    failed: list[BaseException] = []

    def write() -> None:
        try:
            with os.fdopen(write_end, "wb") as pipe:
                produce(pipe)
        except BaseException as exc:
            failed.append(exc)

    writer = threading.Thread(target=write, name="backup-pipe")
    writer.start()
    try:
        with os.fdopen(read_end, "rb") as pipe:
            result = consume(pipe)
            while pipe.read(1 << 16):  # what the reader left (a tar's padding), so the writer ends
                pass
    except BaseException:
        writer.join()  # the reader's end is closed: a writer still writing stops at a broken pipe
        if failed and not isinstance(failed[0], BrokenPipeError):
            raise failed[0] from None
        raise
    writer.join()
    if failed:
        raise failed[0]
    return result


def _copy_store(store: Path, copy: Path) -> None:
    os.close(os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE))
    with closing(connect_read_only(store)) as source, closing(sqlite3.connect(copy)) as target:
        try:
            # In one step, as one read transaction: in WAL mode the server writes on meanwhile,
            # where a copy in steps would start again at each of its commits, and might never end.
            source.backup(target)
        except sqlite3.DatabaseError as exc:
            raise BackupError(f"{store} cannot be copied ({exc}): is it a store?") from None


def _bundle_files(member: Member) -> list[str]:
    """The member's own files under its folder, but for the store's, sockets, files half
    written, and the plaintext of backups and restores under way."""
    names = []
    for path in sorted(member.data_dir.rglob("*")):
        if path.is_symlink() or not path.is_file() or path.name.endswith(".tmp"):
            continue
        relative = path.relative_to(member.data_dir)
        if not relative.parts[0].startswith(STORE_FILES) and not any(p.startswith(".backup-") for p in relative.parts):
            names.append(relative.as_posix())
    return names


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), PRIVATE
    tar.addfile(info, io.BytesIO(data))


# -- checking ----------------------------------------------------------------------------


def check_store(path: Path, kind: str) -> StoreFacts:
    """SQLite's integrity check and the log's hash chain, or BackupError saying which failed."""
    try:
        with closing(connect_read_only(path)) as db:
            (integrity,) = db.execute("PRAGMA integrity_check").fetchone()
            if integrity != "ok":
                raise BackupError(f"the store fails SQLite's integrity check: {integrity}")
            log = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (LOGS[kind],))
            if not log.fetchone():
                raise BackupError(f"this is not a {kind}'s store (it has no {LOGS[kind]} table)")
            chain = verify_metalog(db, metalog_anchor(db)) if kind == "gateway" else None
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"the store cannot be read ({exc})") from None
    if chain is not None:
        if not chain.ok:
            raise BackupError(f"the metadata log fails at entry {chain.first_bad_seq}: {chain.problem}")
        entries, root = chain.entries, chain.head
    else:  # a node's: in processes of its own, the Merkle root as `audit verify` gives it
        report = verify_store(path, [])
        if not report.ok:
            raise BackupError(f"the audit log fails at entry {report.first_bad_seq}: {'; '.join(report.problems)}")
        entries, root = report.entries, report.root
    return StoreFacts(path.stat().st_size, _sha256(path), entries, root.hex())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Opened:
    """A backup decrypted and checked, in a private folder that goes when it is closed."""

    manifest: Manifest
    store: Path
    bundle: Path  # the member's files, as they were
    sha256: str  # of the backup file, as its record in the node's audit log names it


@contextlib.contextmanager
def opened(backup: Path, keys: list[PrivateKey], beside: Path) -> Iterator[Opened]:
    """Decrypt `backup` into a private folder in `beside` and check it whole: it decrypts to
    the end, its store is the one the manifest describes, and passes every check."""
    if not backup.is_file():
        raise BackupError(f"no backup at {backup}")
    with _staging(beside) as staging:
        digested: list[str] = []

        def decrypt(plain: io.BufferedWriter) -> None:
            try:
                with backup.open("rb") as file:
                    sealed = _Digested(file)
                    pyrage.decrypt_io(sealed, plain, keys)
                    while sealed.read(1 << 16):  # anything after age's last chunk, for the file's digest
                        pass
                    digested.append(sealed.sha256.hexdigest())
            except pyrage.DecryptError:
                raise BackupError(f"{backup}: none of the keys given opens it (or it is not an age file)") from None
            except OSError as exc:
                if exc.errno is not None:
                    raise  # the disk's own trouble (full, say), or the reader stopping, said as it is
                # age's word for a chunk that does not authenticate
                raise BackupError(f"{backup} is damaged or was altered: it does not decrypt whole") from None

        manifest, store = _piped(decrypt, lambda plain: _unpack(plain, staging, backup))
        if check_store(store, manifest.kind) != manifest.store:
            raise BackupError(f"{backup}: its store is not the one its manifest describes")
        yield Opened(manifest, store, staging / BUNDLE, digested[0])


def _unpack(plain: io.BufferedReader, staging: Path, backup: Path) -> tuple[Manifest, Path]:
    """The manifest, the store (on disk before it is renamed anywhere) and the member's files."""
    manifest, store, seen = None, staging / STORE, set()
    try:
        with tarfile.open(fileobj=plain, mode="r|") as tar:
            for info in tar:
                content = tar.extractfile(info) if info.isfile() else None
                if content is None:
                    continue
                if info.name in seen:
                    raise BackupError(f"{backup} holds {info.name} twice: it is not a Linkage backup")
                seen.add(info.name)
                if info.name == MANIFEST:
                    manifest = Manifest.from_json(content.read())
                elif info.name == STORE:
                    with os.fdopen(os.open(store, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE), "wb") as out:
                        shutil.copyfileobj(content, out)
                        out.flush()
                        os.fsync(out.fileno())
                elif info.name.startswith(BUNDLE + "/"):
                    if info.name.removeprefix(BUNDLE + "/").startswith(STORE_FILES):
                        raise BackupError(f"{backup} holds {info.name}, a store's own file: it is not a Linkage backup")
                    tar.extract(info, staging, filter="data")  # refuses absolute paths, '..' and links out
    except tarfile.TarError as exc:
        raise BackupError(f"{backup} is not a Linkage backup ({exc})") from None
    if manifest is None:
        raise BackupError(f"the backup holds no {MANIFEST}: it is not a Linkage backup")
    if not store.exists():
        raise BackupError(f"the backup holds no {STORE}: it is not a Linkage backup")
    return manifest, store


# -- restoring -----------------------------------------------------------------------------


def restore_store(member: Member, backup: Path, keys: list[PrivateKey], now_ms: int) -> tuple[Manifest, Path | None]:
    """Put the backup's store in place of `member`'s, which must not be open: the one it
    replaces (if there was one) is kept beside it, whole, as `<store>.replaced-<ms>` (with
    `-2`, `-3`... should one by that name be there already)."""
    try:
        lock = Exclusive.take(member.store)
    except InUse as exc:
        raise BackupError(f"{exc}: stop the {member.kind} before restoring its store") from None
    try:
        with opened(backup, keys, member.data_dir) as found:
            _same_member(found.manifest, member)
            if member.kind == "node":  # for the node to ask again for what came after the backup
                mark(found.store, member.store, found.manifest.taken_at_ms, found.sha256, now_ms)
            kept = None
            if member.store.exists():
                kept = _unused(member.store.with_name(f"{member.store.name}.replaced-{now_ms}"))
                _fold_journal(member.store, kept)
                os.link(member.store, kept)  # both names until the swap: a crash loses neither store
            os.replace(found.store, member.store)
            fsync_dir(member.data_dir)
            return found.manifest, kept
    finally:
        lock.release()


def _unused(path: Path) -> Path:
    """`path`, or `path-2`, `path-3`...: the first no file takes. A store replaced before at the
    same millisecond (a clock set back, or a restore run twice at once) is kept too."""
    found, n = path, 1
    while found.exists():
        n += 1
        found = path.with_name(f"{path.name}-{n}")
    return found


def _same_member(manifest: Manifest, member: Member) -> None:
    if (manifest.kind, manifest.member_id, manifest.federation_id) != (
        member.kind,
        member.member_id,
        member.federation_id,
    ):
        raise BackupError(
            f"this is a backup of {manifest.kind} {manifest.member_id!r} of federation {manifest.federation_id!r}, "
            f"not of {member.kind} {member.member_id!r} of {member.federation_id!r}: nothing was changed"
        )


def _fold_journal(store: Path, kept: Path) -> None:
    """Move what the write-ahead log holds into the store file and empty it, so that the
    store file alone is the whole store, and no journal is left to be replayed into the
    restored one."""
    try:
        with closing(sqlite3.connect(store)) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.DatabaseError:
        pass  # a store too damaged to take it: its journal goes with it, named as SQLite pairs them
    for suffix in ("-wal", "-shm"):
        journal = store.with_name(store.name + suffix)
        if journal.exists():
            os.replace(journal, kept.with_name(kept.name + suffix))


def restore_all(backup: Path, keys: list[PrivateKey], into: Path, now_ms: int) -> Manifest:
    """Rebuild a member's folder from a backup alone (a machine lost): into `into`, which
    must be empty or absent."""
    if into.exists() and any(into.iterdir()):
        raise BackupError(f"{into} is not empty: restore a whole member only into a new folder")
    into.mkdir(mode=0o700, parents=True, exist_ok=True)
    with opened(backup, keys, into) as found:
        for path in sorted(found.bundle.rglob("*")):
            if path.is_file():
                target = into / path.relative_to(found.bundle)
                target.parent.mkdir(parents=True, exist_ok=True)
                fsync_file(path)
                os.replace(path, target)
        node = found.manifest.kind == "node"
        store = into / (NodeConfig.STORE_NAME if node else GatewayConfig.STORE_NAME)
        if node:
            mark(found.store, store, found.manifest.taken_at_ms, found.sha256, now_ms)
        os.replace(found.store, store)
        for folder in {into, *(p.parent for p in into.rglob("*"))}:
            fsync_dir(folder)
        return found.manifest


@contextlib.contextmanager
def _staging(beside: Path) -> Iterator[Path]:
    """A private folder in `beside` for plaintext on its way in or out, removed however this
    ends; and any left by a process that was killed, as the next backup or restore begins."""
    beside.mkdir(parents=True, exist_ok=True)
    for left in beside.glob(".backup-*-*"):
        if left.is_dir() and not _alive(left.name.split("-")[1]):
            shutil.rmtree(left, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".backup-{os.getpid()}-", dir=beside))  # mode 0700
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True  # another user's
    return True
