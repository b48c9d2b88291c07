"""`linkage config check`: a good file passes; each kind of bad file is reported, every
problem at once, each with its line."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from unittest.mock import patch

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.server import GatewayServer
from linkage.clock import DAY_MS, SystemClock
from linkage.codelists import CodeLists
from linkage.config import ConfigError, GatewayConfig, NodeConfig
from linkage.configcheck import check
from linkage.keys import public_pem
from linkage.settings import GATEWAY, NODE
from node.policy import Agreement, Glossary
from node.policy_files import load_policy
from node.server import NodeServer
from tests.harness import LocalFederation, linkage, running
from tests.project_tools import generated_page


def _node_toml(federation: LocalFederation) -> Path:
    return federation.node_configs["csc"].data_dir / "node.toml"


def test_enrolled_files_are_good(federation: LocalFederation) -> None:
    assert check(_node_toml(federation)) == []
    assert check(federation.gateway_config.data_dir / "gateway.toml") == []
    for named in ([str(_node_toml(federation))], ["--config", str(_node_toml(federation))]):
        result = subprocess.run(
            [sys.executable, "-m", "linkage", "config", "check", *named], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0 and "OK" in result.stdout
    result = subprocess.run(
        [sys.executable, "-m", "linkage", "config", "check"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2 and "name one file to check" in result.stderr


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda t: t.replace("[api]", '[api]\nsokcet = "x"'), "unknown setting [api] sokcet (known here: socket)"),
        (lambda t: t.replace('log_level = "info"', 'log_level = "loud"'), "[node] log_level: must be one of"),
        (lambda t: t.replace('address = "127.0.0.1:0"', 'address = "gateway"'), "[gateway] address: must be host:port"),
        (lambda t: t.replace('cert = "tls/node.pem"', 'cert = "tls/missing.pem"'), "tls/missing.pem does not exist"),
        (lambda t: t.replace('id = "csc"\n', ""), "[node] id is required"),
        (lambda t: t.replace('id = "csc"\n', 'id = "C S C"\n'), "[node] id: must be an id as enrolment gives it"),
        (lambda t: t + '\n[delivery]\nretry_base_ms = "soon"\n', "[delivery] retry_base_ms: must be a whole number"),
        (lambda t: t + "\n[delivery]\nreceipt_timeout_ms = 0\n", "receipt_timeout_ms: must be a whole number, 1"),
        (lambda t: t + "\n[retention]\nsummaries_days = -1\n", "summaries_days: must be a whole number, 0 or more"),
        (
            lambda t: t + '\n[metrics]\nlisten = "9464"\n',
            '[metrics] listen: must be host:port (a port up to 65535), e.g. 0.0.0.0:9464, or ""',
        ),
        (lambda t: t + "\n[retention\n", "not valid TOML"),
        (lambda t: t.replace('log_level = "info"', "log_level = 3"), "[node] log_level: must be text, got int"),
        (
            lambda t: t + '\n[policy]\ncodelists_extra = "ours.toml"\n',
            "[policy] codelists_extra: must be a list of file paths",
        ),
        (lambda t: 'metrics = "on"\n' + t, "'metrics' must be a [section]"),
    ],
)
def test_each_kind_of_bad_file_is_reported_with_its_line(
    federation: LocalFederation, tmp_path: Path, edit: object, expected: str
) -> None:
    original = _node_toml(federation).read_text()
    bad = _node_toml(federation).parent / "bad.toml"
    bad.write_text(edit(original))  # type: ignore[operator]
    problems = check(bad)
    assert any(expected in p for p in problems), problems
    assert all(p.startswith(f"{bad}:") and p.split(":")[1].isdigit() for p in problems), problems


def test_a_file_that_cannot_be_read_is_said_so(federation: LocalFederation, tmp_path: Path) -> None:
    assert check(tmp_path / "node.toml") == [f"{tmp_path / 'node.toml'}: cannot read: No such file or directory"]
    binary = federation.node_configs["csc"].federation.directory  # given where node.toml goes: a traceback
    assert check(binary) == [f"{binary}: not a configuration file (it is not text)"]
    with pytest.raises(ConfigError, match=re.escape(f"{binary}: not a configuration file (it is not text)")):
        NodeConfig.load(binary)


OTHER_NODES_CERT = "../amh/tls/node.pem"  # from csc's folder: a sound certificate, for another node


@pytest.mark.parametrize(
    ("gateway", "setting", "wrong", "expected"),
    [
        (False, "directory_public_key", "tls/ca.pem", "is not the federation's directory key"),
        (False, "directory", "tls/ca.pem", "[federation] directory: malformed: not a signed directory"),
        (False, "message_keys", "tls", "[keys] message_keys: [Errno 2] No such file or directory"),
        (False, "linkage_key", "tls/node.key", "is not a linkage key file"),
        (False, "cert", "tls/node.key", "[tls] the certificate or the CA file is not a PEM certificate"),
        (False, "key", "tls/node.pem", "[tls] the key file is not an unencrypted PEM private key"),
        (False, "ca", "tls/node.key", "[tls] the certificate or the CA file is not a PEM certificate"),
        (False, "cert", OTHER_NODES_CERT, "[tls] the key is not the certificate's"),
        (False, "key", "tls", "[tls] cannot read "),  # as a key only the node's own user may read is
        (True, "key", "tls/gateway.key", "[witness] key: "),  # the TLS key where the witness key goes
        (True, "directory_public_key", "tls/ca.pem", "is not the federation's directory key"),
    ],
)
def test_a_file_that_is_not_what_its_setting_names_is_reported(
    federation: LocalFederation, gateway: bool, setting: str, wrong: str, expected: str
) -> None:
    """Each file read as the process will read it, and the TLS files checked as a pair from
    the federation's CA for this process: each was once "OK" here, and the process then
    stopped with a traceback, or ran unable to connect."""
    good = federation.gateway_config.data_dir / "gateway.toml" if gateway else _node_toml(federation)
    assert check(good) == []
    lines = good.read_text().splitlines()
    # The witness key is the gateway file's only `key` outside [tls]: it comes last.
    (n,) = [i for i, line in enumerate(lines) if line.startswith(f"{setting} = ")][-1:]
    lines[n] = f'{setting} = "{wrong}"'
    bad = good.parent / "bad.toml"
    bad.write_text("\n".join(lines) + "\n")
    at = lines.index("[tls]") if expected.startswith("[tls]") else n  # the three files: said at their section
    problems = check(bad)
    assert len(problems) == 1 and problems[0].startswith(f"{bad}:{at + 1}: ") and expected in problems[0], problems


def test_a_directory_signed_by_another_key_or_lapsed_is_reported(federation: LocalFederation, tmp_path: Path) -> None:
    """A node fetches a current directory as it connects, so a lapsed file is not a problem
    there; the gateway hands the directory out, and has no other."""
    node_toml, gateway_toml = _node_toml(federation), federation.gateway_config.data_dir / "gateway.toml"
    other = tmp_path / "other.pub"
    other.write_bytes(public_pem(ed25519.Ed25519PrivateKey.generate().public_key()))
    for good in (node_toml, gateway_toml):
        bad = good.parent / "bad.toml"
        bad.write_text(re.sub(r"directory_public_key = .*", f'directory_public_key = "{other}"', good.read_text()))
        assert [p.split(": ", 1)[1] for p in check(bad)] == [
            "[federation] directory: directory_unsigned: directory signature does not verify"
        ]
    later = SystemClock().now_ms() + 8 * DAY_MS  # past the directory's week
    with patch.object(SystemClock, "now_ms", return_value=later):
        assert check(node_toml) == []
        (lapsed,) = check(gateway_toml)
    assert "[federation] directory: directory_expired: expired at " in lapsed


async def test_a_data_sharing_agreement_the_node_could_not_load_is_reported_before_it_restarts(
    federation: LocalFederation,
) -> None:
    """Agency IT change the agreement (its yearly review, say) and check the node's file
    before restarting it: an agreement without its version, or a glossary that is not TOML,
    would stop the node starting, and `config check` says so at its [policy] line."""
    node_toml = _node_toml(federation)
    folder = node_toml.parent
    (folder / "dsa.toml").write_text('title = "Reviewed agreement"\n')  # no version
    (folder / "glossary.toml").write_text("[[term]\nterm = 'CP'\n")
    edited = folder / "edited.toml"
    for setting, expected in (
        ('agreement = "dsa.toml"', "dsa.toml: version is missing"),
        ('glossary = "glossary.toml"', "glossary.toml: Expected ']]' at the end of an array declaration"),
    ):
        edited.write_text(f"{node_toml.read_text()}\n[policy]\n{setting}\n")
        assert check(edited) == []  # given no loader, the policy files are not read
        (problem,) = check(edited, load_policy)
        line = edited.read_text().splitlines().index("[policy]") + 1
        assert problem.startswith(f"{edited}:{line}: [policy] the node would not start: cannot load the policy")
        assert expected in problem, problem
        code, said, _ = await linkage("config", "check", str(edited))
        assert code == 1 and said.strip() == problem
        with pytest.raises(ConfigError, match="cannot load the policy"):  # as the node finds it
            await NodeServer(NodeConfig.load(edited)).start()


# Policy files that parse as TOML but hold the wrong kind of value somewhere: each is refused
# naming its file and the part that is wrong (once a traceback from the code that read it).
MISSHAPEN = [
    ("agreement", 'version = "1"\n[recipient]\nSCHOOL = 3\n', "dsa.toml: recipient.SCHOOL must be a table"),
    ("agreement", 'version = "1"\ndefault = "all"\n', "dsa.toml: default must be a table"),
    ("agreement", 'version = "1"\n[default]\nfields = "headline"\n', "dsa.toml: default.fields must be a list of text"),
    ("agreement", 'version = "1"\n[approval]\nwhen_consent_absent = "yes"\n', "must be true or false"),
    ("agreement", 'version = ["1"]\n', "dsa.toml: version must be text"),
    ("glossary", 'term = "CP"\n', "glossary.toml: term must be an array of tables"),
    ("glossary", '[[term]]\nterm = "CP"\n', "glossary.toml: term.meaning is missing"),
    ("codelists_extra", 'version = "x"\nrisk_category = ["FIRE"]\n', "extra.toml: risk_category must be an array"),
    (
        "codelists_extra",
        'version = "x"\n[[risk_category]]\nlabel = "Fire"\n',
        "extra.toml: risk_category.code is missing",
    ),
]


@pytest.mark.parametrize(
    ("setting", "text", "expected"), MISSHAPEN, ids=[f"{c[0]}-{n}" for n, c in enumerate(MISSHAPEN)]
)
async def test_a_policy_file_of_the_wrong_shape_is_refused_saying_where(
    federation: LocalFederation, setting: str, text: str, expected: str
) -> None:
    node_toml = _node_toml(federation)
    name = {"agreement": "dsa.toml", "glossary": "glossary.toml", "codelists_extra": "extra.toml"}[setting]
    (node_toml.parent / name).write_text(text)
    value = f'["{name}"]' if setting == "codelists_extra" else f'"{name}"'
    edited = node_toml.parent / "edited.toml"
    edited.write_text(f"{node_toml.read_text()}\n[policy]\n{setting} = {value}\n")
    (problem,) = check(edited, load_policy)
    assert "[policy] the node would not start: cannot load the policy" in problem and expected in problem, problem
    with pytest.raises(ConfigError, match=re.escape(expected)):
        await NodeServer(NodeConfig.load(edited)).start()


def test_every_problem_is_reported_at_once(federation: LocalFederation) -> None:
    text = _node_toml(federation).read_text()
    text = text.replace('log_level = "info"', 'log_level = "loud"').replace("[api]", '[api]\ncolour = "red"')
    bad = _node_toml(federation).parent / "two.toml"
    bad.write_text(text)
    problems = check(bad)
    assert len(problems) == 2
    lines = [int(p.split(":")[1]) for p in problems]
    assert text.splitlines()[lines[0] - 1].startswith("log_level") or text.splitlines()[lines[1] - 1].startswith(
        "log_level"
    )
    result = subprocess.run(
        [sys.executable, "-m", "linkage", "config", "check", str(bad)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 1 and result.stdout.count(str(bad)) == 2


def test_every_setting_is_documented_with_its_default() -> None:
    doc, rendered = generated_page("gen_config_doc")
    assert doc == rendered, "run `make docs`: docs/configuration.md is out of date"
    for setting in {(s.section, s.key): s for s in NODE + GATEWAY}.values():
        assert f"`[{setting.section}] {setting.key}`" in doc, setting


def test_a_gateways_file_where_a_nodes_is_wanted_is_named_as_such(federation: LocalFederation) -> None:
    """`--config gateway.toml` to a node's command once said only "[node] id is required"."""
    gateway_toml = federation.gateway_config.data_dir / "gateway.toml"
    for wrong, command in ((gateway_toml, "audit verify --config"), (_node_toml(federation), "gateway serve --config")):
        result = subprocess.run(
            [sys.executable, "-m", "linkage", *command.split(), str(wrong)], capture_output=True, text=True, check=False
        )
        assert result.returncode != 0
        assert result.stderr.startswith(f"linkage: {wrong} is a {'gateway' if wrong == gateway_toml else 'node'}'s")
    with pytest.raises(ConfigError, match=re.escape("this takes a node's node.toml")):
        NodeConfig.load(gateway_toml)
    with pytest.raises(ConfigError, match=re.escape("this takes the gateway's gateway.toml")):
        GatewayConfig.load(_node_toml(federation))


