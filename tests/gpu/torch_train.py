#!/usr/bin/env python3
"""A small, deterministic PyTorch training job for the real-GPU suite.

A two-block pre-norm transformer on synthetic token data, trained with AdamW. Every
step prints its loss exactly (float.hex), so runs can be compared bit for bit; the
last line gives the mean step time over the steady-state steps.

  --mode default      the caching allocator as it comes
  --mode expandable   run it with PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
                      (the caller sets the variable; the mode only labels the run)
  --mode graph        the whole training step captured once in a CUDA graph and
                      replayed (static inputs, capturable AdamW)

--loader-workers N makes the batches on the CPU in a torch DataLoader with N worker
processes, forked (the Linux default) once CUDA is initialized, with pinned memory:
the workers inherit what the process holds of the driver.

--step-delay-ms paces the steps so another process (the suite, through the ferry CLI)
can act between them.
"""
import argparse
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def parse():
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=["default", "expandable", "graph"], default="default")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--step-delay-ms", type=float, default=0.0)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--loader-workers", type=int, default=0)
    p.add_argument("--timing-from", type=int, default=50, help="steady state starts at this step")
    return p.parse_args()


class Block(nn.Module):
    def __init__(self, dim, heads=4):
        super().__init__()
        self.n1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.n2 = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, 4 * dim)
        self.down = nn.Linear(4 * dim, dim)
        self.heads = heads

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.n1(x)).split(d, dim=2)
        shape = (b, t, self.heads, d // self.heads)
        q, k, v = (z.view(shape).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / (d // self.heads) ** 0.5
        mask = torch.ones(t, t, device=x.device, dtype=torch.bool).tril()
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(y)
        return x + self.down(F.gelu(self.up(self.n2(x))))


class Model(nn.Module):
    def __init__(self, vocab, dim, seq):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.zeros(1, seq, dim))
        self.blocks = nn.Sequential(Block(dim), Block(dim))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens):
        return self.head(self.norm(self.blocks(self.emb(tokens) + self.pos)))


def batch_for(step, a, gen_device):
    # Data is a function of the step alone: a restored or resumed run sees the same.
    g = torch.Generator(device=gen_device)
    g.manual_seed(1000 + step)
    x = torch.randint(0, a.vocab, (a.batch, a.seq + 1), device=gen_device, generator=g)
    return x[:, :-1], x[:, 1:]


class Batches(torch.utils.data.Dataset):
    """Step i's batch, made on the CPU (in a DataLoader worker)."""

    def __init__(self, a):
        self.a = a

    def __len__(self):
        return self.a.steps

    def __getitem__(self, i):
        return batch_for(i + 1, self.a, "cpu")


def main():
    a = parse()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True, warn_only=True)  # a nondeterministic op warns; the losses tell
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device("cuda")
    model = Model(a.vocab, a.dim, a.seq).to(dev)
    graph = a.mode == "graph"
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.01, capturable=graph, foreach=True)
    print(f"torch_train: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, mode {a.mode}, "
          f"alloc_conf {os.environ.get('PYTORCH_CUDA_ALLOC_CONF', '')}, {a.steps} steps", flush=True)

    def train_step(x, y):
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, a.vocab), y.reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)
        return loss

    static_x = static_y = static_loss = g = None
    if graph:
        static_x, static_y = batch_for(0, a, dev)
        static_x, static_y = static_x.clone(), static_y.clone()
        # Warm-up on a side stream, as CUDA graph capture requires; the warm-up steps
        # change the weights, so the graphed run's losses are compared with another
        # graphed run, never with the eager one.
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                train_step(static_x, static_y)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            static_loss = train_step(static_x, static_y)

    loader = None
    if a.loader_workers:
        loader = iter(torch.utils.data.DataLoader(Batches(a), batch_size=None, shuffle=False,
                                                  num_workers=a.loader_workers, pin_memory=True,
                                                  multiprocessing_context="fork"))
    times = []
    for step in range(1, a.steps + 1):
        t0 = time.perf_counter()
        if loader is not None:
            x, y = (z.to(dev, non_blocking=True) for z in next(loader))
        else:
            x, y = batch_for(step, a, dev)
        if graph:
            static_x.copy_(x)
            static_y.copy_(y)
            g.replay()
            loss = static_loss
        else:
            loss = train_step(x, y)
        value = loss.item()  # synchronizes: the step is complete
        times.append(time.perf_counter() - t0)
        print(f"step {step} loss {value.hex()}", flush=True)
        if a.step_delay_ms:
            time.sleep(a.step_delay_ms / 1000)
    steady = times[a.timing_from:] or times
    checksum = sum(p.double().sum().item() for p in model.parameters())
    print(f"weights checksum {checksum.hex()}", flush=True)
    print(f"mean step ms {1000 * sum(steady) / len(steady):.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
