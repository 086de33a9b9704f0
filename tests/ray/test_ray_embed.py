"""`python -m model embed --ray local`: the Ray Data path against the single-process one, a killed worker, bad rows.

Each Ray run starts its own local Ray (about 10 s on two cores) inside the CLI process, which shuts it down on exit.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray", reason="the ray extra is not installed: pip install -e '.[ray]'")
pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "data" / "golden" / "nomic" / "nomic-text-tiny"
ROWS = 2000
ENV = {**os.environ, "RAY_DISABLE_DASHBOARD": "1", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)}
WORDS = ["the", "of", "rotary", "attention", "layer", "norm", "embedding", "search", "query", "document", "vector",
         "cluster", "worker", "batch", "token", "model", "encoder", "kubernetes", "parquet", "retry", "exactly", "once",
         "quick", "brown", "fox", "jumps", "over", "lazy", "dog"]


def run_cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    # fp32: outputs are compared at 1e-5, and `auto` picks bf16 on CPUs with native bf16
    cmd = [sys.executable, "-m", "model", "embed", "--dtype", "float32", *args]
    return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


def read_parts(folder: Path) -> pa.Table:
    files = sorted(folder.glob("part-*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files]) if files else pa.table({"row": pa.array([], pa.int64())})


def assert_exactly_once(table: pa.Table, n: int) -> np.ndarray:
    rows = table.column("row").to_numpy()
    assert len(rows) == n and sorted(rows.tolist()) == list(range(n)), "every row exactly once"
    return rows


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, np.ndarray, bool]:
    """2,000 lines of mixed length with ids, and the single-process CLI's embeddings of them (run in a process that
    reports whether it imported Ray)."""
    folder = tmp_path_factory.mktemp("corpus")
    rng = random.Random(13)
    with (folder / "in.jsonl").open("w") as f:
        for i in range(ROWS):
            n = rng.choice([1, 2, 5, 12, 40, 100, 300])
            f.write(json.dumps({"id": f"doc-{i}", "text": " ".join(rng.choices(WORDS, k=n))}) + "\n")
    probe = (
        "import json, sys\n"
        "from model.__main__ import main\n"
        f"rc = main(['embed', '--model', {str(TINY)!r}, '--input', {str(folder / 'in.jsonl')!r},"
        f" '--output', {str(folder / 'single.jsonl')!r}, '--device', 'cpu', '--dtype', 'float32'])\n"
        "print(json.dumps({'rc': rc, 'ray': 'ray' in sys.modules, 'pyarrow': 'pyarrow' in sys.modules}))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=ENV, capture_output=True, text=True,
                            timeout=300)  # a bound on a hang: 2,000 rows take ~130 s on a loaded 2-core box
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["rc"] == 0, result.stderr
    lines = (folder / "single.jsonl").read_text().splitlines()
    reference = np.array([json.loads(line)["embedding"] for line in lines], dtype=np.float32)
    return folder / "in.jsonl", reference, report["ray"]


def test_single_process_path_does_not_import_ray(corpus):
    _, reference, imported_ray = corpus
    assert reference.shape == (ROWS, 64)
    assert not imported_ray


def test_two_workers_match_single_process(corpus, tmp_path):
    source, reference, _ = corpus
    out = tmp_path / "out"
    result = run_cli("--model", str(TINY), "--input", str(source), "--output", str(out), "--device", "cpu",
                     "--ray", "local", "--workers", "2", "--batch-tokens", "4096")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MapBatches(EmbedBatch)" in result.stderr  # Ray Data's progress display, per stage
    table = read_parts(out)
    assert table.schema.field("row").type == pa.int64()
    assert table.schema.field("embedding").type == pa.list_(pa.float32())
    rows = assert_exactly_once(table, ROWS)
    assert table.column("id").to_pylist() == [f"doc-{r}" for r in rows]
    embeddings = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(embeddings, reference[rows], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    assert not list((out / "errors").glob("*.parquet"))
    assert not (out / "_tmp").exists()
    manifest = json.loads((out / "_manifest.json").read_text())
    assert (manifest["rows"], manifest["errors"], manifest["workers"]) == (ROWS, 0, 2)


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def embed_actors(pid: int) -> list[int]:
    """The encoder actors of the Ray that the CLI process `pid` started (Ray titles them after the stage)."""
    out = []
    for child in descendants(pid):
        try:
            if b"MapBatches(EmbedBatch)" in Path(f"/proc/{child}/cmdline").read_bytes():
                out.append(child)
        except OSError:
            continue
    return out


def test_killed_worker_is_replaced_and_every_row_is_written_once(corpus, tmp_path):
    source, reference, _ = corpus
    out = tmp_path / "out"
    # small batches (16 rows) so the run has many batches in flight when the worker dies
    cmd = [sys.executable, "-m", "model", "embed", "--dtype", "float32", "--model", str(TINY), "--input", str(source),
           "--output", str(out),
           "--device", "cpu", "--ray", "local", "--workers", "2", "--batch-tokens", "512"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while len(list(out.glob("part-*.parquet"))) < 3:  # some rows are done
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before any batch was written"
            time.sleep(0.02)
        actors = embed_actors(proc.pid)
        assert len(actors) == 2, actors
        written_before = sum(pq.read_metadata(f).num_rows for f in out.glob("part-*.parquet"))
        os.kill(actors[0], signal.SIGKILL)
        assert written_before < ROWS, "the worker must die mid-run"
        replaced = False
        while proc.poll() is None and time.monotonic() < deadline:
            replaced = replaced or any(pid not in actors for pid in embed_actors(proc.pid))
            time.sleep(0.05)
        log = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, log[-3000:]
    assert replaced, "Ray restarted the killed actor"
    table = read_parts(out)
    rows = assert_exactly_once(table, ROWS)
    assert table.column("id").to_pylist() == [f"doc-{r}" for r in rows]
    np.testing.assert_allclose(np.array(table.column("embedding").to_pylist(), dtype=np.float32), reference[rows],
                               atol=1e-5)
    assert not list((out / "errors").glob("*.parquet"))


def test_bad_rows_go_to_errors_with_their_reason(tmp_path):
    from model.encoder import Encoder

    good = [{"id": "g0", "text": "a short fine text"}, {"id": 7, "text": "another one"},
            {"text": "no id on this one"}, {"id": "g3", "input_ids": [101, 2023, 102]}]
    lines = [
        json.dumps(good[0]),
        json.dumps({"id": "empty", "text": ""}),
        json.dumps({"id": "long", "text": " ".join(["word"] * 100)}),
        json.dumps(good[1]),
        json.dumps({"id": "oov", "input_ids": [101, 99999, 102]}),
        "",  # blank lines are skipped (no row), as the single-process path does
        json.dumps({"id": "noids", "input_ids": []}),
        "{not json",
        json.dumps({"id": "shape", "foo": 1}),
        json.dumps(good[2]),
        json.dumps(good[3]),
    ]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    result = run_cli("--model", str(TINY), "--input", str(tmp_path / "in.jsonl"), "--output", str(out),
                     "--device", "cpu", "--ray", "local", "--max-input-tokens", "32", "--dimensions", "32")
    assert result.returncode == 3, result.stderr[-3000:]  # finished, with refused rows
    assert result.stderr.strip().splitlines()[-1].startswith(f"embedded 4 rows to {out}, refused 6 (reasons in ")
    errors = read_parts(out / "errors").sort_by("row").to_pylist()
    assert [(e["row"], e["id"]) for e in errors] == [(1, "empty"), (2, "long"), (4, "oov"), (6, "noids"), (7, None),
                                                    (8, "shape")]
    # the single-process path's reasons, word for word (model/inputs.py)
    assert [e["reason"] for e in errors] == [
        "text is an empty string",
        "text has 102 tokens, over this model's maximum of 32 (use --long-input truncate or chunk)",
        "input_ids has token id 99999, outside the vocabulary [0, 30528)",
        "input_ids is an empty token list",
        "not JSON (Expecting property name enclosed in double quotes)",
        'expected {"text": "..."} or {"input_ids": [...]}',
    ]

    table = read_parts(out).sort_by("row")
    assert table.column("row").to_pylist() == [0, 3, 9, 10]
    assert table.column("id").to_pylist() == ["g0", "7", None, "g3"]  # a JSON number id is kept as its JSON text
    encoder = Encoder.load(str(TINY), device="cpu", dtype="float32", max_input_tokens=32)
    expected = encoder.embed(encoder.tokenize([g["text"] for g in good[:3]]) + [good[3]["input_ids"]], dimensions=32)
    np.testing.assert_allclose(np.array(table.column("embedding").to_pylist()), expected, atol=1e-5)
    manifest = json.loads((out / "_manifest.json").read_text())
    assert (manifest["rows"], manifest["errors"], manifest["dimensions"]) == (4, 6, 32)


def test_parquet_folder_in_row_numbers_and_ids_carried(tmp_path):
    from model.encoder import Encoder

    rng = random.Random(5)
    texts = [" ".join(rng.choices(WORDS, k=rng.choice([1, 8, 60]))) for _ in range(300)]
    texts[150] = None  # a null text is an error row, not a failed run
    ids = list(range(1000, 1300))
    src = tmp_path / "src"
    (src / "b").mkdir(parents=True)
    # rows are numbered over the files in sorted path order: a.parquet (0-99), then b/c.parquet in row groups of 64
    pq.write_table(pa.table({"text": texts[:100], "id": ids[:100]}), src / "a.parquet")
    pq.write_table(pa.table({"text": texts[100:], "id": ids[100:]}), src / "b" / "c.parquet", row_group_size=64)
    pq.write_table(pa.table({"other": [1]}), src / "_SUCCESS.parquet")  # "_" files are not data, as for Spark
    out = tmp_path / "out"
    result = run_cli("--model", str(TINY), "--input", str(src), "--output", str(out), "--device", "cpu",
                     "--ray", "local", "--dimensions", "32", "--input-type", "search_document")
    assert result.returncode == 3, result.stderr[-3000:]  # row 150 refused
    table = read_parts(out).sort_by("row")
    good = [i for i in range(300) if i != 150]
    assert table.column("row").to_pylist() == good
    assert table.schema.field("id").type == pa.int64()
    assert table.column("id").to_pylist() == [ids[i] for i in good]
    encoder = Encoder.load(str(TINY), device="cpu", dtype="float32")
    expected = encoder.embed(encoder.tokenize([texts[i] for i in good], "search_document: "), dimensions=32)
    np.testing.assert_allclose(np.array(table.column("embedding").to_pylist()), expected, atol=1e-5)
    errors = read_parts(out / "errors").to_pylist()
    assert errors == [{"row": 150, "id": 1150, "reason": "no text (the text column is null)"}]


def test_chunk_input_type_and_revision_as_the_single_process_path(tmp_path, minilm_dir):
    """The options the server has reach the Ray actors: a hub revision, the model's task prefix, chunked long inputs
    (the same token-weighted mean), with the single-process CLI's vectors as the reference."""
    from tests.model.test_embed_cli import hub_cache

    env = {**ENV, **hub_cache(tmp_path, {"main": minilm_dir, "tiny": TINY})}
    rng = random.Random(3)
    lines = [{"id": i, "text": " ".join(rng.choices(WORDS, k=rng.choice([3, 30, 90])))} for i in range(40)]
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    flags = ["--model", "acme/embedder", "--revision", "tiny", "--input", str(tmp_path / "in.jsonl"), "--device", "cpu",
             "--max-input-tokens", "24", "--long-input", "chunk", "--input-type", "search_document"]
    single = subprocess.run([sys.executable, "-m", "model", "embed", "--dtype", "float32", *flags, "--output",
                             str(tmp_path / "single.jsonl")], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=180)
    assert single.returncode == 0, single.stderr[-3000:]
    reference = [json.loads(line) for line in (tmp_path / "single.jsonl").read_text().splitlines()]
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "model", "embed", "--dtype", "float32", *flags, "--output",
                             str(out), "--ray", "local"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    table = read_parts(out).sort_by("row")
    assert table.column("id").to_pylist() == [str(r["id"]) for r in reference]
    embeddings = np.array(table.column("embedding").to_pylist())
    assert embeddings.shape == (40, 64)  # the `tiny` revision, not main's MiniLM (384)
    np.testing.assert_allclose(embeddings, [r["embedding"] for r in reference], atol=1e-6)


