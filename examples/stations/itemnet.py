"""The item classifier of the stations example: a small convolutional
network (PyTorch, CPU) that names the item on one card crop.

train.py fits it on generated pictures; recognise.py loads it and runs it on
every card of a batch of sessions at once. The saved file (torch.save) holds
the weights and the class names, so a model knows what it was trained on.
"""

import torch
from torch import nn

SIZE = 48        # crops are SIZE x SIZE RGB, see scenes.crop


class ItemNet(nn.Module):
    def __init__(self, classes):
        super().__init__()
        self.classes = list(classes)
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.2),
                                  nn.Linear(64 * (SIZE // 8) ** 2, 64), nn.ReLU(),
                                  nn.Linear(64, len(self.classes)))

    def forward(self, x):
        return self.head(self.features(x))


def save(model, path):
    """Writes the model whole or not at all (a temporary file renamed), so
    that a reader never loads half a model."""
    import os
    tmp = "%s.tmp%d" % (path, os.getpid())
    torch.save({"classes": model.classes, "state": model.state_dict()}, tmp)
    os.replace(tmp, path)


def load(path):
    saved = torch.load(path, map_location="cpu")
    model = ItemNet(saved["classes"])
    model.load_state_dict(saved["state"])
    model.eval()
    return model


@torch.no_grad()
def predict(model, crops):
    """Class names and probabilities for a list of CHW float32 arrays."""
    if not len(crops):
        return [], []
    import numpy as np
    x = torch.from_numpy(np.stack(crops))
    p = torch.softmax(model(x), dim=1)
    conf, idx = p.max(dim=1)
    return [model.classes[i] for i in idx.tolist()], conf.tolist()
