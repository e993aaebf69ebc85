"""`bert-prep` wall time, MB/s and peak memory on corpora of 10 MB, 100 MB and 1 GB of real text,
beside raw `tokenizers` encode_batch on the same text.

The corpora are made from the demo corpus the project fetches (`make tokenizer`: State of the Union
addresses and the Brown corpus, 733 documents, 16.6 MB of sentences): copies of its documents,
each copy in its own seeded document order, written as .txt files (one sentence per line, a blank
line between documents) until the size is reached. Each is built once under `--dir` and reused.

Each measurement is one `python -m data_prep.build corpus=files ...` in a child process (the demo
tokenizer, the default prep config, `force=true`):
- wall time, and MB/s = the corpus files' bytes / wall time (Python start-up included);
- peak RSS of the largest process: `ru_maxrss` from `os.wait4`, i.e. the child or any of its
  worker processes, whichever peaked highest (what `/usr/bin/time -v` reports);
- peak memory of all processes together: the proportional set size (PSS: a page shared by n
  processes counts 1/n in each) of the child's process tree summed, sampled from /proc every
  0.2 s;
- output size: the prepared directory's bytes.
Raw encode_batch: the same corpus's sentences (read as bert-prep reads them, not timed) encoded
in batches of about 1 MB of text with `Tokenizer.encode_batch` on `num_proc` threads; only the
encode calls are timed, on the first `--raw-mb` MB.

    python bench/prep.py                                   # 10 and 100 MB, num_proc 1 and 2
    python bench/prep.py --sizes 1000 --num-proc 2         # 1 GB (~20 minutes on 2 cores)
    python bench/prep.py --sizes 10 --code /tmp/old        # another checkout's bert-prep
    python bench/prep.py --pool-stats 500000 100000        # Google's statistics in pools

`--pool-stats N ...` prints instead the statistics of the demo corpus's training split (pairs,
random-next and short-target fractions, mean A, B and pair tokens) paired as one pool, as bert-prep
pairs it by default, and cut into pools of N tokens (`data_prep.pairs.pooled_pair_spans`, the
default config otherwise).

`--code DIR` runs the bert-prep of another checkout (e.g. `git archive <commit> data_prep pretrain
conf | tar -x -C DIR`) on the same corpora, for before/after figures.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def demo_documents(work_dir: str) -> list[list[str]]:
    """The demo corpus's documents (sentences), read with the project's own readers."""
    from data_prep.config import PrepAppConfig, compose, to_object
    from data_prep.corpus import iter_documents

    cfg = to_object(compose("prep", [f"work_dir={work_dir}"]), PrepAppConfig)
    return [doc.sentences for doc in iter_documents(cfg.corpus)]


def make_corpus(path: Path, megabytes: float, documents: list[list[str]]) -> int:
    """Write copies of `documents` (each copy shuffled with its own seed) as `path/copy-NNNN.txt`
    until `megabytes` MB of text; returns the bytes written. Reused when `path` is complete."""
    done = path.with_name(path.name + ".complete")  # beside it: a .json inside would be read
    if done.is_file():
        return json.loads(done.read_text())["bytes"]
    path.mkdir(parents=True, exist_ok=True)
    target, total, copy = int(megabytes * 1e6), 0, 0
    while total < target:
        order = list(range(len(documents)))
        random.Random(copy).shuffle(order)
        texts = []
        for index in order:
            texts.append("\n".join(documents[index]))
            total += len(texts[-1].encode("utf-8")) + 2
            if total >= target:
                break
        (path / f"copy-{copy:04d}.txt").write_text("\n\n".join(texts) + "\n", encoding="utf-8")
        copy += 1
    total = sum(p.stat().st_size for p in path.glob("*.txt"))
    done.write_text(json.dumps({"bytes": total, "copies": copy}))
    return total


def _tree_pss_kib(pid: int) -> int:
    """PSS of `pid` and all its descendants (KiB), from /proc: what they occupy together (pages
    forked workers share with their parent are counted once)."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            with open(f"/proc/{current}/smaps_rollup") as f:
                total += next((int(x.split()[1]) for x in f if x.startswith("Pss:")), 0)
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            continue
    return total