# ---- the pieces that make "exactly once" exact, without starting Ray ---------------------------------------------
def write_rows(path: Path, rows: list[int], extra: str = "embedding") -> None:
    column = [[float(r)] for r in rows] if extra == "embedding" else [f"reason {r}" for r in rows]
    pq.write_table(pa.table({"row": pa.array(rows, pa.int64()), extra: column}), path)


def test_commit_keeps_each_row_once_over_duplicate_and_overlapping_files(tmp_path):
    from model.errors import ModelError
    from model.ray_embed import commit

    (tmp_path / "errors").mkdir()
    (tmp_path / "_tmp").mkdir()
    (tmp_path / "_tmp" / "orphan.parquet").write_bytes(b"PAR1 half a file from a killed worker")
    write_rows(tmp_path / "part-000000000000-aaaa.parquet", list(range(0, 10)))
    write_rows(tmp_path / "part-000000000000-bbbb.parquet", list(range(0, 10)))  # a retry, grouped the same
    write_rows(tmp_path / "part-000000000005-cccc.parquet", list(range(5, 15)))  # a retry, grouped differently
    write_rows(tmp_path / "part-000000000015-dddd.parquet", [15, 16, 16])
    write_rows(tmp_path / "errors" / "part-000000000017-eeee.parquet", [17, 18], extra="reason")
    handled = np.ones(19, dtype=bool)
    assert commit(tmp_path, handled) == (17, 2)
    rows = sorted(read_parts(tmp_path).column("row").to_pylist())
    assert rows == list(range(17))
    assert not (tmp_path / "part-000000000000-bbbb.parquet").exists()
    assert pq.read_table(tmp_path / "part-000000000005-cccc.parquet").column("embedding").to_pylist() == [
        [float(r)] for r in range(10, 15)]
    assert not (tmp_path / "_tmp").exists()

    (tmp_path / "part-000000000005-cccc.parquet").unlink()  # rows 10-14 lost: the run must not pass
    with pytest.raises(ModelError, match="5 rows read but not written"):
        commit(tmp_path, handled)


