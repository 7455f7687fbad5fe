#!/usr/bin/python3
"""make_lstm_fixtures.py: regenerates the LSTM parity fixtures with real PyTorch (python3-torch;
CI does not need it, it reads the committed files). For each fixture NAME it writes
NAME.state.npz (the state_dict of an nn.LSTM + nn.Linear head, float32 as PyTorch holds it)
and NAME.cases.npz (x: windows fed to PyTorch, y: its outputs, window: steps per sample).
Seeded: the same torch version writes the same files.

    cd tests/data/models && /usr/bin/python3 make_lstm_fixtures.py
"""
import numpy as np
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, n_features, hidden, layers, outputs):
        super().__init__()
        self.lstm = nn.LSTM(n_features, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, outputs)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.head(out[:, -1, :])


FIXTURES = {
    # name: (n_features, hidden, layers, outputs, window, samples)
    "lstm_1layer": (3, 8, 1, 1, 20, 16),
    "lstm_2layer": (4, 6, 2, 2, 12, 16),
    "lstm_32x60": (5, 32, 1, 1, 60, 8),
}


def main():
    for seed, (name, (nf, hidden, layers, outputs, window, n)) in enumerate(FIXTURES.items()):
        torch.manual_seed(100 + seed)
        net = Net(nf, hidden, layers, outputs).eval()
        with torch.no_grad():
            for p in net.parameters():  # wider than the default init, so gates saturate too
                p.mul_(2.0)
            x = torch.randn(n, window, nf, dtype=torch.float32) * 1.5
            y = net(x)
        state = {k: v.numpy() for k, v in net.state_dict().items()}
        np.savez(f"{name}.state.npz", **state)
        np.savez(f"{name}.cases.npz", x=x.numpy().astype(np.float64),
                 y=y.numpy().astype(np.float64), window=np.array(window))
        print(f"{name}: {n} windows of {window} x {nf}, hidden {hidden} x {layers}, "
              f"{outputs} outputs")


if __name__ == "__main__":
    main()
