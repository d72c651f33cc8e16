#!/usr/bin/env python3
"""What kind of predictor would code ctc-fluo-nuclei 30% smaller under a bound? (issue 11)

A lab measure, not the codec: residual entropies of the quantised residual (zeroth order, bits
per pixel) of several predictors of ctc's frames 15-29 at abs:B, each reading *reconstructions*
(the originals plus a uniform error within the bound, clamped to 0..255: a stand-in for the
codec's) and predicting the originals. Learned predictors are small MLPs trained only on frames
1-14 (the first half, as `tezipfs bench --model` trains) for a fixed number of steps.

    .venv/bin/python scripts/lab/causal_predictors.py [--bound 2] [--steps 12000] [--data DIR] [--only ROWS]

With --closed-loop, the row-parallel MLPs (mlp-above, mlp-lean-above) are also run as a
near-lossless coder would run them: row by row, each row predicted from the reconstructions of
the rows above and of the past frames *as coded* (quantised to the bound's bins, reconstructed,
clamped), not from originals plus a simulated error. The figure beside the open-loop one says
whether the lab's stand-in for reconstructions holds.

Rows (inputs of each pixel, relative to the previous frame's pixel):
  med                MED over the reconstructed left/up/up-left neighbours (JPEG-LS)
  linear10           the codec's wide linear tap set, least squares per 8 frames (fitted on the
                     test frames themselves: optimistic for it)
  linear10+bilateral the same plus an edge-preserving Cauchy-kernel mean of the frame's causal
                     5x5 neighbours and the previous 3x3 (the `lab/smooth-linear` branch)
  mlp-past           MLP, frames t-1..t-4 (7x7 each) and the 8/16-frame means: no pixel of frame t
  mlp-causal         MLP, the same plus frame t's causal 7x7 (rows above, left on the row)
  mlp-spatial        MLP, frame t's causal 7x7 only
  mlp-above          MLP, mlp-causal without the pixels left on the row (row-parallel)
  mlp-lean           MLP 39-32-16-1: frame t's causal 5x5, frame t-1's 3x3, the means' 3x3
  mlp-lean-above     mlp-lean without the pixels left on the row
"""
import argparse, time, torch, torch.nn as nn, torch.nn.functional as F

ap = argparse.ArgumentParser()
ap.add_argument("--bound", type=int, default=2)
ap.add_argument("--steps", type=int, default=12000)
ap.add_argument("--data", default="../shared/data/ctc-fluo-nuclei")
ap.add_argument("--only", default="")
ap.add_argument("--closed-loop", action="store_true")
a = ap.parse_args()
torch.manual_seed(0); torch.set_num_threads(2)
W = H = 511; N = 30; B = a.bound
orig = torch.stack([torch.frombuffer(bytearray(open(f"{a.data}/frame_{i:05d}.raw", "rb").read()), dtype=torch.uint8).reshape(H, W) for i in range(N)]).float()
rec = (orig + torch.randint(-B, B + 1, orig.shape).float()).clamp(0, 255) if B > 0 else orig.clone()
TEST = range(15, N); TRAIN = range(1, 15)

def ent(q):
    _, c = torch.unique(q, return_counts=True); p = c.float() / c.sum(); return float(-(p * p.log2()).sum())
def report(name, r, extra=""):
    q = torch.round(r / (2 * B + 1))
    print(f"abs:{B} {name:20s} rmse {float(r.pow(2).mean().sqrt()):6.3f}  entropy {ent(q):.3f} bits/pixel  {extra}", flush=True)
def unf(img, R):
    K = 2 * R + 1; x = img[None, None] if img.dim() == 2 else img[None]
    return F.unfold(F.pad(x, (R, R, R, R), mode="replicate"), K)[0]
