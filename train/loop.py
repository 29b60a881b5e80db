"""The training loop: SGD with a poly schedule, bf16 autocast, channels_last, DDP under torchrun, CSV/JSON
logs, checkpoints written atomically (temp file, then rename) and `resume` from OUT/last.pt, exactly
reproducible on CPU: a run interrupted and resumed ends with the weights of an uninterrupted one."""
import csv
import dataclasses
import json
import os
import sys
import time

import torch
import torch.distributed as dist

import pottsops
from train import data as datasets
from train.evaluate import evaluate, predict, save_panels
from train.loader import TrainBatches
from train.methods import batch_loss
from train.model import build_model


def build_datasets(config):
    if config.data == "camvid":
        return (datasets.camvid(config.root, config.train_split, config.ratio),
                datasets.camvid(config.root, config.val_split, config.ratio))
    if config.data == "acdc":
        return datasets.acdc(config.root, config.train_patients), datasets.acdc(config.root, config.val_patients)
    if config.data == "voc":
        return (datasets.voc(config.root, config.train_split, config.scribbles),
                datasets.voc(config.root, config.val_split, config.scribbles))
    if config.data == "folder":
        return (datasets.folder(config.root, config.train_split, config.num_classes, config.channels),
                datasets.folder(config.root, config.val_split, config.num_classes, config.channels))
    train_count, val_count = config.synthetic_size
    return datasets.GeneratedSet(train_count, config.crop[0], config.seed), \
        datasets.GeneratedSet(val_count, config.crop[0], config.seed + 1)


def build_test_set(config):
    """The held-out split scored once at the end, or None: ACDC's test_patients, another dataset's
    test_split (the generated set: a third draw)."""
    if config.data == "acdc":
        return datasets.acdc(config.root, config.test_patients) if config.test_patients else None
    if config.test_split is None:
        return None
    if config.data == "synthetic":
        return datasets.GeneratedSet(config.synthetic_size[1], config.crop[0], config.seed + 2)
    if config.data == "camvid":
        return datasets.camvid(config.root, config.test_split, config.ratio)
    if config.data == "voc":
        return datasets.voc(config.root, config.test_split, config.scribbles)
    return datasets.folder(config.root, config.test_split, config.num_classes, config.channels)


def normaliser(channels, device):
    """Network input from 0..255 features: ImageNet statistics for RGB, mean 0.5 / std 0.25 otherwise."""
    mean = torch.tensor([0.485, 0.456, 0.406] if channels == 3 else [0.5] * channels, device=device)
    std = torch.tensor([0.229, 0.224, 0.225] if channels == 3 else [0.25] * channels, device=device)
    return lambda image: (image / 255.0 - mean[:, None, None]) / std[:, None, None]


def _auto(flag, device):
    return flag == "on" or (flag == "auto" and device.type == "cuda")


def write_atomically(path, write):
    """write(tmp) into PATH.tmpPID, then rename it to path: a kill leaves the old file or none, never half of
    one (and a PATH.tmpPID, which _remove_stale_temporaries clears)."""
    tmp = f"{path}.tmp{os.getpid()}"
    write(tmp)
    os.replace(tmp, path)


def _write_json(value, path):
    with open(path, "w") as f:
        json.dump(value, f, indent=1)


