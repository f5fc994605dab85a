"""The zoo's PyTorch members (see :mod:`edgelstm.recipes.zoo`), exported to ONNX with
``torch.onnx.export(..., dynamo=False)``.

Each recipe writes the ONNX file the converter reads, the ``state_dict`` as plain arrays
(``.weights.npz``: no pickle, loaded with ``allow_pickle=False``) so a bench can run the torch
model itself, and the ``.scaler.json``. The module classes live here so the weights can be
loaded again.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import cmapss
from .cmapss import RUL_CAP, WINDOW
from .zoo import _write_scaler, cmapss_split, window_test, window_validation

N_FEATURES = 14


def _torch():
    import torch

    # One thread: these small recurrent models gain nothing from two, and on a busy 2-core machine
    # two intra-op threads made an epoch 15x slower (measured: 3 forecaster epochs 4.9 s vs 77 s).
    torch.set_num_threads(1)
    return torch


def window_lstm_module(hidden: int = 64, layers: int = 2):
    """``nn.LSTM(14, hidden, num_layers=layers, batch_first=True)``, ``h_n[-1] -> Linear(hidden, 1)``."""
    torch = _torch()

    class _WindowLSTM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = torch.nn.LSTM(N_FEATURES, hidden, num_layers=layers, batch_first=True, dropout=0.1)
            self.head = torch.nn.Linear(hidden, 1)

        def forward(self, x):
            _, (h_n, _) = self.rnn(x)
            return self.head(h_n[-1])

    return _WindowLSTM()


def forecaster_module(hidden: int = 64, layers: int = 4, state_io: bool = False):
    """``nn.GRU(14, hidden, num_layers=layers, batch_first=True) -> Linear(hidden, 14)`` on every step.

    ``state_io``: ``forward(x, h0) -> (y, h_n)`` (the same weights; for streaming it in onnxruntime
    with state inputs), else ``forward(x) -> y`` (what the converter takes)."""
    torch = _torch()

    class _Forecaster(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = torch.nn.GRU(N_FEATURES, hidden, num_layers=layers, batch_first=True)
            self.head = torch.nn.Linear(hidden, N_FEATURES)

        def forward(self, x, h0=None):
            out, h_n = self.rnn(x, h0)
            return (self.head(out), h_n) if state_io else self.head(out)

    return _Forecaster()


def load_module(kind: str, weights: Path, state_io: bool = False):
    """A zoo torch model from its ``.weights.npz`` state_dict, in eval mode (``kind``: window_lstm | forecaster)."""
    import numpy as np

    torch = _torch()
    module = window_lstm_module() if kind == "window_lstm" else forecaster_module(state_io=state_io)
    with np.load(str(weights), allow_pickle=False) as arrays:
        module.load_state_dict({name: torch.from_numpy(arrays[name].copy()) for name in arrays.files})
    return module.eval()


def save_weights(model, path: Path) -> None:
    """The state_dict as plain arrays (``.weights.npz``): nothing in it executes when loaded."""
    import numpy as np

    np.savez(str(path), **{name: value.detach().cpu().numpy() for name, value in model.state_dict().items()})


def train_torch_lstm_window(out: Path, seed: int = 0, epochs: int = 10, lr: float = 2e-3, batch_size: int = 256,
                            verbose: int = 0) -> dict:
    """Member 3: a 2-layer LSTM 64 on 30-cycle windows, ``h_n[-1] -> Linear``, in PyTorch.

    Stride-1 windows of the 80 training engines, target capped RUL/125 (folded into the Linear
    after training), Adam ``lr`` with a cosine decay over ``epochs``, batch 256, Gaussian input
    noise 0.2 while training; the epoch with the best RMSE on the validation cuts is kept.
    Exported with ``torch.onnx.export(model, (x,), ..., dynamo=False)``, dynamic batch and time;
    converted with ``--window 30``."""
    torch = _torch()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    data = cmapss_split()
    x, y = cmapss.windows(data["fit"], WINDOW)
    x_val, rul = window_validation(data["val"])
    model = window_lstm_module()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y[:, None] / RUL_CAP)
    xv = torch.from_numpy(x_val.astype(np.float32))
    best = {"rmse": np.inf}
    for epoch in range(epochs):
        for group in optimizer.param_groups:
            group["lr"] = cmapss._cosine(lr, epoch, epochs)
        model.train()
        order = torch.from_numpy(rng.permutation(len(xt)))
        total = 0.0
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = xt[idx] + 0.2 * torch.randn_like(xt[idx])
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(batch), yt[idx])
            loss.backward()
            optimizer.step()
            total += float(loss) * len(idx)
        model.eval()
        with torch.no_grad():
            result = cmapss.scores(model(xv)[:, 0].numpy() * RUL_CAP, rul)
        if result["rmse"] < best["rmse"]:
            best = dict(result, epoch=epoch + 1, state={k: v.clone() for k, v in model.state_dict().items()})
        if verbose:
            print(f"torch lstm epoch {epoch + 1}/{epochs} loss {total / len(order):.5f} val RMSE {result['rmse']:.2f} "
                  f"(best {best['rmse']:.2f} @ {best['epoch']})", flush=True)
    model.load_state_dict(best.pop("state"))
    with torch.no_grad():
        model.head.weight.mul_(RUL_CAP)
        model.head.bias.mul_(RUL_CAP)
    model.eval()
    save_weights(model, out.with_suffix(".weights.npz"))
    _export(model, (torch.zeros(1, WINDOW, N_FEATURES),), out, ["x"], ["y"], {"x": {0: "batch", 1: "time"}, "y": {0: "batch"}})
    _write_scaler(out.with_suffix(".scaler.json"), data["scaler"])
    with torch.no_grad():
        test = cmapss.scores(model(torch.from_numpy(window_test(data)))[:, 0].numpy(), data["truth"])
    return {"config": dict(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, hidden=64, layers=2),
            "best_epoch": best["epoch"], "validation": {"rmse": best["rmse"], "phm08": best["phm08"]}, "test": test}


def _export(model, args, path: Path, inputs: list, outputs: list, axes: dict) -> None:
    import warnings

    torch = _torch()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and batch-size notes
        torch.onnx.export(model, args, str(path), dynamo=False, input_names=inputs, output_names=outputs,
                          dynamic_axes=axes)


def train_torch_gru_forecaster(out: Path, seed: int = 0, epochs: int = 60, lr: float = 3e-3, verbose: int = 0) -> dict:
    """Member 6: a 4-layer GRU 64 that forecasts the next cycle's 14 z-scored sensors from the
    readings so far, one forecast per cycle (streaming).

    Whole training trajectories (padded, padding masked out of the loss), input the z-scored
    readings of cycles 1..T-1, target those of cycles 2..T; MSE, Adam ``lr`` cosine over
    ``epochs``, batch 16 engines; the epoch with the lowest validation MSE kept. Scored against
    persistence (next = current) and the sensors' own variance."""
    torch = _torch()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    data = cmapss_split()

    def pairs(sequences):
        x, _, w = cmapss.pad([s[:-1] for s in sequences])
        y, _, _ = cmapss.pad([s[1:] for s in sequences])
        return torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(w)

    x, y, w = pairs(data["fit"])
    xv, yv, wv = pairs(data["val"])

    def masked_mse(pred, target, weight):
        return ((pred - target) ** 2).mean(-1).mul(weight).sum() / weight.sum()

    model = forecaster_module()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    best = {"mse": np.inf}
    batch = 16
    for epoch in range(epochs):
        for group in optimizer.param_groups:
            group["lr"] = cmapss._cosine(lr, epoch, epochs)
        model.train()
        order = torch.from_numpy(rng.permutation(len(x)))
        for start in range(0, len(order), batch):
            idx = order[start:start + batch]
            optimizer.zero_grad()
            loss = masked_mse(model(x[idx]), y[idx], w[idx])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
        model.eval()
        with torch.no_grad():
            mse = float(masked_mse(model(xv), yv, wv))
        if mse < best["mse"]:
            best = {"mse": mse, "epoch": epoch + 1, "state": {k: v.clone() for k, v in model.state_dict().items()}}
        if verbose:
            print(f"forecaster epoch {epoch + 1}/{epochs} val MSE {mse:.4f} (best {best['mse']:.4f} @ {best['epoch']})",
                  flush=True)
    model.load_state_dict(best.pop("state"))
    model.eval()
    save_weights(model, out.with_suffix(".weights.npz"))
    _export(model, (torch.zeros(1, WINDOW, N_FEATURES),), out, ["x"], ["y"], {"x": {0: "batch", 1: "time"}, "y": {0: "batch", 1: "time"}})
    twin = forecaster_module(state_io=True)
    twin.load_state_dict(model.state_dict())
    twin.eval()
    _export(twin, (torch.zeros(1, 1, N_FEATURES), torch.zeros(4, 1, 64)), out.with_suffix(".state_io.onnx"),
            ["x", "h0"], ["y", "h_n"], {"x": {0: "batch", 1: "time"}, "y": {0: "batch", 1: "time"}, "h0": {1: "batch"},
                                        "h_n": {1: "batch"}})
    _write_scaler(out.with_suffix(".scaler.json"), data["scaler"])
    persistence = float(masked_mse(xv, yv, wv))
    variance = float(masked_mse(torch.zeros_like(yv), yv, wv))
    return {"config": dict(epochs=epochs, lr=lr, batch_size=batch, seed=seed, hidden=64, layers=4),
            "best_epoch": best["epoch"],
            "validation": {"mse": best["mse"], "persistence_mse": persistence, "zero_forecast_mse": variance}}


if __name__ == "__main__":  # pragma: no cover
    import sys

    from .zoo import main

    raise SystemExit(main(sys.argv[1:]))