@pytest.mark.parametrize(
    ("command", "appended", "expected"),
    [
        ("node serve", '\n[delivery]\nretry_base_ms = "soon"\n', "[delivery] retry_base_ms: must be a whole number"),
        ("node serve", "\n[delivery]\nundeliverable_after_days = 0\n", "undeliverable_after_days: must be a whole"),
        ("gateway serve", "\n[limits]\nenvelope_burst = 0\n", "[limits] envelope_burst: must be a whole number, 1"),
        ("gateway serve", '\n[limits]\nenvelopes_per_second = "fast"\n', "envelopes_per_second: must be a positive"),
        ("node serve", '\n[metrics]\nlisten = "9464"\n', "[metrics] listen: must be host:port"),  # was a traceback
        ("gateway serve", '\n[metrics]\nlisten = "127.0.0.1:70000"\n', "(a port up to 65535)"),  # and so was this
    ],
)
def test_a_process_will_not_start_on_a_value_its_setting_cannot_take(
    federation: LocalFederation, command: str, appended: str, expected: str
) -> None:
    """A node or gateway started on a value `config check` refuses, from its file or from
    the environment, says which and why, and does not start: a word where a number goes
    once ended in a traceback, and a nonsense number (no time at all before a message
    is undeliverable, a burst of none) started a process that could never deliver."""
    gateway = command.startswith("gateway")
    good = federation.gateway_config.data_dir / "gateway.toml" if gateway else _node_toml(federation)
    bad = good.parent / "bad.toml"
    bad.write_text(good.read_text() + appended)
    result = subprocess.run(
        [sys.executable, "-m", "linkage", *command.split(), "--config", str(bad)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"linkage: {bad}: ") and expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert check(bad) != []  # the same file, checked


def test_a_value_from_the_environment_is_checked_and_named(
    federation: LocalFederation, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LINKAGE_DELIVERY_RECEIPT_TIMEOUT_MS", "soon")
    monkeypatch.setenv("LINKAGE_NODE_LOG_LEVEL", "loud")
    with pytest.raises(ConfigError) as raised:
        NodeConfig.load(_node_toml(federation))
    said = str(raised.value).splitlines()
    assert said == [
        f"{_node_toml(federation)}: LINKAGE_NODE_LOG_LEVEL (in the environment): must be one of debug, error, info, "
        "warning, not 'loud'",
        f"{_node_toml(federation)}: LINKAGE_DELIVERY_RECEIPT_TIMEOUT_MS (in the environment): must be a whole number, "
        "1 or more, not 'soon'",
    ]
    # gRPC took a port past 65535 modulo 65536: a gateway listened where nobody would look for it.
    monkeypatch.setenv("LINKAGE_GATEWAY_LISTEN", "127.0.0.1:99999")
    with pytest.raises(ConfigError, match=re.escape("LINKAGE_GATEWAY_LISTEN (in the environment): must be host:port")):
        GatewayConfig.load(federation.gateway_config.data_dir / "gateway.toml")
    monkeypatch.setenv("LINKAGE_GATEWAY_SERVER_NAME", "The Gateway")  # not the gateway's id: TLS would fail
    with pytest.raises(ConfigError, match=re.escape("LINKAGE_GATEWAY_SERVER_NAME (in the environment): must be an id")):
        NodeConfig.load(_node_toml(federation))
    monkeypatch.delenv("LINKAGE_GATEWAY_SERVER_NAME")
    monkeypatch.setenv("LINKAGE_DELIVERY_RECEIPT_TIMEOUT_MS", "250")
    monkeypatch.setenv("LINKAGE_NODE_LOG_LEVEL", "debug")
    monkeypatch.setenv("LINKAGE_POLICY_CODELISTS_EXTRA", "a.yaml,b.yaml")
    config = NodeConfig.load(_node_toml(federation))
    assert config.delivery.receipt_timeout_ms == 250 and config.log_level == "debug"
    assert [p.name for p in config.policy.codelists_extra] == ["a.yaml", "b.yaml"]


def test_a_setting_this_release_does_not_know_is_said_as_the_process_starts(federation: LocalFederation) -> None:
    """A typo leaves its setting's default in force: the node says so in its log as it starts,
    and serves (a file written for a newer release must not stop a node on an older one)."""
    assert NodeConfig.load(_node_toml(federation)).unknown_settings == ()
    bad = _node_toml(federation).parent / "typo.toml"
    bad.write_text(_node_toml(federation).read_text() + "\n[delivery]\nrecipt_timeout_ms = 5\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINKAGE_")}
    node = subprocess.Popen(
        [sys.executable, "-m", "linkage", "node", "serve", "--config", str(bad)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert node.stderr is not None
        events = []
        for line in node.stderr:  # said before it starts serving
            events.append(json.loads(line))
            if events[-1]["event"] == "node.started":
                break
    finally:
        node.terminate()
        node.wait(timeout=30)
    (said,) = [e for e in events if e["event"] == "config.unknown_setting"]
    assert (said["level"], said["setting"]) == ("warning", "[delivery] recipt_timeout_ms")


async def test_a_process_given_a_directory_or_a_directory_key_it_cannot_use_says_which(
    federation: LocalFederation, tmp_path: Path
) -> None:
    """Each of these once stopped its process with a traceback. The gateway hands the
    directory out and has no other: it does not start. A node takes a current directory
    from the gateway as it connects, as it does when its file is missing."""
    broken, other = tmp_path / "broken.pb", tmp_path / "other.pub"
    broken.write_bytes(b"\xff\xff\xff")
    other.write_bytes(public_pem(ed25519.Ed25519PrivateKey.generate().public_key()))
    gateway = federation.gateway_config
    for files, said in (
        (dataclasses.replace(gateway.federation, directory=broken), "malformed: not a signed directory"),
        (
            dataclasses.replace(gateway.federation, directory_public_key=other),
            "directory_unsigned: directory signature does not verify",
        ),
    ):
        config = dataclasses.replace(gateway, federation=files)
        with pytest.raises(ConfigError, match=re.escape("[federation] directory: cannot serve with ")) as raised:
            await GatewayServer(config, SystemClock()).start()
        assert said in str(raised.value)
    csc = federation.node_configs["csc"]
    unusable_key = dataclasses.replace(csc.federation, directory_public_key=broken)
    with pytest.raises(ConfigError, match=re.escape(f"[federation] directory_public_key: {broken} is not the")):
        NodeServer(dataclasses.replace(csc, federation=unusable_key))
    federation.node_configs["csc"] = dataclasses.replace(
        csc, federation=dataclasses.replace(csc.federation, directory=broken)
    )
    async with running(federation, nodes=("csc",)) as cluster:
        assert cluster.nodes["csc"].trust.version == cluster.gateway.trust.version > 0


# Values as TOML gives them, under the keys the policy documents read, nested at random.
_LEAF = st.one_of(st.text(max_size=5), st.integers(), st.booleans(), st.floats(allow_nan=False), st.dates())
_KEYS = st.sampled_from(
    [
        "version",
        "title",
        "approval",
        "when_consent_absent",
        "default",
        "recipient",
        "SCHOOL",
        "fields",
        "categories",
        "relevance_required",
        "term",
        "meaning",
        "jargon",
        "phrase",
        "plain",
        "code",
        "label",
        "risk_category",
    ]
)
_VALUES = st.recursive(_LEAF, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=4))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_KEYS, _VALUES, max_size=6))
def test_a_policy_document_of_any_shape_loads_or_is_refused_with_a_reason(document: dict[str, object]) -> None:
    """Whatever a hand-written file holds, reading it gives rules or a ValueError that says
    what is wrong (which `config check` and the node's start report), never another error."""
    for read in (Agreement.from_document, Glossary.from_document, lambda d: CodeLists.from_documents([("f", d)])):
        with contextlib.suppress(ValueError):
            read(document)
