"""DistributedDataParallel: two CPU processes (gloo) train with compressed activations and
their replicas stay identical.

The test starts this file twice as a script, one process per rank."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

WORLD_SIZE = 2
STEPS = 4


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_ddp_replicas_stay_identical_with_compressed_activations(tmp_path):
    port = _free_port()
    # The workers import the very actzip this test process imported (installed or in-tree).
    import actzip

    package_root = Path(actzip.__file__).resolve().parents[1]
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(package_root)] + [p for p in environment.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    environment["OMP_NUM_THREADS"] = "1"
    processes = [
        subprocess.Popen(
            [sys.executable, __file__, str(rank), str(WORLD_SIZE), str(port), str(tmp_path)],
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(WORLD_SIZE)
    ]
    outputs = []
    try:
        for process in processes:
            output, _ = process.communicate(timeout=180)
            outputs.append(output)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    for rank, (process, output) in enumerate(zip(processes, outputs)):
        assert process.returncode == 0, f"rank {rank} failed:\n{output}"
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(WORLD_SIZE)]
    for result in results:
        assert result["replicas_identical"]
        assert result["parameters_changed"]
        assert result["tensors_compressed"] > 0
        assert result["failures"] == 0
        assert result["peak_compressed_bytes"] < result["peak_raw_bytes"]


def _run_rank(rank: int, world_size: int, port: int, out: Path) -> None:
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel

    from actzip.schedule import Gradual
    from actzip.training import compressed_activations

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=True),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, 5),
        )
        initial = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()
        ddp = DistributedDataParallel(model)
        optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
        generator = torch.Generator().manual_seed(100 + rank)  # each rank its own data
        with compressed_activations(ddp, schedule=Gradual(1e-4, 1e-2, 0, STEPS - 1), min_bytes=4096) as az:
            for _ in range(STEPS):
                x = torch.randn(8, 3, 16, 16, generator=generator)
                y = torch.randint(0, 5, (8,), generator=generator)
                loss = F.cross_entropy(ddp(x), y)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
                az.step(loss=loss.detach())
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        gathered = [torch.empty_like(flat) for _ in range(world_size)]
        dist.all_gather(gathered, flat)
        history = az.history
        result = {
            "replicas_identical": all(torch.equal(gathered[0], other) for other in gathered[1:]),
            "parameters_changed": not torch.equal(flat, initial),
            "tensors_compressed": sum(r["tensors_compressed"] for r in history),
            "failures": sum(r["failures"] for r in history),
            "peak_raw_bytes": history[-1]["peak_raw_bytes"],
            "peak_compressed_bytes": history[-1]["peak_compressed_bytes"],
        }
        (out / f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    _run_rank(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
    # Leave without the interpreter's teardown: gloo's threads can abort the process at
    # exit ("terminate called without an active exception", seen with and without
    # actzip), after the results are written.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
