"""The training loop shared by pretraining and fine-tuning.

:class:`Trainer` knows nothing about videos or objectives. It is given

* ``model``: any ``nn.Module`` (an objective wrapping an encoder, or a classifier);
* ``step_fn(model, batch) -> {"loss": scalar tensor, **metrics}``: one forward pass; scalar entries other
  than ``loss`` are averaged and logged, anything else (predictions, masks) is ignored;
* ``batches(epoch, start) -> iterable``: this process's micro-batches of ``epoch`` from the ``start``-th on
  (see :class:`~videomap.train.batches.ResumableBatches`). The data order must be a pure function of the
  seed and the epoch, and loading must not draw from the global RNGs, so that a resumed run sees exactly
  the batches the uninterrupted run would have seen;
* a :class:`~videomap.train.config.Config` (``train`` and ``optim`` sections).

It runs the same under one process and under ``torchrun`` (through
:class:`~videomap.train.runtime.Runtime`), with gradient accumulation, gradient clipping, bf16 autocast,
a guard that skips non-finite steps, atomic checkpoints, bit-exact ``train.resume=auto``, SIGTERM handling,
a progress bar or log lines, ``metrics.jsonl`` and TensorBoard.

Bit-exact resume holds because everything that influences the next step is either in the checkpoint
(weights, optimizer moments, every RNG state of every rank, the position in the data order, callback
state) or a pure function of the step (the learning rate).
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn

from .callbacks import Callback
from .checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    capture_rng_state,
    checkpoint_path,
    find_generators,
    load_checkpoint,
    resolve_resume,
    restore_rng_state,
    save_checkpoint,
)
from .config import Config, save_config
from .metrics import JsonlLogger, TensorBoardLogger, to_float
from .optim import build_optimizer, set_lr
from .runtime import Runtime, setup_logging
from .schedule import build_lr_fn

__all__ = ["Trainer", "TrainResult", "NonFiniteLossError", "BatchFactory", "StepFn"]

log = logging.getLogger("videomap.train")

#: ``batches(epoch, start)`` -> iterable of this process's micro-batches.
BatchFactory = Callable[[int, int], Iterable[Any]]
#: ``step_fn(model, batch)`` -> ``{"loss": tensor, **scalar metrics}`` (a bare loss tensor is accepted too).
StepFn = Callable[[nn.Module, Any], Any]


class NonFiniteLossError(RuntimeError):
    """Raised after ``train.max_bad_steps`` consecutive steps with a non-finite loss or gradient."""


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` ends with."""

    step: int
    epoch: int
    #: True when training stopped early on SIGTERM / :meth:`Trainer.request_stop` (after saving).
    interrupted: bool
    #: The last logged training metrics (rank-averaged floats).
    metrics: dict[str, Any] = field(default_factory=dict)
    checkpoint: Path | None = None
    skipped_steps: int = 0


def _format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


