"""The Kafka broker's jars, fetched from Maven Central into the download cache."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from consumers.stack.errors import StackError
from consumers.stack.locks import locked

_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies"


def kafka_home(cache_dir: Path, version: str) -> Path:
    """The cache folder of one Kafka version (``libs/`` holds its classpath)."""
    return cache_dir / f"kafka-{version}"


def ensure_kafka_jars(cache_dir: Path, version: str) -> Path:
    """The folder of Kafka ``version``'s runtime jars, downloaded with Maven once."""
    home = kafka_home(cache_dir, version)
    libs = home / "libs"
    complete = home / ".complete"
    if complete.exists():
        return libs
    home.mkdir(parents=True, exist_ok=True)
    with locked(home / ".lock"):
        if complete.exists():  # another process finished while we waited
            return libs
        pom = home / "pom.xml"
        pom.write_text(resources.files("consumers.stack").joinpath("kafka-pom.xml").read_text())
        fetch_with_maven(
            [
                _PLUGIN,
                "-DincludeScope=runtime",
                f"-DoutputDirectory={libs}",
                f"-Dkafka.version={version}",
                "-f", str(pom),
            ],
            f"Kafka {version} jars",
            # A marker-less folder is a half download: start over.
            clean=lambda: shutil.rmtree(libs, ignore_errors=True),
        )  # fmt: skip
        if not (libs / f"kafka_2.13-{version}.jar").exists():
            raise StackError(f"mvn finished but kafka_2.13-{version}.jar is not in {libs}")
        complete.write_text(version)
    return libs


def fetch_with_maven(
    goal: list[str], what: str, *, clean: Callable[[], None] = lambda: None
) -> None:
    """Run a Maven ``goal`` offline first (a warm ~/.m2 needs no network and answers in
    seconds), then online; ``clean`` runs before each attempt."""
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError("mvn not found: install maven (Debian/Ubuntu: apt-get install maven)")
    argv = [mvn, "-B", "-q", *goal]
    clean()
    if _run([*argv, "-o"]).returncode == 0:
        return
    print(f"downloading {what} from Maven Central", file=sys.stderr)
    clean()
    done = _run(argv)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
        raise StackError(f"mvn could not fetch {what}: {' | '.join(tail)}")


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False)
