"""Run `buf lint` on protos/ offline: copy googleapis' annotation protos from the installed
googleapis-common-protos package into .cache/googleapis, then call buf (from PATH or the
project's .cache/node install). Exit code is buf's; 3 when buf is not installed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def find_buf() -> str | None:
    local = REPO / ".cache" / "node" / "node_modules" / ".bin" / "buf"
    return str(local) if local.exists() else shutil.which("buf")


def prepare_googleapis() -> None:
    from google.api import annotations_pb2

    src = Path(annotations_pb2.__file__).resolve().parent
    dest = REPO / ".cache" / "googleapis" / "google" / "api"
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("annotations.proto", "http.proto", "field_behavior.proto"):
        shutil.copyfile(src / name, dest / name)


def main() -> int:
    buf = find_buf()
    if buf is None:
        print("buf is not installed (make tools installs it from the npm registry)", file=sys.stderr)
        return 3
    prepare_googleapis()
    return subprocess.call([buf, "lint"], cwd=REPO)


if __name__ == "__main__":
    raise SystemExit(main())
