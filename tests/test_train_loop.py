"""The training loop on toy modules: resume equivalence, DDP equivalence, non-finite guard, hooks, bf16.

The loop is model-agnostic, so these tests use a tiny MLP with the same moving parts as the real
objectives: dropout (global RNG), an objective-owned ``torch.Generator`` (like the mask sampler), and a
dataset whose samples are randomly augmented with the global RNG.
"""

import json
import os
import signal
import weakref
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import free_port, run_two_processes

from videomap.train import (
    Callback,
    CheckpointError,
    Every,
    ExportModel,
    NonFiniteLossError,
    ResumableBatches,
    Runtime,
    Trainer,
    load_checkpoint,
    load_config,
)


class ToyData(torch.utils.data.Dataset):
    """12 fixed points with 3 labels; every load adds noise from the global RNG (an 'augmentation')."""

    def __init__(self, n=12):
        g = torch.Generator().manual_seed(123)
        self.x = torch.randn(n, 4, generator=g)
        self.y = torch.randint(0, 3, (n,), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i] + 0.05 * torch.randn(4), self.y[i]


class ToyNet(nn.Module):
    def __init__(self, stochastic=True):
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.pos = nn.Parameter(torch.zeros(8))
        self.block = nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 8), nn.GELU())
        self.drop = nn.Dropout(0.2 if stochastic else 0.0)
        self.head = nn.Linear(8, 3)
        self.stochastic = stochastic
        self.gen = torch.Generator().manual_seed(7)  # an objective-owned generator, found automatically

    def no_weight_decay(self):
        return {"pos"}

    def forward(self, x):
        h = self.embed(x) + self.pos
        if self.stochastic:
            h = h + 0.1 * torch.randn(h.shape, generator=self.gen)
        return self.head(self.drop(h + self.block(h)))


def step_fn(model, batch):
    x, y = batch
    logits = model(x)
    return {"loss": F.cross_entropy(logits, y), "acc": (logits.argmax(-1) == y).float().mean()}


def make_cfg(out, *extra):
    return load_config(None, [
        f"train.output_dir={out}", "train.batch_size=4", "train.max_steps=4", "train.seed=3",
        "train.log_every=1", "train.save_every=0", "train.progress=log", "train.clip_grad=1.0",
        "optim.lr=0.05", "optim.warmup_steps=2", "optim.min_lr=0.001", "optim.weight_decay=0.1",
        "train.device=cpu", *extra,
    ])


def make_trainer(cfg, runtime=None, stochastic=True, callbacks=(), step=step_fn, **kw):
    runtime = runtime or Runtime()
    torch.manual_seed(0)
    model = ToyNet(stochastic)
    batches = ResumableBatches(ToyData(), cfg.train.batch_size, seed=cfg.train.seed, rank=runtime.rank,
                               world_size=runtime.world_size)
    return Trainer(model, step, batches, cfg, runtime=runtime, callbacks=callbacks, **kw)


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def assert_same_weights(a: nn.Module, b: nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# --------------------------------------------------------------------------------------------------- resume


class SigtermAt(Callback):
    """Sends this process SIGTERM after step ``at`` (a pre-emption in the middle of training)."""

    def __init__(self, at):
        self.at = at

    def on_step_end(self, trainer, metrics):
        if trainer.step == self.at:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_resume_is_bit_exact(tmp_path, grad_accum):
    # 12 samples / batch 4 = 3 micro-batches per epoch: both runs cross epoch boundaries.
    extra = [f"train.grad_accum={grad_accum}"]
    full = make_trainer(make_cfg(tmp_path / "full", *extra))
    assert full.fit().step == 4

    handler_before = signal.getsignal(signal.SIGTERM)
    first = make_trainer(make_cfg(tmp_path / "split", *extra), callbacks=[SigtermAt(2)])
    res = first.fit()
    assert res.interrupted and res.step == 2
    assert load_checkpoint(res.checkpoint)["step"] == 2
    assert signal.getsignal(signal.SIGTERM) == handler_before   # the handler is only installed during fit

    resumed = make_trainer(make_cfg(tmp_path / "split", *extra))  # train.resume=auto is the default
    res = resumed.fit()
    assert res.step == 4 and not res.interrupted
    assert_same_weights(full.model, resumed.model)
    assert torch.equal(full.model.gen.get_state(), resumed.model.gen.get_state())
    assert (full.epoch, full.position) == (resumed.epoch, resumed.position)
    for sa, sb in zip(full.optimizer.state.values(), resumed.optimizer.state.values()):
        for k in sa:
            assert torch.equal(sa[k], sb[k])
    # The logged losses of steps 3-4 agree too, and metrics.jsonl holds every step once.
    lf = read_jsonl(tmp_path / "full" / "metrics.jsonl")
    ls = read_jsonl(tmp_path / "split" / "metrics.jsonl")
    assert [r["step"] for r in ls] == [1, 2, 3, 4]
    assert [r["loss"] for r in lf] == [r["loss"] for r in ls]


def test_resume_from_an_older_checkpoint_logs_each_step_once(tmp_path):
    cfg = make_cfg(tmp_path)
    make_trainer(cfg, callbacks=[SigtermAt(2)]).fit()
    last = tmp_path / "checkpoints" / "last.pt"
    at_step_2 = last.read_bytes()
    make_trainer(cfg).fit()
    last.write_bytes(at_step_2)               # as if the run had died after step 4 without saving
    make_trainer(cfg).fit()
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4]
    fresh = make_trainer(make_cfg(tmp_path, "train.resume=none", "train.max_steps=1"))
    fresh.fit()
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1]