class _Progress:
    """A bar on a terminal; elsewhere (a log file, a pipe) a line every LOG_SECONDS and at the epoch's end."""
    LOG_SECONDS = 30.0

    def __init__(self, total, enabled):
        self.total, self.enabled, self.bar = total, enabled, enabled and sys.stderr.isatty()
        self.start = self.logged = time.perf_counter()

    def update(self, done, text):
        if not self.enabled:
            return
        now = time.perf_counter()
        rate = done / max(now - self.start, 1e-9)
        if self.bar:
            bar = "#" * (20 * done // max(self.total, 1))
            print(f"\r[{bar:<20}] {done}/{self.total} {text} {rate:.2f} it/s", end="", file=sys.stderr, flush=True)
        elif now - self.logged >= self.LOG_SECONDS or done == self.total:
            self.logged = now
            print(f"{done}/{self.total} {text} {rate:.2f} it/s", file=sys.stderr, flush=True)

    def close(self):
        if self.bar:
            print(file=sys.stderr)


def run_progress(step, total_steps, trained_seconds, time_budget):
    """The fraction of the run done: of its steps, or of its time budget where that ends it first.  The
    poly decay and the warm-up follow it."""
    done = step / total_steps
    if time_budget:
        done = min(max(done, trained_seconds / time_budget), 1.0)
    return done


def train(config):
    """Train, evaluate, write OUT/{config.json, train_log.csv, eval_log.csv, last.pt, results.json,
    panels.png}; returns the results dict."""
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    if config.device == "auto":
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(config.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    amp, channels_last = _auto(config.amp, device), _auto(config.channels_last, device)
    pottsops.build()  # a first-use compile here, not inside the first step's time (and a time budget)
    torch.manual_seed(config.seed)

    train_set, val_set = build_datasets(config)
    test_set = build_test_set(config)
    channels = train_set.channels
    scale = tuple(s * config.input_scale for s in config.scale)
    batches = TrainBatches(train_set, config.batch_size, config.crop, scale=scale, flip=config.flip,
                           seed=config.seed, device=device, resident=_auto(config.resident, device),
                           workers=config.workers, rank=rank, world_size=world)
    model = build_model(train_set.num_classes, config.backbone, config.output_stride, channels,
                          config.pretrained).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if distributed and device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None) \
        if distributed else model
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    normalise = normaliser(channels, device)
    total_steps = config.steps or config.epochs * len(batches)
    epochs = -(-total_steps // len(batches))

    os.makedirs(config.out, exist_ok=True)
    checkpoint_path = os.path.join(config.out, "last.pt")
    step, epoch, start_in_epoch, best, history, trained, evaluated = 0, 0, 0, None, [], 0.0, 0.0
    # a run continues from its own checkpoint (resume), else from start_from's (a branch of a shared warm-up)
    source = checkpoint_path if config.resume and os.path.isfile(checkpoint_path) else config.start_from
    if rank == 0:
        _remove_stale_temporaries(config.out)
    if source is not None:
        state = load_checkpoint(source, "resume" if source == checkpoint_path else "start_from", model, optimizer,
                                device, config)
        step, epoch, start_in_epoch, best = state["step"], state["epoch"], state["step_in_epoch"], state["best"]
        history, trained = state["history"], state["trained_seconds"]
        evaluated = state.get("evaluated_seconds", 0.0)  # (checkpoints before it was recorded: none)
        torch.set_rng_state(state["rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        _print(rank, f"resumed from {source} at epoch {epoch}, step {step}")
    if rank == 0:  # the logs restart with the run, or go back to the checkpoint's step
        _keep_rows(os.path.join(config.out, "train_log.csv"), lambda row: int(row["step"]) <= step)
        # an evaluation row is appended before the checkpoint that records it: keep the ones it recorded
        recorded = [entry["step"] for entry in history]
        _keep_rows(os.path.join(config.out, "eval_log.csv"), lambda row: _consume(recorded, int(row["step"])))
    if rank == 0:
        with open(os.path.join(config.out, "config.json"), "w") as f:
            written = dataclasses.asdict(config)
            if written.get("root"):  # relative to where the run started: no machine's folders in results
                written["root"] = os.path.relpath(written["root"])
            json.dump(written, f, indent=1, default=str)

    def checkpoint(step_in_epoch):
        if rank == 0:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                     "epoch": epoch, "step_in_epoch": step_in_epoch, "best": best, "history": history,
                     "trained_seconds": trained, "evaluated_seconds": evaluated, "rng": torch.get_rng_state(),
                     "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                     "config": dataclasses.asdict(config)}
            write_atomically(checkpoint_path, lambda tmp: torch.save(state, tmp))

    spent = trained + evaluated

    def finished():
        over_budget = config.time_budget is not None and spent > config.time_budget
        return config.max_steps is not None and step >= config.max_steps or over_budget or step >= total_steps

    # a run resumed after its last checkpoint (a kill during the final evaluation) takes no further step: it
    # took one (step 1801 of 1800, or 301 of a 300-step warm-up its branches start from)
    stop = finished()
    while epoch < epochs and not stop:
        progress = _Progress(len(batches), config.progress and rank == 0)
        last = time.perf_counter()
        for index, batch in enumerate(batches.epoch(epoch, start_in_epoch), start=start_in_epoch):
            done = run_progress(step, total_steps, spent, config.time_budget)
            for group in optimizer.param_groups:
                group["lr"] = config.lr * (1 - done) ** config.poly_power
            image = batch["image"]
            if channels_last:
                image = image.contiguous(memory_format=torch.channels_last)
            tick = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = net(normalise(image))
            loss, labels = batch_loss(config.method, logits, batch, config.reg, warmup=done < config.warmup)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {float(loss)} at step {step} (epoch {epoch})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if rank == 0:
                seconds = time.perf_counter() - tick  # the step's time, without the Dice below
                _append_csv(os.path.join(config.out, "train_log.csv"),
                            {"step": step, "epoch": epoch, "lr": optimizer.param_groups[0]["lr"],
                             "loss": float(loss.detach()), "seconds": seconds,
                             **batch_dice(logits, labels, batch)})
            progress.update(index + 1, f"epoch {epoch + 1}/{epochs} loss {float(loss.detach()):.4f}")
            trained, last = trained + time.perf_counter() - last, time.perf_counter()
            spent = trained + evaluated  # of the time budget: training and the evaluations during the run
            if distributed and config.time_budget is not None:  # every rank: the same schedule, the same last step
                shared = torch.tensor(spent, device=device, dtype=torch.float64)
                dist.all_reduce(shared, op=dist.ReduceOp.MAX)  # (only rank 0 evaluates; the others wait in
                spent = float(shared)                          # their next step, inside their training time)
            if finished():
                stop = True
                checkpoint(index + 1)
                break
            if config.checkpoint_every and step % config.checkpoint_every == 0:
                checkpoint(index + 1)
        progress.close()
        if stop:
            break
        epoch, start_in_epoch = epoch + 1, 0
        if rank == 0 and epoch % config.eval_every == 0 and epoch < epochs:  # the last: below
            tick = time.perf_counter()
            scores = evaluate(model, val_set, normalise, device, volumes=config.data == "acdc", amp=amp,
                              limit=config.eval_limit, input_scale=config.input_scale)
            history.append({"epoch": epoch, "step": step, "train_seconds": round(trained, 1), **_headline(scores)})
            _append_csv(os.path.join(config.out, "eval_log.csv"), history[-1])
            best = max(best or 0.0, history[-1]["score"])
            evaluated += time.perf_counter() - tick  # inside the time budget
            _print(rank, f"epoch {epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in history[-1].items()
                                                       if isinstance(v, float)))
        checkpoint(0)
    if distributed:
        dist.barrier()
    if rank != 0:
        return None
    scores = evaluate(model, val_set, normalise, device, volumes=config.data == "acdc", amp=amp,
                      limit=config.eval_limit, input_scale=config.input_scale)
    results = {"method": config.method, "data": config.data, "steps": step, "epochs_done": epoch,
               "train_seconds": trained, "evaluation_seconds": evaluated, **_headline(scores), "scores": scores,
               "history": history}
    if test_set is not None:  # a held-out split, never looked at during the run
        test_scores = evaluate(model, test_set, normalise, device, volumes=config.data == "acdc", amp=amp,
                               input_scale=config.input_scale)
        results["test"] = {**_headline(test_scores), "scores": test_scores}
    # a study takes a run with results.json as finished
    write_atomically(os.path.join(config.out, "results.json"), lambda tmp: _write_json(results, tmp))
    if config.panels:
        draw_panels(model, val_set, normalise, device, config, os.path.join(config.out, "panels.png"), amp)
    return results


def draw_panels(model, dataset, normalise, device, config, path, amp=False):
    """The first `config.panels` validation samples; soft pseudo-labels solved from the model's prediction
    and the sample's scribbles (blank where the sample has none)."""
    model.eval()
    rows = []
    for index in range(min(config.panels, len(dataset))):
        sample = dataset[index]
        image = sample["image"][None].to(device)
        pred, probs = predict(model, image, normalise, amp, config.input_scale)
        y = None
        if (sample["seeds"] != 255).any():
            r = config.reg
            y = pottsops.solve(probs.clamp(min=1e-6).log(), image, sample["seeds"][None].to(device),
                               relaxation=r.relaxation, unary=r.unary, neighborhood=r.neighborhood, eta=r.eta,
                               lam=r.lam, sigma_rgb=r.sigma_rgb, sigma_xy=r.sigma_xy, iters=r.solver_iters)[0]
        rows.append({"image": sample["image"], "seeds": sample["seeds"], "y": y, "pred": pred[0],
                     "label": sample["label"]})
    save_panels(path, rows)


def batch_dice(logits, labels, batch):
    """The training batch's 2D Dice per foreground class against its ground truth (batch['label'], the dense
    masks the scribbled methods never train on): of the network's argmax ('net_dice') and of the pseudo-labels'
    argmax ('label_dice', blank for pce, gd, full and during the warm-up), as '/'-separated values of
    classes 1..K-1 over the valid pixels (blank where a class is in neither).  How pseudo-labels and network
    follow each other per class, over training (docs/trainer.md).  Counted on the device, read with one copy
    (a training step's only synchronisation with the host beyond the loss)."""
    K = logits.shape[1]
    valid = batch["mask"] & (batch["label"] != 255)
    truth = batch["label"][valid].long()
    with torch.no_grad():
        # max(1).indices: argmax(1) itself took 14 ms a batch of 12 x 4 x 96^2 on the CPU (max: 0.2 ms)
        preds = [logits.max(1).indices[valid]] + ([labels.max(1).indices[valid]] if labels is not None else [])
        counts = torch.stack([torch.stack([torch.bincount(pred[pred == truth], minlength=K),
                                           torch.bincount(pred, minlength=K), torch.bincount(truth, minlength=K)])
                              for pred in preds]).tolist()  # [pred][overlap, predicted, true][class]

    def text(overlap, predicted, true):
        return "/".join(f"{2.0 * overlap[c] / (predicted[c] + true[c]):.4f}" if predicted[c] + true[c] else ""
                        for c in range(1, K))
    return {"net_dice": text(*counts[0]), "label_dice": text(*counts[1]) if labels is not None else ""}


def _headline(scores):
    out = {"miou": scores["miou"]}
    if "mean_dice" in scores:
        out["mean_dice"] = scores["mean_dice"]
        out.update({f"dice_{c}": value for c, value in enumerate(scores["dice"], start=1)})  # per class
    out["score"] = out.get("mean_dice", out["miou"])
    return out


CHECKPOINT_KEYS = ("model", "optimizer", "step", "epoch", "step_in_epoch", "best", "history", "trained_seconds", "rng")


def load_checkpoint(path, argument, model, optimizer, device, config):
    """The trainer's checkpoint at path, its weights and optimiser state loaded into model and optimizer; any
    failure a ValueError naming the argument (resume, start_from), the file and what to do."""
    fix = "; delete it to start over" if argument == "resume" else ""
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as error:  # truncated or not a torch file: say which file, keep the cause
        raise RuntimeError(f"{argument}: cannot read the checkpoint {path!r} ({type(error).__name__}: "
                           f"{error}){fix}") from error
    missing = [key for key in CHECKPOINT_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise ValueError(f"{argument}: {path!r} is not a checkpoint of python -m train (it has no "
                         f"{', '.join(missing)}){fix}")
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as error:
        saved = state.get("config") or {}
        saved = {k: saved.get(k) for k in ("backbone", "data", "output_stride") if k in saved}
        ours = {k: getattr(config, k) for k in saved}
        raise ValueError(f"{argument}: the checkpoint {path!r} is of another network ({saved} there, {ours} in this "
                         f"run): give the run its settings, or another --out{fix} ({type(error).__name__}: "
                         f"{str(error).splitlines()[0]})") from error
    return state


def _remove_stale_temporaries(folder):
    """A kill while a file is written atomically (write_atomically: checkpoints, results.json, _keep_rows)
    leaves NAME.tmpPID in the run's folder: remove those of processes that are gone."""
    for name in os.listdir(folder):
        pid = name.rpartition(".tmp")[2]
        if ".tmp" not in name or not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)   # still running (another process writing into this folder): leave it
        except ProcessLookupError:
            os.remove(os.path.join(folder, name))
        except PermissionError:
            pass


def _consume(values, value):
    """Whether value is in the list values, removing one occurrence (a log row kept once per record)."""
    if value in values:
        values.remove(value)
        return True
    return False


def _keep_rows(path, keep):
    """Rewrite the CSV log at path with the rows keep() accepts.  A kill can leave a log empty (created, no
    header yet), with a partial header or a partial last row: rows that do not parse are dropped, and a log
    left without rows is removed (the next row writes its header again)."""
    if not os.path.exists(path):
        return
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []

        def whole(row):  # DictReader puts a row's missing fields as None values, extra ones under the key None
            try:
                return None not in row and None not in row.values() and keep(row)
            except ValueError:  # a step that is not a number: a partial row
                return False
        rows = [row for row in reader if whole(row)] if "step" in fields else []
    if not rows:
        os.remove(path)
        return

    def write_rows(tmp):
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
    write_atomically(path, write_rows)


def _append_csv(path, row):
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def _print(rank, text):
    if rank == 0:
        print(text, flush=True)
