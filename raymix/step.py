"""One training step, as plain functions and objects on tensors (no Ray).

The step's maths lives here and only here; the Ray actors (``raymix/runtime/actors.py``),
the single-process baseline (:func:`run_local`, ``benchmarks/``) and ``raymix demo`` all
call it. A step ``t`` is::

    H      = Workers.compute(w, t)                 # (n-f, d) honest rows, in worker order
    B      = Adversary.rows(t, H)                  # (f, d) Byzantine rows (sees only its AdversaryView)
    stats  = Server.step(t, H, B, losses, ...)     # draw a rule, aggregate, update w

Randomness (see :mod:`raymix.seeding`) comes from keys derived from the experiment seed,
one per role, and each role receives only its own key: the workers the batch and dropout
keys, the adversary ``stream_seed(seed, "adversary")``, the server the draw key
``stream_seed(seed, "aggregator")``. The keys are one-way functions of the seed, so nothing
the adversary holds lets it recompute the server's draws.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from raymix.seeding import stream_seed, torch_generator

__all__ = [
    "ModelSpec", "Workers", "Adversary", "Server", "Inputs", "prepare", "keys_for",
    "aggregate", "apply_update", "update_stats", "fooled_members", "knowledge_rows", "step_after_gradients", "LocalSimulation", "run_local",
    "WorkerMomentum", "STATE_KEYS", "Participants", "participants",
]

# What a restore point holds (``worker_momentum`` only when the config's is > 0: older
# checkpoints, and those of runs without it, have no such key).
STATE_KEYS = ("step", "weights", "optimizer", "worker_momentum")


# ---------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class ModelSpec:
    """Which network, for which data: enough to build a ``GradientComputer`` anywhere."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int

    def computer(self, device: str = "cpu"):
        from raymix.models import GradientComputer

        return GradientComputer(self.name, self.input_shape, self.num_classes, device)


def keys_for(seed: int) -> dict[str, int]:
    """The per-role keys derived from the experiment seed (one-way: a key does not reveal the seed)."""
    return {role: stream_seed(seed, role) for role in ("batches", "dropout", "adversary", "aggregator")}


@dataclass
class Inputs:
    """What a simulation needs before its first step, built once from the config."""

    model: ModelSpec
    init_weights: torch.Tensor
    honest_shards: list[tuple[torch.Tensor, torch.Tensor]]  # one (x, y) per honest worker; x raw uint8 when norm is set
    byzantine_shards: list[tuple[torch.Tensor, torch.Tensor]] | None  # data attacks and `none` only
    test: tuple[torch.Tensor, torch.Tensor]  # normalised
    norm: tuple | None = None  # (mean, std) that turns a raw batch into inputs (data.normalise)


def prepare(config) -> Inputs:
    """Load the dataset once, partition it, build the initial weights from ``(seed, "init")``.

    The partition covers the n-f honest workers, or all n when the Byzantine workers train on
    data of their own (a data attack such as ``label_flip``, or ``none``)."""
    from raymix.data import load_dataset, normalise, partition, resolve_data_dir
    from raymix.models import build_model, get_flat_params

    cfg = config
    data = load_dataset(
        cfg.dataset, data_dir=None if cfg.dataset == "synthetic" else resolve_data_dir(cfg.data_dir),
        train_limit=cfg.train_limit, test_limit=cfg.eval_test_limit, seed=cfg.seed, raw=True,
    )
    model = ModelSpec(cfg.model_name, tuple(int(s) for s in data.input_shape), int(data.num_classes))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stream_seed(cfg.seed, "init"))
        w0 = get_flat_params(build_model(model.name, model.input_shape, model.num_classes)).detach().clone()
    byz_data = cfg.byzantine_use_data
    parts = partition(data.y_train, cfg.n if byz_data else cfg.num_honest, cfg.partition, seed=cfg.seed,
                      alpha=cfg.dirichlet_alpha, num_classes=data.num_classes)
    shards = [(data.x_train[p].contiguous(), data.y_train[p].contiguous()) for p in parts]
    return Inputs(model, w0, shards[: cfg.num_honest], shards[cfg.num_honest :] if byz_data else None,
                  (normalise(data.x_test, data.norm), data.y_test), data.norm)


