"""A model: a very small CNN (any input size; no dropout, so no masks are needed)."""
import torch.nn as nn
import torch.nn.functional as F

from raymix.models import MODELS


@MODELS.register("tiny_cnn")
class TinyCNN(nn.Module):
    """conv(C, 8, 3, padding 1) -> relu -> average pool to 4x4 -> fc(128, K)."""

    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.conv = nn.Conv2d(input_shape[0], 8, kernel_size=3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, num_classes)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(F.relu(self.conv(x)), 4)
        return self.fc(x.flatten(1))