def test_finished_run_resumes_as_a_no_op(tmp_path):
    cfg = make_cfg(tmp_path, "train.max_steps=2")
    a = make_trainer(cfg)
    a.fit()
    b = make_trainer(cfg)
    assert b.fit().step == 2
    assert_same_weights(a.model, b.model)


def test_corrupt_checkpoint_stops_resume_with_a_clear_error(tmp_path):
    cfg = make_cfg(tmp_path, "train.max_steps=2")
    make_trainer(cfg).fit()
    last = tmp_path / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"last\.pt is truncated or corrupt"):
        make_trainer(cfg).fit()
    # train.resume=none ignores it and starts over.
    assert make_trainer(make_cfg(tmp_path, "train.max_steps=1", "train.resume=none")).fit().step == 1


def test_checkpoint_of_another_model_is_refused(tmp_path):
    cfg = make_cfg(tmp_path, "train.max_steps=1")
    make_trainer(cfg).fit()
    model = nn.Linear(4, 3)
    other = Trainer(model, lambda m, b: F.cross_entropy(m(b[0]), b[1]), ResumableBatches(ToyData(), 4), cfg,
                    runtime=Runtime())
    with pytest.raises(CheckpointError, match="does not fit this model"):
        other.fit()


# ----------------------------------------------------------------------------------------- non-finite guard


def nan_on(bad_calls):
    calls = {"n": 0}

    def fn(model, batch):
        out = step_fn(model, batch)
        calls["n"] += 1
        if calls["n"] in bad_calls:
            out["loss"] = out["loss"] * float("nan")
        return out

    return fn


def test_non_finite_steps_are_skipped(tmp_path):
    t = make_trainer(make_cfg(tmp_path, "train.max_bad_steps=3"), step=nan_on({2, 3}))
    res = t.fit()
    assert res.step == 4 and res.skipped_steps == 2
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(r["loss"] is not None for r in records)   # skipped updates never reach the metrics
    assert all(torch.isfinite(p).all() for p in t.model.parameters())


def test_repeated_non_finite_steps_stop_training(tmp_path):
    before = None

    class Snapshot(Callback):
        def on_step_end(self, trainer, metrics):
            nonlocal before
            before = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    t = make_trainer(make_cfg(tmp_path, "train.max_bad_steps=3", "train.max_steps=10"), step=nan_on({2, 3, 4}),
                     callbacks=[Snapshot()])
    with pytest.raises(NonFiniteLossError, match="3 consecutive steps"):
        t.fit()
    assert t.step == 1
    for k, v in t.model.state_dict().items():   # the failed steps did not touch the weights
        assert torch.equal(v, before[k])


# ------------------------------------------------------------------------------------ hooks, epochs, bf16


