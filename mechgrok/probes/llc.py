"""The local learning coefficient (LLC): an SGLD estimate of the loss landscape's degeneracy at a
checkpoint (Lau et al. 2023, "Quantifying degeneracy in singular models via the learning
coefficient"; the ``devinterp`` library).

Around a checkpoint ``w*`` the sampler draws from the tempered, localised posterior
``exp(-n*beta * L_n(w) - gamma/2 |w - w*|^2)`` with stochastic-gradient Langevin dynamics::

    w <- w - (eps/2) * (n*beta * grad L_batch(w) + gamma * (w - w*)) + N(0, eps)

and estimates ``lambda_hat = n*beta * (mean over draws of L_n(w) - L_n(w*))``, with ``n*beta = n /
log n`` by default (the WBIC temperature). A regular model with ``d`` parameters at a strict
minimum has ``lambda = d/2``; degenerate (singular) minima have less.

Vectorised: the (checkpoint x chain) pairs, or (setting x chain) pairs of a calibration, are rows
of stacked parameters pushed through the sweep engine's batched forward/backward
(:func:`mechgrok.sweep._kernels.make_model`: fused kernels for the MLPs, ``torch.func.vmap``
for the transformer, a loop for RNN/LSTM). Every chain owns a generator seeded from ``(seed,
chain)``; the noise and minibatches of chain ``c`` are therefore the same at every checkpoint
(common random numbers: the curve over training is smoother than independent chains would make
it, each point is still an unbiased estimate), and the batched and the looped computation
(``vectorize=False``) draw exactly the same numbers.

Where this differs from ``devinterp`` (1.x ``SGLD`` + ``LLCEstimator``): the update rule is the
same (its ``lr`` is our ``epsilon``, ``localization`` our ``gamma``, ``noise_level`` 1,
``weight_decay`` 0); its default ``nbeta`` is ``batch_size / log(batch_size)`` where ours is ``n /
log n`` over the training set; its ``init_loss`` is a minibatch loss at ``w*`` where ours is the
full-batch ``L_n(w*)`` (identical with full batches); losses are our cross-entropy, by default
computed in float32 and averaged in float64 (:attr:`LLCConfig.dtype`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from ..config import ConfigError, RunConfig
from ..store import Run, Trajectory
from ._common import as_trajectory

__all__ = [
    "LLCCalibration",
    "LLCConfig",
    "LLCResult",
    "default_nbeta",
    "llc",
    "llc_calibration",
    "llc_of_potential",
]


@dataclass(frozen=True)
class LLCConfig:
    """Settings of the SGLD estimate of the local learning coefficient.

    The defaults suit mechgrok's small grokking models (full-batch training sets of ~10^3
    examples); check them with :func:`llc_calibration` on your run before reading a curve.
    """

    epsilon: float = 1e-3
    """SGLD step size ``eps`` (devinterp's ``lr``); the injected noise has variance ``eps``."""
    gamma: float = 100.0
    """Localisation strength: the pull ``gamma * (w - w*)`` back towards the checkpoint."""
    nbeta: float | None = None
    """Inverse temperature times sample size; ``None`` = ``n / log n`` of the training set."""
    chains: int = 4
    """Independent chains per checkpoint (the estimate is their mean, the spread their std)."""
    burnin: int = 100
    """SGLD steps discarded before the first draw."""
    draws: int = 200
    """Draws per chain after burn-in."""
    steps_between_draws: int = 1
    """SGLD steps from one draw to the next."""
    batch_size: int | None = None
    """Minibatch size of the gradient (and of the recorded loss, an unbiased estimate of
    ``L_n(w)``); ``None`` = the full training set (the recorded loss is then ``L_n(w)`` exactly)."""
    seed: int = 0
    """Seed of the chains' own generators (the global torch RNG is neither read nor advanced)."""
    engine: str = "auto"
    """Batched forward: ``auto`` / ``fused`` / ``vmap`` / ``loop`` (as the sweep engine's)."""
    diverge_loss: float = 10.0
    """A chain whose loss goes non-finite or more than this many nats above ``L_n(w*)`` is
    flagged ``diverged`` (step too large): 10 nats is worse than guessing among 10^4 classes."""
    device: str = "cpu"
    """torch device the chains run on (results come back on the CPU)."""
    dtype: str = "float32"
    """Precision of the chains: ``float32`` (default) runs their weights, the update, the models'
    forward/backward and the soft-max in float32, also for a ``model.dtype="float64"`` run (twice
    the matmul throughput and half the memory traffic); ``model`` runs them in the run's own
    ``model.dtype`` with a float64 soft-max (mechgrok's training arithmetic). The normals are
    drawn in the run's own precision either way (both settings follow the same streams) and the
    recorded losses are float64 means of the per-example losses. float32 is enough for SGLD: its
    rounding (~1e-7 relative) is far below the injected noise (std sqrt(eps) per step), ``w*`` is
    rounded once and the chain localised at the rounded point, and a recorded loss moves by ~1e-7
    nats, alike at ``w*`` and at the draws (lambda_hat moves by ~1e-4 on mlp24 against chain
    spreads of ~1; ``benchmarks/bench_llc.py`` prints the difference to a float64 loop)."""

    def __post_init__(self) -> None:
        def positive(name: str, value, integer: bool = False) -> None:
            ok = isinstance(value, int) and not isinstance(value, bool) if integer else isinstance(value, (int, float))
            if not ok or not (value > 0) or (not integer and not math.isfinite(value)):
                kind = "a positive integer" if integer else "a finite number > 0"
                raise ConfigError(f"llc.{name}: must be {kind}, got {value!r}")

        positive("epsilon", self.epsilon)
        positive("diverge_loss", self.diverge_loss)
        if not isinstance(self.gamma, (int, float)) or not (self.gamma >= 0) or not math.isfinite(self.gamma):
            raise ConfigError(f"llc.gamma: must be a finite number >= 0, got {self.gamma!r}")
        if self.nbeta is not None:
            positive("nbeta", self.nbeta)
        for name in ("chains", "draws", "steps_between_draws"):
            positive(name, getattr(self, name), integer=True)
        if not isinstance(self.burnin, int) or isinstance(self.burnin, bool) or self.burnin < 0:
            raise ConfigError(f"llc.burnin: must be an integer >= 0, got {self.burnin!r}")
        if self.batch_size is not None:
            positive("batch_size", self.batch_size, integer=True)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ConfigError(f"llc.seed: must be an integer >= 0, got {self.seed!r}")
        if self.dtype not in ("float32", "model"):
            raise ConfigError(f"llc.dtype: must be float32 or model, got {self.dtype!r}")
        if self.engine not in ("auto", "fused", "vmap", "loop"):
            raise ConfigError(f"llc.engine: must be auto, fused, vmap or loop, got {self.engine!r}")
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError):
            raise ConfigError(f"llc.device: not a torch device: {self.device!r}") from None

    @property
    def n_steps(self) -> int:
        """SGLD steps per chain: burn-in, then the draws ``steps_between_draws`` apart."""
        return self.burnin + (self.draws - 1) * self.steps_between_draws + 1

    def to_dict(self) -> dict:
        return asdict(self)


