"""Data-parallel estimation: two CPU processes with the gloo backend give the single-process table.

The ranks draw disjoint batches (rank 0: 0, 2, 4; rank 1: 1, 3) of the same (seed, batch index) stream and merge
(count, mean, M2) with Chan's formula, so only float reassociation separates the two results: the merge runs in
float64 and a mean of 40 float32 values differs by a few ulps, hence the tolerances below."""
import os
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tiny_models import single_thread, tiny_pair

from tsdi_kernels import BiasTable, estimate_bias
from tsdi_kernels.pipeline.distributed import merged_statistics, rank_and_world

L = 3
KW = dict(num_prompts=40, length=L, batch_size=8, seed=11, progress=False)


def _worker(rank: int, world: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    try:
        tok, ref, aligned, _ = tiny_pair(L)
        assert rank_and_world() == (rank, world)
        table = estimate_bias(aligned, ref, tok, checkpoint=os.path.join(folder, "ckpt"), checkpoint_every=1, **KW)
        table.save(os.path.join(folder, f"rank{rank}.safetensors"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def single():
    with single_thread():
        tok, ref, aligned, _ = tiny_pair(L)
        return estimate_bias(aligned, ref, tok, **KW)


def test_two_gloo_ranks_equal_one_process(single, tmp_path):
    # fork: the children need not re-import torch and transformers (tens of seconds on a loaded 2-core machine);
    # they run single-threaded, and a deadline turns a hung rendezvous into a failure instead of a stuck CI job
    context = mp.start_processes(_worker, args=(2, str(tmp_path)), nprocs=2, join=False, start_method="fork")
    deadline = time.monotonic() + 300
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for proc in context.processes:
                proc.kill()
            pytest.fail("the two gloo ranks did not finish within 300 s")
    tables = [BiasTable.load(tmp_path / f"rank{r}.safetensors") for r in range(2)]
    # every rank returns the same merged table, bitwise (same gathered inputs, same merge order)
    for name in ("mean", "m2", "count"):
        assert torch.equal(getattr(tables[0], name), getattr(tables[1], name)), name
    merged = tables[0]
    assert merged.count.tolist() == single.count.tolist() == [40] * L
    torch.testing.assert_close(merged.mean, single.mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(merged.m2, single.m2, atol=1e-4, rtol=1e-4)
    # the last checkpoint (rank 0 writes the merged statistics) resumes as a finished run
    tok, ref, aligned, _ = tiny_pair(L)
    with single_thread():
        resumed = estimate_bias(aligned, ref, tok, checkpoint=tmp_path / "ckpt", **KW)
    assert torch.equal(resumed.mean, merged.mean)


def test_merged_statistics_without_a_process_group_is_a_copy():
    acc = BiasTable.empty(2, 5)
    acc.update(torch.randn(4, 2, 5), torch.randn(4, 2, 5))
    copy = merged_statistics(acc)
    assert copy is not acc and torch.equal(copy.mean, acc.mean) and torch.equal(copy.count, acc.count)
    assert rank_and_world() == (0, 1)
