"""Data service speed and memory: our streaming validate / process against the original
Win-Train algorithm, side by side, in one run, on one generated JSONL file.

- original validate: the original DataService, `load_raw_data` (every line `json.loads`'ed into
  one list) then `validate_conversations`. One change so it survives the bench's bad rows: a
  line that fails `json.loads` is counted invalid instead of aborting the whole call (the
  original raised, i.e. answered HTTP 500, on the first one), and bytes that are not UTF-8 are
  replaced instead of raising.
- original process: `load_raw_data`, `normalize_conversations`, `split_dataset` (80/10/10,
  seed 42), `save_dataset` x3, with the same change.
- ours: `services.common.dataset.validate.validate_file` and `services.data.processing.process_file`
  (same split), which also do everything the original does not: per-row checks of turn order,
  blank content, UTF-8 and size, statistics and duplicate counts; NFC, trimming, dedup, atomic
  writes.

The file (`--rows`, default 1,000,000; skewed lengths, half Chinese, multi-turn, some system
prompts, escapes, duplicates, ~0.4% bad rows of every kind, two rows over the 1 MiB limit) is
generated into `--dir` (default /tmp/wintrain-data-bench) and reused when already there.
Every measured side runs in its own subprocess, so peak RSS (`ru_maxrss`) is that side's only.
Rows/s is rows over wall time; CPU seconds are shown too because the machine may be shared.
Ours also runs on the first tenth of the file, to show how its memory scales.

Goals: ours >= 3x the original's rows/s for both; validate RSS flat in file size (< 200 MB);
process RSS proportional to the row count only.

    .venv/bin/python bench/data_bench.py [--rows 1000000] [--dir /tmp/wintrain-data-bench]
        [--repeats 1] [--no-scaling] [--workers N]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "protos")]


# ------------------------------------------------------------------------------------------
# The original algorithm (Win-Train's DataService), kept as it was apart from the two marked
# changes that let it finish on a file with bad rows.


class _Cfg:
    train_ratio, val_ratio, test_ratio, shuffle, seed = 0.8, 0.1, 0.1, True, 42


def original_load_raw_data(file_path: str) -> list:
    data = []
    # CHANGED: errors="replace" (the original raised UnicodeDecodeError on a bad byte).
    with open(file_path, "r", encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    data.append(json.loads(line))
                except json.JSONDecodeError:
                    data.append(None)  # CHANGED: the original raised on the first bad line
    return data


def original_validate_conversations(data: list) -> dict:
    total_samples = len(data)
    valid_samples = 0
    invalid_samples = 0
    error_messages = []
    for idx, item in enumerate(data):
        try:
            if "conversations" not in item:
                error_messages.append(f"第{idx+1}行: 缺少conversations字段")
                invalid_samples += 1
                continue
            conversations = item["conversations"]
            if not isinstance(conversations, list) or len(conversations) == 0:
                error_messages.append(f"第{idx+1}行: conversations必须是非空列表")
                invalid_samples += 1
                continue
            valid = True
            for msg in conversations:
                if "role" not in msg or "content" not in msg:
                    error_messages.append(f"第{idx+1}行: 消息缺少role或content字段")
                    valid = False
                    break
                if msg["role"] not in ["user", "assistant"]:
                    error_messages.append(f"第{idx+1}行: role必须是user或assistant")
                    valid = False
                    break
            if valid:
                valid_samples += 1
            else:
                invalid_samples += 1
        except Exception as e:
            error_messages.append(f"第{idx+1}行: {str(e)}")
            invalid_samples += 1
    return {"is_valid": invalid_samples == 0, "total_samples": total_samples,
            "valid_samples": valid_samples, "invalid_samples": invalid_samples,
            "error_messages": error_messages[:10]}


def original_normalize_conversations(data: list) -> list:
    normalized_data = []
    for item in data:
        try:
            conversations = item.get("conversations", [])
            normalized_convs = []
            for msg in conversations:
                role = msg.get("role", msg.get("assistant", "user"))
                content = msg.get("content", "")
                if role not in ["user", "assistant"]:
                    role = "assistant" if len(normalized_convs) > 0 and \
                        normalized_convs[-1]["role"] == "user" else "user"
                if content.strip():
                    normalized_convs.append({"role": role, "content": content})
            if len(normalized_convs) > 0:
                normalized_data.append({"conversations": normalized_convs})
        except Exception:
            continue
    return normalized_data


def original_split_dataset(data: list, config) -> dict:
    total = len(data)
    if config.shuffle:
        random.seed(config.seed)
        data = data.copy()
        random.shuffle(data)
    train_size = int(total * config.train_ratio)
    val_size = int(total * config.val_ratio)
    return {"train": data[:train_size], "val": data[train_size:train_size + val_size],
            "test": data[train_size + val_size:]}


def original_save_dataset(data: list, output_path: str) -> None:
    os.makedirs(os.path.dirname(output_path), exist_ok=True)
    with open(output_path, "w", encoding="utf-8") as f:
        for item in data:
            f.write(json.dumps(item, ensure_ascii=False) + "\n")


# ------------------------------------------------------------------------------------------
# The measured sides (each run in a child process)


def side_validate_original(path: Path, out: Path) -> int:
    result = original_validate_conversations(original_load_raw_data(str(path)))
    return result["total_samples"]


def side_process_original(path: Path, out: Path) -> int:
    raw = original_load_raw_data(str(path))
    data = original_normalize_conversations(raw)
    splits = original_split_dataset(data, _Cfg())
    for name, rows in splits.items():
        original_save_dataset(rows, str(out / f"{name}.json"))
    return len(raw)


def side_validate_ours(path: Path, out: Path, workers: int | None) -> int:
    from services.common.dataset.validate import validate_file

    return validate_file(path, workers=workers).total_samples


def side_process_ours(path: Path, out: Path, workers: int | None) -> int:
    from services.data.processing import SplitSpec, process_file

    return process_file(path, out, split=SplitSpec(), workers=workers).total_samples


SIDES = {
    "validate-original": side_validate_original,
    "validate-ours": side_validate_ours,
    "process-original": side_process_original,
    "process-ours": side_process_ours,
}


def run_child(side: str, path: Path, out: Path, workers: int | None) -> None:
    shutil.rmtree(out, ignore_errors=True)
    wall, cpu = time.perf_counter(), time.process_time()
    rows = SIDES[side](path, out, workers) if side.endswith("ours") else SIDES[side](path, out)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    shutil.rmtree(out, ignore_errors=True)
    print(json.dumps({"side": side, "rows": rows, "wall": wall, "cpu": cpu, "rss_mb": rss_mb,
                      "workers_cpu": children.ru_utime + children.ru_stime,
                      "worker_rss_mb": children.ru_maxrss / 1024}))


def measure(side: str, path: Path, work: Path, repeats: int, workers: int | None) -> dict:
    best = None
    for _ in range(repeats):
        cmd = [sys.executable, __file__, "--child", side, "--file", str(path),
               "--out", str(work / f"out-{side}")]
        if workers is not None:
            cmd += ["--workers", str(workers)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"{side} failed:\n{proc.stderr[-4000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        if best is None or result["wall"] < best["wall"]:
            best = result
    return best


# ------------------------------------------------------------------------------------------
# The data


ZH = ("机器学习是人工智能的一个分支，让计算机通过数据学习并做出预测。深度学习使用多层神经网络模拟人脑"
      "处理信息的方式。你好，我是AI助手，很高兴为您服务！Python是一种高级编程语言，以其简洁易读的语法"
      "而闻名。学习编程建议从基础语法开始，多做练习项目，逐步提升。数据清洗、特征工程和模型评估同样重要。")
EN = ("The quick brown fox jumps over the lazy dog. Machine learning lets computers learn from "
      "data and make predictions. Python is a high-level language known for readable syntax. "
      "Start with the basics, practise on small projects, and improve step by step. ")


def generate(path: Path, rows: int, seed: int = 1) -> dict:
    """Write `rows` JSONL rows; return counts of the deliberate problems."""
    rnd = random.Random(seed)
    pools = (ZH * 60, EN * 40)
    bad = {"invalid_json": 0, "truncated": 0, "bad_role": 0, "empty_content": 0,
           "missing_conversations": 0, "non_utf8": 0, "too_long": 0, "duplicate": 0}

    def text(pool: str) -> str:
        n = max(2, min(int(rnd.paretovariate(1.4) * 10), 6000))
        start = rnd.randrange(0, len(pool) - n)
        s = pool[start:start + n].strip() or "好"
        if rnd.random() < 0.15:  # multi-line answers: escapes in the file
            s = s[: len(s) // 2] + "\n\n" + s[len(s) // 2:]
        return s

    recent: list[bytes] = []
    tmp = path.with_suffix(".part")
    with open(tmp, "wb") as f:
        for i in range(rows):
            r = rnd.random()
            if i in (rows // 3, 2 * rows // 3) and rows >= 1000:  # two rows over 1 MiB
                line = json.dumps({"conversations": [
                    {"role": "user", "content": "长" * 400_000},
                    {"role": "assistant", "content": "x"}]}, ensure_ascii=False).encode()
                bad["too_long"] += 1
            elif r < 0.01 and recent:
                line = rnd.choice(recent)
                bad["duplicate"] += 1
            else:
                pool = pools[0] if rnd.random() < 0.5 else pools[1]
                msgs = []
                if rnd.random() < 0.1:
                    msgs.append({"role": "system", "content": "You are a helpful assistant."})
                for t in range(rnd.choice((2, 2, 2, 2, 4, 4, 6))):
                    msgs.append({"role": "user" if t % 2 == 0 else "assistant",
                                 "content": text(pool)})
                line = json.dumps({"conversations": msgs}, ensure_ascii=False).encode()
                if r < 0.011:
                    line = line.replace(b'"assistant"', b'"bot"', 1)
                    bad["bad_role"] += 1
                elif r < 0.012:
                    line = line[: len(line) // 2]
                    bad["truncated"] += 1
                elif r < 0.013:
                    line = b'{"conversations": [{"role": "user", "content": "  "}, ' \
                           b'{"role": "assistant", "content": "a"}]}'
                    bad["empty_content"] += 1
                elif r < 0.0135:
                    line = b'{"conversations": [{"role": "user", "content": "x"}, oops]}'
                    bad["invalid_json"] += 1
                elif r < 0.014:
                    line = b'{"conversation": [{"role": "user", "content": "hi"}]}'
                    bad["missing_conversations"] += 1
                elif r < 0.0142:
                    line = line.replace("的".encode(), b"\xff\xfe", 1)
                    bad["non_utf8"] += 1
                elif len(recent) < 2000:
                    recent.append(line)
                elif rnd.random() < 0.01:
                    recent[rnd.randrange(len(recent))] = line
            f.write(line + b"\n")
    os.replace(tmp, path)
    return bad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/wintrain-data-bench"))
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--no-scaling", action="store_true")
    ap.add_argument("--workers", type=int, default=None,
                    help="worker processes for ours (default: the service default)")
    ap.add_argument("--child", choices=sorted(SIDES))
    ap.add_argument("--file", type=Path)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.child:
        run_child(args.child, args.file, args.out, args.workers)
        return

    args.dir.mkdir(parents=True, exist_ok=True)
    data = args.dir / f"data-{args.rows}.jsonl"
    if not data.exists():
        t = time.perf_counter()
        print(f"generating {args.rows:,} rows into {data} ...", flush=True)
        bad = generate(data, args.rows)
        (args.dir / f"data-{args.rows}.bad.json").write_text(json.dumps(bad))
        print(f"  done in {time.perf_counter() - t:.1f}s", flush=True)
    bad = json.loads((args.dir / f"data-{args.rows}.bad.json").read_text()) \
        if (args.dir / f"data-{args.rows}.bad.json").exists() else {}
    size_mb = data.stat().st_size / 1e6
    print(f"file: {data} ({size_mb:,.0f} MB, {args.rows:,} rows; deliberate problems: "
          f"{', '.join(f'{k} {v}' for k, v in bad.items())})", flush=True)

    from services.common.dataset.parallel import PARALLEL_MIN_BYTES, default_workers

    workers = default_workers() if args.workers is None else args.workers
    n_workers = workers if data.stat().st_size >= PARALLEL_MIN_BYTES else 1
    results = {}
    for op in ("validate", "process"):
        for who in ("original", "ours"):
            side = f"{op}-{who}"
            print(f"  running {side} ...", flush=True)
            results[side] = measure(side, data, args.dir, args.repeats, args.workers)
        if n_workers > 1:
            print(f"  running {op}-ours in one process ...", flush=True)
            results[f"{op}-ours-1proc"] = measure(f"{op}-ours", data, args.dir, args.repeats, 1)

    scaled = {}
    if not args.no_scaling and args.rows >= 10:
        tenth = args.dir / f"data-{args.rows}-tenth.jsonl"
        if not tenth.exists():
            with open(data, "rb") as src, open(tenth, "wb") as dst:
                for i, line in enumerate(src):
                    if i >= args.rows // 10:
                        break
                    dst.write(line)
        for op in ("validate", "process"):
            print(f"  running {op}-ours on the first tenth, in one process ...", flush=True)
            scaled[op] = measure(f"{op}-ours", tenth, args.dir, args.repeats, 1)

    print()
    print(f"ours: {n_workers} process{'es' if n_workers > 1 else ''} "
          f"({'--workers' if args.workers is not None else 'the default on this machine'}; "
          f"a JSONL file over {PARALLEL_MIN_BYTES >> 20} MiB is split over worker processes)"
          + ("; ours-1proc: one process" if n_workers > 1 else ""))
    print(f"{'side':<28}{'rows':>11}{'rows/s':>12}{'wall s':>9}{'cpu s':>8}"
          f"{'peak RSS MB':>13}{'+ per worker':>14}")

    def row(side: str, r: dict) -> None:
        cpu = r["cpu"] + r["workers_cpu"]
        extra = f"{r['worker_rss_mb']:>14,.0f}" if r["workers_cpu"] else f"{'':>14}"
        print(f"{side:<28}{r['rows']:>11,}{r['rows'] / r['wall']:>12,.0f}{r['wall']:>9.2f}"
              f"{cpu:>8.2f}{r['rss_mb']:>13,.0f}{extra}")

    for side, r in results.items():
        row(side, r)
    for op, r in scaled.items():
        row(f"{op}-ours-1proc (1/10)", r)
    print()
    for op in ("validate", "process"):
        o = results[f"{op}-original"]
        for who in ("ours", "ours-1proc"):
            u = results.get(f"{op}-{who}")
            if u is None:
                continue
            speed = (u["rows"] / u["wall"]) / (o["rows"] / o["wall"])
            cpu = o["cpu"] / (u["cpu"] + u["workers_cpu"])
            mem = u["rss_mb"] + (n_workers * u["worker_rss_mb"] if u["workers_cpu"] else 0)
            print(f"{op + ' ' + who:<20} vs original: rows/s x{speed:.2f}, CPU time x{cpu:.2f}, "
                  f"peak RSS {mem:,.0f} MB vs {o['rss_mb']:,.0f} MB (1/{o['rss_mb'] / mem:.0f})"
                  f"   goal x3: {'met' if speed >= 3 else 'NOT met'}")
    if scaled:
        single = {op: results.get(f"{op}-ours-1proc", results[f"{op}-ours"])
                  for op in ("validate", "process")}
        v_full, v_tenth = single["validate"]["rss_mb"], scaled["validate"]["rss_mb"]
        p_full, p_tenth = single["process"]["rss_mb"], scaled["process"]["rss_mb"]
        print(f"validate (one process) RSS at 1/10 of the file {v_tenth:,.0f} MB, full "
              f"{v_full:,.0f} MB (goal: flat, < 200 MB: {'met' if v_full < 200 else 'NOT met'})")
        print(f"process  (one process) RSS at 1/10 of the rows {p_tenth:,.0f} MB, full "
              f"{p_full:,.0f} MB (grows with rows, not bytes; the original: "
              f"{results['process-original']['rss_mb']:,.0f} MB)")

if __name__ == "__main__":
    main()
