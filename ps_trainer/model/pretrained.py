"""Trunk weights in and out in torchvision's ResNet layout.

    load_pretrained(trunk, "resnet50-imagenet.pth")     # model.pretrained
    state = torchvision_state_dict(trunk)                # what ps-trainer export writes

A file is a plain state_dict (``torch.save(model.state_dict())``, as torchvision and timm
publish their ResNets), or a mapping holding one under ``state_dict`` or ``model``; it is read
with ``weights_only=True`` (no code runs). ``fc.*`` is ignored. A missing key, an unexpected
one or a shape that differs is a :class:`ConfigError` naming the key and the file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from ps_trainer.config import ConfigError

_KEY = "model.pretrained"
_OPTIONAL = ("num_batches_tracked",)   # batch norm's counter: older files leave it out


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors a weights file holds (see the module docstring for the forms read)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(_KEY, f"no weights file {str(path)!r}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:   # pickle, zip and torch errors alike: the file is not weights
        raise ConfigError(_KEY, f"{path} is not a readable weights file "
                                f"({type(err).__name__}: {str(err).splitlines()[0]})") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(data, Mapping) and isinstance(data.get(wrapper), Mapping):
            data = data[wrapper]
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ConfigError(_KEY, f"{path} holds no state_dict of tensors")
    return dict(data)


def load_pretrained(trunk: nn.Module, path: str | Path) -> None:
    """Copy a torchvision-layout ResNet state_dict into `trunk` (fc.* ignored), in place: the
    trunk's tensors stay the same objects."""
    own = trunk.state_dict(keep_vars=True)
    # fc.* is the classifier; a counter frozen batch norm has no place for is dropped.
    state = {k: v for k, v in read_state_dict(path).items()
             if not k.startswith("fc.") and (k in own or not k.endswith(_OPTIONAL))}
    unexpected = sorted(set(state) - set(own))
    if unexpected:
        raise ConfigError(_KEY, f"{path}: unexpected key {unexpected[0]!r}"
                                f"{_more(unexpected)} (is it a {type(trunk).__name__} of "
                                f"this depth and norm?)")
    missing = sorted(k for k in set(own) - set(state) if not k.endswith(_OPTIONAL))
    if missing:
        raise ConfigError(_KEY, f"{path}: missing key {missing[0]!r}{_more(missing)}")
    with torch.no_grad():
        for key, value in state.items():
            target = own[key]
            if tuple(value.shape) != tuple(target.shape):
                raise ConfigError(_KEY, f"{path}: key {key!r} has shape {tuple(value.shape)}, "
                                        f"the model needs {tuple(target.shape)}")
            target.copy_(value)


def torchvision_state_dict(trunk: nn.Module) -> dict[str, torch.Tensor]:
    """The trunk's weights as a torchvision ResNet state_dict less ``fc.*``: CPU, contiguous,
    float32 (batch-norm running statistics included; frozen batch norm written as batch norm,
    with its counter)."""
    own = trunk.state_dict()
    state = {}
    for key, value in own.items():
        state[key] = value.detach().to("cpu", copy=True).contiguous()
        counter = key[: -len("running_var")] + "num_batches_tracked"
        if key.endswith(".running_var") and counter not in own:
            state[counter] = torch.tensor(0, dtype=torch.long)
    return state


def _more(keys: list[str]) -> str:
    return f" and {len(keys) - 1} more" if len(keys) > 1 else ""
