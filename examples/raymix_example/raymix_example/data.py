"""A dataset: three Gaussian blobs in 20 dimensions (generated, no files)."""
import torch

from raymix.data import DATASETS


@DATASETS.register("blobs", num_classes=3, default_model="logreg")
def blobs(seed: int):
    """600 training and 300 test points around 3 centres fixed by ``seed``."""
    g = torch.Generator().manual_seed(seed)
    centres = 3.0 * torch.randn(3, 20, generator=g)

    def split(n):
        y = torch.randint(0, 3, (n,), generator=g)
        return centres[y] + torch.randn(n, 20, generator=g), y

    (x_train, y_train), (x_test, y_test) = split(600), split(300)
    return x_train, y_train, x_test, y_test  # (N, D) features become (N, 1, 1, D) inputs
