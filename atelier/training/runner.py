"""Running one training on a worker: claim with a lease, preprocess the dataset, run the LoRA loop, record it.

The database row is the source of truth and storage holds every file a run needs to continue elsewhere: the
processed dataset (``training/{id}/dataset``) and the step checkpoints with their optimizer state
(``training/{id}/checkpoints``). A killed worker's lease expires; the reaper publishes the training again and
the next claim resumes it (``is_resumed``, ``resume_attempt_count``) from the newest checkpoint in storage.
Cancellation is a flag in the row: the loop sees it before the next step, saves a checkpoint and stops.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image
from sqlalchemy import select, update

from atelier.core.db import lock_for_write, retry_on_disconnect, session_scope
from atelier.core.errors import InvalidInputError
from atelier.core.inputs import classify_source, fetch_url, open_image
from atelier.core.time import utcnow
from atelier.providers.base import ProviderError
from atelier.storage.service import TenantStorage
from atelier.tasks.enums import ErrorCategory
from atelier.training.enums import RUNNING_STATUSES, TrainingStatus
from atelier.training.models import TrainingTask as TrainingRow
from atelier.training.service import MAX_LOSS_POINTS, PREPROCESSING_SHARE, append_log, transition
from atelier.training.transforms import apply_transforms

if TYPE_CHECKING:
    from atelier.core.runtime import Runtime
    from atelier.training.lora import LoraTrainingResult, StepReport

log = logging.getLogger(__name__)
S = TrainingStatus


class LeaseLostError(Exception):
    """Another worker took the training over: stop without recording anything."""


class CancelledError(Exception):
    """The training was cancelled while it ran."""


@dataclass
class Claimed:
    """A snapshot of the row taken in the claim transaction."""

    id: uuid.UUID
    tenant: str
    status: TrainingStatus
    values: dict[str, Any]
    resumed: bool


@dataclass
class _State:
    """What the heartbeat thread and the loop share."""

    cancel: bool = False
    lost: bool = False
    stop: threading.Event = field(default_factory=threading.Event)


COPY_FIELDS = [
    "trigger_word",
    "rank",
    "steps",
    "learning_rate",
    "batch_size",
    "gradient_accumulation",
    "optimizer",
    "resolution",
    "save_every",
    "max_step_saves_to_keep",
    "sample_every",
    "sample_steps",
    "sample_prompts",
    "source_images",
    "base_model_path",
    "preprocessing_transforms",
    "preprocessing_captioning_strategy",
    "preprocessing_captioning_prompt",
    "processed_dataset_path",
    "preprocessing_completed_at",
    "outputs",
    "training_folder",
    "bypass_guidance_embedding",
]


class TrainingRunner:
    """Executes trainings for one runtime (the ``training.run`` Celery task)."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    def run(self, training_id: str, message_id: str | None = None) -> None:
        """Entry point of the Celery task: claim, run, record."""
        try:
            tid = uuid.UUID(training_id)
        except ValueError:
            log.error("dropping training message with malformed id %r", training_id)
            return
        owner = f"{self.rt.worker_name}:{uuid.uuid4().hex[:8]}"
        claimed = retry_on_disconnect(lambda: self._claim(tid, owner, message_id))
        if claimed is None:
            log.debug("training %s not claimable; message dropped", tid)
            return
        TrainingJob(self.rt, claimed, owner).run()

    def _claim(self, tid: uuid.UUID, owner: str, message_id: str | None) -> Claimed | None:
        settings = self.rt.settings
        now = utcnow()
        with session_scope(self.rt.sessions) as session:
            lock_for_write(session)
            row = session.scalar(select(TrainingRow).where(TrainingRow.id == tid).with_for_update())
            if row is None or (message_id is not None and row.message_id != message_id):
                return None  # gone, or a stale duplicate of an older message
            status = TrainingStatus(row.status)
            resumed = False
            if status is S.PENDING:
                transition(session, self.rt, row, S.PREPROCESSING)
                row.celery_preprocessing_task_id = message_id
            elif status in RUNNING_STATUSES:
                if row.lease_expires_at is not None and row.lease_expires_at > now:
                    return None  # a live worker holds it
                if row.cancel_requested:
                    transition(session, self.rt, row, S.CANCELLED, message="cancelled while its worker was lost")
                    return None
                if row.resume_attempt_count >= settings.tasks.max_resumes:
                    message = f"worker lost {row.resume_attempt_count + 1} time(s); giving up"
                    transition(session, self.rt, row, S.FAILED, message=message, category=ErrorCategory.WORKER_LOST)
                    return None
                resumed = True
                row.is_resumed = True
                row.resume_attempt_count += 1
                row.last_resume_attempt = now
                append_log(
                    row,
                    f"resumed ({row.resume_attempt_count}) after worker {row.lease_owner} was lost",
                    settings.training.max_log_chars,
                )
            else:
                return None
            row.lease_owner = owner
            row.lease_expires_at = now + timedelta(seconds=settings.tasks.lease_seconds)
            row.heartbeat_at = now
            row.attempt += 1
            values = {name: getattr(row, name) for name in COPY_FIELDS}
            return Claimed(row.id, row.tenant_id, TrainingStatus(row.status), values, resumed)


