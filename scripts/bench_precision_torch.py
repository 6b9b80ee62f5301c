"""PyTorch peer of `scripts/bench_precision.sh`: one PPO minibatch step of the IMPALA-CNN
agent (forward, backward, Adam) in each precision x layout, as CleanRL's `ppo_procgen.py`
would run it, timed in this process.

The network is written here from the IMPALA-CNN definition (Espeholt et al. 2018; the Procgen
paper's [16, 32, 32] conv sequences, a 256-unit linear layer, 15-action policy and value
heads), not copied from CleanRL. bf16 runs under `torch.autocast("cpu", torch.bfloat16)`,
which keeps the weights, the optimiser and the loss in fp32 (what the Rust side does by
explicit casts); channels-last converts the weights and the input with
`memory_format=torch.channels_last`.

Prints one JSON line: {"precision", "layout", "seconds": [per step], "peak_rss_mib"}.
Run one configuration per process so that the peak resident size is that configuration's.
"""

import argparse
import json
import resource
import time

import torch
from torch import nn


class ResidualBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return x + self.conv1(torch.relu(self.conv0(torch.relu(x))))


class ConvSequence(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.res0 = ResidualBlock(c_out)
        self.res1 = ResidualBlock(c_out)

    def forward(self, x):
        x = nn.functional.max_pool2d(self.conv(x), 3, 2, 1)
        return self.res1(self.res0(x))


class ImpalaAgent(nn.Module):
    def __init__(self, channels=(16, 32, 32), embedding=256, actions=15):
        super().__init__()
        seqs, c, hw = [], 3, 64
        for c_out in channels:
            seqs.append(ConvSequence(c, c_out))
            c, hw = c_out, (hw + 1) // 2
        self.seqs = nn.Sequential(*seqs)
        self.fc = nn.Linear(c * hw * hw, embedding)
        self.actor = nn.Linear(embedding, actions)
        self.critic = nn.Linear(embedding, 1)

    def forward(self, x):
        h = torch.relu(self.fc(torch.relu(self.seqs(x).flatten(1))))
        return self.actor(h), self.critic(h).squeeze(-1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--layout", choices=["nchw", "channels_last"], default="nchw")
    ap.add_argument("--minibatch", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    agent = ImpalaAgent()
    # Observations as the env gives them (u8 NHWC), turned into floats the way
    # ppo_procgen.py does (permute to NCHW indexing; the memory stays NHWC).
    frames = torch.randint(0, 256, (args.minibatch, 64, 64, 3), dtype=torch.uint8)
    obs = frames.permute(0, 3, 1, 2).float() / 255.0
    if args.layout == "channels_last":
        agent = agent.to(memory_format=torch.channels_last)
        obs = obs.contiguous(memory_format=torch.channels_last)
    else:
        obs = obs.contiguous()
    actions = torch.randint(0, 15, (args.minibatch,))
    returns = torch.randn(args.minibatch)
    opt = torch.optim.Adam(agent.parameters(), lr=5e-4, eps=1e-5)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            logits, value = agent(obs)
        # The loss in fp32, as the autocast recipe has it.
        logp = torch.log_softmax(logits.float(), -1)
        pg = -logp.gather(1, actions[:, None]).mean()
        entropy = -(logp.exp() * logp).sum(-1).mean()
        loss = pg - 0.01 * entropy + 0.5 * ((value.float() - returns) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(agent.parameters(), 0.5)
        opt.step()

    step()  # warm-up: oneDNN primitive creation, allocator growth
    seconds = []
    for _ in range(args.steps):
        t = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - t)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"precision": args.precision, "layout": args.layout,
                      "seconds": seconds, "peak_rss_mib": round(peak_mib)}))


if __name__ == "__main__":
    main()
