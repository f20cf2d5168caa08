"""Trains a tiny CNN for a few steps and prints the ISA and a hash of the weights (JSON).

Run as a subprocess by test_isa_pin.py: kernel selection happens when torch is imported,
so each ISA setting needs a fresh interpreter.
"""

import hashlib
import json

import torch
from torch import nn

torch.manual_seed(0)
torch.set_num_threads(1)
# convolutions run in oneDNN; the linear layers are float matrix products that run in MKL
model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                      nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(256, 128), nn.ReLU(),
                      nn.Linear(128, 10))
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
x, y = torch.randn(64, 3, 16, 16), torch.randint(0, 10, (64,))
for _ in range(10):
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters()))
print(json.dumps({"isa": torch.backends.cpu.get_cpu_capability(),
                  "weights": digest.hexdigest()}))
