"""Generate the Python protobuf and gRPC modules from proto/ into linkage/v1/.

Run `make proto` after editing a .proto file. The test suite regenerates into a
temporary directory and fails if the committed modules differ (stale code).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
PACKAGE_DIR = Path("linkage") / "v1"
GENERATED_HEADER = '"""Generated from proto/linkage/v1 by tools/gen_proto.py; do not edit."""\n'


def generate(out_root: Path) -> list[Path]:
    """Write the generated package under out_root and return the files written."""
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in (PROTO_DIR / "linkage" / "v1").glob("*.proto"))
    (out_root / PACKAGE_DIR).mkdir(parents=True, exist_ok=True)
    bin_dir = Path(sys.executable).parent  # the plugins live beside this interpreter
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out_root}",
        f"--mypy_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    init = out_root / PACKAGE_DIR / "__init__.py"
    init.write_text(GENERATED_HEADER)
    return sorted((out_root / PACKAGE_DIR).iterdir())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT, help="output root (default: the repository)")
    args = parser.parse_args()
    written = generate(args.out)
    print(f"generated {len(written)} files in {args.out / PACKAGE_DIR}", file=sys.stderr)


if __name__ == "__main__":
    main()
