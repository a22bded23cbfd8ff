"""Small helpers about nn.Module objects, shared by models/ and engine/."""
from torch import nn


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain network inside DistributedDataParallel, DataParallel and torch.compile wrappers
    (nested in any order): what checkpoints store and what evaluation runs."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, '_orig_mod'):
            model = model._orig_mod
        else:
            return model