# ---------------------------------------------------------------------------- workers
class Workers:
    """Logical workers with their shards and one model replica: (W, d) stochastic gradients
    (``mode=gradient``) or local-SGD model updates ``w_local - w`` (``mode=model``) in one
    vectorised pass. Worker ``w``'s batch at step ``t`` comes from ``(batch_key, "batch", w, t)``
    and its dropout masks from ``(dropout_key, w, t)``: a retried step computes the same rows
    whatever else is packed with it."""

    def __init__(self, worker_ids: Sequence[int], shards: Sequence[tuple[torch.Tensor, torch.Tensor]], model: ModelSpec,
                 keys: dict[str, int], batch_size: int, mode: str = "gradient", local_steps: int = 1, lr: float = 0.0,
                 poison: Callable | None = None, device: str = "cpu", norm: tuple | None = None):
        self.ids = [int(w) for w in worker_ids]
        self.norm = norm  # the shards are raw uint8 (4x smaller); batches are normalised as drawn
        self.device = device
        xs, ys = [x for x, _ in shards], [y for _, y in shards]
        self.x = torch.cat(xs).to(device) if xs else torch.empty(0)
        self.y = torch.cat(ys).to(device) if ys else torch.empty(0, dtype=torch.long)
        self.index, offset = [], 0
        for x in xs:
            self.index.append(torch.arange(offset, offset + x.shape[0]))
            offset += x.shape[0]
        self.batch_key, self.dropout_key = int(keys["batches"]), int(keys["dropout"])
        self.batch_size, self.mode, self.local_steps, self.lr = int(batch_size), mode, int(local_steps), float(lr)
        self.poison = poison
        self.computer = model.computer(device)
        # On a GPU the host draws the next step's batch indices and dropout masks on a thread
        # of its own while the device computes this step's (they are a pure function of the
        # step, so nothing changes but when they are drawn; on the CPU it would only take
        # cycles from the step itself).
        self.prefetch = self.pin = torch.device(device).type == "cuda"
        self._ahead: "tuple[int, Any] | None" = None  # (step, the future of its draws)
        self._pool = None

    @classmethod
    def honest(cls, config, worker_ids: Sequence[int], shards, model: ModelSpec, device: str = "cpu", norm: tuple | None = None) -> "Workers":
        return cls(worker_ids, shards, model, keys_for(config.seed), config.batch_size, config.mode,
                   config.local_steps, config.lr, device=device, norm=norm)

    def labels(self) -> list[list[int]]:
        """The distinct labels each logical worker holds."""
        return [sorted(set(self.y[i].tolist())) for i in self.index]

    def _draw(self, key: int, masks: bool = False):
        """The host's part of a batch: the (W, B) indices, the dropout seeds and (``masks``)
        the masks themselves, in host memory (pinned on a GPU, for an asynchronous copy)."""
        from raymix.data import sample_batches

        idx = sample_batches(self.index, self.batch_size, self.batch_key, key, self.ids)
        seeds = [stream_seed(self.dropout_key, w, key) for w in self.ids]
        drawn = self.computer.masks(seeds, self.batch_size, device="cpu") if masks else None
        if self.pin:
            idx = idx.pin_memory()
            drawn = None if drawn is None else tuple(m.pin_memory() for m in drawn)
        return idx, seeds, drawn

    def _batch(self, key: int, ahead: bool = False):
        """(xs, ys, dropout seeds, masks or None) of step ``key``; ``ahead``: with the masks,
        drawn on the prefetch thread if it drew them, and the next step's draws started."""
        from raymix.data import normalise

        if ahead and self._ahead is not None and self._ahead[0] == key:
            idx, seeds, masks = self._ahead[1].result()
        else:
            idx, seeds, masks = self._draw(key, masks=ahead)
        self._ahead = None
        if ahead:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(1, thread_name_prefix="raymix-draws")
            self._ahead = (key + 1, self._pool.submit(self._draw, key + 1, True))
        idx_x = idx.to(self.x.device, non_blocking=True)
        xs, ys = normalise(self.x[idx_x], self.norm), self.y[idx_x.to(self.y.device)]
        if self.poison is not None:
            xs, ys = self.poison(xs, ys)
        return xs, ys, seeds, masks

    def compute(self, weights: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """((W, d) rows, (W,) training losses at the broadcast weights), on the workers' device:
        in one process they go on to the adversary and the server without leaving it (a pack
        actor moves them to the CPU itself, for Ray's object store)."""
        weights = weights.to(self.device)
        if self.mode == "gradient":
            ahead = self.prefetch and self.computer.method != "loop"
            xs, ys, seeds, masks = self._batch(step, ahead)
            grads, losses = self.computer.gradients(weights, xs, ys, seeds, masks)
            return grads.detach(), losses.detach()
        # model mode: tau plain local SGD steps per worker from the broadcast weights
        local = [weights.clone() for _ in self.ids]
        first_losses = None
        for j in range(self.local_steps):
            xs, ys, seeds, _ = self._batch(step * self.local_steps + j)
            losses = []
            for i in range(len(self.ids)):
                g, l = self.computer.gradients(local[i], xs[i : i + 1], ys[i : i + 1], [seeds[i]])
                local[i] = local[i] - self.lr * g[0]
                losses.append(l[0])
            if first_losses is None:
                first_losses = torch.stack(losses)
        return torch.stack([w - weights for w in local]).detach(), first_losses.detach()


def knowledge_rows(config, step: int, honest: int | None = None) -> list[int] | None:
    """The honest rows the adversary may see at ``step`` (None: all), from the PUBLIC stream
    ``(seed, "knowledge", step)``: which rows leak is not a secret of the server's.
    ``honest``: the honest rows sent this step (with ``participation``), else n-f."""
    h = config.num_honest if honest is None else int(honest)
    if config.knowledge >= h:
        return None
    g = torch_generator(config.seed, "knowledge", step)
    return sorted(torch.randperm(h, generator=g)[: config.knowledge].tolist())


@dataclass(frozen=True)
class Participants:
    """Who takes part in one step (``participation: m``): the honest workers (indices into the
    n-f honest rows) and the Byzantine ones (indices 0..f-1 among the f)."""

    honest: torch.Tensor
    byzantine: torch.Tensor


def participants(config, key: int, step: int) -> Participants | None:
    """The step's participants (None: all n), from the server's stream ``(key, "participation",
    step)``: the adversary, which never holds the server's key, cannot predict the draw; it
    learns which of ITS workers take part when it crafts their rows. ``fixed``: all f Byzantine
    workers and m-f of the n-f honest ones; ``random``: m of the n workers, uniformly."""
    m = config.participation
    if m is None:
        return None
    h, f = config.num_honest, config.f
    g = torch_generator(key, "participation", step)
    if config.byzantine_sampling == "fixed":
        return Participants(torch.randperm(h, generator=g)[: m - f].sort().values, torch.arange(f))
    chosen = torch.randperm(config.n, generator=g)[:m].sort().values
    return Participants(chosen[chosen < h], chosen[chosen >= h] - h)


# ---------------------------------------------------------------------------- the adversary
class Adversary:
    """The f Byzantine workers. Receives the attack (built: the config's own object,
    ``build_attack``), n, f, the pool's PUBLIC description and its own key; never the seed,
    the server's key or the draw.

    Gradient-crafting attacks: ``rows(t, honest)`` builds the ``AdversaryView`` (the visible
    honest rows, n, f, t, the public pool, the generator ``(key, t)``) and calls the attack.
    Data attacks and ``none``: the Byzantine workers train on their own shards (poisoned by
    ``attack.poison_batch`` for a data attack) at the broadcast weights."""

    def __init__(self, attack, n: int, f: int, pool_public, key: int, workers: Workers | None = None):
        self.attack = attack
        self.n, self.f, self.pool, self.key = int(n), int(f), pool_public, int(key)
        self.choice: dict | None = None  # what the attack chose at the last step, if it says
        self.workers = workers
        if workers is not None and getattr(self.attack, "data_attack", False):
            workers.poison = self.attack.poison_batch

    @classmethod
    def for_config(cls, config, model: ModelSpec, shards=None, device: str = "cpu", norm: tuple | None = None) -> "Adversary | None":
        """The adversary of ``config`` (None when there is none: f = 0 or the omniscient baseline)."""
        if config.f == 0 or config.is_omniscient:
            return None
        keys = keys_for(config.seed)
        workers = None
        if config.byzantine_use_data:
            # Only the batch and dropout keys: what an honest worker of theirs would hold.
            workers = Workers(range(config.num_honest, config.n), shards, model, {"batches": keys["batches"], "dropout": keys["dropout"]},
                              config.batch_size, config.mode, config.local_steps, config.lr, device=device, norm=norm)
        pool = config.build_pool()
        return cls(config.build_attack(), config.n, config.f, pool.public() if pool is not None else None, keys["adversary"], workers)

    def rows(self, step: int, honest: torch.Tensor, weights: torch.Tensor | None = None, visible: list[int] | None = None,
             byzantine: torch.Tensor | None = None) -> torch.Tensor:
        """The Byzantine rows of ``step``. ``byzantine``: which of the f take part this step
        (``participation``; None: all), and the step's n is then the rows sent, honest ones
        included."""
        from raymix.attacks import AdversaryView

        if self.workers is not None:
            rows = self.workers.compute(weights, step)[0]
            return rows if byzantine is None else rows[byzantine]
        n, f = (self.n, self.f) if byzantine is None else (honest.shape[0] + len(byzantine), len(byzantine))
        seen = honest if visible is None else honest[torch.as_tensor(visible, dtype=torch.long)]
        view = AdversaryView(honest=seen, n=n, f=f, step=int(step), pool=self.pool,
                             generator=torch_generator(self.key, int(step)))
        rows = self.attack(view).detach()  # on the honest rows' device (Attack.__call__)
        self.choice = dict(self.attack.last_choice) if self.attack.reports_choice else None
        return rows


# ---------------------------------------------------------------------------- worker momentum
class WorkerMomentum:
    """The workers' momentum buffers (``worker_momentum: beta`` > 0): each worker that follows
    the protocol keeps ``m_t = beta * m_(t-1) + (1 - beta) * g_t`` (``m_0 = 0``; the form of
    Karimireddy, He & Jaggi 2021 and ByzFL's clients) and sends ``m_t`` instead of its row
    ``g_t``. The one place both engines update them is :func:`step_after_gradients`, in the
    server's process: a pack's rows stay a pure function of (weights, step), so a retried pack
    task computes the same rows, and the buffers travel with the weights in every restore point
    (a restarted server or a resumed run continues them bit for bit). ``honest``: the n-f honest
    workers' (n-f, d) buffers; ``byzantine``: the (f, d) buffers of Byzantine workers that train
    (a data attack, ``none``), None otherwise."""

    def __init__(self, beta: float):
        self.beta = float(beta)
        self.buffers: dict[str, torch.Tensor | None] = {"honest": None, "byzantine": None}

    def apply(self, rows: torch.Tensor, who: str = "honest", index: torch.Tensor | None = None, size: int = 0) -> torch.Tensor:
        """The rows the workers send this step: their updated buffers. ``index``: which of the
        ``size`` workers take part (``participation``); the others' buffers do not move."""
        prev = self.buffers[who]
        if index is None:  # every worker takes part
            index, size = slice(None), rows.shape[0]
        # a copy: the buffers stay apart from the rows handed on (an attack may not alter them)
        # (a restored buffer is on the CPU: it joins the rows' device here)
        buf = rows.new_zeros((size, rows.shape[1])) if prev is None else prev.to(rows.device, copy=True)
        sent = self.beta * buf[index] + (1.0 - self.beta) * rows
        buf[index] = sent
        self.buffers[who] = buf
        return sent

    def state(self) -> dict[str, torch.Tensor | None]:
        return {k: None if v is None else v.detach().cpu().clone() for k, v in self.buffers.items()}

    def load_state(self, state: dict[str, Any] | None) -> None:
        if state is None:
            raise ValueError("this checkpoint holds no worker momentum buffers (saved with worker_momentum=0 or by an "
                             "older raymix): it continues only with worker_momentum: 0")
        self.buffers = {k: None if state.get(k) is None else state[k].detach().cpu().clone() for k in ("honest", "byzantine")}


# ---------------------------------------------------------------------------- the server's maths
def synchronize(device: str) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously): a step's timers then
    measure the work done in their phase, not only its queueing. Nothing on the CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def update_stats(agg: torch.Tensor, honest_mean: torch.Tensor) -> dict[str, float]:
    """Cosine and inner product of the aggregate with the honest mean, and their norm ratio."""
    a, m = agg.double(), honest_mean.double()
    ip = float(a @ m)
    na, nm = float(a.norm()), float(m.norm())
    cos = ip / (na * nm) if na > 0 and nm > 0 else float("nan")
    return {"cosine": cos, "inner_product": ip, "norm_ratio": na / nm if nm > 0 else float("nan")}


