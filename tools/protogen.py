"""Generate the Python stubs (with .pyi) from protos/ — `make protos` runs this
(`python -m tools.protogen`).

The stubs are written beside their sources (protos/wintrain/<domain>/v1/*_pb2*.py) and are
never edited by hand; tests/common/test_protos.py fails when they are stale.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parents[1] / "protos"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def proto_sources(root: Path = PROTO_ROOT) -> list[Path]:
    return sorted(p for p in root.rglob("*.proto") if "node_modules" not in p.parts)


def generate(out_dir: Path, root: Path = PROTO_ROOT) -> list[Path]:
    """Run protoc (grpcio-tools) over every .proto under `root`; return the files written."""
    from grpc_tools import protoc

    well_known = resources.files("grpc_tools") / "_proto"
    # googleapis-common-protos ships google/api/annotations.proto and http.proto.
    from google.api import annotations_pb2

    googleapis = Path(annotations_pb2.__file__).resolve().parents[2]
    sources = [str(p.relative_to(root)) for p in proto_sources(root)]
    args = [
        "protoc",
        f"-I{root}",
        f"-I{googleapis}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *sources,
    ]
    code = protoc.main(args)
    if code != 0:
        raise RuntimeError(f"protoc failed with exit code {code}")
    return sorted(p for p in out_dir.rglob("*") if p.name.endswith(GENERATED_SUFFIXES))


def generated_files(root: Path = PROTO_ROOT) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.name.endswith(GENERATED_SUFFIXES))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.parse_args(argv)
    for old in generated_files():
        old.unlink()
    with tempfile.TemporaryDirectory() as tmp:
        written = generate(Path(tmp))
        for path in written:
            rel = path.relative_to(tmp)
            target = PROTO_ROOT / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    print(f"generated {len(written)} files under {PROTO_ROOT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
