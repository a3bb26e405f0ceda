"""Peak memory of training on a virtual subject at real size (9841 images x 39548 vertices).

Writes a virtual subject with NSD subject 1's sizes (fsaverage6 density, 19004 +
20544 challenge vertices, 9841 training and 159 test images; 112-px images so
features are quick), then trains one epoch of the transformer in a child
process and prints its peak resident memory next to the size of the fMRI.
Training reads fMRI rows with plain file reads (``model.files.read_rows``),
so the file stays in the kernel's page cache; pages read through a memory map
would count towards the resident size, and the kernel maps far more than the
rows asked for. "Holds the fMRI at most once" means peak RSS < 2 x fMRI bytes
(torch alone takes about 0.5 GiB).

    python benchmarks/bench_memory.py [--work DIR] [--keep]

Takes about 15 minutes on 2 cores (most of it writing the subject).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REAL_SIZE = dict(n_train=9841, n_test=159, lh=19004, rh=20544)


#: runs the tbe command line in a child process and reports that process's own peak RSS
PEAK_RSS = ("import resource, sys; from analyses.cli import main; code = main(sys.argv[1:]); "
            "print('PEAK_RSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(code)")


def run(args: list[str]) -> tuple[float, int]:
    """Seconds and peak resident bytes of one ``tbe`` command in a fresh process."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PEAK_RSS, "-q", *args], check=True, capture_output=True, text=True)
    kib = int(next(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("PEAK_RSS_KIB")))
    return time.perf_counter() - start, kib * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the generated subject")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="tbe-memory-"))
    data = work / "data"
    if not (data / "subj01").exists():
        seconds, _ = run(["synth", "--out", str(data), "--n-train", str(REAL_SIZE["n_train"]),
                       "--n-test", str(REAL_SIZE["n_test"]), "--image-size", "112", "--surface", "fsaverage6",
                       "--vertices", str(REAL_SIZE["lh"]), str(REAL_SIZE["rh"])])
        print(f"wrote the real-size virtual subject in {seconds:.0f} s")
    fmri_bytes = sum((data / "subj01" / "training_split" / "training_fmri" / f"{h}_training_fmri.npy").stat().st_size
                     for h in ("lh", "rh"))
    run_dir = work / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    seconds, peak = run(["train", "--data-dir", str(data), "--out", str(run_dir), "--no-pretrained",
                   "--backbone", "vit_small_patch14_dinov2.lvd142m", "--enc-output-layer", "6", "--feature", "tokens",
                   "--hidden-dim", "384", "--epochs", "1", "--cache-dir", str(work / "cache")])
    print(f"training fMRI on disk      : {fmri_bytes / 2**30:6.2f} GiB ({REAL_SIZE['n_train']} x {REAL_SIZE['lh'] + REAL_SIZE['rh']} float32)")
    print(f"peak RSS of training       : {peak / 2**30:6.2f} GiB ({peak / fmri_bytes:.2f} x the fMRI)")
    print(f"one training epoch + test predictions took {seconds:.0f} s (including feature extraction)")
    print("holds the fMRI at most once:", "yes" if peak < 2 * fmri_bytes else "NO")
    if not args.keep and args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