def aggregate(pool, G: torch.Tensor, f: int, key: int, step: int):
    """Draw a member with the server's stream ``(key, step)`` and apply it to G; randomised
    members (resampling, bucketing) get ``(key, "resample", step)``. Returns (aggregate, draw)."""
    draw = pool.draw(torch_generator(key, step))
    out = pool.rules[draw.index](G, f, generator=torch_generator(key, "resample", step))
    return out, draw


def apply_update(w: torch.nn.Parameter, opt: "torch.optim.Optimizer | None", agg: torch.Tensor) -> None:
    """Gradient mode: ``w.grad = agg; opt.step()`` (the paper's server SGD). Model mode
    (``opt`` None): ``w += agg``."""
    if opt is not None:
        w.grad = agg.detach().to(w.dtype).clone()
        opt.step()
        w.grad = None
    else:
        with torch.no_grad():
            w.add_(agg.to(w.dtype))


def fooled_members(pool, G: torch.Tensor, mu: torch.Tensor, f: int, generator: Callable[[], torch.Generator] | None = None) -> dict[str, Any]:
    """Every distinct pool member on one step's inputs: which ones the attack fooled (inner
    product with the honest mean ``mu`` < 0, or non-finite), weighted by multiplicity; and
    each member's inner product relative to ||mu||^2 (1 = the honest mean itself)."""
    size = len(pool)
    fooled_family: dict[str, float] = {}
    members_family: dict[str, float] = {}
    fooled, frac, expected, relative = [], 0.0, 0.0, {}
    mm = float(mu.double() @ mu.double())
    for spec, family, rule, prob in pool.distinct_members():
        out = rule(G, f, generator=generator() if generator is not None else None)
        ip = float(out.double() @ mu.double())
        relative[spec] = ip / mm if mm > 0 else float("nan")
        expected += prob * relative[spec]
        mult = prob * size
        members_family[family] = members_family.get(family, 0.0) + mult
        fooled_family.setdefault(family, 0.0)
        if not math.isfinite(ip) or ip < 0:
            fooled.append(spec)
            fooled_family[family] += mult
            frac += prob
    return {
        "fooled_fraction": frac,
        "fooled_family": {k: round(v, 6) for k, v in fooled_family.items()},
        "members_family": {k: round(v, 6) for k, v in members_family.items()},
        "fooled": fooled,
        "expected_inner_product": expected,  # <E[aggregate], mu> / ||mu||^2 over the draw
        "relative_inner_product": relative,
    }