def default_nbeta(n: int) -> float:
    """``n / log n``: the WBIC inverse temperature (Watanabe 2013) times ``n``."""
    if n < 2:
        raise ConfigError(f"llc.nbeta: n / log n needs at least 2 training examples, got {n}")
    return n / math.log(n)


@dataclass
class LLCResult:
    """Estimates for ``K`` rows (checkpoints, or calibration settings) of ``C`` chains each.

    ``trace[k, c, t]`` is the loss at the start of SGLD step ``t`` (before that step's update;
    step 0 is ``w*`` itself); the draws are ``trace[..., draw_index]``.
    """

    steps: torch.Tensor
    """int64 [K]: training step of each checkpoint (calibration: the checkpoint's step, repeated)."""
    llc: torch.Tensor
    """float64 [K]: the mean over chains of ``n*beta * (mean draw loss - L_n(w*))``."""
    llc_std: torch.Tensor
    """float64 [K]: the standard deviation of the per-chain estimates (0 for one chain)."""
    chain_llc: torch.Tensor
    """float64 [K, C]: per-chain estimates."""
    init_loss: torch.Tensor
    """float64 [K]: ``L_n(w*)`` over the full training set."""
    trace: torch.Tensor
    """float64 [K, C, n_steps]: the chains' loss traces, burn-in included."""
    negative: torch.Tensor
    """bool [K, C]: the chain's draws sit below ``L_n(w*)`` on average (the checkpoint is not at
    a local minimum of the loss; the estimate is negative and means nothing)."""
    diverged: torch.Tensor
    """bool [K, C]: the chain's loss went non-finite or ``diverge_loss`` above ``L_n(w*)``."""
    nbeta: float
    n: int
    config: LLCConfig

    @property
    def draw_index(self) -> torch.Tensor:
        c = self.config
        return torch.arange(c.draws) * c.steps_between_draws + c.burnin

    @property
    def flagged(self) -> torch.Tensor:
        """bool [K]: some chain of the row is negative or diverged."""
        return (self.negative | self.diverged).any(-1)

    @staticmethod
    def concat(parts: Sequence[LLCResult]) -> LLCResult:
        """Results of consecutive chunks of checkpoints (same settings) as one. Exact: every chunk
        replays the same chain streams, so chunking the checkpoints changes no number."""
        first = parts[0]
        cat = lambda name: torch.cat([getattr(p, name) for p in parts])
        return LLCResult(
            steps=cat("steps"),
            llc=cat("llc"),
            llc_std=cat("llc_std"),
            chain_llc=cat("chain_llc"),
            init_loss=cat("init_loss"),
            trace=cat("trace"),
            negative=cat("negative"),
            diverged=cat("diverged"),
            nbeta=first.nbeta,
            n=first.n,
            config=first.config,
        )

    def tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """The result as named tensors, one row per checkpoint, every name containing ``llc``
        (``prefix`` e.g. ``"llc/"``, the analysis store's family prefix)."""
        return {
            f"{prefix}llc": self.llc,
            f"{prefix}llc_std": self.llc_std,
            f"{prefix}llc_chains": self.chain_llc,
            f"{prefix}llc_init_loss": self.init_loss,
            f"{prefix}llc_trace": self.trace,
            f"{prefix}llc_negative": self.negative,
            f"{prefix}llc_diverged": self.diverged,
        }