def test_epochs_eval_hooks_and_export(tmp_path):
    events = []

    class Record(Callback):
        def on_epoch_end(self, trainer, epoch):
            events.append(("epoch", epoch, trainer.step))

        def on_eval_end(self, trainer, metrics):
            events.append(("eval", metrics["score"], trainer.step))

    cfg = make_cfg(tmp_path, "train.max_steps=0", "train.epochs=2", "optim.warmup_epochs=1", "optim.warmup_steps=0")
    pictures = []
    t = make_trainer(cfg, callbacks=[Record(), Every(2, lambda tr: pictures.append(tr.step)),
                                     ExportModel(tmp_path / "encoder", select=lambda m: m.block)],
                     eval_fn=lambda tr: {"score": float(tr.step)})
    assert t.total_steps == 6
    t.fit()
    # Each epoch's evaluation runs after its last step, and once more is not repeated at the end.
    assert events == [("eval", 3.0, 3), ("epoch", 0, 3), ("eval", 6.0, 6), ("epoch", 1, 6)]
    assert pictures == [2, 4, 6]
    assert (tmp_path / "encoder" / "model.safetensors").is_file()
    assert (tmp_path / "config.yaml").is_file()
    evals = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "val/score" in r]
    assert [r["val/score"] for r in evals] == [3.0, 6.0]


def test_bf16_autocast_on_cpu(tmp_path):
    dtypes = []

    def fn(model, batch):
        out = step_fn(model, batch)
        dtypes.append(model.embed(batch[0]).dtype)
        return out

    res = make_trainer(make_cfg(tmp_path, "train.precision=bf16", "train.max_steps=2"), step=fn).fit()
    assert res.step == 2 and torch.bfloat16 in dtypes
    assert all(p.dtype == torch.float32 for p in make_trainer(make_cfg(tmp_path)).model.parameters())


def test_data_order_is_sharded_and_resumable():
    data = ToyData(16)
    one = ResumableBatches(data, 8, seed=1)
    r0 = ResumableBatches(data, 8, seed=1, rank=0, world_size=2)
    r1 = ResumableBatches(data, 8, seed=1, rank=1, world_size=2)
    for b, b0, b1 in zip(one.batch_indices(5), r0.batch_indices(5), r1.batch_indices(5)):
        assert b == b0 + b1
    assert one.batch_indices(0) != one.batch_indices(1)
    full = [x for x, _ in one(3)]
    tail = [x for x, _ in one(3, start=1)]
    assert torch.equal(full[1], tail[0])     # same augmentation whether or not the epoch was resumed
    with pytest.raises(ValueError, match="divisible"):
        ResumableBatches(data, 5, world_size=2)


def test_seed_keys_reach_datasets_that_take_them():
    class KeyedData(ToyData):
        def __getitem__(self, key):
            i, seed = key
            return self.x[i] + torch.randn(4, generator=torch.Generator().manual_seed(seed)), self.y[i]

    factory = ResumableBatches(KeyedData(8), 4, seed=9, seed_keys=True)
    full = [x for x, _ in factory(2)]
    assert torch.equal(full[1], next(iter(factory(2, start=1)))[0])
    state = torch.get_rng_state()
    list(factory(3))
    assert torch.equal(state, torch.get_rng_state())   # loading never touches the global stream


def test_worker_processes_load_the_same_batches():
    data = ToyData(8)
    inline = [x for x, _ in ResumableBatches(data, 4, seed=2)(1)]
    workers = [x for x, _ in ResumableBatches(data, 4, seed=2, num_workers=2)(1)]
    assert all(torch.equal(a, b) for a, b in zip(inline, workers)) and len(workers) == 2


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_resume_is_bit_exact_on_cuda_with_bf16(tmp_path):
    torch.backends.cudnn.deterministic = True
    extra = ["train.device=cuda", "train.precision=bf16"]

    def trainer(out, callbacks=()):
        cfg = make_cfg(out, *extra)
        return make_trainer(cfg, runtime=Runtime.from_env(device="cuda", precision="bf16"), stochastic=False,
                            callbacks=callbacks)

    full = trainer(tmp_path / "full")
    full.fit()
    assert next(full.model.parameters()).is_cuda
    assert trainer(tmp_path / "split", callbacks=[SigtermAt(2)]).fit().interrupted
    resumed = trainer(tmp_path / "split")
    resumed.fit()
    assert_same_weights(full.model, resumed.model)


# ---------------------------------------------------------------------------------------------------- DDP