def step_after_gradients(t: int, H: torch.Tensor, losses: torch.Tensor, server: "Server", adversary: "Adversary | None",
                         config, evaluate: bool, diagnose: bool) -> dict[str, Any]:
    """The step once the honest rows are in, for both engines (LocalSimulation and the Ray
    server actor): the step's participants (``participation``), the rows the honest workers
    send (their momentum buffers with ``worker_momentum``: the one place they are updated),
    the adversary's rows, the server's draw, aggregation and update, and the stats, with the
    attack's time and, for a searching attack, its recorded choice."""
    t0 = time.perf_counter()
    byz = None
    momentum = server.worker_momentum
    part = participants(config, server.key, t)  # None: all n take part
    if part is not None:  # only the participants' rows are sent (the packs compute all: stateless per step)
        H, losses = H[part.honest], losses.reshape(-1)[part.honest]
    if momentum is not None:  # the honest workers send their buffers: what the adversary and the server see
        H = momentum.apply(H, "honest", None if part is None else part.honest, config.num_honest)
    if adversary is not None and part is not None and len(part.byzantine) == 0:
        adversary.choice = None  # no Byzantine worker takes part: no rows, no choice
    elif adversary is not None:
        w = server.w.detach() if adversary.workers is not None else None  # data attacks train at w (on its device)
        byz = adversary.rows(t, H, w, knowledge_rows(config, t, None if part is None else H.shape[0]),
                             None if part is None else part.byzantine)
        if momentum is not None and adversary.workers is not None:  # Byzantine workers that train keep buffers too
            byz = momentum.apply(byz, "byzantine", None if part is None else part.byzantine, config.f)
    synchronize(server.device)
    t1 = time.perf_counter()
    stats = server.step(t, H, byz, losses, evaluate, diagnose)
    if part is not None:  # the step's Byzantine rows (omniscient: the drawn Byzantine workers, none aggregated)
        stats["byzantine_rows"] = len(part.byzantine)
    stats["time_attack"] = t1 - t0
    if adversary is not None and adversary.choice is not None:
        stats["attack"] = adversary.choice
    return stats


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


