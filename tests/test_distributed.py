"""Two-process DistributedDataParallel training (gloo, CPU) of a small
so.models.shufflenet_v1 ends with the same parameters as single-process
training on the full batch.

BatchNorm makes a model's output for one sample depend on the rest of its
batch, and SyncBatchNorm runs only on GPUs, so two configurations are compared,
each against its exact single-process equivalent:

* eval-mode BatchNorm (frozen statistics; every other parameter, BatchNorm's
  affine ones included, trains through the folded fused convs): the full batch
  in one forward;
* train-mode BatchNorm: DDP normalizes each process's half of the batch with
  that half's statistics, so the single-process run forwards the two halves
  separately and averages their losses, one optimizer step per full batch.

The models run in float64 so that the comparison is tight: train-mode BatchNorm
over a few values per channel amplifies float32 rounding of the all-reduce.
"""

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

import shufflenet_ops as so

WORLD_SIZE = 2
STEPS = 3
BATCH = 8
MODES = ("eval", "train")


def make_model(mode):
    torch.manual_seed(0)
    model = so.models.shufflenet_v1(groups=3, width_mult=0.25, num_classes=10).double()
    return getattr(model, mode)()


def batches():
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(BATCH, 3, 32, 32, generator=gen, dtype=torch.float64),
             torch.randint(0, 10, (BATCH,), generator=gen)) for _ in range(STEPS)]


def optimizer(model):
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)


def worker(rank, port, results):
    torch.set_num_threads(1)  # two processes share the machine's cores
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    try:
        for mode in MODES:
            model = DistributedDataParallel(make_model(mode))
            opt = optimizer(model)
            per_rank = BATCH // WORLD_SIZE
            for x, y in batches():
                shard = slice(rank * per_rank, (rank + 1) * per_rank)
                opt.zero_grad()
                F.cross_entropy(model(x[shard]), y[shard]).backward()
                opt.step()
            if rank == 0:
                results[mode] = {k: v.detach().clone() for k, v in model.module.named_parameters()}
    finally:
        dist.destroy_process_group()


def train_single_process(mode):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' arithmetic, reduction order included
    try:
        return _train_single_process(mode)
    finally:
        torch.set_num_threads(threads)


def _train_single_process(mode):
    model = make_model(mode)
    opt = optimizer(model)
    for x, y in batches():
        opt.zero_grad()
        if mode == "eval":
            loss = F.cross_entropy(model(x), y)
        else:
            loss = sum(F.cross_entropy(model(xs), ys) for xs, ys in zip(x.chunk(WORLD_SIZE), y.chunk(WORLD_SIZE)))
            loss = loss / WORLD_SIZE
        loss.backward()
        opt.step()
    return dict(model.named_parameters())


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_parameters():
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("this torch build has no torch.distributed gloo backend")
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(worker, args=(free_port(), results), nprocs=WORLD_SIZE, join=True)
        return dict(results)


@pytest.mark.parametrize("mode", MODES)
def test_ddp_matches_single_process_full_batch(ddp_parameters, mode):
    expected = train_single_process(mode)
    initial = dict(make_model(mode).named_parameters())
    actual = ddp_parameters[mode]
    assert actual.keys() == expected.keys()
    for name, param in expected.items():
        assert not torch.equal(param, initial[name]), f"{name} did not train"
        torch.testing.assert_close(actual[name], param.detach(), atol=1e-10, rtol=1e-9, msg=lambda m: f"{name}: {m}")
