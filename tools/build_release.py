#!/usr/bin/env python3
"""Build demo-service release archives for the lab and the tests.

    python3 tools/build_release.py --version 1.2.0 [--unhealthy] [--startup-delay 3] [--error-share 0.2]
                                   [--latency 0.25] [--out DIR]
    python3 tools/build_release.py --all-lab [--out DIR]

Each archive, `<out>/demo-service-<version>.tar.gz`, holds `app.py` (services/demo/app.py) and
`release.json` at its top level. Archives are deterministic (fixed mtime, owner and modes, sorted
members, no gzip timestamp), so rebuilding a version gives the same bytes and extracting it again
changes nothing. The default output directory is build/releases under the repository root.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import math
import os
import re
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
APP_SOURCE = REPO_ROOT / "services" / "demo" / "app.py"
DEFAULT_OUT = REPO_ROOT / "build" / "releases"
VERSION_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._+-]*$")
ARCHIVE_MTIME = 1_704_067_200  # 2024-01-01T00:00:00Z, for every member


@dataclass(frozen=True)
class LabRelease:
    version: str
    unhealthy: bool = False
    startup_delay: float = 0.0
    error_share: float = 0.0
    latency: float = 0.0


# The releases the lab playbooks and the tests deploy.
LAB_RELEASES: tuple[LabRelease, ...] = (
    LabRelease("1.0.0"),
    LabRelease("1.1.0"),
    LabRelease("1.2.0"),
    LabRelease("2.0.0"),
    LabRelease("9.9.9-unhealthy", unhealthy=True),
    LabRelease("3.0.0-slow", startup_delay=5.0),
    # Green /health, bad answers: the release-safety drills (a watch window must catch them).
    LabRelease("4.0.0-flaky", error_share=0.2),
    LabRelease("4.1.0-laggy", latency=0.25),
)


def archive_name(version: str) -> str:
    return f"demo-service-{version}.tar.gz"


def check_version(version: str) -> str:
    """Return `version` if it is safe in a file name and a directory name; raise ValueError."""
    if not VERSION_RE.fullmatch(version):
        raise ValueError(
            f"invalid version {version!r}: use letters, digits and . _ + - only, "
            "starting with a letter or digit (pattern ^[0-9A-Za-z][0-9A-Za-z._+-]*$)")
    return version


def _number(value: float) -> int | float:
    return int(value) if value.is_integer() else value


def release_metadata(version: str, unhealthy: bool, startup_delay: float, error_share: float = 0.0,
                     latency: float = 0.0) -> bytes:
    """The release.json that app.py reads (the faults only when set: other releases keep their bytes)."""
    for name, seconds in (("startup delay", startup_delay), ("latency", latency)):
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"{name} must be a number of seconds >= 0, got {seconds!r}")
    if not 0 <= error_share <= 1:
        raise ValueError(f"error share must be from 0 to 1, got {error_share!r}")
    data: dict[str, object] = {"version": version, "unhealthy": unhealthy, "startup_delay": _number(startup_delay)}
    if error_share:
        data["error_share"] = _number(error_share)
    if latency:
        data["latency"] = _number(latency)
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8")


def _member(name: str, data: bytes, mode: int) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = ARCHIVE_MTIME
    info.mode = mode
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.type = tarfile.REGTYPE
    return info, io.BytesIO(data)


def build_release(version: str, out_dir: Path | str, unhealthy: bool = False, startup_delay: float = 0.0,
                  error_share: float = 0.0, latency: float = 0.0) -> Path:
    """Write `<out_dir>/demo-service-<version>.tar.gz` and return its path."""
    check_version(version)
    members = {
        "app.py": (APP_SOURCE.read_bytes(), 0o755),
        "release.json": (release_metadata(version, unhealthy, float(startup_delay), float(error_share),
                                          float(latency)), 0o644),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / archive_name(version)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=out)
    try:
        # filename="" and mtime=0 keep the gzip header free of names and timestamps.
        with (os.fdopen(fd, "wb") as raw,
              gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz,
              tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tar):
            for name in sorted(members):
                data, mode = members[name]
                tar.addfile(*_member(name, data, mode))
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target


def build_lab_releases(out_dir: Path | str) -> list[Path]:
    return [build_release(r.version, out_dir, r.unhealthy, r.startup_delay, r.error_share, r.latency)
            for r in LAB_RELEASES]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Build demo-service release archives.")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--version", help="release version, e.g. 1.2.0")
    what.add_argument("--all-lab", action="store_true",
                      help="build every release the lab and tests use: "
                           + ", ".join(r.version for r in LAB_RELEASES))
    parser.add_argument("--unhealthy", action="store_true",
                        help="bake unhealthy=true: /health answers 503")
    parser.add_argument("--startup-delay", type=float, default=0.0, metavar="SECONDS",
                        help="bake a delay before the service binds its port (default 0)")
    parser.add_argument("--error-share", type=float, default=0.0, metavar="SHARE",
                        help="bake a share (0 to 1) of the requests other than /health answered 500")
    parser.add_argument("--latency", type=float, default=0.0, metavar="SECONDS",
                        help="bake seconds added to each request other than /health")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"output directory (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    if args.all_lab and (args.unhealthy or args.startup_delay or args.error_share or args.latency):
        parser.error("--all-lab builds fixed releases; drop --unhealthy/--startup-delay/--error-share/--latency")
    if args.version is not None:
        try:
            check_version(args.version)
        except ValueError as exc:
            parser.error(str(exc))
    if not math.isfinite(args.startup_delay) or args.startup_delay < 0:
        parser.error(f"--startup-delay must be >= 0 seconds, got {args.startup_delay}")
    if not 0 <= args.error_share <= 1:
        parser.error(f"--error-share must be from 0 to 1, got {args.error_share}")
    if not math.isfinite(args.latency) or args.latency < 0:
        parser.error(f"--latency must be >= 0 seconds, got {args.latency}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.all_lab:
        paths = build_lab_releases(args.out)
    else:
        paths = [build_release(args.version, args.out, args.unhealthy, args.startup_delay, args.error_share,
                               args.latency)]
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
