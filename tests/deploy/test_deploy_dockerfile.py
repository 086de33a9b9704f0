"""The Dockerfile and .dockerignore: hadolint, and the properties the deployment relies on."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str, str]]:
    """(stage, INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    out = []
    stage = ""
    for text in logical:
        keyword, _, args = text.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.search(r"\bAS\s+(\S+)", args, re.IGNORECASE)
            stage = match.group(1) if match else args
        out.append((stage, keyword, args.strip()))
    return out


def stage_of(name: str) -> list[tuple[str, str]]:
    return [(keyword, args) for stage, keyword, args in instructions() if stage == name]


def test_hadolint_passes(hadolint_bin, run_tool):
    result = run_tool([hadolint_bin, "--no-color", DOCKERFILE])
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


def test_variants_and_stages():
    all_instructions = instructions()
    global_args = [args for stage, keyword, args in all_instructions if keyword == "ARG" and not stage]
    assert "VARIANT=cuda" in global_args, "the GPU image is the default"
    names = [stage for stage, keyword, _ in all_instructions if keyword == "FROM"]
    assert {"python-cpu", "python-cuda", "build", "runtime"} <= set(names), names
    assert names[-1] == "runtime", "the last stage is the image that runs"
    froms = {stage: args for stage, keyword, args in all_instructions if keyword == "FROM"}
    assert froms["build"].startswith("python-${VARIANT}") and froms["runtime"].startswith("python-${VARIANT}")
    assert any("python:3.11-slim" in a for a in global_args), "the CPU variant builds on python:3.11-slim"
    assert any("nvidia/cuda:" in a for a in global_args), "the GPU variant builds on an nvidia/cuda image"


def test_dependencies_are_a_cached_layer_before_the_code():
    build = stage_of("build")
    copies = [(i, args) for i, (keyword, args) in enumerate(build) if keyword == "COPY"]
    first_pyproject = next(i for i, args in copies if "pyproject.toml" in args.split())
    first_code = next(i for i, args in copies if re.search(r"(^|\s)(app|model)(\s|$)", args))
    assert first_pyproject < first_code
    installs = [i for i, (keyword, args) in enumerate(build) if keyword == "RUN" and "pip install" in args]
    assert any(first_pyproject < i < first_code for i in installs), "dependencies install before the code is copied"
    torch = [args for keyword, args in build if keyword == "RUN" and "torch==" in args]
    assert torch and "download.pytorch.org/whl/cpu" in " ".join(a for k, a in build if k == "ARG"), (
        "the CPU variant installs torch from the PyTorch CPU index"
    )
    assert any('"torch==${TORCH_VERSION}"' in args for args in torch)
    assert "TORCH_VERSION=2.13.0" in [args for keyword, args in build if keyword == "ARG"]


def test_runtime_stage():
    runtime = stage_of("runtime")
    users = [args for keyword, args in runtime if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, "runs as a non-root user"
    assert re.fullmatch(r"\$\{APP_UID\}:\$\{APP_UID\}|\d+:\d+", users[-1]), "numeric, so runAsNonRoot can verify it"

    env = " ".join(args for keyword, args in runtime if keyword == "ENV")
    assert "EMBED_HOST=0.0.0.0" in env and "HF_HOME=/cache/huggingface" in env
    assert [args for keyword, args in runtime if keyword == "VOLUME"] == ['["/cache"]']

    (entrypoint,) = [args for keyword, args in runtime if keyword == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["python", "-m", "app"], "exec form, so flags and signals pass through"
    assert not [args for keyword, args in runtime if keyword == "CMD"]

    (healthcheck,) = [args for keyword, args in runtime if keyword == "HEALTHCHECK"]
    command = json.loads(healthcheck[healthcheck.index("CMD") + 3 :].strip())
    assert command[:2] == ["python", "-c"] and "/health" in command[2] and "curl" not in healthcheck
    compile(command[2], "HEALTHCHECK", "exec")


def test_model_is_baked_only_on_request():
    runtime = stage_of("runtime")
    assert 'BAKE_MODEL=""' in [args for keyword, args in runtime if keyword == "ARG"]
    keywords = [keyword for keyword, _ in runtime]
    (bake,) = [i for i, (keyword, args) in enumerate(runtime) if keyword == "RUN" and "BAKE_MODEL" in args]
    assert "python -m model download" in runtime[bake][1] and '[ -n "$BAKE_MODEL" ]' in runtime[bake][1]
    assert bake < keywords.index("VOLUME"), "writes under a declared VOLUME are discarded"
    assert bake > keywords.index("USER"), "the baked cache belongs to the server's user"


# --- .dockerignore --------------------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern:
    pattern = pattern.strip("/")
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out += pattern[i : end + 1]
            i = end + 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def dockerignored(path: str, lines: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        regex = _pattern_regex(line[1:] if negate else line)
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            ignored = not negate
    return ignored


@pytest.fixture(scope="module")
def dockerignore() -> list[str]:
    return (REPO / ".dockerignore").read_text().splitlines()


def test_dockerignore_keeps_what_the_dockerfile_copies(dockerignore):
    for _, keyword, args in instructions():
        if keyword != "COPY" or "--from=" in args:
            continue
        *sources, _destination = shlex.split(args)
        for source in sources:
            assert not dockerignored(source, dockerignore), f".dockerignore drops {source}, which the Dockerfile copies"
            assert not dockerignored(f"{source}/x.py", dockerignore) or not (REPO / source).is_dir()


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python", ".git/HEAD", ".whl/torch.whl", ".carry/x", "tests/app/test_x.py", ".pytest_cache/v",
        "bench/results/run.json", "bench/.venvs/tei/bin/python", "app/__pycache__/main.cpython-311.pyc",
        "model/__pycache__/x.pyc", "dist/x.whl", "build/lib/app/x.py", "x.egg-info/PKG-INFO",
    ],
)  # fmt: skip
def test_dockerignore_excludes(dockerignore, path):
    assert dockerignored(path, dockerignore)


# --- docker/smoke.sh ------------------------------------------------------------------------------------


def test_smoke_script_skips_without_a_docker_engine(run_tool, tmp_path):
    """Where no engine answers, the smoke test says SKIP and why, and exits 0 (it runs fully where one does)."""
    script = REPO / "docker" / "smoke.sh"
    assert run_tool(["bash", "-n", script]).returncode == 0
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path), "DOCKER_HOST": f"unix://{tmp_path}/none.sock"}
    result = run_tool(["bash", script], env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("SKIP: "), result.stdout + result.stderr
