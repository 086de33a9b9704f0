"""Offline commands.

    python -m model embed --model PATH_OR_ID --input in.jsonl --output out.jsonl [--dimensions N] [--batch-tokens N]
    python -m model embed ... --ray local|auto|ray://HOST:10001 [--workers N] [--gpus-per-worker F]
    python -m model download MODEL_ID          # fill the HF cache once (e.g. to bake a model into an image)

`embed` reads lines of {"text": "..."} or {"input_ids": [...]} (ids used exactly as given, no special tokens added)
and writes {"embedding": [...]} per line, in order, L2-normalised, with a progress bar on stderr.
With --ray it runs on Ray Data instead (model/ray_embed.py: JSONL or Parquet in, a folder of Parquet files out); only
then is Ray imported.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from model.errors import ModelError

CHUNK_LINES = 4096  # lines tokenised and embedded together; bounds memory on huge files


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m model", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    embed = sub.add_parser("embed", help="embed a JSONL file")
    embed.add_argument("--model", required=True, help="local folder, hub id, or packaged:all-MiniLM-L6-v2")
    embed.add_argument("--input", required=True, type=Path)
    embed.add_argument("--output", required=True, type=Path)
    embed.add_argument("--dimensions", type=int, default=None, help="Matryoshka width")
    embed.add_argument("--batch-tokens", type=int, default=16384, help="token budget of one forward pass")
    embed.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    embed.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    embed.add_argument("--max-input-tokens", type=int, default=None, help="override the model's input limit")
    embed.add_argument("--prefix", default="", help="text prepended to every text input (e.g. 'search_document: ')")
    embed.add_argument(
        "--long-input", default="error", choices=["error", "truncate"], help="what to do with over-long inputs"
    )
    embed.add_argument("--ray", metavar="ADDRESS", default=None,
                       help="run on Ray: 'local' starts one here, else a cluster address ('auto', 'ray://host:10001');"
                       " --output is then a folder of Parquet files")
    embed.add_argument("--workers", type=int, default=None, help="with --ray: encoder actors (default 1)")
    embed.add_argument("--gpus-per-worker", type=float, default=None, help="with --ray: GPUs per actor (default 0)")
    download = sub.add_parser("download", help="download a hub model into the cache")
    download.add_argument("model")
    download.add_argument("--revision", default=None)
    return parser.parse_args(argv)


def read_chunks(path: Path) -> Iterator[list[tuple[int, dict]]]:
    chunk: list[tuple[int, dict]] = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ModelError(f"{path}:{number}: not JSON ({exc.msg})") from None
            if not isinstance(record, dict) or not (
                isinstance(record.get("text"), str) or isinstance(record.get("input_ids"), list)
            ):
                raise ModelError(f'{path}:{number}: expected {{"text": "..."}} or {{"input_ids": [...]}}')
            chunk.append((number, record))
            if len(chunk) == CHUNK_LINES:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def to_ids(encoder, chunk: list[tuple[int, dict]], args: argparse.Namespace) -> list[list[int]]:
    texts = [(i, r["text"]) for i, (_, r) in enumerate(chunk) if "text" in r]
    ids: list[list[int] | None] = [r.get("input_ids") if "text" not in r else None for _, r in chunk]
    if texts:
        for (i, _), tokens in zip(texts, encoder.tokenize([t for _, t in texts], args.prefix)):
            ids[i] = tokens
    limit = encoder.info.max_input_tokens
    out = []
    for (number, _), tokens in zip(chunk, ids):
        assert tokens is not None
        try:
            encoder.check_ids(tokens)
        except ModelError as exc:
            raise ModelError(f"{args.input}:{number}: {exc}") from None
        if len(tokens) > limit:
            if args.long_input == "error":
                raise ModelError(
                    f"{args.input}:{number}: {len(tokens)} tokens is over the limit of {limit} "
                    "(use --long-input truncate)"
                )
            tokens = encoder.truncate(tokens)
        out.append(tokens)
    return out


def embed_file(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from model.encoder import Encoder

    encoder = Encoder.load(
        args.model, device=args.device, dtype=args.dtype, max_input_tokens=args.max_input_tokens
    )
    if args.dimensions is not None and not 1 <= args.dimensions <= encoder.info.hidden_size:
        raise ModelError(f"--dimensions must be between 1 and {encoder.info.hidden_size}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with args.output.open("w", encoding="utf-8") as out, tqdm(unit="line", file=sys.stderr) as bar:
        for chunk in read_chunks(args.input):
            vectors = encoder.embed(to_ids(encoder, chunk, args), args.dimensions, args.batch_tokens)
            for vector in vectors:
                out.write(json.dumps({"embedding": vector.tolist()}) + "\n")
            bar.update(len(chunk))


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
            embed_with_ray(args)
        elif args.command == "embed":
            if args.workers is not None or args.gpus_per_worker is not None:
                raise ModelError("--workers and --gpus-per-worker need --ray")
            embed_file(args)
        else:
            from model.weights import download

            print(download(args.model, args.revision))
    except (ModelError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