class Server:
    """The aggregator: the weights, the optimizer state, the pool and its PRIVATE draws, the
    test set. ``step`` stacks ``[honest; Byzantine]``, draws, aggregates, updates, and returns
    a small stats dict (and, at evaluation steps, the test loss and accuracy, the fooled
    members with ``diagnose``, and the state after the step, for checkpoints)."""

    def __init__(self, config, init_weights: torch.Tensor, model: ModelSpec, test, device: str = "cpu"):
        c = config
        self.f = int(c.rule_f)  # the f the rules are told: assumed_f, else the true f
        self.on_divergence = c.on_divergence
        self.key = keys_for(c.seed)["aggregator"]
        self.device = device
        self.pool = c.build_pool()
        self.w = torch.nn.Parameter(init_weights.clone().to(device))
        self.opt = (torch.optim.SGD([self.w], lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
                    if c.mode == "gradient" else None)
        self.computer = model.computer(device)
        self.x_test, self.y_test = test[0].to(device), test[1].to(device)
        # The workers' momentum buffers, updated by step_after_gradients (None: worker_momentum 0).
        beta = float(getattr(c, "worker_momentum", 0.0))
        self.worker_momentum = WorkerMomentum(beta) if beta > 0 else None

    def weights(self) -> torch.Tensor:
        return self.w.detach().cpu().clone()

    def state(self) -> dict[str, Any]:
        state = {"weights": self.weights(), "optimizer": None if self.opt is None else _to_cpu(self.opt.state_dict())}
        if self.worker_momentum is not None:
            state["worker_momentum"] = self.worker_momentum.state()
        return state

    def load_state(self, state: dict[str, Any]) -> torch.Tensor:
        if self.worker_momentum is not None:  # first: a checkpoint without buffers changes nothing
            self.worker_momentum.load_state(state.get("worker_momentum"))
        with torch.no_grad():
            self.w.copy_(state["weights"].to(self.device))
        if self.opt is not None and state.get("optimizer") is not None:
            self.opt.load_state_dict(state["optimizer"])
        return self.weights()

    def evaluate(self) -> dict[str, float]:
        loss, acc = self.computer.loss_and_accuracy(self.w.detach(), self.x_test, self.y_test)
        return {"test_loss": float(loss), "test_accuracy": float(acc)}

    def step(self, step: int, H: torch.Tensor, byz: torch.Tensor | None, losses: torch.Tensor,
             evaluate: bool = False, diagnose: bool = False) -> dict[str, Any]:
        t0 = time.perf_counter()
        H = H.to(self.device)
        mu = H.mean(0)
        stats: dict[str, Any] = {"step": step, "train_loss": float(losses.mean())}
        if self.pool is None:  # omniscient: the mean of the honest rows only
            G, agg = H, mu
            stats["drawn"], stats["family"] = "omniscient", "omniscient"
        else:
            G = H if byz is None else torch.cat([H, byz.to(self.device, H.dtype)])
            agg, draw = aggregate(self.pool, G, self.f, self.key, step)
            stats["drawn"], stats["family"] = draw.spec, draw.family
        synchronize(self.device)
        t1 = time.perf_counter()
        stats["time_aggregation"] = t1 - t0
        stats["nonfinite"] = not bool(torch.isfinite(agg).all())
        stats.update(update_stats(agg, mu))
        # A non-finite aggregate (or honest loss) never reaches the weights or the momentum:
        # "stop" ends the run at this step, "skip" drops this step's update and goes on.
        bad = "the aggregate" if stats["nonfinite"] else "the honest training loss" if not math.isfinite(stats["train_loss"]) else None
        stats["skipped"] = bad is not None
        if bad is None:
            apply_update(self.w, self.opt, agg)
        elif self.on_divergence == "stop":
            stats["diverged"] = f"step {step}: {bad} is not finite (drawn rule {stats['drawn']}); the update was not applied"
            evaluate = True  # the run ends here: a record of it, with the state before the step
        synchronize(self.device)
        t2 = time.perf_counter()
        stats["time_update"] = t2 - t1
        if evaluate:
            if diagnose and self.pool is not None:
                stats["diagnostics"] = fooled_members(self.pool, G, mu, self.f, lambda: torch_generator(self.key, "diagnostics", step))
            stats.update(self.evaluate())
            stats["state"] = self.state()
        stats["time_eval"] = time.perf_counter() - t2
        return stats


# ---------------------------------------------------------------------------- the single process
class LocalSimulation:
    """The whole simulation in this one process, no Ray: every honest worker's gradient in one
    vectorised pass, the same adversary, draws, update and records as the Ray runtime, and the
    same surface as ``raymix.runtime.Simulation`` (``advance`` to the next evaluation,
    ``done``, ``state``/``restore``). The baseline the benchmarks measure raymix against, the
    reference its tests compare with, and, in a sweep, a one-pack trial's engine inside the
    trial's own actor (``runtime/tune.py``). ``computer_method``: ``vmap`` (default) or
    ``loop`` for the gradients; ``on_step``: callables ``hook(step, self)`` before each step."""

    def __init__(self, config, computer_method: str | None = None, on_step: Sequence[Callable] = (), device: str = "cpu"):
        inputs = prepare(config)
        self.on_step = list(on_step)
        self._last_state: dict[str, Any] = {"step": 0, "weights": None, "optimizer": None}
        self.config, self.device = config, str(torch.device(device).type)
        self.workers = Workers.honest(config, range(config.num_honest), inputs.honest_shards, inputs.model, device, inputs.norm)
        if computer_method is not None:
            self.workers.computer.method = computer_method
        self.adversary = Adversary.for_config(config, inputs.model, inputs.byzantine_shards, device, inputs.norm)
        self.server = Server(config, inputs.init_weights, inputs.model, inputs.test, device)
        self.step = 0
        self.diverged: str | None = None
        self._t_start = time.perf_counter()

    @property
    def done(self) -> bool:
        return self.step >= self.config.steps or self.diverged is not None

    def advance(self) -> dict:
        """Run to the next evaluation step and return its record."""
        from raymix.records import Interval, make_record

        interval, t_interval = Interval(), time.perf_counter()
        while True:
            for hook in self.on_step:
                hook(self.step + 1, self)
            t = self.step = self.step + 1
            t0 = time.perf_counter()
            H, losses = self.workers.compute(self.server.w.detach(), t)  # the live weights: no copy, no host trip
            synchronize(self.device)  # a GPU's work is timed when done, not when queued
            t1 = time.perf_counter()
            is_eval = self.config.is_eval_step(t)
            stats = step_after_gradients(t, H, losses, self.server, self.adversary, self.config, is_eval,
                                         is_eval and self.config.diagnostics)
            stats["time_gradients"] = t1 - t0
            if "state" in stats:
                self._last_state = {"step": t, **stats.pop("state")}
            interval.add(stats)
            if "diverged" in stats:
                self.diverged = stats["diverged"]
            if is_eval or "diverged" in stats:
                now = time.perf_counter()
                return make_record(stats, interval, now - t_interval, now - self._t_start)


    def state(self) -> dict[str, Any]:
        """The state after the last evaluation: step, weights, optimizer state, the config."""
        if self._last_state["weights"] is None:
            raise RuntimeError("no evaluation yet: nothing to save")
        return {**self._last_state, "config": self.config.to_dict(), "device": self.device}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (a checkpoint; the caller checks it fits this config)."""
        self.server.load_state(state)
        self.step = int(state["step"])
        self._last_state = {k: state[k] for k in STATE_KEYS if k in state}

    def close(self) -> None:
        """Nothing to release (no actors, no files); here so both engines read alike."""

    def __enter__(self) -> "LocalSimulation":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_local(config, computer_method: str | None = None, device: str = "cpu"):
    """:class:`LocalSimulation` from the first step to the last, nothing written: a
    :class:`raymix.records.RunResult`, as ``raymix.runtime.run_experiment`` returns."""
    from raymix.records import RunResult

    t0 = time.perf_counter()
    records = []
    with LocalSimulation(config, computer_method, device=device) as sim:
        t_loop = time.perf_counter()
        while not sim.done:
            records.append(sim.advance())
        loop = time.perf_counter() - t_loop
    return RunResult(config, records, None, config.steps / loop if loop > 0 else 0.0, time.perf_counter() - t0)
