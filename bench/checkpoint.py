"""Benchmark: the cost of checkpoints — one run of a 20-step pipeline with local state, and the
same with its state on S3 (moto's S3 server in server mode, the stand-in for S3 here) and a
checkpoint after every step (`--checkpoint-interval 0`).

Reports, as medians with min-max over `--repeat` runs taken in turns (local, S3, S3 with
client-side encryption, local, ...): the wall time of `laminar run --once` for each, their
ratios, how many checkpoints the S3 run uploaded, how long one checkpoint took (snapshot +
upload, from the run's log), and the size of one snapshot. moto runs in this process on
loopback: the upload cost measured is the snapshot's CPU and I/O plus a local HTTP PUT, not a
cloud round trip. Then the cipher alone: encrypting and decrypting a `--cipher-mib` file of
random bytes (LAMINAR_CHECKPOINT_KEY's streamed AES-256-GCM) against copying the same file.

    .venv/bin/python bench/checkpoint.py [--repeat 5] [--rows 20000] [--cipher-mib 256]
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline_service.storage.encryption import SnapshotCipher
from tests.s3_standin import S3StandIn, s3_standin

STEPS = 20


def pipeline(rows: int) -> str:
    steps = []
    for i in range(STEPS):
        source = f"range({rows})" if i == 0 else f"t{i - 1}"
        column = "range AS n" if i == 0 else "n + 1 AS n"
        depends = f"\n    depends_on: [s{i - 1}]" if i else ""
        steps.append(
            f"  - id: s{i}\n    type: sql{depends}\n"
            f"    sql: CREATE OR REPLACE TABLE t{i} AS SELECT {column} FROM {source}"
        )
    return "name: checkpoint-bench\nsteps:\n" + "\n".join(steps) + "\n"


def laminar() -> str:
    return str(Path(sys.executable).with_name("laminar"))


def one_run(file: Path, state: str, env: dict[str, str], home: Path) -> tuple[float, str]:
    env = {**env, "HOME": str(home), "XDG_CACHE_HOME": str(home / "cache")}
    began = time.perf_counter()
    result = subprocess.run(
        [laminar(), "run", "--once", "--no-ui", str(file), "-s", state,
         "--checkpoint-interval", "0"],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    elapsed = time.perf_counter() - began
    if result.returncode != 0:
        raise SystemExit(f"laminar failed:\n{result.stdout}\n{result.stderr}")
    return elapsed, result.stdout


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} s (min {min(values):.2f}, max {max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--cipher-mib", type=int, default=256)
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMINAR_")}
    local_times: list[float] = []
    s3_times: list[float] = []
    sealed_times: list[float] = []
    per_checkpoint: list[float] = []
    counts: list[int] = []
    sizes: list[int] = []
    with tempfile.TemporaryDirectory() as tmp, s3_standin() as s3:
        root = Path(tmp)
        file = root / "pipeline.yaml"
        file.write_text(pipeline(args.rows))
        s3_env = {**env, **S3StandIn(s3.endpoint).env()}
        for i in range(args.repeat):
            local_state = root / f"local-{i}"
            elapsed, _ = one_run(file, str(local_state), env, root / f"home-l{i}")
            local_times.append(elapsed)

            bucket = s3.new_bucket()
            home = root / f"home-s{i}"
            elapsed, _ = one_run(file, f"s3://{bucket}/bench", s3_env, home)
            s3_times.append(elapsed)
            log = next(home.glob("cache/laminar/remote-state/*/logs/laminar.log")).read_text()
            logged = re.findall(r"checkpoint \S+: \d+ bytes.*?, ([\d.]+)s ", log)
            took = [float(t) for t in logged]
            per_checkpoint.extend(took)
            counts.append(len(took))
            keys = s3.client().list_objects_v2(Bucket=bucket, Prefix="bench/checkpoints/")
            sizes.extend(obj["Size"] for obj in keys.get("Contents", []))
            key = base64.b64encode(os.urandom(32)).decode()
            sealed_env = {**s3_env, "LAMINAR_CHECKPOINT_KEY": key}
            elapsed, _ = one_run(
                file, f"s3://{s3.new_bucket()}/bench", sealed_env, root / f"home-e{i}"
            )
            sealed_times.append(elapsed)
            print(
                f"round {i + 1}: local {local_times[-1]:.2f} s, s3 {s3_times[-1]:.2f} s, "
                f"s3 encrypted {sealed_times[-1]:.2f} s, {counts[-1]} checkpoints",
                flush=True,
            )
    ratio = statistics.median(s3_times) / statistics.median(local_times)
    print(f"\n{STEPS}-step chain, {args.rows} rows per table, {args.repeat} rounds in turns")
    print(f"local state            {spread(local_times)}")
    print(f"S3 state (moto), ckpt 0 {spread(s3_times)}")
    print(f"S3 state, encrypted    {spread(sealed_times)}")
    print(f"ratio S3/local         {ratio:.2f}x (medians)")
    sealed_ratio = statistics.median(sealed_times) / statistics.median(s3_times)
    print(f"ratio encrypted/S3     {sealed_ratio:.2f}x (medians)")
    print(
        f"checkpoints per run    median {statistics.median(counts):.0f} "
        f"(min {min(counts)}, max {max(counts)}; the steps finish faster than one upload, "
        "so finishes that land during an upload share the next checkpoint)"
    )
    print(f"one checkpoint         {spread(per_checkpoint)} (snapshot + upload)")
    print(
        f"one snapshot           median {statistics.median(sizes) / 1024:.0f} KiB "
        f"(min {min(sizes) / 1024:.0f}, max {max(sizes) / 1024:.0f})"
    )

    cipher_throughput(args.cipher_mib)


def cipher_throughput(mib: int) -> None:
    """The streamed AES-256-GCM of LAMINAR_CHECKPOINT_KEY against a plain copy of the file."""
    cipher = SnapshotCipher(os.urandom(32))
    with tempfile.TemporaryDirectory() as tmp:
        plain, sealed, opened, copy = (Path(tmp) / n for n in ("p", "e", "d", "c"))
        with plain.open("wb") as out:
            for _ in range(mib):
                out.write(os.urandom(1 << 20))
        timings: dict[str, list[float]] = {"copy": [], "encrypt": [], "decrypt": []}
        for _ in range(3):
            began = time.perf_counter()
            shutil.copyfile(plain, copy)
            timings["copy"].append(time.perf_counter() - began)
            began = time.perf_counter()
            cipher.encrypt_file(plain, sealed)
            timings["encrypt"].append(time.perf_counter() - began)
            began = time.perf_counter()
            cipher.decrypt_file(sealed, opened, "bench")
            timings["decrypt"].append(time.perf_counter() - began)
        assert opened.read_bytes() == plain.read_bytes()
    reference = statistics.median(timings["copy"])
    print(f"\ncipher on {mib} MiB of random bytes (medians of 3; reference: a file copy)")
    for name, values in timings.items():
        median = statistics.median(values)
        print(
            f"{name:<8} {median:.2f} s  {mib / median:,.0f} MiB/s  "
            f"{median / reference:.2f}x the copy"
        )


if __name__ == "__main__":
    main()
