"""Mutated and truncated streams never crash the decoder.

The decoding runs in a child process, so that a crash (a signal) fails the test instead of
killing pytest. The child's streams are a deterministic function of its seed: it reports
the number of each stream before decoding it, and after a crash the test asks a second
child to write that stream to a file, as the reproducer.
"""

import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import List, Optional

import numpy as np
import pytest
import torch

import actzip

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "golden"
PYTHON_DIR = Path(actzip.__file__).resolve().parents[1]

# The child: decodes every mutation of every seed stream; exits 0 unless something other
# than FormatError/ValueError was raised (a signal shows as a negative return code).
WORKER = textwrap.dedent(
    r"""
    import random, struct, sys, zlib
    from pathlib import Path
    import actzip

    out_dir = Path(sys.argv[1])
    seeds = [p.read_bytes() for p in sorted(out_dir.glob("seed_*.azip"))]
    rng = random.Random(int(sys.argv[2]))
    mutations = int(sys.argv[3])
    outcome = {"decoded": 0, "FormatError": 0, "ValueError": 0}

    def fix_header_crc(s):
        if len(s) >= 48:
            hb = struct.unpack_from("<I", s, 8)[0]
            if 48 <= hb <= len(s) and hb % 8 == 0:
                struct.pack_into("<I", s, hb - 8, zlib.crc32(bytes(s[:hb - 8])))

    def mutate(s):
        s = bytearray(s)
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(6)
            i = rng.randrange(len(s) + 1)
            if op == 0 and s:
                s[i % len(s)] ^= 1 << rng.randrange(8)               # bit flip
            elif op == 1 and s:
                s[i % len(s)] = rng.randrange(256)                    # byte store
            elif op == 2:
                s[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 9)))  # insertion
            elif op == 3:
                del s[i:i + rng.randint(1, 9)]                        # deletion
            elif op == 4:
                del s[rng.randrange(len(s) + 1):]                     # truncation
            elif s:
                j = rng.randrange(len(s))                             # overwrite with a run
                s[j:j + 8] = bytes([rng.choice((0, 0xFF))]) * 8
        if rng.random() < 0.5:
            fix_header_crc(s)  # get past the header checksum to the checks behind it
        return bytes(s)

    def streams():
        for seed in seeds:
            for n in range(len(seed)):       # every truncation
                yield seed[:n]
        for _ in range(mutations):
            yield mutate(rng.choice(seeds))
        for n in range(200):                 # garbage
            yield bytes(rng.randrange(256) for _ in range(n))
            yield b"AZIP" + bytes(rng.randrange(256) for _ in range(n))

    dump = int(sys.argv[5])  # >= 0: write stream number `dump` to last.azip, decode nothing
    for index, data in enumerate(streams()):
        if dump >= 0:
            if index == dump:
                (out_dir / "last.azip").write_bytes(data)
                break
            continue
        sys.stderr.write(f"{index}\n")
        sys.stderr.flush()
        actzip.set_num_threads(1 if index % 8 else int(sys.argv[4]))  # some on several threads
        try:
            actzip.decompress(actzip.CompressedTensor.from_bytes(data))
            outcome["decoded"] += 1
        except actzip.FormatError:
            outcome["FormatError"] += 1
        except ValueError:
            outcome["ValueError"] += 1
    print(outcome)
    """
)


def _image_with_signs() -> torch.Tensor:
    """Smooth 2-D waves in rows of 50 over two chunks (the second starts mid-row), crossing
    zero, with zeros and NaNs: 2-D Lorenzo with masks, outliers and sign bits."""
    h = torch.arange(340, dtype=torch.float64).view(340, 1)
    w = torch.arange(50, dtype=torch.float64).view(1, 50)
    x = torch.sin(0.05 * h) * torch.cos(0.07 * w)
    x[x.abs() > 0.9] = 0.0
    x.view(-1)[::211] = float("nan")
    return x.to(torch.float32)


def _smooth_with_zero_maps() -> torch.Tensor:
    """A smooth field of 8 chunks in rows of 128 with a band of zeros: 2-D Lorenzo chunks
    with zero maps, masks and sign bits."""
    x = torch.outer(torch.linspace(-1, 1, 1024), torch.linspace(0, 3, 128)).sin().reshape(8, 128, 128)
    x[:, 40:44, :] = 0.0
    return x.to(torch.float32)


