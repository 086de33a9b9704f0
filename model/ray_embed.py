"""`python -m model embed --ray ADDRESS`: the same encoder over a Ray cluster with Ray Data, every row exactly once.

    read (Datasource below: exact row numbers)  ->  map_batches(EmbedBatch, one Encoder per actor)  ->  commit()

Input: a JSONL file (lines of {"text": ...} or {"input_ids": [...]}, optional "id"), or a Parquet file or folder with a
`text` (or `input_ids`) column and an optional `id` column. `row` is the 0-based line index of a JSONL file (blank lines
are skipped, as the single-process path does, and keep their number) or the 0-based row index over a Parquet folder's
files in sorted path order.

Output folder: `part-*.parquet` with `row` (int64), `id` (where the input has one; a JSONL id is kept as a string,
other JSON values as their JSON text) and `embedding` (list<float32>, L2-normalised); `errors/part-*.parquet` with
`row`, `id`, `reason` for rows that cannot be embedded; `_manifest.json` once the run is complete.

Why row numbers come from our own Datasource: `ray.data.read_json` splits and reorders blocks, so a row's position in
the file is lost. Here the driver scans the file once for line offsets (numpy over 16 MiB reads, no JSON parsing) or
reads the Parquet footers for row counts, and every read task knows the exact number of its first row.

Exactly once, in three steps:
1. The actors write their own Parquet files instead of handing embeddings to `write_parquet`: one pass splits good
   rows from errors, embeddings never cross the object store, and correctness does not rest on Ray's write-task
   numbering (its sink names files by run id and task index and writes them in place, so a killed writer leaves a
   truncated file until its retry overwrites it). Ours are named by what they hold, `part-<first row>-<sha1 of the
   row numbers>`, so a retried batch (same rows) replaces its own earlier file instead of adding a second copy.
2. A file appears only complete: it is written under `_tmp/` and renamed into place (atomic on one filesystem), so a
   worker killed mid-write leaves at most an orphan in `_tmp/`, which is removed at the end.
3. `commit()` in the driver, after Ray Data has finished, reads only the `row` column of every file and keeps each row
   once: a file whose rows are all already written (a retry whose batches were grouped differently) is deleted, one
   that partly overlaps is rewritten without the overlap. It then checks that the rows written (good + errors) are
   exactly the rows the pipeline reported, and writes `_manifest.json`.
Ray's side: dead actors are restarted without limit (`max_restarts=-1`: a preempted node's worker is always replaced)
and a batch is retried on a new actor up to `MAX_BATCH_RETRIES` times (a batch that kills its worker every time fails
the run instead of looping forever). Read tasks keep Ray's default of 3 retries.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from model import inputs
from model.errors import ModelError

MAX_BATCH_RETRIES = 3  # actor-task retries of one batch after its worker died
LOCAL_OBJECT_STORE = 512 * 1024**2  # embeddings never pass through the object store (actors write them), only text
TMP, ERRORS, MANIFEST = "_tmp", "errors", "_manifest.json"  # "_" names are skipped by Parquet dataset readers


def rows_per_batch(batch_tokens: int) -> int:
    """Rows handed to one actor call: about four forward passes of 128-token texts, so the encoder's length sorting
    (`Encoder.embed` splits a call into sub-batches of at most `batch_tokens`) has enough rows to group by length."""
    return max(8, batch_tokens // 32)


# ---- input: exact row numbers -----------------------------------------------------------------------------------
def _block_metadata(num_rows: int, size_bytes: int, path: str) -> BlockMetadata:
    # BlockMetadata lost its `schema` field in newer Ray; fill the fields this version has
    names = {f.name for f in dataclasses.fields(BlockMetadata)}
    values = {"num_rows": num_rows, "size_bytes": size_bytes, "input_files": [path], "exec_stats": None,
              "schema": None}
    return BlockMetadata(**{k: v for k, v in values.items() if k in names})


def scan_line_starts(path: Path, every: int) -> tuple[list[int], int]:
    """Byte offsets where lines 0, every, 2*every, ... start, and the number of lines."""
    starts, lines, pos = [0], 0, 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            newlines = np.flatnonzero(np.frombuffer(chunk, np.uint8) == 10)
            # newline i of this chunk ends line `lines + i`; the next line, `lines + i + 1`, starts right after it
            first = (-(lines + 1)) % every
            starts.extend((pos + newlines[first::every] + 1).tolist())
            lines += len(newlines)
            pos += len(chunk)
            last_byte = chunk[-1:]
    if pos and last_byte != b"\n":
        lines += 1  # a last line without its newline
    if starts[-1] >= pos:
        starts.pop()  # the file ends exactly at a block boundary
    return starts, lines


def _id_text(key) -> str | None:
    """A JSONL id as Arrow text: a string as is, other JSON values as their JSON text (a lone surrogate drops it)."""
    if key is None:
        return None
    text = key if isinstance(key, str) else json.dumps(key)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return text


def parse_jsonl_block(path: str, first_line: int, start: int, end: int) -> pa.Table:
    """Lines [start, end) bytes of a JSONL file -> row, text, input_ids, id, error (the reason a line is unusable)."""
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    cols: dict[str, list] = {"row": [], "text": [], "input_ids": [], "id": [], "error": []}
    for number, raw in enumerate(data.split(b"\n"), first_line):
        if not raw.strip():
            continue
        item, key, error = inputs.read_record(raw)  # the single-process path's parser and rules
        text, ids = (item, None) if isinstance(item, str) else (None, item)
        for name, value in zip(cols, (number, text, ids, _id_text(key), error)):
            cols[name].append(value)
    return pa.table({
        "row": pa.array(cols["row"], pa.int64()),
        "text": pa.array(cols["text"], pa.string()),
        "input_ids": pa.array(cols["input_ids"], pa.list_(pa.int64())),
        "id": pa.array(cols["id"], pa.string()),
        "error": pa.array(cols["error"], pa.string()),
    })


def read_parquet_group(
    path: str, group: int, first_row: int, block_rows: int, columns: list[str]
) -> Iterator[pa.Table]:
    """One row group of a Parquet file, in blocks of `block_rows`, with `row` numbered from `first_row`."""
    row = first_row
    for batch in pq.ParquetFile(path).iter_batches(batch_size=block_rows, row_groups=[group], columns=columns):
        n = batch.num_rows
        out = {"row": pa.array(np.arange(row, row + n, dtype=np.int64))}
        texts = batch.column("text").to_pylist() if "text" in columns else [None] * n
        ids = batch.column("input_ids").to_pylist() if "input_ids" in columns else [None] * n
        out["text"] = pa.array(texts, pa.string())
        out["input_ids"] = pa.array(ids, pa.list_(pa.int64()))
        if "id" in columns:
            out["id"] = batch.column("id")
        missing = "no text (the text column is null)"
        out["error"] = pa.array([None if t is not None or i is not None else missing for t, i in zip(texts, ids)],
                                pa.string())
        row += n
        yield pa.table(out)


class RowsSource(Datasource):
    """Read tasks that number rows exactly: byte ranges of a JSONL file, or row groups of Parquet files."""

    def __init__(self, path: Path, block_rows: int):
        path = path.resolve()  # read tasks may run in another working directory
        self.block_rows = block_rows
        self.tasks: list[tuple] = []  # (kind, file, args..., rows, bytes)
        if path.is_dir() or path.suffix == ".parquet":
            self._plan_parquet(path)
        else:
            starts, self.num_rows = scan_line_starts(path, block_rows)
            size = path.stat().st_size
            for i, start in enumerate(starts):
                end = starts[i + 1] if i + 1 < len(starts) else size
                rows = min(block_rows, self.num_rows - i * block_rows)
                self.tasks.append(("jsonl", str(path), i * block_rows, start, end, rows, end - start))

    def _plan_parquet(self, path: Path) -> None:
        def hidden(p: Path) -> bool:  # Spark's _SUCCESS, _metadata, .crc: not data
            return any(part.startswith(("_", ".")) for part in p.relative_to(path).parts)

        files = [path] if path.is_file() else sorted(p for p in path.rglob("*.parquet") if not hidden(p))
        if not files:
            raise ModelError(f"{path}: no .parquet files")
        row, id_type = 0, None
        for file in files:
            meta = pq.ParquetFile(file)
            schema = meta.schema_arrow
            columns = [c for c in ("text", "input_ids", "id") if c in schema.names]
            if "text" not in columns and "input_ids" not in columns:
                raise ModelError(f"{file}: no `text` column (columns: {', '.join(schema.names)})")
            this_id = schema.field("id").type if "id" in columns else None
            if file is not files[0] and this_id != id_type:
                raise ModelError(f"{file}: the `id` column is {this_id}, but {files[0].name} has {id_type}")
            id_type = this_id
            for group in range(meta.metadata.num_row_groups):
                info = meta.metadata.row_group(group)
                self.tasks.append(("parquet", str(file), group, row, self.block_rows, columns,
                                   info.num_rows, info.total_byte_size))
                row += info.num_rows
        self.num_rows = row

    def estimate_inmemory_data_size(self) -> int:
        return sum(task[-1] for task in self.tasks)

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context=None) -> list:
        out = []
        for kind, file, *args, rows, size in self.tasks:
            if kind == "jsonl":
                def read(file=file, args=args) -> list[pa.Table]:
                    return [parse_jsonl_block(file, *args)]
            else:
                def read(file=file, args=args) -> Iterator[pa.Table]:
                    return read_parquet_group(file, *args)
            out.append(ReadTask(read, _block_metadata(rows, size, file)))
        return out


# ---- the embedding stage -----------------------------------------------------------------------------------------
def write_part(output: Path, folder: str, table: pa.Table) -> None:
    """Write under _tmp/, then rename: the file appears complete or not at all. Named by its rows, so a retried batch
    replaces its own earlier copy."""
    rows = table.column("row").to_numpy()
    name = f"part-{int(rows.min()):012d}-{hashlib.sha1(np.sort(rows).astype('<i8').tobytes()).hexdigest()[:16]}.parquet"
    tmp = output / TMP / f"{uuid.uuid4().hex}.parquet"
    pq.write_table(table, tmp)
    os.replace(tmp, output / folder / name)


class EmbedBatch:
    """A Ray Data actor: loads the Encoder once, then embeds batches of rows and writes them itself."""

    def __init__(self, model: str, output: str, *, revision: str | None, device: str, dtype: str,
                 max_input_tokens: int | None, prefix: str, long_input: str, dimensions: int | None,
                 batch_tokens: int):
        from model.encoder import Encoder

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
        self.encoder = Encoder.load(model, device=device, dtype=dtype, max_input_tokens=max_input_tokens,
                                    revision=revision, threads=max(1, int(cpus)))  # on CPU: the actor's share
        self.output, self.prefix, self.long_input = Path(output), prefix, long_input
        self.dimensions, self.batch_tokens = dimensions, batch_tokens

    def __call__(self, batch: pa.Table) -> pa.Table:
        reasons = batch.column("error").to_pylist()
        texts, id_lists = batch.column("text").to_pylist(), batch.column("input_ids").to_pylist()
        todo = [i for i, r in enumerate(reasons) if r is None]
        items = [texts[i] if texts[i] is not None else id_lists[i] for i in todo]
        windows = []
        for i, prepared in zip(todo, inputs.prepare_inputs(self.encoder, items, self.prefix, self.long_input)):
            if isinstance(prepared, str):
                reasons[i] = prepared
            else:
                windows.append(prepared)
        good = np.array([r is None for r in reasons], dtype=bool)
        keep = ["row", "id"] if "id" in batch.column_names else ["row"]
        if good.any():
            vectors = inputs.embed_inputs(self.encoder, windows, self.dimensions, self.batch_tokens)  # (n, D) unit
            n, width = vectors.shape
            embedding = pa.ListArray.from_arrays(
                pa.array(np.arange(0, (n + 1) * width, width, dtype=np.int32)), pa.array(vectors.reshape(-1))
            )
            table = batch.select(keep).filter(pa.array(good)).append_column("embedding", embedding)
            write_part(self.output, ".", table)
        if not good.all():
            reason = pa.array([r for r in reasons if r is not None], pa.string())
            write_part(self.output, ERRORS, batch.select(keep).filter(pa.array(~good)).append_column("reason", reason))
        return batch.select(["row"])  # one row out per row in: Ray Data's progress counts rows


# ---- after the run: each row once --------------------------------------------------------------------------------
def commit(output: Path, handled: np.ndarray) -> tuple[int, int]:
    """Keep each row once over `part-*` and `errors/part-*`, check the result is exactly `handled`; (good, errors)."""
    seen = np.zeros(len(handled), dtype=bool)
    counts = []
    for folder in (output, output / ERRORS):
        count = 0
        for path in sorted(folder.glob("part-*.parquet")):
            rows = pq.read_table(path, columns=["row"]).column("row").to_numpy()
            fresh = ~seen[rows]
            _, first = np.unique(rows, return_index=True)
            once = np.zeros(len(rows), dtype=bool)
            once[first] = True
            fresh &= once
            if not fresh.any():
                path.unlink()  # every row already written by another copy of this batch
            elif not fresh.all():
                tmp = output / TMP / f"{uuid.uuid4().hex}.parquet"
                pq.write_table(pq.read_table(path).filter(pa.array(fresh)), tmp)
                os.replace(tmp, path)
            seen[rows[fresh]] = True
            count += int(fresh.sum())
        counts.append(count)
    shutil.rmtree(output / TMP, ignore_errors=True)
    lost, stray = np.flatnonzero(handled & ~seen), np.flatnonzero(seen & ~handled)
    if len(lost) or len(stray):
        raise ModelError(f"{output}: {len(lost)} rows read but not written (first {lost[:5].tolist()}), "
                         f"{len(stray)} written but never read (first {stray[:5].tolist()})")
    return counts[0], counts[1]


# ---- the driver --------------------------------------------------------------------------------------------------
def connect(address: str, workers: int) -> None:
    if address == "local":
        root = str(Path(__file__).resolve().parents[1])
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        ray.init(
            # a CPU slot per worker plus one for the read stage: with only `workers` slots the actors take them all
            # and the reads never run
            num_cpus=max(len(os.sched_getaffinity(0)), workers + 1),
            include_dashboard=False,
            object_store_memory=LOCAL_OBJECT_STORE,
            runtime_env={"env_vars": {"PYTHONPATH": path}},  # workers import `model` like this driver does
        )
    else:
        ray.init(address=address)


def embed_with_ray(args: argparse.Namespace) -> int:
    """The run; the exit status (0, or EXIT_REFUSED when some rows went to errors/)."""
    output: Path = args.output
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ModelError(f"--output {output} exists and is not an empty folder (remove it to run again)")
    if not args.input.exists():
        raise ModelError(f"--input {args.input} does not exist")
    if args.workers < 1 or args.gpus_per_worker < 0:
        raise ModelError("--workers must be at least 1 and --gpus-per-worker at least 0")
    from model.config import read_spec
    from model.weights import resolve_model_dir

    spec = read_spec(resolve_model_dir(args.model, args.revision), args.max_input_tokens)
    if args.dimensions is not None and not 1 <= args.dimensions <= spec.hidden_size:
        raise ModelError(f"--dimensions must be between 1 and {spec.hidden_size}")
    prefix = inputs.job_prefix(spec.prompts, args.input_type, args.prefix)

    batch_rows = rows_per_batch(args.batch_tokens)
    source = RowsSource(args.input, batch_rows)
    for folder in (output, output / ERRORS, output / TMP):
        folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    handled = np.zeros(source.num_rows, dtype=bool)
    first = last = None  # when the first and the last batch came back: the steady-state rate, without start-up
    if source.tasks:
        connect(args.ray, args.workers)
        try:
            for batch in pipeline(args, source, output, prefix).iter_batches(batch_size=None, batch_format="numpy"):
                handled[batch["row"]] = True
                last = time.perf_counter()
                if first is None:
                    first, first_rows = last, len(batch["row"])
        finally:
            ray.shutdown()
    good, bad = commit(output, handled)
    seconds = time.perf_counter() - started
    steady = (good + bad - first_rows) / (last - first) if first is not None and last > first else None
    (output / MANIFEST).write_text(json.dumps({
        "input": str(args.input), "model": args.model, "dimensions": args.dimensions or spec.hidden_size,
        "rows": good, "errors": bad, "workers": args.workers, "seconds": round(seconds, 3),
        "rows_per_s": round(steady, 1) if steady else None,
    }, indent=1) + "\n")
    rate = f"{steady:.1f} rows/s once running" if steady else "too few batches for a rate"
    print(f"embedded {good} rows to {output}, refused {bad} (reasons in {output / ERRORS}) in {seconds:.1f} s, "
          f"{rate}", file=sys.stderr)
    return inputs.EXIT_REFUSED if bad else 0


def pipeline(args: argparse.Namespace, source: RowsSource, output: Path, prefix: str) -> ray.data.Dataset:
    with warnings.catch_warnings():
        # Ray 2.5x deprecates passing actor options as keyword arguments, without a named replacement yet for
        # max_restarts / max_task_retries; they are what makes a killed worker come back, so keep them
        warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated", category=DeprecationWarning)
        return ray.data.read_datasource(source).map_batches(
            EmbedBatch,
            fn_constructor_kwargs=dict(
                model=args.model, output=str(output.resolve()), revision=args.revision, device=args.device,
                dtype=args.dtype, max_input_tokens=args.max_input_tokens, prefix=prefix, long_input=args.long_input,
                dimensions=args.dimensions, batch_tokens=args.batch_tokens,
            ),
            batch_size=rows_per_batch(args.batch_tokens),
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=args.workers),
            num_cpus=1,
            num_gpus=args.gpus_per_worker or None,
            max_restarts=-1,  # a dead worker is always replaced (preempted nodes, OOM kills)
            max_task_retries=MAX_BATCH_RETRIES,  # its batch is retried on the replacement, but not forever
        )