def measure(cmd: list[str], env: dict[str, str], cwd: Path, log: Path) -> dict[str, float]:
    """Run `cmd` in `cwd`; wall seconds, the largest process's peak RSS and the sampled peak PSS
    of the whole tree (GB)."""
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
        peak_tree = [0]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.2):
                peak_tree[0] = max(peak_tree[0], _tree_pss_kib(proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        stop.set()
        sampler.join()
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}); see {log}")
    return {
        "seconds": seconds,
        "peak_rss_gb": usage.ru_maxrss * 1024 / 1e9,  # KiB on Linux
        "peak_tree_pss_gb": peak_tree[0] * 1024 / 1e9,
    }


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def raw_encode_child(corpus: Path, tokenizer_file: str, megabytes: float) -> None:
    """In a child process: encode_batch over the corpus's first `megabytes` MB of sentences
    (threads as the environment sets them); prints JSON {bytes, seconds}."""
    from tokenizers import Tokenizer

    from data_prep.corpus import read_txt

    tok = Tokenizer.from_file(tokenizer_file)
    limit, done, seconds, batch, size = megabytes * 1e6, 0, 0.0, [], 0

    def encode() -> float:
        start = time.perf_counter()
        tok.encode_batch(batch, add_special_tokens=False)
        return time.perf_counter() - start

    for path in sorted(corpus.glob("*.txt")):
        for doc in read_txt(path):
            for sentence in doc.sentences:
                batch.append(sentence)
                size += len(sentence.encode("utf-8"))
            if size >= 1e6:
                seconds += encode()
                done += size
                batch, size = [], 0
            if done >= limit:
                break
        if done >= limit:
            break
    if batch and done < limit:
        seconds += encode()
        done += size
    print(json.dumps({"bytes": done, "seconds": seconds}))


def raw_encode(corpus: Path, tokenizer_file: Path, threads: int, megabytes: float) -> float:
    """MB/s of raw encode_batch on `threads` threads (a child process, so the thread pool size
    applies)."""
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    env["TOKENIZERS_PARALLELISM"] = "true" if threads > 1 else "false"
    cmd = [
        sys.executable,
        __file__,
        "--raw-child",
        str(corpus),
        str(tokenizer_file),
        str(megabytes),
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, cwd=REPO)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["bytes"] / 1e6 / result["seconds"]


