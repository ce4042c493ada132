"""The Kafka broker's jars, fetched from Maven Central once (`make kafka-jars`).

Contract: `install_jars(libs_dir)` puts the jars devstack/kafka/pom.xml names
into `libs_dir` with `mvn dependency:copy-dependencies`, and does nothing when
they are there for this very pom.xml (its SHA-256, kept in `.pom-sha256`
beside them). Without Java or Maven it raises StackError saying what to
install. Every stack of a checkout shares one `libs_dir` (devstack/paths.py).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from devstack.errors import StackError
from devstack.processes import run
from devstack.progress import step

POM = Path(__file__).resolve().parent / "kafka" / "pom.xml"


def install_jars(libs_dir: Path) -> Path:
    """Fetch the broker's jars once (`mvn dependency:copy-dependencies`)."""
    stamp = libs_dir / ".pom-sha256"
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text().strip() == digest:
        return libs_dir
    if shutil.which("java") is None:
        raise StackError(
            "Java is not installed: the Kafka broker needs Java 17+ (apt-get install -y openjdk-17-jre-headless)."
        )
    if shutil.which("mvn") is None:
        raise StackError("Maven is not installed: it fetches the Kafka broker's jars (apt-get install -y maven).")
    if libs_dir.exists():
        shutil.rmtree(libs_dir)
    with step(f"downloading Apache Kafka jars from Maven Central into {libs_dir} (first run only)"):
        run(
            ["mvn", "-B", "-q", "-f", str(POM), "dependency:copy-dependencies", f"-DoutputDirectory={libs_dir}"],
            "mvn dependency:copy-dependencies (Kafka jars)",
        )
    stamp.write_text(digest + "\n")
    return libs_dir
