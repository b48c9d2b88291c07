"""Write docs/configuration.md from linkage/settings.py (run `make docs`; a test
fails if the committed page is out of date)."""

from __future__ import annotations

from pathlib import Path

from linkage.settings import GATEWAY, NODE

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "configuration.md"


def render() -> str:
    out = [
        "# Configuration",
        "",
        "One TOML file per process: `node.toml` for a node, `gateway.toml` for the gateway (enrolment writes",
        "them). Relative paths start from the file's folder. Every setting can be overridden by an",
        "environment variable `LINKAGE_<SECTION>_<KEY>`, e.g. `LINKAGE_GATEWAY_ADDRESS=gateway:7443`.",
        "`linkage config check FILE` reports every problem in a file at once, with its line: values, and",
        "each file a setting names read as the process will read it (keys, directory, the TLS files",
        "as a pair from the federation's CA for this process, and a node's agreement, glossary and",
        "code lists). A node or",
        "gateway will not start on a value its setting cannot take, from the file or the environment,",
        "and says which; one it does not know (a typo) it names in its log as it starts",
        "(`config.unknown_setting`), and serves. A number is at least 0 unless its meaning says otherwise.",
        "",
        "<!-- Generated from linkage/settings.py by tools/gen_config_doc.py; do not edit. -->",
        "",
    ]
    for title, settings in (("Node (`node.toml`)", NODE), ("Gateway (`gateway.toml`)", GATEWAY)):
        out += [f"## {title}", "", "| setting | default | meaning |", "|---|---|---|"]
        for s in settings:
            default = "required" if s.required else ("(none)" if s.default in (None, "") else f"`{s.default}`")
            least = f" At least {s.minimum}." if s.minimum else ""
            out.append(f"| `[{s.section}] {s.key}` | {default} | {s.meaning}{least} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    PAGE.write_text(render())
    print(f"wrote {PAGE}")