def _seed_streams(folder: Path) -> None:
    """Small streams covering every chunk kind, every predictor, masks, outliers, sign
    streams, zero maps and checksums."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20000, generator=g)
    relu = torch.clamp(x, min=0)
    relu[::50] = float("nan")
    relu[3] = -0.0
    tensors = [
        actzip.compress(relu, 1e-2),                                        # masks, outliers, 2 chunks
        actzip.compress(torch.linspace(-1, 1, 3000).to(torch.float16), 1e-3),  # Lorenzo
        actzip.compress(x[:500].to(torch.bfloat16), 0.1, checksum=True),
        actzip.compress(torch.zeros(17000), 1e-3),                          # zero chunks
        actzip.compress(x[:300], 1e-30),                                    # raw chunk
        actzip.compress(_image_with_signs(), 1e-2),                         # 2-D Lorenzo, sign streams
        actzip.compress(_smooth_with_zero_maps(), 1e-2, mode="rel"),        # zero maps
    ]
    assert tensors[-1].stats["zero_map_chunks"] > 0
    for i, ct in enumerate(tensors):
        (folder / f"seed_{i}.azip").write_bytes(ct.to_bytes())


def run_campaign(folder: Path, seed: int, mutations: int, threads: int = 3, timeout: float = 120) -> Optional[str]:
    """Decodes the seed streams' truncations, `mutations` mutations drawn with `seed`, and
    garbage, in a child process. Returns None when every stream decoded or raised
    FormatError/ValueError, else what went wrong, with the stream saved as last.azip."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(PYTHON_DIR), os.environ.get("PYTHONPATH", "")]))

    def child(dump: int):
        return subprocess.run(
            [sys.executable, "-c", WORKER, str(folder), str(seed), str(mutations), str(threads), str(dump)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )

    proc = child(-1)
    if proc.returncode == 0 and "FormatError" in proc.stdout:
        return None
    lines = proc.stderr.splitlines()
    numbers = [int(line) for line in lines if line.isdigit()]
    where = "before its first stream"
    if numbers:
        child(numbers[-1])  # writes the stream it was decoding to last.azip
        where = f"on stream {numbers[-1]}, saved as {folder / 'last.azip'}"
    how = f"crashed with signal {-proc.returncode}" if proc.returncode < 0 else f"failed ({proc.returncode})"
    return (
        f"seed {seed}: the decoder {how} {where}\n"
        f"stdout: {proc.stdout[-2000:]}\nstderr: {chr(10).join(l for l in lines if not l.isdigit())[-4000:]}"
    )


def test_mutated_and_truncated_streams_never_crash_the_decoder(tmp_path):
    _seed_streams(tmp_path)
    failure = run_campaign(tmp_path, seed=1234, mutations=4000)
    if failure is not None:
        pytest.fail(failure)


@pytest.mark.parametrize(
    "garbage",
    [b"", b"\0", b"hello world", b"AZIP", b"AZIP" + bytes(60), bytes(range(256)) * 3, b"\xff" * 1000],
    ids=["empty", "one-zero", "text", "magic-only", "magic-zeros", "ramp", "ones"],
)
def test_from_bytes_on_garbage_raises_format_error(garbage):
    with pytest.raises(actzip.FormatError):
        actzip.CompressedTensor.from_bytes(garbage)


def test_from_bytes_on_random_bytes_raises_format_error():
    rng = random.Random(5)
    for n in range(0, 400, 7):
        with pytest.raises(actzip.FormatError):
            actzip.CompressedTensor.from_bytes(bytes(rng.randrange(256) for _ in range(n)))
        # Random bytes behind a valid magic and version still fail.
        with pytest.raises(actzip.FormatError):
            actzip.CompressedTensor.from_bytes(b"AZIP\x01\x00" + bytes(rng.randrange(256) for _ in range(n)))


def test_decoding_every_truncation_of_a_stream_raises_format_error():
    ct = actzip.compress(np.linspace(-1, 1, 5000, dtype=np.float32), 1e-3, checksum=True)
    stream = ct.to_bytes()
    for n in range(len(stream)):
        with pytest.raises(actzip.FormatError):
            actzip.CompressedTensor.from_bytes(stream[:n])


def main(argv: Optional[List[str]] = None) -> int:
    """A longer campaign than the test's, from the command line (see tools/fuzz.sh)."""
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=run_campaign.__doc__.split(".")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--mutations", type=int, default=20000, help="mutated streams a seed (default 20000)")
    parser.add_argument("--keep", default=None, help="folder for the seed streams and a failing stream")
    args = parser.parse_args(argv)
    folder = Path(args.keep or tempfile.mkdtemp(prefix="actzip-fuzz-"))
    folder.mkdir(parents=True, exist_ok=True)
    _seed_streams(folder)
    failures = 0
    for seed in args.seeds:
        failure = run_campaign(folder, seed, args.mutations, timeout=max(120.0, args.mutations / 100))
        print(f"seed {seed}: {'ok' if failure is None else failure}", flush=True)
        failures += failure is not None
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
