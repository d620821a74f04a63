"""Where the data pipeline's memory goes, stage by stage (load → split → tokenize → pack), for one corpus size.

    python benchmarks/data_memory_stages.py --size-mb 1000     # the README's per-stage table (about 4 minutes)

It records, at the start of each stage and then every 0.1 s (a sampler thread), per stage, the largest proportional anonymous memory (`Pss_Anon`) of this
process plus its workers (the memory the pipeline holds), this process's RSS (which also counts the pages of
memory-mapped Arrow files it has read) and the largest RSS of one worker. The corpus and tokenizer are those of
`benchmarks/data_pipeline.py` (generated locally, no download); the `datasets` cache starts empty. Prints one line
per stage and writes nothing outside --workdir (deleted at the end unless --keep).
"""

import argparse
import shutil
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import data_pipeline  # noqa: E402  (corpus and tokenizer)


def smaps_field(pid: int, name: str) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith(name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=1000)
    parser.add_argument("--workdir", default="/tmp/hf_scratch_gpt_data_stages")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    import psutil

    work = Path(args.workdir)
    corpus, tokenizer_dir, cache = work / f"corpus-{args.size_mb}mb", work / "tokenizer", work / "cache"
    if not corpus.is_dir():
        data_pipeline.generate_corpus(corpus, args.size_mb * 10**6)
    if not tokenizer_dir.is_dir():
        data_pipeline.train_tokenizer(corpus, tokenizer_dir)
    shutil.rmtree(cache, ignore_errors=True)

    stage, peaks, stop, lock = ["import"], {}, threading.Event(), threading.Lock()
    me = psutil.Process()

    def record() -> None:
        """One sample, credited to the stage it was taken in (the lock keeps a stage change out of a sample)."""
        with lock:
            workers = me.children(recursive=True)
            anon = smaps_field(me.pid, "Pss_Anon")
            worker_rss = 0
            for worker in workers:
                try:
                    anon += smaps_field(worker.pid, "Pss_Anon")
                    worker_rss = max(worker_rss, worker.memory_info().rss)
                except (psutil.Error, OSError):  # a worker that just ended
                    pass
            peak = peaks.setdefault(stage[0], [0, 0, 0])
            peak[0], peak[1], peak[2] = max(peak[0], anon), max(peak[1], me.memory_info().rss), max(peak[2], worker_rss)

    def enter(name: str) -> None:
        """A new stage, sampled once at its start: a stage shorter than the sampling period is still reported."""
        with lock:
            stage[0] = name
        record()

    def sample() -> None:
        while not stop.is_set():
            record()
            time.sleep(0.1)

    enter("import")
    threading.Thread(target=sample, daemon=True).start()
    import datasets.config

    default_cache, datasets.config.HF_DATASETS_CACHE = datasets.config.HF_DATASETS_CACHE, str(cache)
    try:
        import datasets
        from transformers import AutoTokenizer

        from hf_scratch_gpt.data import load_documents, pack_blocks, split_train_validation, tokenize_documents

        datasets.disable_progress_bars()
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        start = time.perf_counter()
        enter("load")
        documents = load_documents(str(corpus))
        enter("split")
        splits = split_train_validation(documents, 0.05, seed=0)
        enter("tokenize")
        tokenized = tokenize_documents(splits, tokenizer)
        enter("pack")
        for split in tokenized:
            pack_blocks(tokenized[split], data_pipeline.BLOCK_SIZE)
        enter("end")
        time.sleep(0.3)
        stop.set()
        print(f"{args.size_mb} MB, {len(documents):,} documents, {time.perf_counter() - start:.1f} s")
        gib = 2**30
        for name, (anon, rss, worker_rss) in peaks.items():
            print(f"  {name:9s} anonymous {anon / gib:.2f} GiB   process RSS {rss / gib:.2f} GiB   "
                  f"largest worker RSS {worker_rss / gib:.2f} GiB")  # fmt: skip
    finally:
        stop.set()
        datasets.config.HF_DATASETS_CACHE = default_cache
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
