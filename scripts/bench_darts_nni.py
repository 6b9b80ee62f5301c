"""NNI 3.0 side of scripts/bench_darts_search.sh: DARTS search iterations on NNI's DARTS CIFAR
space, on CPU; prints one JSON line (same keys as examples/bench_darts_search.rs).

The supernet: ``nni.nas.hub.pytorch.DARTS(width=16, num_cells=8, dataset='cifar')`` made
differentiable in place by NNI's own DARTS strategy (``nni.nas.strategy.DARTS().mutate_model``:
every cell becomes a ``DifferentiableMixedCell`` with one alpha vector per edge, softmax-weighted
sum of all candidate ops). NNI's DARTS space has 7 candidate ops (no ``none``; rl-darts keeps
``none`` in alpha but skips computing it, so both evaluate the same 7 ops per edge) and no
BatchNorm after the pooling ops (rl-darts has it, as the official DARTS search code).

One timed iteration:
- first order: what NNI's ``DartsLightningModule.training_step`` does per batch, without the
  Lightning trainer around it: arch step (``arc_optim.zero_grad()``; CE loss on the search batch;
  ``backward()``; Adam(3e-4, betas (0.5, 0.999), wd 1e-3) step), then the weight step (CE loss
  on the train batch, ``backward()``, ``clip_grad_norm_(5)``, SGD(0.025, momentum 0.9, wd 3e-4)
  step).
- second order: NNI 3.0's DARTS has no unrolled mode, so the arch step is the official DARTS
  ``architect._backward_step_unrolled`` written over NNI's supernet, the way NNI 2.x's
  ``DartsTrainer(unrolled=True)`` did it: virtual SGD step in place (momentum and weight decay
  included), gradients at w' w.r.t. weights and alphas, the finite-difference Hessian-vector
  product with eps = 0.01 / ||v||, weights restored from a copy; then the same weight step.
Batches are fixed random tensors made before timing (no data loading), as on the Rust side.
Peak memory: ``ru_maxrss`` of this process (the shell script also reads /usr/bin/time's).
"""

import argparse
import json
import resource
import statistics
import time
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

warnings.filterwarnings("ignore")


def build(width, num_cells):
    """NNI's DARTS CIFAR space turned into its DARTS supernet; returns (model, weights, alphas)."""
    from nni.nas.hub.pytorch import DARTS as DartsSpace
    from nni.nas.strategy import DARTS as DartsStrategy

    space = DartsSpace(width=width, num_cells=num_cells, dataset="cifar")
    strategy = DartsStrategy()
    model = strategy.mutate_model(space)
    alphas = {id(p): p for p in strategy._arch_parameters.values()}
    # Cells may create extra alphas of their own: every parameter named like an arch alpha.
    for name, p in model.named_parameters():
        if "_arch_alpha" in name:
            alphas[id(p)] = p
    alphas = list(alphas.values())
    ids = {id(p) for p in alphas}
    weights = [p for p in model.parameters() if id(p) not in ids]
    return model, weights, alphas