@pytest.mark.parametrize("ending", ["\n", "\r\n", ""])
def test_line_scan_gives_exact_row_numbers(tmp_path, ending):
    from model.ray_embed import parse_jsonl_block, scan_line_starts

    lines = [json.dumps({"text": f"line {i}"}) if i % 7 else "" for i in range(23)]
    path = tmp_path / "in.jsonl"
    path.write_bytes(("\n" if ending == "" else ending).join(lines).encode() + ending.encode())
    for every in (1, 4, 5, 23, 100):
        starts, count = scan_line_starts(path, every)
        assert count == 23 - (ending == "" and lines[-1] == "")
        assert len(starts) == -(-count // every)
        ends = starts[1:] + [path.stat().st_size]
        got = []
        for i, (start, end) in enumerate(zip(starts, ends)):
            block = parse_jsonl_block(str(path), i * every, start, end).to_pylist()
            got += [(b["row"], b["text"]) for b in block]
        assert got == [(i, f"line {i}") for i in range(23) if i % 7]


def test_cli_refuses_what_it_cannot_do_exactly(tmp_path, capsys):
    from model.__main__ import main

    (tmp_path / "in.jsonl").write_text('{"text": "x"}\n')
    base = ["embed", "--model", str(TINY), "--input", str(tmp_path / "in.jsonl")]
    assert main([*base, "--output", str(tmp_path / "o.jsonl"), "--workers", "2"]) == 1
    assert "--workers and --gpus-per-worker need --ray" in capsys.readouterr().err
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "part-0.parquet").write_bytes(b"")
    assert main([*base, "--output", str(tmp_path / "used"), "--ray", "local"]) == 1  # rows would be written twice
    assert "is not an empty folder" in capsys.readouterr().err
    assert main([*base, "--output", str(tmp_path / "o"), "--ray", "local", "--dimensions", "65"]) == 1
    assert "--dimensions must be between 1 and 64" in capsys.readouterr().err


def test_rayjob_example_runs_our_cli_on_gpu_workers():
    import shlex

    yaml = pytest.importorskip("yaml")
    from model.__main__ import parse_args

    job = yaml.safe_load((ROOT / "docker" / "k8s" / "ray" / "rayjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "model"]
    args = parse_args(argv[3:])
    assert (args.command, args.ray) == ("embed", "auto")
    cluster = job["spec"]["rayClusterSpec"]
    (group,) = cluster["workerGroupSpecs"]
    (container,) = group["template"]["spec"]["containers"]
    gpus = int(container["resources"]["limits"]["nvidia.com/gpu"])
    assert args.gpus_per_worker == 1 and args.workers == group["replicas"] * gpus  # one encoder actor per GPU
    (head,) = cluster["headGroupSpec"]["template"]["spec"]["containers"]
    assert "nomic-embed-server" in head["image"] and container["image"] == head["image"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]} & {m["mountPath"] for m in head["volumeMounts"]}
    assert {str(Path(args.input).parent), str(Path(args.output).parent)} <= mounts  # one shared volume for both