class TrainingJob:
    """One claimed run of a training."""

    def __init__(self, runtime: Runtime, claimed: Claimed, owner: str) -> None:
        self.rt = runtime
        self.c = claimed
        self.v = claimed.values
        self.owner = owner
        self.state = _State()
        self.storage = TenantStorage(runtime.storage, claimed.tenant)
        self.folder = str(self.v["training_folder"])
        self.work = runtime.settings.training_root / str(claimed.id)
        self._last_write = 0.0
        self._last_poll = 0.0
        self._uploaded: set[str] = set()
        self.outputs: dict[str, Any] = dict(self.v.get("outputs") or {})

    # ------------------------------------------------------------------------------------------ lifecycle

    def run(self) -> None:
        """Preprocess (unless a previous attempt finished it), train, record the outcome."""
        beat = threading.Thread(target=self._heartbeat, name=f"training-heartbeat-{self.c.id}", daemon=True)
        beat.start()
        try:
            if self.c.status is S.PREPROCESSING or not self.v.get("processed_dataset_path"):
                images, captions = self._preprocess()
                self._record(lambda s, row: transition(s, self.rt, row, S.TRAINING))
            else:
                images, captions = self._load_dataset()
            result = self._train(images, captions)
            if result is not None:
                self._finish(result)
        except LeaseLostError:
            log.warning("training %s: lease lost to another worker; stopping", self.c.id)
        except CancelledError:
            self._record(lambda s, row: transition(s, self.rt, row, S.CANCELLED, message="cancelled"))
        except (InvalidInputError, ValueError) as exc:
            self._fail(str(exc), ErrorCategory.INVALID_INPUT)
        except ProviderError as exc:
            self._fail(f"captioning failed: {exc}", exc.category or ErrorCategory.PROVIDER_ERROR)
        except Exception as exc:  # recorded truthfully; the row never stays running
            log.exception("training %s failed", self.c.id)
            self._fail(f"{type(exc).__name__}: {exc}", ErrorCategory.INTERNAL_ERROR)
        finally:
            self.state.stop.set()
            beat.join(timeout=5)
            shutil.rmtree(self.work, ignore_errors=True)

    def _fail(self, message: str, category: ErrorCategory) -> None:
        with contextlib.suppress(LeaseLostError):
            self._record(lambda s, row: transition(s, self.rt, row, S.FAILED, message=message, category=category))

    def _heartbeat(self) -> None:
        tasks = self.rt.settings.tasks
        interval = tasks.heartbeat_seconds or max(tasks.lease_seconds / 3, 0.05)
        while not self.state.stop.wait(interval):
            try:
                with session_scope(self.rt.sessions) as session:
                    now = utcnow()
                    result = session.execute(
                        update(TrainingRow)
                        .where(TrainingRow.id == self.c.id, TrainingRow.lease_owner == self.owner)
                        .values(lease_expires_at=now + timedelta(seconds=tasks.lease_seconds), heartbeat_at=now)
                        .returning(TrainingRow.cancel_requested)
                    ).first()
                if result is None:
                    self.state.lost = True
                    return
                self.state.cancel = bool(result[0])
            except Exception as exc:  # the database may be down for a moment: the lease has slack
                log.warning("training %s heartbeat failed: %s", self.c.id, exc)

    def _record(self, change: Any) -> None:
        """Apply ``change(session, row)`` to the row if this worker still owns it (else LeaseLostError)."""

        def work() -> None:
            with session_scope(self.rt.sessions) as session:
                lock_for_write(session)
                row = session.scalar(select(TrainingRow).where(TrainingRow.id == self.c.id).with_for_update())
                if row is None or row.lease_owner != self.owner:
                    raise LeaseLostError(str(self.c.id))
                change(session, row)
                self.state.cancel = bool(row.cancel_requested)

        retry_on_disconnect(work)
        self._last_write = time.monotonic()

    def _progress(self, force: bool, **values: Any) -> None:
        """Write progress fields (at most every ``progress_interval_seconds`` unless ``force``)."""
        if self.state.lost:
            raise LeaseLostError(str(self.c.id))
        interval = self.rt.settings.training.progress_interval_seconds
        if not force and time.monotonic() - self._last_write < interval:
            return

        def apply(_session: Any, row: TrainingRow) -> None:
            for name, value in values.items():
                setattr(row, name, value)

        self._record(apply)

    def _poll_cancel(self) -> None:
        """Read the cancel flag (and ownership) at most every ``tasks.cancel_poll_seconds``."""
        now = time.monotonic()
        if now - self._last_poll < self.rt.settings.tasks.cancel_poll_seconds:
            return
        self._last_poll = now

        def read() -> Any:
            with session_scope(self.rt.sessions) as session:
                stmt = select(TrainingRow.cancel_requested, TrainingRow.lease_owner).where(TrainingRow.id == self.c.id)
                return session.execute(stmt).first()

        found = retry_on_disconnect(read)
        if found is None or found[1] != self.owner:
            self.state.lost = True
        else:
            self.state.cancel = bool(found[0])

    def _check(self) -> None:
        self._poll_cancel()
        if self.state.lost:
            raise LeaseLostError(str(self.c.id))
        if self.state.cancel:
            raise CancelledError(str(self.c.id))

    def _log(self, line: str) -> None:
        self._record(lambda _s, row: append_log(row, line, self.rt.settings.training.max_log_chars))

    # -------------------------------------------------------------------------------------- preprocessing

    def _fetch(self, index: int, source: str) -> bytes:
        loc: tuple[str | int, ...] = ("source_images", index)
        if classify_source(source, loc=loc) == "url":
            return fetch_url(source, limits=self.rt.fetch_limits, client=self.rt.http, loc=loc)
        return self.storage.read(source)

    def _preprocess(self) -> tuple[list[Image.Image], list[str]]:
        from atelier.training.captions import caption_images

        sources: list[str] = list(self.v["source_images"])
        total = len(sources)
        self._progress(True, preprocessing_stage="downloading", processed_files_count=0, total_files_count=total)
        originals: list[Image.Image] = []
        for i, source in enumerate(sources):
            self._check()
            data = self._fetch(i, source)
            image = open_image(data, limits=self.rt.fetch_limits, loc=("source_images", i))
            if min(image.size) < 8:
                raise InvalidInputError(f"source image {i} is too small ({image.width}×{image.height})")
            originals.append(image.convert("RGB"))
            share = PREPROCESSING_SHARE * 0.6 * (i + 1) / total
            self._progress(
                i + 1 == total, processed_files_count=i + 1, preprocessing_stage="downloading", progress=share
            )
        self._progress(True, preprocessing_stage="transforming")
        transforms = list(self.v.get("preprocessing_transforms") or [])
        items = apply_transforms([(im, i) for i, im in enumerate(originals)], transforms)
        self._check()
        self._progress(True, preprocessing_stage="captioning", progress=PREPROCESSING_SHARE * 0.7)
        firsts: dict[int, Image.Image] = {}
        for image, key in items:
            firsts.setdefault(key, image)
        by_source = caption_images(
            self.rt,
            self.storage,
            self.c.tenant,
            [firsts[k] for k in sorted(firsts)],
            trigger=str(self.v["trigger_word"]),
            strategy=str(self.v["preprocessing_captioning_strategy"]),
            prompt=self.v.get("preprocessing_captioning_prompt"),
            check=self._check,
        )
        caption_of = dict(zip(sorted(firsts), by_source, strict=True))
        images = [image for image, _ in items]
        captions = [caption_of[key] for _, key in items]
        self._progress(True, preprocessing_stage="saving", progress=PREPROCESSING_SHARE * 0.9)
        dataset = f"{self.folder}/dataset"
        manifest = []
        for n, (image, caption) in enumerate(zip(images, captions, strict=True)):
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            self.storage.save(f"{dataset}/{n:04d}.png", buffer.getvalue(), "image/png")
            self.storage.save(f"{dataset}/{n:04d}.txt", caption.encode(), "text/plain")
            manifest.append({"image": f"{n:04d}.png", "caption": caption})
        self.storage.save(f"{dataset}/manifest.json", json.dumps(manifest, indent=1).encode(), "application/json")
        self._progress(True, preprocessing_stage="completed", processed_dataset_path=dataset)
        self._log(f"dataset: {len(images)} image(s) from {total} source(s); first caption: {captions[0]!r}")
        return images, captions

    def _load_dataset(self) -> tuple[list[Image.Image], list[str]]:
        dataset = str(self.v["processed_dataset_path"])
        manifest = json.loads(self.storage.read(f"{dataset}/manifest.json"))
        images = [
            Image.open(io.BytesIO(self.storage.read(f"{dataset}/{item['image']}"))).convert("RGB") for item in manifest
        ]
        return images, [str(item["caption"]) for item in manifest]

    # ------------------------------------------------------------------------------------------- training

    def _resume_checkpoint(self, output_dir: Path) -> Path | None:
        from atelier.training.lora import optim_path

        prefix = f"{self.folder}/checkpoints/"
        found = sorted(o.path for o in self.storage.list(prefix, 1000) if o.path.endswith(".safetensors"))
        if not found:
            return None
        latest = found[-1]
        local = output_dir / latest.rsplit("/", 1)[-1]
        local.write_bytes(self.storage.read(latest))
        optim = optim_path(Path(latest)).as_posix()
        if self.storage.stat(optim) is not None:
            optim_path(local).write_bytes(self.storage.read(optim))
        self._uploaded.update({latest, optim})
        return local

    def _train(self, images: list[Image.Image], captions: list[str]) -> LoraTrainingResult | None:
        """The LoRA loop; None when it was cancelled (and recorded so)."""
        from atelier.training.lora import LoraTrainingConfig, checkpoint_step, train_lora

        self._check()
        output_dir = self.work / "output"
        shutil.rmtree(output_dir, ignore_errors=True)
        output_dir.mkdir(parents=True)
        resume_from = self._resume_checkpoint(output_dir)
        v = self.v
        config = LoraTrainingConfig(
            base_model_path=str(v["base_model_path"]),
            output_dir=output_dir,
            rank=int(v["rank"]),
            learning_rate=float(v["learning_rate"]),
            steps=int(v["steps"]),
            batch_size=int(v["batch_size"]),
            gradient_accumulation=int(v["gradient_accumulation"]),
            resolution=int(v["resolution"]),
            save_every=int(v["save_every"]),
            max_step_saves_to_keep=int(v["max_step_saves_to_keep"]),
            sample_every=int(v["sample_every"]) if v["sample_prompts"] else 0,
            sample_prompts=list(v["sample_prompts"]),
            sample_steps=int(v["sample_steps"]),
            optimizer=v["optimizer"] if v["optimizer"] in ("adamw", "adamw8bit") else "adamw8bit",
            bypass_guidance_embedding=bool(v["bypass_guidance_embedding"]),
        )
        if resume_from is not None:
            self._log(f"resuming from {resume_from.name} (step {checkpoint_step(resume_from)})")
        else:
            self._log(f"training: {config.steps} steps on {len(images)} image(s), base {config.base_model_path}")
        losses: list[float] = list(self.outputs.get("loss", []))
        every = max(1, config.steps // MAX_LOSS_POINTS)
        log_every = max(1, config.steps // 20)

        def on_step(report: StepReport) -> None:
            if report.step % every == 0 or report.step == report.total_steps:
                losses.append(round(report.loss, 6))
            saved = bool(config.save_every and report.step % config.save_every == 0)
            sampled = bool(config.sample_every and report.step % config.sample_every == 0)
            if saved or sampled:
                self._sync_files(output_dir)
            progress = PREPROCESSING_SHARE + (100 - PREPROCESSING_SHARE) * report.step / report.total_steps
            values: dict[str, Any] = {
                "current_step": report.step,
                "total_steps": report.total_steps,
                "progress": min(progress, 99.9),
                "eta_seconds": round(report.eta_seconds),
                "outputs": {**self.outputs, "loss": losses[-MAX_LOSS_POINTS:]},
            }
            if report.step % log_every == 0:
                line = f"step {report.step}/{report.total_steps} loss {report.loss:.4f} eta {report.eta_seconds:.0f}s"

                def apply(_s: Any, row: TrainingRow) -> None:
                    for name, value in values.items():
                        setattr(row, name, value)
                    append_log(row, line, self.rt.settings.training.max_log_chars)

                self._record(apply)
            else:
                self._progress(saved or sampled, **values)

        def should_stop() -> bool:
            self._poll_cancel()
            return self.state.cancel or self.state.lost

        result = train_lora(config, images, captions, on_step=on_step, should_stop=should_stop, resume_from=resume_from)
        self.outputs["loss"] = losses[-MAX_LOSS_POINTS:]
        self.outputs["device"] = result.device
        self.outputs["optimizer"] = result.optimizer
        if result.optimizer != config.optimizer:
            self._log(f"optimizer: {result.optimizer} ({config.optimizer} needs bitsandbytes and a CUDA device)")
        self._sync_files(output_dir)
        if result.stopped:
            if self.state.lost:
                raise LeaseLostError(str(self.c.id))
            checkpoint = f"{self.folder}/checkpoints/{result.lora_path.name}"

            def cancelled(s: Any, row: TrainingRow) -> None:
                row.outputs = dict(self.outputs)
                row.local_model_path = checkpoint
                transition(s, self.rt, row, S.CANCELLED, message=f"cancelled at step {result.steps_done}")

            self._record(cancelled)
            return None
        return result

    def _sync_files(self, output_dir: Path) -> None:
        """Upload new checkpoints (with optimizer state) and samples; delete checkpoints pruned locally."""
        from atelier.training.lora import kept_checkpoints, optim_path

        checkpoints = []
        for local in kept_checkpoints(output_dir):
            path = f"{self.folder}/checkpoints/{local.name}"
            checkpoints.append(path)
            for file, target in ((local, path), (optim_path(local), optim_path(Path(path)).as_posix())):
                if target not in self._uploaded and file.is_file():
                    with file.open("rb") as handle:
                        self.storage.save(target, handle)
                    self._uploaded.add(target)
        for stale in set(self.outputs.get("checkpoints", [])) - set(checkpoints):
            self.storage.delete(stale)
            self.storage.delete(optim_path(Path(stale)).as_posix())
        samples = list(self.outputs.get("samples", []))
        folder = output_dir / "samples"
        for local in sorted(folder.glob("*.png")) if folder.is_dir() else []:
            path = f"{self.folder}/samples/{local.name}"
            if path not in self._uploaded:
                self.storage.save(path, local.read_bytes(), "image/png")
                self._uploaded.add(path)
                if path not in samples:
                    samples.append(path)
        self.outputs.update({"checkpoints": checkpoints, "samples": samples})

    def _finish(self, result: LoraTrainingResult) -> None:
        final = f"{self.folder}/lora.safetensors"
        with result.lora_path.open("rb") as handle:
            self.storage.save(final, handle)

        def completed(s: Any, row: TrainingRow) -> None:
            row.outputs = dict(self.outputs)
            row.local_model_path = final
            row.current_step = result.steps_done
            transition(s, self.rt, row, S.COMPLETED, message=None)
            append_log(
                row, f"saved {final} ({result.optimizer} on {result.device})", self.rt.settings.training.max_log_chars
            )

        self._record(completed)