def medp(x):
    x = x[None]; l = F.pad(x, (1, 0, 0, 0), mode="replicate")[0, :, :-1]; u = F.pad(x, (0, 0, 1, 0), mode="replicate")[0, :-1]; c = F.pad(x, (1, 0, 1, 0), mode="replicate")[0, :-1, :-1]
    return torch.where(c >= torch.maximum(l, u), torch.minimum(l, u), torch.where(c <= torch.minimum(l, u), torch.maximum(l, u), l + u - c))

def bilateral(t, sig=8.0):
    R, K = 2, 5; nb = unf(rec[t], R)[: R * K + R]; off = [(i // K - R, i % K - R) for i in range(R * K + R)]
    an = medp(rec[t]).flatten()
    sw = torch.tensor([{1: 4, 2: 2}.get(dy * dy + dx * dx, 1) for dy, dx in off]).float()[:, None]
    pn = unf(rec[t - 1], 1); pw = torch.tensor([{0: 4, 1: 2, 2: 1}[(i // 3 - 1) ** 2 + (i % 3 - 1) ** 2] for i in range(9)]).float()[:, None]
    V = torch.cat([nb, pn]); S = torch.cat([sw, pw]); w = S / (1 + (V - an[None]) ** 2 / sig ** 2)
    return (w * V).sum(0) / w.sum(0)
def linear(extra):
    rs = []
    for w0 in range(15, N, 8):
        ts = list(range(w0, min(w0 + 8, N))); X = []; Y = []
        for t in ts:
            x, p = rec[t], rec[t - 1]
            sh = lambda img, dy, dx: F.pad(img[None, None], (1, 1, 1, 1), mode="replicate")[0, 0, 1 + dy:1 + dy + H, 1 + dx:1 + dx + W].flatten()
            box = F.avg_pool2d(F.pad(p[None, None], (2, 2, 2, 2), mode="replicate"), 5, 1)[0, 0].flatten()
            X.append(torch.stack([sh(x, 0, -1), sh(x, -1, 0), sh(x, -1, -1), sh(x, -1, 1), p.flatten(), sh(p, 0, -1), sh(p, 0, 1), sh(p, -1, 0), sh(p, 1, 0), box] + [e(t) for e in extra], 1))
            Y.append(orig[t].flatten())
        X = torch.cat(X).double(); Y = torch.cat(Y).double(); A = torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype)], 1); wt = 1 / (X[:, 4] + 1)
        w = torch.linalg.solve((A * wt[:, None]).T @ A + 1e-6 * torch.eye(A.shape[1], dtype=A.dtype), (A * wt[:, None]).T @ Y[:, None])
        rs.append((Y - (A @ w)[:, 0]).float())
    return torch.cat(rs)

CFG = {
    "mlp-past": dict(R=3, cur="none", np=4, Rp=3, mean=True, hid=[64, 64]),
    "mlp-causal": dict(R=3, cur="causal", np=4, Rp=3, mean=True, hid=[64, 64]),
    "mlp-spatial": dict(R=3, cur="causal", np=0, Rp=0, mean=False, hid=[64, 64]),
    "mlp-above": dict(R=3, cur="above", np=4, Rp=3, mean=True, hid=[64, 64]),
    "mlp-lean": dict(R=2, cur="causal", np=1, Rp=1, mean=True, hid=[32, 16]),
    "mlp-lean-above": dict(R=2, cur="above", np=1, Rp=1, mean=True, hid=[32, 16]),
}
def feats(t, c):
    R = c["R"]; K = 2 * R + 1; u = unf(rec[t], R)
    idx = {"causal": list(range(R * K + R)), "above": list(range(R * K)), "none": []}[c["cur"]]
    cols = [u[idx]] if idx else []
    if c["np"]: cols.append(unf(torch.stack([rec[max(t - k, 0)] for k in range(1, c["np"] + 1)]), c["Rp"]))
    if c["mean"]: cols.append(unf(torch.stack([rec[max(t - 16, 0):t].mean(0), rec[max(t - 8, 0):t].mean(0)]), 1))
    base = unf(rec[t - 1], 1)[4]
    return (torch.cat(cols, 0) - base[None]).T.contiguous() / 8.0, orig[t].flatten() - base
def closed_loop(net, c):
    """Code frames 15-29 row by row with `net` (a row-parallel config): returns the residuals."""
    assert c["cur"] in ("above", "none")
    R = c["R"]; K = 2 * R + 1; step = 2 * B + 1
    recon = rec.clone()  # frames before 15: the simulated reconstructions (the lab's stand-in)
    rs = []
    with torch.no_grad():
        for t in TEST:
            cur = torch.zeros(H, W)
            past = []
            if c["np"]: past.append(unf(torch.stack([recon[max(t - k, 0)] for k in range(1, c["np"] + 1)]), c["Rp"]))
            if c["mean"]: past.append(unf(torch.stack([recon[max(t - 16, 0):t].mean(0), recon[max(t - 8, 0):t].mean(0)]), 1))
            past = torch.cat(past, 0) if past else None
            base = unf(recon[t - 1], 1)[4]
            for y in range(H):
                cols = []
                if c["cur"] == "above":
                    # Rows y-R..y-1 of frame t as reconstructed so far (replicated at the top edge).
                    # (Above the first row: the first row once coded, or the previous frame's.)
                    rows = torch.stack([cur[y - R + j] if y - R + j >= 0 else (cur[0] if y > 0 else recon[t - 1][0]) for j in range(R)])
                    padded = F.pad(rows[None, None], (R, R, 0, 0), mode="replicate")[0, 0]
                    cols.append(torch.stack([padded[j, i:i + W] for j in range(R) for i in range(K)]))
                sl = slice(y * W, (y + 1) * W)
                if past is not None: cols.append(past[:, sl])
                x = ((torch.cat(cols, 0) - base[None, sl]).T / 8.0)
                p = (base[sl] + net(x)[:, 0] * 8).round().clamp(0, 255)
                truth = orig[t, y]
                q = torch.round((truth - p) / step) if B > 0 else truth - p
                cur[y] = (p + q * step).clamp(0, 255)
                rs.append(truth - p)
            recon[t] = cur
    return torch.cat(rs)

def mlp(name, c):
    X, Y = zip(*[feats(t, c) for t in TRAIN]); X = torch.cat(X); Y = torch.cat(Y)
    layers = []; d = X.shape[1]
    for h in c["hid"]: layers += [nn.Linear(d, h), nn.ReLU()]; d = h
    net = nn.Sequential(*layers, nn.Linear(d, 1)); opt = torch.optim.Adam(net.parameters(), 1e-3); t0 = time.time()
    for s in range(a.steps):
        i = torch.randint(0, len(X), (4096,)); l = F.mse_loss(net(X[i])[:, 0] * 8, Y[i]); opt.zero_grad(); l.backward(); opt.step()
    del X, Y
    rs = []
    with torch.no_grad():
        for t in TEST:
            x, y = feats(t, c); rs.append(y - net(x)[:, 0] * 8)
    macs = sum(m.weight.numel() for m in net if isinstance(m, nn.Linear))
    report(name, torch.cat(rs), f"({macs} multiply-adds per pixel, {a.steps} steps in {time.time() - t0:.0f} s)")
    if a.closed_loop and c["cur"] in ("above", "none"):
        report(name + " closed", closed_loop(net, c), "(coded row by row from its own reconstructions)")

want = lambda n: not a.only or n in a.only.split(",")
print(f"# ctc-fluo-nuclei frames 15-29 at abs:{B}, reconstructions simulated; MLPs trained on frames 1-14, {a.steps} steps of 4096 pixels")
if want("med"): report("med", torch.cat([(orig[t] - medp(rec[t])).flatten() for t in TEST]))
if want("linear10"): report("linear10", linear([]))
if want("linear10+bilateral"): report("linear10+bilateral", linear([bilateral]))
for n, c in CFG.items():
    if want(n): mlp(n, c)