class Trainer:
    """A plain training loop; see the module docstring.

    Args:
        model: the module to train. It is moved to ``runtime.device`` and wrapped in DDP when distributed;
            ``trainer.model`` is the unwrapped module, ``trainer.ddp_model`` the one ``step_fn`` receives.
        step_fn: ``step_fn(model, batch)``; runs under autocast; must return the mean loss of its batch.
        batches: batch factory ``(epoch, start) -> iterable``; ``len(batches)`` (micro-batches per epoch),
            when defined, lets ``train.epochs`` set the length and ``optim.warmup_epochs`` the warmup.
        cfg: the run's :class:`Config`; it is saved as ``OUTPUT/config.yaml``.
        runtime: defaults to ``Runtime.from_env(cfg.train.device, cfg.train.precision)``.
        optimizer: defaults to :func:`~videomap.train.optim.build_optimizer` on the model after it has been
            moved to the device (build your own on ``trainer``-moved parameters if you pass one).
        lr_fn: ``step -> lr``; defaults to :func:`~videomap.train.schedule.build_lr_fn`.
        callbacks: :class:`~videomap.train.callbacks.Callback` objects.
        eval_fn: ``eval_fn(trainer) -> dict``, run every ``train.eval_every`` steps (at each epoch end when
            0) and at the end, on every rank (reduce across ranks inside it if it shards the data).
        generators: extra named ``torch.Generator`` objects to checkpoint; those stored as attributes of
            the model's submodules are found automatically.
        find_unused_parameters: passed to DDP.
    """

    def __init__(
        self,
        model: nn.Module,
        step_fn: StepFn,
        batches: BatchFactory,
        cfg: Config,
        *,
        runtime: Runtime | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        lr_fn: Callable[[int], float] | None = None,
        callbacks: Sequence[Callback] = (),
        eval_fn: Callable[["Trainer"], Mapping[str, Any]] | None = None,
        generators: Mapping[str, torch.Generator] | None = None,
        find_unused_parameters: bool = False,
    ):
        self.cfg = cfg
        self.tcfg = cfg.train
        self.runtime = runtime or Runtime.from_env(cfg.train.device, cfg.train.precision)
        if self.runtime.precision != cfg.train.precision:
            self.runtime.precision = cfg.train.precision
        if self.tcfg.grad_accum < 1:
            raise ValueError(f"train.grad_accum must be >= 1, got {self.tcfg.grad_accum}")
        self.model = model.to(self.runtime.device)
        self.optimizer = optimizer if optimizer is not None else build_optimizer(self.model, cfg.optim)
        self.ddp_model = self.runtime.wrap(self.model, find_unused_parameters=find_unused_parameters)
        self.step_fn = step_fn
        self.batches = batches
        self.callbacks = list(callbacks)
        self.eval_fn = eval_fn
        self.generators: dict[str, torch.Generator] = {**find_generators(self.model), **(generators or {})}
        self.output_dir = Path(self.tcfg.output_dir)

        self.steps_per_epoch: int | None = None
        try:
            self.steps_per_epoch = max(1, len(batches) // self.tcfg.grad_accum)  # type: ignore[arg-type]
        except TypeError:
            pass
        if self.tcfg.max_steps > 0:
            self.total_steps = int(self.tcfg.max_steps)
        elif self.tcfg.epochs > 0 and self.steps_per_epoch:
            self.total_steps = int(self.tcfg.epochs * self.steps_per_epoch)
        else:
            raise ValueError(
                "set train.max_steps, or train.epochs with a batch factory that has a length "
                f"(got max_steps={self.tcfg.max_steps}, epochs={self.tcfg.epochs})"
            )
        self.lr_fn = lr_fn or build_lr_fn(cfg.optim, self.total_steps, self.steps_per_epoch)

        # Loop state; with the module/optimizer/RNG states this is everything a checkpoint holds.
        self.step = 0
        self.epoch = 0
        self.position = 0  # micro-batches of ``epoch`` already consumed
        self.skipped_steps = 0
        self.last_metrics: dict[str, Any] = {}

        self._it: Iterator[Any] | None = None
        self._it_yielded = False
        self._epoch_done: int | None = None
        self._epoch_pending: int | None = None
        self._it_from_start = True
        self._bad_streak = 0
        self._stop = False
        self._stop_agreed = False
        self._last_eval_step = -1
        self._jsonl: JsonlLogger | None = None
        self._tb: TensorBoardLogger | None = None
        self._bar = None

    # ------------------------------------------------------------------------------------------- control

    def request_stop(self) -> None:
        """Stop after the current step, saving a checkpoint first (what SIGTERM does)."""
        self._stop = True

    @property
    def checkpoint_file(self) -> Path:
        return checkpoint_path(self.output_dir)

    # --------------------------------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict[str, Any]:
        """This rank's view of the training state (RNG states of this rank only)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "position": self.position,
            "skipped_steps": self.skipped_steps,
            "world_size": self.runtime.world_size,
            "callbacks": {k: v for k, v in ((cb.key, cb.state_dict()) for cb in self.callbacks) if v is not None},
            "config": self.cfg.to_dict(),
        }

    def save_checkpoint(self) -> Path:
        """Write ``OUTPUT/checkpoints/last.pt`` atomically. Collective: call it on every rank."""
        rngs = self.runtime.all_gather_object(capture_rng_state(self.generators))
        path = self.checkpoint_file
        if self.runtime.is_main:
            state = self.state_dict()
            state["rng"] = rngs
            save_checkpoint(state, path)
        self.runtime.barrier()
        return path

    def load_checkpoint(self, path: Path) -> None:
        """Restore the state saved by :meth:`save_checkpoint` (weights, optimizer, position, RNGs)."""
        state = load_checkpoint(path, map_location="cpu")
        missing = [k for k in ("model", "optimizer", "step", "epoch", "position", "rng") if k not in state]
        if missing:
            raise CheckpointError(
                f"{path} is not a videomap training checkpoint (missing {', '.join(missing)}); to start from "
                "saved weights use model.checkpoint=DIR, to start over set train.resume=none"
            )
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(
                f"checkpoint {path} does not fit this model/optimizer (was it written with another model.name "
                f"or optim.layer_decay?): {e}. Use another train.output_dir or train.resume=none."
            ) from e
        self.step, self.epoch, self.position = int(state["step"]), int(state["epoch"]), int(state["position"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        # The end of an epoch whose last batch was consumed before the save was already handled then.
        self._epoch_done = self.epoch - 1
        try:
            if self.position >= len(self.batches):  # type: ignore[arg-type]
                self._epoch_done = self.epoch
        except TypeError:
            pass
        rngs = state["rng"]
        if len(rngs) == self.runtime.world_size:
            restore_rng_state(rngs[self.runtime.rank], self.generators)
        else:
            # Another number of processes: the data order still continues exactly (it is global), but
            # per-rank random streams cannot be mapped, so they are re-derived from the seed and the step.
            log.warning("checkpoint written by %d processes, resuming with %d: RNG streams re-seeded, the run "
                        "continues correctly but not bit-identically", len(rngs), self.runtime.world_size)
            self.runtime.seed(self.tcfg.seed + 1_000_003 * self.step)
        saved_cbs = state.get("callbacks", {})
        for cb in self.callbacks:
            if cb.key in saved_cbs:
                cb.load_state_dict(saved_cbs[cb.key])
        log.info("resumed from %s at step %d (epoch %d, batch %d)", path, self.step, self.epoch, self.position)

    # ---------------------------------------------------------------------------------------------- data

    def _next_batch(self) -> Any:
        while True:
            if self._it is None:
                self._it = iter(self.batches(self.epoch, self.position))
                self._it_yielded = False
                self._it_from_start = self.position == 0
            try:
                batch = next(self._it)
            except StopIteration:
                if self._it_from_start and not self._it_yielded:
                    raise RuntimeError(
                        f"epoch {self.epoch} produced no batches: the training set is smaller than one global "
                        f"batch (train.batch_size={self.tcfg.batch_size})"
                    ) from None
                self._mark_epoch_end(self.epoch)
                self._it = None
                self.epoch += 1
                self.position = 0
                continue
            self._it_yielded = True
            self.position += 1
            try:
                if self.position == len(self.batches):  # type: ignore[arg-type]
                    self._mark_epoch_end(self.epoch)
            except TypeError:
                pass
            return batch

    def _mark_epoch_end(self, epoch: int) -> None:
        # Epoch-end work (evaluation, callbacks) waits for the step boundary; it fires once per epoch.
        if self._epoch_done is None or self._epoch_done < epoch:
            self._epoch_done = epoch
            self._epoch_pending = epoch

    # ---------------------------------------------------------------------------------------------- step

    def _train_step(self) -> dict[str, torch.Tensor]:
        """Forward/backward over ``grad_accum`` micro-batches; returns this rank's step metrics."""
        rt, accum = self.runtime, self.tcfg.grad_accum
        self.ddp_model.train()
        sums: dict[str, torch.Tensor] = {}
        for micro in range(accum):
            batch = rt.to_device(self._next_batch())
            # Only the last micro-batch all-reduces gradients; the others accumulate locally.
            sync = micro == accum - 1 or not rt.distributed
            ctx = contextlib.nullcontext() if sync else self.ddp_model.no_sync()
            with ctx:
                with rt.autocast():
                    out = self.step_fn(self.ddp_model, batch)
                if isinstance(out, torch.Tensor):
                    out = {"loss": out}
                if not isinstance(out, Mapping) or "loss" not in out:
                    raise TypeError(f"step_fn must return a loss tensor or a dict with a 'loss' entry, got {type(out).__name__}")
                loss = out["loss"]
                (loss.float() / accum).backward()
            for k, v in out.items():
                if isinstance(v, torch.Tensor) and v.numel() == 1:
                    v = v.detach().float().reshape(())
                elif isinstance(v, (int, float)) and not isinstance(v, bool):
                    v = torch.tensor(float(v), device=rt.device)
                else:
                    continue
                sums[k] = sums[k] + v if k in sums else v
        return {k: v / accum for k, v in sums.items()}

    def _clip_and_check(self, metrics: dict[str, torch.Tensor]) -> tuple:
        params = [p for p in self.model.parameters() if p.requires_grad]
        clip = self.tcfg.clip_grad
        max_norm = float(clip) if clip else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm=max_norm)
        grad_norm = grad_norm.to(self.runtime.device).float()
        # One small all-reduce decides for every rank together: skipping on one rank only would desync DDP.
        flags = torch.stack([
            (~torch.isfinite(metrics["loss"])).float(),
            (~torch.isfinite(grad_norm)).float(),
            torch.tensor(float(self._stop), device=self.runtime.device),
        ])
        self.runtime.all_reduce(flags, op="max")
        bad_loss, bad_grad, stop = (bool(x) for x in flags.tolist())
        self._stop_agreed = stop
        return grad_norm, bad_loss or bad_grad

    def _skip_step(self, metrics: Mapping[str, torch.Tensor], grad_norm: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self._bad_streak += 1
        self.skipped_steps += 1
        log.warning(
            "step %d: non-finite loss or gradient (loss=%s, grad_norm=%s); update skipped (%d in a row, limit %d)",
            self.step + 1, to_float(metrics["loss"]), to_float(grad_norm), self._bad_streak, self.tcfg.max_bad_steps,
        )
        if self._bad_streak >= self.tcfg.max_bad_steps:
            raise NonFiniteLossError(
                f"{self._bad_streak} consecutive steps had a non-finite loss or gradient (last at step "
                f"{self.step + 1}, {self.skipped_steps} skipped in total); stopping. Weights are those of step "
                f"{self.step}. Try a lower optim.lr, train.clip_grad=1.0, train.precision=fp32, or check the "
                "data for NaNs."
            )

    # ------------------------------------------------------------------------------------------- logging

    def _open_sinks(self) -> None:
        if not self.runtime.is_main:
            return
        self._jsonl = JsonlLogger(self.output_dir / "metrics.jsonl", keep_until_step=self.step)
        self._tb = TensorBoardLogger(self.output_dir / "tensorboard")
        mode = self.tcfg.progress
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "log"
        if mode == "bar":
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total_steps, initial=self.step, dynamic_ncols=True, desc="train",
                             unit="step", file=sys.stderr)

    def _close_sinks(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def _check_same_metrics(self, keys: list[str]) -> None:
        """Raise on every process together when the processes' metric names differ. Collective.

        The metrics are averaged in one all-reduce of a stacked tensor, which only lines up when every
        process stacks the same names; otherwise the processes would wait on each other forever.
        """
        if not self.runtime.distributed:
            return
        names = self.runtime.all_gather_object(keys)
        if any(n != keys for n in names):
            shown = "; ".join(f"rank {r}: {', '.join(n)}" for r, n in enumerate(names))
            raise RuntimeError(f"step_fn returned different metrics on different processes ({shown}); it must "
                               "return the same names on every process, also for a batch with no usable samples")

    def _log_window(self, window: dict[str, list[torch.Tensor]], t_window: float, n_steps: int) -> None:
        """Average the window's metrics over steps and ranks; write them (rank 0). Collective."""
        keys = sorted(window)
        self._check_same_metrics(keys)
        means = torch.stack([torch.stack(window[k]).mean() for k in keys]) if keys else torch.zeros(0)
        means = self.runtime.all_reduce(means.to(self.runtime.device), op="mean")
        record: dict[str, Any] = {"step": self.step, "epoch": self.epoch}
        record.update({k: to_float(v) for k, v in zip(keys, means.tolist())})
        record["lr"] = self.lr_fn(self.step - 1)
        record["skipped_steps"] = self.skipped_steps
        record["sec_per_step"] = t_window / max(1, n_steps)
        record["time"] = time.time()
        self.last_metrics = record
        if not self.runtime.is_main:
            return
        assert self._jsonl is not None
        self._jsonl.log(record)
        if self._tb is not None:
            self._tb.log({f"train/{k}": v for k, v in record.items() if k not in ("step", "epoch", "time")}, self.step)
        if self._bar is not None:
            loss = record.get("loss")
            self._bar.set_postfix(loss="nan" if loss is None else f"{loss:.4g}", lr=f"{record['lr']:.2e}",
                                  refresh=False)
        else:
            extras = " | ".join(
                f"{k} {v:.4g}" for k, v in record.items()
                if k not in ("step", "epoch", "lr", "time", "sec_per_step", "skipped_steps", "loss") and v is not None
            )
            eta = record["sec_per_step"] * (self.total_steps - self.step)
            loss = record.get("loss")
            log.info("step %d/%d | epoch %d | loss %s | lr %.3e | %.3f s/step | eta %s%s",
                     self.step, self.total_steps, self.epoch, "nan" if loss is None else f"{loss:.4f}",
                     record["lr"], record["sec_per_step"], _format_eta(eta), f" | {extras}" if extras else "")

    def _evaluate(self) -> None:
        if self.eval_fn is None or self._last_eval_step == self.step:
            return
        self._last_eval_step = self.step
        metrics = dict(self.eval_fn(self))
        if self.runtime.is_main:
            record = {"step": self.step, "epoch": self.epoch}
            record.update({(k if "/" in k else f"val/{k}"): v for k, v in metrics.items()
                           if isinstance(v, (int, float, torch.Tensor)) and not isinstance(v, bool)})
            if self._jsonl is not None:
                self._jsonl.log(record)
            if self._tb is not None:
                self._tb.log(record, self.step)
            shown = " | ".join(f"{k} {to_float(v):.4g}" for k, v in record.items()
                               if k not in ("step", "epoch") and to_float(v) is not None)
            log.info("eval at step %d | %s", self.step, shown)
        for cb in self.callbacks:
            cb.on_eval_end(self, metrics)

    # ----------------------------------------------------------------------------------------------- fit

    @contextlib.contextmanager
    def _sigterm_saves(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers can only be installed from the main thread
            return

        def handler(signum, frame):
            log.warning("SIGTERM received: saving a checkpoint after this step, then stopping")
            self._stop = True

        previous = signal.signal(signal.SIGTERM, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)

    def fit(self) -> TrainResult:
        """Train until ``total_steps`` (continuing from a checkpoint per ``train.resume``)."""
        self._start()
        self._open_sinks()
        interrupted = False
        try:
            with self._training_context():
                for cb in self.callbacks:
                    cb.on_train_start(self)
                window = _MetricWindow()
                while self.step < self.total_steps and not interrupted:
                    self._step_once(window)
                    interrupted = self._stopped_here()
                if not interrupted:
                    self._finish()
        finally:
            self._close_sinks()
            self._it = None  # releases DataLoader workers
        return TrainResult(step=self.step, epoch=self.epoch, interrupted=interrupted, metrics=self.last_metrics,
                           checkpoint=self.checkpoint_file, skipped_steps=self.skipped_steps)

    def _start(self) -> None:
        """Output folder and config, then the resumed state (or the seed), then one line saying what runs."""
        rt = self.runtime
        setup_logging(rt.rank)
        if rt.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, self.output_dir / "config.yaml")
        resume_from = resolve_resume(self.output_dir, self.tcfg.resume)
        if resume_from is not None:
            self.load_checkpoint(resume_from)
        else:
            # The training RNG stream starts from the seed alone, whatever model construction consumed.
            rt.seed(self.tcfg.seed)
        n_params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        log.info("training %s (%.2fM trainable parameters) for %d steps on %d x %s, %s, output %s",
                 type(self.model).__name__, n_params / 1e6, self.total_steps, rt.world_size, rt.device.type,
                 rt.precision, self.output_dir)

    @contextlib.contextmanager
    def _training_context(self) -> Iterator[None]:
        """SIGTERM saves and stops; with a progress bar, log lines go above it instead of breaking it."""
        with contextlib.ExitStack() as stack:
            stack.enter_context(self._sigterm_saves())
            if self._bar is not None:
                from tqdm.contrib.logging import logging_redirect_tqdm

                stack.enter_context(logging_redirect_tqdm(loggers=[logging.getLogger("videomap")]))
            yield

    def _step_once(self, window: "_MetricWindow") -> None:
        """One optimizer step (or a skipped one, on a non-finite loss or gradient) and what follows it."""
        set_lr(self.optimizer, self.lr_fn(self.step))
        metrics = self._train_step()
        grad_norm, bad = self._clip_and_check(metrics)
        if bad:
            self._skip_step(metrics, grad_norm)
            return
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self._bad_streak = 0
        metrics["grad_norm"] = grad_norm
        window.add(metrics)
        if self._bar is not None:
            self._bar.update(1)
        for cb in self.callbacks:
            cb.on_step_end(self, metrics)
        self._after_step(window)

    def _after_step(self, window: "_MetricWindow") -> None:
        """The periodic work at a step boundary: the log line, evaluation, epoch end, the checkpoint."""
        if self.step % max(1, self.tcfg.log_every) == 0 or self.step == self.total_steps:
            self._log_window(window.values, time.perf_counter() - window.start, window.steps)
            window.reset()
        if self.tcfg.eval_every > 0 and self.step % self.tcfg.eval_every == 0:
            self._evaluate()
        if self._epoch_pending is not None:
            epoch, self._epoch_pending = self._epoch_pending, None
            if self.tcfg.eval_every <= 0:
                self._evaluate()
            for cb in self.callbacks:
                cb.on_epoch_end(self, epoch)
        if self.tcfg.save_every > 0 and self.step % self.tcfg.save_every == 0 and self.step < self.total_steps:
            self.save_checkpoint()

    def _stopped_here(self) -> bool:
        """Save and report a requested stop (SIGTERM, :meth:`request_stop`); ``True`` when training stops."""
        # Under DDP every rank must take the same decision, so only the all-reduced flag counts there; a
        # request made during this step's callbacks takes effect after the next step.
        stop = self._stop_agreed if self.runtime.distributed else self._stop
        if not stop or self.step >= self.total_steps:
            return False
        path = self.save_checkpoint()
        log.warning("stopped at step %d; checkpoint saved to %s (train.resume=auto continues)", self.step, path)
        return True

    def _finish(self) -> None:
        """The last evaluation, the callbacks' ``on_train_end`` and the final checkpoint."""
        self._evaluate()
        for cb in self.callbacks:
            cb.on_train_end(self)
        path = self.save_checkpoint()
        log.info("finished %d steps; checkpoint %s", self.step, path)


class _MetricWindow:
    """The metrics of the steps since the last log line (tensors, averaged when the line is written)."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.values: dict[str, list[torch.Tensor]] = {}
        self.start = time.perf_counter()
        self.steps = 0

    def add(self, metrics: Mapping[str, torch.Tensor]) -> None:
        for k, v in metrics.items():
            self.values.setdefault(k, []).append(v)
        self.steps += 1
