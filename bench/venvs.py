"""The peers' own virtual environments under bench/.venvs/, created on first use and reused after.

Each gets the CPU torch wheel *first* (`torch==2.13.0`, the same build as ours: a bare `torch` requirement would pull
the multi-GB CUDA build), then the peer at a pinned version. A venv is reused while its `.bench-spec` file matches.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
VENVS = BENCH / ".venvs"
TORCH = "torch==2.13.0"

log = logging.getLogger("bench")


@dataclass(frozen=True)
class Peer:
    name: str
    requirements: tuple[str, ...]

    @property
    def root(self) -> Path:
        return VENVS / self.name

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    def bin(self, script: str) -> Path:
        return self.root / "bin" / script


PEERS = {
    "st": Peer("st", ("sentence-transformers==6.2.0",)),
    "transformers": Peer("transformers", ("transformers==5.24.0", "safetensors")),
    "infinity": Peer("infinity", ("infinity-emb[server,torch]==0.0.78",)),
    # ONNX Runtime; torch (installed first, as for every peer), transformers and onnx only export the model once
    "ort": Peer("ort", ("onnxruntime==1.31.1", "onnx==1.23.2", "transformers==5.24.0")),
}


class SetupError(RuntimeError):
    pass


def ensure(peer: Peer, timeout_s: float = 1200) -> Path:
    """Create (or reuse) the peer's venv; returns its python. Raises SetupError with the pip log's tail."""
    spec = json.dumps({"torch": TORCH, "requirements": list(peer.requirements)})
    marker = peer.root / ".bench-spec"
    if peer.python.exists() and marker.exists() and marker.read_text() == spec:
        return peer.python
    VENVS.mkdir(parents=True, exist_ok=True)
    logfile = VENVS / f"{peer.name}.log"
    log.info("creating %s (log: %s)", peer.root, logfile)
    base = getattr(sys, "_base_executable", sys.executable)
    steps = [
        [base, "-m", "venv", "--clear", str(peer.root)],
        [str(peer.python), "-m", "pip", "install", "-q", "--disable-pip-version-check", TORCH],
        [str(peer.python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *peer.requirements],
    ]
    with logfile.open("w") as out:
        for cmd in steps:
            out.write(f"$ {' '.join(cmd)}\n")
            out.flush()
            try:
                done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout_s, check=False)
                rc = done.returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
            if rc != 0:
                tail = [ln for ln in logfile.read_text().splitlines() if not ln.startswith("WARNING: Location")][-8:]
                raise SetupError(f"{peer.name}: `{' '.join(cmd[-2:])}` failed ({rc}): " + " | ".join(tail))
    marker.write_text(spec)
    return peer.python


def peer_versions(peer: Peer, *dists: str) -> dict[str, str | None]:
    return python_versions(peer.python, *dists)


def python_versions(python: Path, *dists: str) -> dict[str, str | None]:
    """The installed versions of `dists` under that interpreter (None for those it lacks)."""
    code = (
        "import json, sys; from importlib.metadata import version, PackageNotFoundError\n"
        "def v(n):\n  try: return version(n)\n  except PackageNotFoundError: return None\n"
        "print(json.dumps({n: v(n) for n in sys.argv[1:]}))"
    )
    cmd = [str(python), "-c", code, *dists]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    return json.loads(out.stdout) if out.returncode == 0 else {}


if __name__ == "__main__":  # python -m bench.venvs [name...]: set up the peers' venvs ahead of a run
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in sys.argv[1:] or list(PEERS):
        print(name, ensure(PEERS[name]))
