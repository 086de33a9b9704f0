"""The vendored fixtures (tests/data) still equal the maintainers' reference material in ../shared, where that
folder exists beside the checkout (a user's clone has none: skipped there)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.conftest import DATA, ROOT

SHARED = ROOT.parent / "shared"
pytestmark = pytest.mark.skipif(not (SHARED / "golden").is_dir(), reason="no ../shared beside this checkout")


def digest(path: Path) -> str:
    """Bytes for ordinary files; for safetensors the tensors (names, dtypes, shapes, data), not the header metadata:
    the copies stored once may differ from the original only there."""
    if path.suffix != ".safetensors":
        return hashlib.sha256(path.read_bytes()).hexdigest()
    import torch
    from safetensors.torch import load_file

    h = hashlib.sha256()
    state = load_file(path)
    for key in sorted(state):
        t = state[key].contiguous()
        h.update(f"{key} {t.dtype} {tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def shared_files() -> list[Path]:
    files = [p for p in (SHARED / "golden").rglob("*") if p.is_file()]
    return sorted(p.relative_to(SHARED) for p in files) + [Path("nomic-embed-text-v1.5.config.json")]


@pytest.mark.parametrize("relative", shared_files() if (SHARED / "golden").is_dir() else [], ids=str)
def test_vendored_copy_equals_shared(relative: Path):
    ours = DATA / relative
    assert ours.exists(), f"{relative} is in ../shared but not vendored in tests/data"
    assert digest(ours) == digest(SHARED / relative), f"tests/data/{relative} differs from ../shared/{relative}"


def test_nothing_vendored_that_shared_lacks():
    ours = {p.relative_to(DATA) for p in DATA.rglob("*") if p.is_file()} - {Path("README.md")}  # links count too
    theirs = set(shared_files())
    assert ours <= theirs, f"in tests/data but not in ../shared: {sorted(map(str, ours - theirs))}"