# ----------------------------------------------------------------------------------------------
# the sampler


def _chain_generator(seed: int, chain: int, device: torch.device) -> torch.Generator:
    # SeedSequence mixes (seed, chain) so seeds s and chains c never share a stream
    state = int(np.random.SeedSequence([seed, chain]).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator(device=device).manual_seed(state)


Objective = Callable[[dict[str, torch.Tensor], "torch.Tensor | None"], tuple[torch.Tensor, dict[str, torch.Tensor]]]
"""``(params {name: [R, ...]}, idx [R, b] or None) -> (loss float64 [R], grads {name: [R, ...]})``:
the mean loss of each row over the rows of the training set in ``idx`` (None = all of them) and
its gradient."""


def _sample(
    objective: Objective,
    w_star: dict[str, torch.Tensor],
    chain_of_row: torch.Tensor,
    eps: torch.Tensor,
    gamma: torch.Tensor,
    nbeta: torch.Tensor,
    n: int,
    config: LLCConfig,
    rows_per_call: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run SGLD from ``w_star`` (rows ``[R, ...]``); returns ``L_n(w*)`` [R] and the trace [R, T].

    ``rows_per_call`` (a multiple of the number of chains; None = all rows) bounds the rows of one
    objective call (its activations); the steps run in lockstep over those slices, so every
    chain's normals are drawn once per step for all rows.

    Row ``r`` follows the stream of chain ``chain_of_row[r]``: per step, that chain's generator
    draws the minibatch (if any) and then one standard normal per parameter entry, in the order
    of ``w_star``'s names. Rows of the same chain share those numbers. The normals are drawn in
    ``objective.noise_dtype`` if it has one (the checkpoints' own precision) and rounded to the
    chains' dtype, so float32 chains of a float64 run follow the float64 chains' streams.
    """
    names = list(w_star)
    first = w_star[names[0]]
    device, R = first.device, first.shape[0]
    chains = sorted(set(chain_of_row.tolist()))
    gens = {c: _chain_generator(config.seed, c, device) for c in chains}
    pick = torch.tensor([chains.index(c) for c in chain_of_row.tolist()], device=device)  # row -> chain slot
    batch = None if config.batch_size is None or config.batch_size >= n else config.batch_size

    step = R if rows_per_call is None else max(1, rows_per_call)
    slices = [slice(a, min(R, a + step)) for a in range(0, R, step)]
    with torch.no_grad():
        init_loss = torch.cat([objective({k: v[sl] for k, v in w_star.items()}, None)[0] for sl in slices])
    w = {k: v.detach().clone() for k, v in w_star.items()}
    trace = torch.empty(R, config.n_steps, dtype=torch.float64, device=device)

    def col(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return t.to(device=like.device, dtype=like.dtype).view((R,) + (1,) * (like.dim() - 1))

    # the update w <- w - (eps/2) * (nbeta * g + gamma * (w - w*)) + sqrt(eps) * noise, written as
    # in-place ops on buffers this function owns: every row's parameters are touched once per
    # step, and temporaries of [R, ...] each step cost as much as the arithmetic at this size
    step_g = {k: col(eps / 2 * nbeta, v) for k, v in w.items()}  # (eps/2) * nbeta
    step_pull = {k: col(eps / 2 * gamma, v) for k, v in w.items()}  # (eps/2) * gamma
    noise_scale = {k: col(eps.sqrt(), v) for k, v in w.items()}
    # rows checkpoint-major over all chains (row r is chain slot r % C): the chains' noise
    # broadcasts over [R/C, C, ...] instead of being gathered into an [R, ...] copy every step
    C = len(chains)
    tiled = step % C == 0 and R % C == 0 and torch.equal(pick.cpu(), torch.arange(C).repeat(R // C))
    pull = {k: torch.empty_like(v) for k, v in w.items()}
    # the checkpoints' own precision: a float64 run's chains in float32 draw the same normals
    noise_dtype = getattr(objective, "noise_dtype", None)
    for t in range(config.n_steps):
        idx = None
        if batch is not None:
            per_chain = torch.stack([torch.randperm(n, generator=gens[c], device=device)[:batch] for c in chains])
            idx = per_chain[pick]  # [R, b]
        noise = {
            k: torch.stack(
                [
                    torch.randn(v.shape[1:], generator=gens[c], device=device, dtype=noise_dtype or v.dtype)
                    for c in chains
                ]
            ).to(v.dtype)
            for k, v in w.items()
        }
        for sl in slices:
            loss, grads = objective({k: v[sl] for k, v in w.items()}, None if idx is None else idx[sl])
            trace[sl, t] = loss
            r = sl.stop - sl.start
            with torch.no_grad():
                for k in names:
                    wk, pk = w[k][sl], pull[k][sl]  # views: the update writes w in place
                    torch.sub(wk, w_star[k][sl], out=pk).mul_(step_pull[k][sl])
                    wk.sub_(pk).addcmul_(grads[k], step_g[k][sl], value=-1.0)
                    if tiled:
                        ones = (1,) * (wk.dim() - 1)
                        scale = noise_scale[k][sl].view(r // C, C, *ones)  # [r/C, C, 1...]
                        wk.view(r // C, C, *wk.shape[1:]).addcmul_(noise[k][None], scale)
                    else:
                        wk.addcmul_(noise[k][pick[sl]], noise_scale[k][sl])
    return init_loss.to(torch.float64).cpu(), trace.cpu()


def _finish(
    init_loss: torch.Tensor,  # [K*C]
    trace: torch.Tensor,  # [K*C, T]
    nbeta: torch.Tensor,  # [K*C]
    steps: torch.Tensor,
    n: int,
    config: LLCConfig,
) -> LLCResult:
    K, C = init_loss.shape[0] // config.chains, config.chains
    idx = torch.arange(config.draws) * config.steps_between_draws + config.burnin
    draws = trace[:, idx]
    chain = nbeta.to(torch.float64) * (draws.mean(-1) - init_loss)  # [K*C]
    above = trace - init_loss[:, None]
    diverged = ~torch.isfinite(trace).all(-1) | (above.nan_to_num(nan=math.inf) > config.diverge_loss).any(-1)
    chain_llc = chain.view(K, C)
    negative = (chain_llc < 0) & ~diverged.view(K, C)
    std = chain_llc.std(-1, correction=1) if C > 1 else torch.zeros(K, dtype=torch.float64)
    return LLCResult(
        steps=steps,
        llc=chain_llc.mean(-1),
        llc_std=std,
        chain_llc=chain_llc,
        init_loss=init_loss.view(K, C)[:, 0],
        trace=trace.view(K, C, -1),
        negative=negative,
        diverged=diverged.view(K, C),
        nbeta=float(nbeta[0]),
        n=n,
        config=config,
    )


def _rows(w_star: dict[str, torch.Tensor], chains: int) -> dict[str, torch.Tensor]:
    """``[K, ...]`` -> ``[K*C, ...]`` (checkpoint-major: row ``k*C + c`` is chain ``c`` of ``k``)."""
    return {k: v.repeat_interleave(chains, dim=0) for k, v in w_star.items()}


def _run_rows(
    objective: Objective,
    w_star: dict[str, torch.Tensor],  # [K, ...]
    eps: torch.Tensor,  # [K]
    gamma: torch.Tensor,  # [K]
    nbeta: torch.Tensor,  # [K]
    n: int,
    config: LLCConfig,
    rows_per_chunk: int,
    vectorize: bool,
    progress: Callable[[int], None] | None = None,
    state_budget: int = 1 << 26,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All (row x chain) chains, ``rows_per_chunk`` rows per objective call (or one chain at a
    time). As many rows as ``state_budget`` floats of chain state (weights, ``w*`` and a buffer)
    allow run in lockstep, so the chains' noise is drawn once per step for all of them."""
    C = config.chains
    K = next(iter(w_star.values())).shape[0]
    init, traces = [], []
    if vectorize:
        per_row_state = 3 * C * sum(v[0].numel() for v in w_star.values())
        fit = max(rows_per_chunk, state_budget // max(1, per_row_state))
        calls = -(-K // fit)
        per_call = -(-K // calls)  # balanced: 100 rows as 2 x 50, not 97 + 3
        for start in range(0, K, per_call):
            sl = slice(start, min(K, start + per_call))
            rows = _rows({k: v[sl] for k, v in w_star.items()}, C)
            per_row = [t[sl].repeat_interleave(C) for t in (eps, gamma, nbeta)]
            chain_of_row = torch.arange(C).repeat(sl.stop - sl.start)
            i, tr = _sample(objective, rows, chain_of_row, *per_row, n, config, rows_per_chunk * C)
            init.append(i)
            traces.append(tr)
            if progress is not None:
                progress(sl.stop - sl.start)
    else:  # the reference: one chain of one row at a time, same streams
        for r in range(K):
            for c in range(C):
                one = {k: v[r : r + 1] for k, v in w_star.items()}
                i, tr = _sample(
                    objective, one, torch.tensor([c]), eps[r : r + 1], gamma[r : r + 1], nbeta[r : r + 1], n, config
                )
                init.append(i)
                traces.append(tr)
            if progress is not None:
                progress(1)
    nb = nbeta.repeat_interleave(C)
    return torch.cat(init), torch.cat(traces), nb


# ----------------------------------------------------------------------------------------------
# analytic potentials (exactly known coefficients; tests and calibration of the sampler itself)


def llc_of_potential(
    potential: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    w_star: dict[str, torch.Tensor],
    nbeta: float,
    config: LLCConfig = LLCConfig(),
    *,
    vectorize: bool = True,
) -> LLCResult:
    """LLC of ``potential`` (a population loss ``K(w)`` with no data: ``params {name: [R, ...]}
    -> [R]``) at ``w_star`` (``{name: [K, ...]}``: ``K`` points at once), at inverse temperature
    ``nbeta``. ``config.batch_size`` is ignored (there is no data to batch)."""
    config = replace(config, batch_size=None)
    w_star = {k: v.to(config.device) for k, v in w_star.items()}

    def objective(params: dict[str, torch.Tensor], idx) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        with torch.enable_grad():
            loss = potential(leaves)
            grads = torch.autograd.grad(loss.sum(), list(leaves.values()))
        return loss.detach().to(torch.float64), dict(zip(leaves, grads))

    K = next(iter(w_star.values())).shape[0]
    full = lambda x: torch.full((K,), float(x), dtype=torch.float64)
    init, trace, nb = _run_rows(
        objective,
        w_star,
        full(config.epsilon),
        full(config.gamma),
        full(nbeta),
        1,
        config,
        rows_per_chunk=K,
        vectorize=vectorize,
    )
    return _finish(init, trace, nb, torch.zeros(K, dtype=torch.int64), 1, config)


# ----------------------------------------------------------------------------------------------
# models


class _ModelObjective:
    """Training-set loss and gradient of stacked checkpoints through the sweep engine's forward."""

    def __init__(self, run_config: RunConfig, engine: str, device: str = "cpu", dtype: str = "model"):
        from ..models import build_model
        from ..sweep._kernels import make_model
        from ..tasks import make_dataset

        self.noise_dtype = torch.float64 if run_config.model.dtype == "float64" else torch.float32
        if dtype == "float32":  # LLCConfig.dtype: a float64 run's kernels (and buffers) in float32
            run_config = replace(run_config, model=replace(run_config.model, dtype="float32"))
        with torch.random.fork_rng(devices=[]):  # a template only: do not advance the caller's RNG
            template = build_model(run_config.model, run_config.task, seed=0).to(device)
        self.names = [k for k, _ in template.named_parameters()]
        self.model = make_model(run_config, template, engine)
        # the likelihood is per example: optim.loss_reduction="mean_classes" divides the training
        # loss by the number of classes, which would silently divide n*beta by it too
        self.model.loss_div = 1.0
        self.model.sampler = True  # loss without accuracy; operand indices instead of one-hot GEMMs
        self.dtype = self.model.dtype
        if dtype == "float32":  # the soft-max too; ce_loss_grad still sums the examples' losses in float64
            self.model.softmax_dtype = torch.float32
        data = make_dataset(run_config.task).to(device)
        self.x, self.y = data.train_x, data.train_y
        self.n = int(self.y.shape[0])
        self.prepared = self.model.prepare(self.x)
        self.act_floats = int(self.model.act_floats)

    def __call__(self, params: dict[str, torch.Tensor], idx: torch.Tensor | None):
        R = next(iter(params.values())).shape[0]
        if idx is None:
            x, y, shared = self.prepared, self.y.expand(R, self.n), True
        else:
            x, y, shared = self.model.prepare(self.x[idx]), self.y[idx], False
        count = torch.full((R,), y.shape[1], device=y.device)
        loss, _, grads = self.model.loss_grad(params, x, y, None, count, shared)
        return loss, grads

    def cast(self, t: torch.Tensor) -> torch.Tensor:
        """A checkpoint's floating-point weights in the kernels' precision (the chains' weights)."""
        return t.to(self.dtype) if t.is_floating_point() else t


def _rows_per_chunk(obj: _ModelObjective, config: LLCConfig, budget: int) -> int:
    per_row = max(1, (config.batch_size or obj.n)) * max(1, obj.act_floats)
    return max(1, budget // per_row)


DEFAULT_BUDGET = 1 << 24
"""Activation floats per chunk of rows (64 MB in float32): large enough that a chunk's matmuls
amortise Python overhead, small enough to stay far from a shared machine's memory."""


def llc(
    obj: Trajectory | Run | torch.nn.Module,
    config: LLCConfig = LLCConfig(),
    *,
    rows: Sequence[int] | None = None,
    vectorize: bool = True,
    budget: int = DEFAULT_BUDGET,
    progress: Callable[[int], None] | None = None,
) -> LLCResult:
    """The local learning coefficient of every checkpoint of ``obj`` (or of ``rows`` of it).

    ``obj`` is a :class:`~mechgrok.store.Trajectory`, a :class:`~mechgrok.store.Run` or a live
    mechgrok model (its own training set is rebuilt from the run's task config). The loss is the
    per-example negative log-likelihood on the training set (mean cross-entropy in float64, or BCE
    for one logit), whatever ``optim.loss_reduction`` the run trained with, and without weight
    decay. ``vectorize=False`` loops over checkpoints and chains (the
    reference the vectorised pass is checked against). ``progress(k)`` is called after every
    ``k`` finished checkpoints.

    >>> res = mg.llc(mg.Run.open("checkpoints/modadd-mlp24"), mg.LLCConfig(chains=4))
    >>> res.steps, res.llc, res.llc_std, res.flagged
    """
    traj = as_trajectory(obj)
    if rows is not None:
        traj = traj.subset(list(rows))
    objective = _ModelObjective(traj.config, config.engine, config.device, config.dtype)
    nbeta = config.nbeta if config.nbeta is not None else default_nbeta(objective.n)
    w_star = {k: objective.cast(traj.params[k]).to(config.device) for k in objective.names}
    K = len(traj)
    full = lambda x: torch.full((K,), float(x), dtype=torch.float64)
    init, trace, nb = _run_rows(
        objective,
        w_star,
        full(config.epsilon),
        full(config.gamma),
        full(nbeta),
        objective.n,
        config,
        _rows_per_chunk(objective, config, budget) // config.chains or 1,
        vectorize,
        progress,
    )
    return _finish(init, trace, nb, traj.steps.clone(), objective.n, config)


@dataclass
class LLCCalibration:
    """Estimates over a grid of settings at one checkpoint: axes ``[nbeta, epsilon, gamma]``."""

    step: int
    nbetas: list[float]
    epsilons: list[float]
    gammas: list[float]
    llc: torch.Tensor
    """float64 [B, E, G]: mean over chains."""
    llc_std: torch.Tensor
    """float64 [B, E, G]: spread over chains."""
    flagged: torch.Tensor
    """bool [B, E, G]: some chain negative or diverged."""
    result: LLCResult
    """The underlying rows (``B*E*G`` of them, nbeta-major), traces included."""

    @property
    def stable(self) -> torch.Tensor:
        """bool [B, E, G]: unflagged, and within 20% (or 2 chain stds) of a neighbouring epsilon's
        estimate: where the estimate no longer depends much on the step size."""
        ok = ~self.flagged
        near = torch.zeros_like(ok)
        llc, std = self.llc, self.llc_std
        for shift in (-1, 1):
            other = torch.roll(llc, shift, dims=1)
            valid = torch.roll(ok, shift, dims=1)
            if shift == 1:
                valid[:, 0] = False
            else:
                valid[:, -1] = False
            tol = torch.maximum(0.2 * llc.abs(), 2 * std)
            near |= valid & ((llc - other).abs() <= tol)
        return ok & near


def llc_calibration(
    obj: Trajectory | Run | torch.nn.Module,
    epsilons: Sequence[float] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2),
    gammas: Sequence[float] = (1.0, 10.0, 100.0, 1000.0),
    nbetas: Sequence[float] | None = None,
    *,
    checkpoint: int = -1,
    config: LLCConfig = LLCConfig(),
    budget: int = DEFAULT_BUDGET,
) -> LLCCalibration:
    """Sweep ``epsilon`` x ``gamma`` (x ``nbeta``; default the config's) at one checkpoint (row
    ``checkpoint`` of the trajectory, default the last) in one vectorised pass, to see where the
    estimate is stable (:attr:`LLCCalibration.stable`) before reading a curve."""
    traj = as_trajectory(obj)
    row = checkpoint % len(traj)
    objective = _ModelObjective(traj.config, config.engine, config.device, config.dtype)
    if nbetas is None:
        nbetas = [config.nbeta if config.nbeta is not None else default_nbeta(objective.n)]
    grid = [(b, e, g) for b in nbetas for e in epsilons for g in gammas]
    for b, e, g in grid:  # validated like a config so a typo names the field
        replace(config, nbeta=float(b), epsilon=float(e), gamma=float(g))
    K = len(grid)
    w_star = {
        k: objective.cast(traj.params[k][row : row + 1])
        .expand(K, *traj.params[k].shape[1:])
        .to(config.device)
        .contiguous()
        for k in objective.names
    }
    nb = torch.tensor([b for b, _, _ in grid], dtype=torch.float64)
    eps = torch.tensor([e for _, e, _ in grid], dtype=torch.float64)
    gam = torch.tensor([g for _, _, g in grid], dtype=torch.float64)
    init, trace, nbr = _run_rows(
        objective,
        w_star,
        eps,
        gam,
        nb,
        objective.n,
        config,
        _rows_per_chunk(objective, config, budget) // config.chains or 1,
        True,
    )
    res = _finish(init, trace, nbr, traj.steps[row].repeat(K), objective.n, config)
    shape = (len(nbetas), len(epsilons), len(gammas))
    return LLCCalibration(
        step=int(traj.steps[row]),
        nbetas=[float(b) for b in nbetas],
        epsilons=[float(e) for e in epsilons],
        gammas=[float(g) for g in gammas],
        llc=res.llc.view(shape),
        llc_std=res.llc_std.view(shape),
        flagged=res.flagged.view(shape),
        result=res,
    )