def current_rss_mib():
    """VmRSS of this process (None off Linux)."""
    try:
        with open("/proc/self/status") as f:
            line = next(l for l in f if l.startswith("VmRSS:"))
        return int(line.split()[1]) / 1024
    except (OSError, StopIteration):
        return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--order", choices=["first", "second"], default="first")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--c", type=int, default=16)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--image", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)

    model, weights, alphas = build(a.c, a.layers)
    model.train()
    w_optim = torch.optim.SGD(weights, 0.025, momentum=0.9, weight_decay=3e-4)
    a_optim = torch.optim.Adam(alphas, 3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
    shape = (a.batch, 3, a.image, a.image)
    xt, yt = torch.randn(shape), torch.randint(10, (a.batch,))
    xv, yv = torch.randn(shape), torch.randint(10, (a.batch,))

    def loss_on(x, y):
        return F.cross_entropy(model(x), y)

    def arch_step_first():
        a_optim.zero_grad()
        loss_on(xv, yv).backward()
        a_optim.step()

    def arch_step_second():
        group = w_optim.param_groups[0]
        lr, mom, wd = group["lr"], group["momentum"], group["weight_decay"]
        backup = [p.detach().clone() for p in weights]
        # Virtual step w' = w - lr (mom * buf + g + wd * w).
        g = torch.autograd.grad(loss_on(xt, yt), weights, allow_unused=True)
        with torch.no_grad():
            for p, gp in zip(weights, g):
                if gp is None:
                    continue
                d = gp + wd * p
                buf = w_optim.state.get(p, {}).get("momentum_buffer")
                if buf is not None:
                    d = d + mom * buf
                p.sub_(lr * d)
        grads = torch.autograd.grad(loss_on(xv, yv), weights + alphas, allow_unused=True)
        v = [gw if gw is not None else torch.zeros_like(p) for gw, p in zip(grads[: len(weights)], weights)]
        d_alpha = [ga if ga is not None else torch.zeros_like(p) for ga, p in zip(grads[len(weights):], alphas)]
        with torch.no_grad():
            for p, b in zip(weights, backup):
                p.copy_(b)
        eps = 0.01 / torch.cat([t.flatten() for t in v]).norm()

        def alpha_grad_at(scale):
            with torch.no_grad():
                for p, vp in zip(weights, v):
                    p.add_(vp, alpha=float(scale * eps))
            out = torch.autograd.grad(loss_on(xt, yt), alphas, allow_unused=True)
            return [o if o is not None else torch.zeros_like(p) for o, p in zip(out, alphas)]

        g_pos = alpha_grad_at(1.0)   # w + eps v
        g_neg = alpha_grad_at(-2.0)  # w - eps v
        with torch.no_grad():
            for p, b in zip(weights, backup):
                p.copy_(b)
        a_optim.zero_grad()
        for p, da, gp, gn in zip(alphas, d_alpha, g_pos, g_neg):
            p.grad = da - lr * (gp - gn) / (2 * eps)
        a_optim.step()

    def weight_step():
        w_optim.zero_grad()
        loss = loss_on(xt, yt)
        loss.backward()
        nn.utils.clip_grad_norm_(weights, 5.0)
        w_optim.step()
        return loss.item()

    arch_step = arch_step_first if a.order == "first" else arch_step_second
    rss_before = current_rss_mib()
    alpha0 = [p.detach().clone() for p in alphas]
    seconds = []
    for i in range(a.warmup + a.iters):
        t0 = time.perf_counter()
        arch_step()
        loss = weight_step()
        if not loss == loss:
            raise SystemExit(f"loss became {loss}")
        if i >= a.warmup:
            seconds.append(time.perf_counter() - t0)
    moved = max((p.detach() - q).abs().max().item() for p, q in zip(alphas, alpha0))
    if not moved > 0:
        raise SystemExit("the alphas did not move: the arch step is not reaching them")
    import nni

    print(json.dumps({
        "impl": "nni",
        "order": a.order,
        "threads": a.threads,
        "batch": a.batch,
        "c": a.c,
        "layers": a.layers,
        "image": a.image,
        "parameters": sum(p.numel() for p in weights),
        "alphas": sum(p.numel() for p in alphas),
        "warmup": a.warmup,
        "iters": a.iters,
        "sec_per_iter_median": statistics.median(seconds) if seconds else float("nan"),
        "sec_per_iter_mean": statistics.mean(seconds) if seconds else float("nan"),
        "seconds": seconds,
        "rss_before_iters_mib": rss_before,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "nni_version": nni.__version__,
        "torch_version": torch.__version__,
        "what": "NNI's DARTS CIFAR space via nni.nas.strategy.DARTS().mutate_model; first order = "
                "DartsLightningModule.training_step's arch + weight step without the trainer; second "
                "order = official DARTS unrolled step (FD Hessian-vector product) over NNI's supernet.",
    }))


if __name__ == "__main__":
    main()