def pool_statistics(root: Path, work_dir: str, tokenizer_dir: Path, pool_sizes: list[int]) -> None:
    """Print the demo training split's pair statistics in one pool and in pools of each size."""
    import numpy as np

    from data_prep.config import PrepAppConfig, compose, to_object
    from data_prep.pairs import pooled_pair_spans
    from data_prep.prepared import Request, tokenize_corpus, validation_mask
    from data_prep.token_store import TokenStore

    overrides = [f"work_dir={work_dir}", f"tokenizer_dir={tokenizer_dir}", "num_proc=2"]
    cfg = to_object(compose("prep", [*overrides, f"output_dir={root / 'unused'}"]), PrepAppConfig)
    part = root / "demo-token-store"
    if not (part / "tokens.bin").is_file():
        tokenize_corpus(Request.open(cfg), part)
    store = TokenStore([part])
    train = ~validation_mask(store.num_documents, cfg.validation_fraction, cfg.seed)
    documents = np.flatnonzero(train & (store.document_sentences > 0))
    sizes = store.document_tokens[documents]

    def stats(pool_tokens: int) -> tuple[int, dict[str, float]]:
        spans = [
            s
            for _, s in pooled_pair_spans(
                lambda pool: store.read(documents[pool]), sizes, pool_tokens=pool_tokens,
                max_seq_length=cfg.max_seq_length, short_seq_prob=cfg.short_seq_prob,
                dupe_factor=cfg.dupe_factor, seed=cfg.seed, salt="train", num_proc=2,
            )
        ]  # fmt: skip
        cat = lambda name: np.concatenate([getattr(s, name) for s in spans])  # noqa: E731
        a, b = cat("a_end") - cat("a_start"), cat("b_end") - cat("b_start")
        return len(spans), {"pairs": len(a), "random-next fraction": cat("is_random_next").mean(),
                            "short-target fraction (of pairs)": cat("short_target").mean(),
                            "A tokens (mean)": a.mean(), "B tokens (mean)": b.mean(),
                            "pair tokens (mean)": (a + b + 3).mean()}  # fmt: skip

    print(f"demo training split: {len(documents)} documents, {int(sizes.sum()):,} tokens")
    _, one = stats(cfg.pool_tokens)
    columns = [stats(size) for size in pool_sizes]
    heads = [
        f"{n} pools (`pool_tokens={size:,}`)"
        for (n, _), size in zip(columns, pool_sizes, strict=True)
    ]
    print("| statistic | 1 pool | " + " | ".join(heads) + " |")
    print("|---|---|" + "---|" * len(heads))
    for key, value in one.items():
        fmt = "{:,.0f}" if key == "pairs" else "{:.4f}"
        cells = [f"{fmt.format(c[key])} ({100 * (c[key] / value - 1):+.2f}%)" for _, c in columns]
        print(f"| {key} | {fmt.format(value)} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[10, 100], help="corpus MB")
    parser.add_argument("--num-proc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--dir", default="/tmp/bert-prep-bench", help="corpora, outputs, logs")
    parser.add_argument("--work-dir", default=str(REPO / "work"), help="demo corpus cache")
    parser.add_argument("--tokenizer-dir", default=None, help="default: WORK_DIR/tokenizers/demo")
    parser.add_argument("--code", default=None, help="run the bert-prep of this checkout instead")
    parser.add_argument("--raw-mb", type=float, default=100, help="raw encode on at most this")
    parser.add_argument("--no-raw", action="store_true", help="skip raw encode_batch")
    parser.add_argument("--pool-stats", type=int, nargs="+", help="pool sizes (tokens) to compare")
    parser.add_argument("--raw-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw_child:
        corpus, tokenizer_file, megabytes = args.raw_child
        raw_encode_child(Path(corpus), tokenizer_file, float(megabytes))
        return

    root = Path(args.dir)
    tokenizer_dir = Path(args.tokenizer_dir or Path(args.work_dir) / "tokenizers" / "demo")
    if not (tokenizer_dir / "tokenizer.json").is_file():
        raise SystemExit(f"no tokenizer in {tokenizer_dir}: run `make tokenizer` first")
    if args.pool_stats:
        pool_statistics(root, args.work_dir, tokenizer_dir.resolve(), args.pool_stats)
        return
    documents = None
    # `python -m` puts the working directory first on sys.path: run in the checkout measured.
    code_dir = Path(args.code or REPO).resolve()
    env = dict(os.environ, HF_DATASETS_DISABLE_PROGRESS_BARS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code_dir), env.get("PYTHONPATH")]))
    code = "this checkout" if args.code is None else args.code
    print(f"# bert-prep ({code}) on {platform.node()}, {os.cpu_count()} CPUs, "
          f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")  # fmt: skip
    header = ("| corpus | num_proc | wall | MB/s | peak RSS, largest process | peak PSS, all "
              "processes | output | raw encode_batch MB/s (num_proc threads) |")  # fmt: skip
    print(header + "\n|---|---|---|---|---|---|---|---|", flush=True)
    for size in args.sizes:
        corpus = root / f"corpus-{size:g}mb"
        if not corpus.with_name(corpus.name + ".complete").is_file() and documents is None:
            documents = demo_documents(args.work_dir)
        num_bytes = make_corpus(corpus, size, documents or [])
        for num_proc in args.num_proc:
            out = root / f"out-{size:g}mb-np{num_proc}"
            cmd = [sys.executable, "-m", "data_prep.build", f"work_dir={root / 'work'}",
                   "corpus=files", f"corpus.name=bench{size:g}", f"corpus.paths=[{corpus}]",
                   f"tokenizer_dir={tokenizer_dir.resolve()}", f"output_dir={out}",
                   f"num_proc={num_proc}", "force=true", f"hydra.run.dir={root / 'logs'}"]  # fmt: skip
            result = measure(cmd, env, code_dir, root / f"log-{size:g}mb-np{num_proc}.txt")
            raw = "–"
            if not args.no_raw:
                mb = min(size, args.raw_mb)
                rate = raw_encode(corpus, tokenizer_dir / "tokenizer.json", num_proc, mb)
                raw = f"{rate:.2f}" + ("" if mb >= size else f" (first {mb:g} MB)")
            print(
                f"| {num_bytes / 1e6:,.0f} MB | {num_proc} | {result['seconds']:.0f} s | "
                f"{num_bytes / 1e6 / result['seconds']:.2f} | {result['peak_rss_gb']:.2f} GB | "
                f"{result['peak_tree_pss_gb']:.2f} GB | {dir_bytes(out) / 1e9:.2f} GB | {raw} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
