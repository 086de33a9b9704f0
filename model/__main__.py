"""Offline commands.

    python -m model embed --model PATH_OR_ID --input in.jsonl --output out.jsonl [--errors errors.jsonl]
                          [--revision REV] [--input-type NAME | --prefix TEXT] [--long-input error|truncate|chunk]
                          [--dimensions N] [--batch-tokens N]
    python -m model embed ... --ray local|auto|ray://HOST:10001 [--workers N] [--gpus-per-worker F]
    python -m model download MODEL_ID          # fill the HF cache once (e.g. to bake a model into an image)

`embed` reads lines of {"text": "..."} or {"input_ids": [...]} (ids used exactly as given, no special tokens added;
optional "id") and applies the server's input rules (model/inputs.py): empty text, NUL, lone surrogates, ids outside
the vocabulary and inputs over the limit (under `--long-input error`) are refused. Each good line becomes
{"line": N, "id": ..., "embedding": [...]} in the output, in order, L2-normalised; each refused one becomes
{"line": N, "id": ..., "reason": "..."} in the errors file (default: OUTPUT with `.errors.jsonl`), and the run goes on.
The last line on stderr counts both; the exit status is 0 when every line was embedded, 3 when some were refused, 1 on
a fatal error. With --ray it runs on Ray Data instead (model/ray_embed.py: JSONL or Parquet in, a folder of Parquet
files out); only then is Ray imported.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from model import inputs
from model.errors import ModelError

CHUNK_LINES = 4096  # lines tokenised and embedded together; bounds memory on huge files


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m model", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    embed = sub.add_parser("embed", help="embed a JSONL file", description=__doc__.split("\n\n")[2],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    embed.add_argument("--model", required=True, help="local folder, hub id, or packaged:all-MiniLM-L6-v2")
    embed.add_argument("--revision", default=None, help="hub revision (branch, tag or commit) of a hub id")
    embed.add_argument("--input", required=True, type=Path)
    embed.add_argument("--output", required=True, type=Path)
    embed.add_argument("--errors", type=Path, default=None,
                       help="refused lines as JSONL (default: OUTPUT with .errors.jsonl); with --ray, OUTPUT/errors/")
    embed.add_argument("--dimensions", type=int, default=None, help="Matryoshka width")
    embed.add_argument("--batch-tokens", type=int, default=16384, help="token budget of one forward pass")
    embed.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    embed.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    embed.add_argument("--max-input-tokens", type=int, default=None, help="override the model's input limit")
    task = embed.add_mutually_exclusive_group()
    task.add_argument("--input-type", default=None,
                      help="the model's task prefix for text lines, as the server's input_type (e.g. search_document,"
                      " query, document)")
    task.add_argument("--prefix", default="", help="any text prepended to every text line (e.g. 'search_document: ')")
    embed.add_argument("--long-input", default="error", choices=inputs.LONG_INPUT_MODES,
                       help="inputs over the limit: refuse the line, truncate, or chunk and average (as the server)")
    embed.add_argument("--ray", metavar="ADDRESS", default=None,
                       help="run on Ray: 'local' starts one here, else a cluster address ('auto', 'ray://host:10001');"
                       " --output is then a folder of Parquet files")
    embed.add_argument("--workers", type=int, default=None, help="with --ray: encoder actors (default 1)")
    embed.add_argument("--gpus-per-worker", type=float, default=None, help="with --ray: GPUs per actor (default 0)")
    download = sub.add_parser("download", help="download a hub model into the cache")
    download.add_argument("model")
    download.add_argument("--revision", default=None)
    return parser.parse_args(argv)


def read_chunks(path: Path) -> Iterator[list[tuple[int, str | list[int] | None, object, str | None]]]:
    """(line number, input, id, why the line is unusable) for each non-blank line, CHUNK_LINES at a time."""
    chunk: list[tuple[int, str | list[int] | None, object, str | None]] = []
    with path.open("rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            chunk.append((number, *inputs.read_record(line)))
            if len(chunk) == CHUNK_LINES:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def embed_file(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from model.encoder import Encoder

    encoder = Encoder.load(
        args.model, device=args.device, dtype=args.dtype, max_input_tokens=args.max_input_tokens,
        revision=args.revision,
    )
    if args.dimensions is not None and not 1 <= args.dimensions <= encoder.info.hidden_size:
        raise ModelError(f"--dimensions must be between 1 and {encoder.info.hidden_size}")
    prefix = inputs.job_prefix(encoder.info.prompts, args.input_type, args.prefix)
    errors_path = args.errors or args.output.with_name(args.output.name.removesuffix(".jsonl") + ".errors.jsonl")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    good = bad = 0
    with (args.output.open("w", encoding="utf-8") as out, errors_path.open("w", encoding="utf-8") as errors,
          tqdm(unit="line", file=sys.stderr) as bar):
        for chunk in read_chunks(args.input):
            readable = [(n, item, key) for n, item, key, error in chunk if error is None]
            assert all(item is not None for _, item, _ in readable)
            prepared = inputs.prepare_inputs(encoder, [item for _, item, _ in readable], prefix, args.long_input)
            reasons = {n: error for n, _, _, error in chunk if error is not None}
            reasons.update((n, p) for (n, _, _), p in zip(readable, prepared) if isinstance(p, str))
            windows = [p for p in prepared if not isinstance(p, str)]
            vectors = iter(inputs.embed_inputs(encoder, windows, args.dimensions, args.batch_tokens))
            for number, _, key, _ in chunk:
                head = {"line": number, **({"id": key} if key is not None else {})}
                if number in reasons:
                    errors.write(json.dumps({**head, "reason": reasons[number]}) + "\n")
                    bad += 1
                else:
                    out.write(json.dumps({**head, "embedding": next(vectors).tolist()}) + "\n")
                    good += 1
            bar.update(len(chunk))
    print(f"embedded {good} lines to {args.output}, refused {bad} (reasons in {errors_path})", file=sys.stderr)
    return inputs.EXIT_REFUSED if bad else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.command == "embed" and args.ray:
            try:
                from model.ray_embed import embed_with_ray
            except ImportError as exc:
                raise ModelError(f"--ray needs the ray extra: pip install 'nomic-embed-server[ray]' ({exc})") from None
            args.workers = 1 if args.workers is None else args.workers
            args.gpus_per_worker = args.gpus_per_worker or 0.0
            if args.errors is not None:
                raise ModelError("--errors is for the single-process path; with --ray errors go to OUTPUT/errors/")
            return embed_with_ray(args)
        elif args.command == "embed":
            if args.workers is not None or args.gpus_per_worker is not None:
                raise ModelError("--workers and --gpus-per-worker need --ray")
            return embed_file(args)
        else:
            from model.weights import download

            print(download(args.model, args.revision))
    except (ModelError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