def _ddp_worker(rank, world_size, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    cfg = make_cfg(out, "train.batch_size=8", "train.grad_accum=2", "train.max_steps=3")
    with Runtime.from_env(device="cpu") as rt:
        assert rt.distributed and rt.world_size == world_size
        make_trainer(cfg, runtime=rt, stochastic=False).fit()


def test_ddp_two_gloo_processes_match_one_process(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, free_port(), str(tmp_path / "ddp")), nprocs=2, join=True)

    single = make_trainer(make_cfg(tmp_path / "one", "train.batch_size=8", "train.grad_accum=2",
                                   "train.max_steps=3"), stochastic=False)
    single.fit()

    ddp_state = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.pt")
    assert ddp_state["world_size"] == 2 and len(ddp_state["rng"]) == 2
    for k, v in single.model.state_dict().items():
        torch.testing.assert_close(ddp_state["model"][k], v, atol=1e-6, rtol=0)
    l_ddp = [r["loss"] for r in read_jsonl(tmp_path / "ddp" / "metrics.jsonl")]
    l_one = [r["loss"] for r in read_jsonl(tmp_path / "one" / "metrics.jsonl")]
    assert len(l_ddp) == 3
    assert l_ddp == pytest.approx(l_one, abs=1e-6)


def test_single_process_runtime(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    rt = Runtime.from_env(device="cpu", precision="bf16")
    assert (rt.rank, rt.world_size, rt.distributed, rt.is_main) == (0, 1, False, True)
    t = torch.ones(2)
    assert rt.all_reduce(t, op="mean") is t and torch.equal(t, torch.ones(2))
    assert rt.all_gather_object({"a": 1}) == [{"a": 1}]
    with rt.autocast():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    model = nn.Linear(2, 2)
    assert rt.wrap(model) is model
    rt.close()
    with pytest.raises(ValueError, match="fp32"):
        Runtime.from_env(device="cpu", precision="fp16")


def _ddp_wrapper_in_a_cycle_worker(rank, world_size, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    rt = Runtime.from_env(device="cpu")
    holder = {"model": rt.wrap(nn.Linear(2, 2))}
    holder["self"] = holder                      # a cycle, as a traceback through the training loop makes one
    wrapper = weakref.ref(holder["model"])
    del holder
    rt.close()
    Path(out, f"alive{rank}.txt").write_text(str(wrapper() is not None))


def test_closing_the_runtime_releases_ddp_wrappers_before_the_process_group(tmp_path):
    # A DDP wrapper destroyed after the group, at interpreter exit, aborted the process with SIGABRT.
    run_two_processes(_ddp_wrapper_in_a_cycle_worker, (str(tmp_path),), 60, "closing the runtime hung")
    assert [(tmp_path / f"alive{rank}.txt").read_text() for rank in (0, 1)] == ["False", "False"]


def _mismatched_metrics_worker(rank, world_size, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)

    def rank_dependent_step(model, batch):
        out = step_fn(model, batch)
        return out if rank == 0 else {"loss": out["loss"]}   # rank 1 leaves out "acc"

    with Runtime.from_env(device="cpu") as rt:
        try:
            make_trainer(make_cfg(out, "train.max_steps=2"), runtime=rt, stochastic=False,
                         step=rank_dependent_step).fit()
        except RuntimeError as e:
            Path(out, f"error{rank}.txt").write_text(str(e))


def test_ddp_metrics_that_differ_between_processes_are_an_error_not_a_hang(tmp_path):
    run_two_processes(_mismatched_metrics_worker, (str(tmp_path),), 60,
                      "the processes hung averaging metrics with different names")
    for rank in (0, 1):
        message = (tmp_path / f"error{rank}.txt").read_text()
        assert "rank 0: acc, grad_norm, loss; rank 1: grad_norm, loss" in message


@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_a_cpu_without_bf16_instructions_is_announced(monkeypatch, caplog, native):
    import videomap.ops.matmul as mm

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(mm, "native_reduced_precision", lambda dtype: native)
    with caplog.at_level("WARNING", logger="videomap"):
        Runtime.from_env(device="cpu", precision="bf16", configure_logging=False).close()
        Runtime.from_env(device="cpu", precision="fp32", configure_logging=False).close()
    said = [r.getMessage() for r in caplog.records if "bf16 instructions" in r.getMessage()]
    expected = [] if native or not mm.onednn_available() else ["train.precision=bf16: " + mm.emulated_bf16_note()]
    assert said == expected
