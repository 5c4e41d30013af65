"""Import a checkpoint of the authors' released code (facebookresearch/adaptive-span).

    python -m experiments.convert AUTHORS.pt --config CONFIG.yaml --out OURS.pt

Their file is a dict whose `model` entry is a state dict (keys possibly prefixed
`module.` by DataParallel). Their layout, d = d_model, d_h = d / H, L = span:
    in_emb.weight V x d; out_emb.weight V x d, out_emb.bias V
    key_pe 1 x d_h x L, column j holding distance L - j
    layers.i.attn.proj_query|proj_key|proj_val|proj_out.weight d x d
    layers.i.norm1|norm2.weight|bias; layers.i.ff.fc1|fc2.weight|bias (FFN layers)
    layers.i.attn.attn.adaptive_span._mask.current_val H x 1 x 1 (z in [0, 1])
    layers.i.attn.attn.persistent_memory.key H x d_h x N, .val H x N x d_h
    (+ buffers and a duplicate span mask under persistent_memory, both ignored).
The result loads into our TransformerLM built from CONFIG (`{"model": state_dict}`),
e.g. for `python -m experiments.evaluate CONFIG --checkpoint OURS.pt`.
Files that do not fit the config are refused naming the first mismatching key.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor

from model.config import ModelConfig
from model.errors import UserError
from model.transformer import build_model

# (their key pattern, our key template); layer keys carry the layer index as \1.
RENAMES = [
    (r"in_emb\.weight", "embed.weight"),
    (r"out_emb\.(weight|bias)", r"out.\1"),
    (r"key_pe", "pos_emb"),
    (r"layers\.(\d+)\.attn\.proj_query\.weight", r"layers.\1.attn.w_q.weight"),
    (r"layers\.(\d+)\.attn\.proj_key\.weight", r"layers.\1.attn.w_k.weight"),
    (r"layers\.(\d+)\.attn\.proj_val\.weight", r"layers.\1.attn.w_v.weight"),
    (r"layers\.(\d+)\.attn\.proj_out\.weight", r"layers.\1.attn.w_o.weight"),
    (r"layers\.(\d+)\.(norm[12])\.(weight|bias)", r"layers.\1.\2.\3"),
    (r"layers\.(\d+)\.ff\.(fc[12])\.(weight|bias)", r"layers.\1.ffn.\2.\3"),
    (r"layers\.(\d+)\.attn\.attn\.adaptive_span\._mask\.current_val", r"layers.\1.attn.span.z"),
    (r"layers\.(\d+)\.attn\.attn\.persistent_memory\.key", r"layers.\1.attn.persistent.keys"),
    (r"layers\.(\d+)\.attn\.attn\.persistent_memory\.val", r"layers.\1.attn.persistent.values"),
]
IGNORED = [r".*mask_template", r".*persistent_memory\.adaptive_span\..*"]


def our_key(their_key: str) -> str | None:
    """Our parameter name for one of theirs; None for entries we do not load."""
    if any(re.fullmatch(p, their_key) for p in IGNORED):
        return None
    for pattern, template in RENAMES:
        if re.fullmatch(pattern, their_key):
            return re.sub(pattern, template, their_key)
    raise UserError(f"unexpected key {their_key!r} in the authors' checkpoint")


def our_tensor(our_name: str, value: Tensor) -> Tensor:
    """Their tensor in our layout: only the position table differs (1 x d_h x L, reversed)."""
    if our_name == "pos_emb":
        return value.squeeze(0).flip(-1)  # column j = distance L - j  ->  column dist - 1
    return value


def convert(their_state: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """Their state dict -> ours for `cfg`, checked key by key against a model built from it."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in build_model(cfg).state_dict().items()}
    ours: dict[str, Tensor] = {}
    for key, value in their_state.items():
        key = key.removeprefix("module.")
        name = our_key(key)
        if name is None:
            continue
        tensor = our_tensor(name, value)
        if name not in expected:
            raise UserError(f"{key} {tuple(value.shape)} has no place in a {cfg.variant} model of this config")
        if tuple(tensor.shape) != expected[name]:
            raise UserError(f"{key}: shape {tuple(value.shape)} does not fit {name} {expected[name]} of the config")
        ours[name] = tensor.detach().clone().float()
    missing = [k for k in expected if k not in ours]
    if missing:
        raise UserError(f"the authors' checkpoint has nothing for {missing[0]} {expected[missing[0]]}")
    return ours


def read_model_state(path: Path, hint: str = "") -> dict[str, Tensor]:
    """The `model` state dict of a {"model": ...} file (loaded with weights_only=True);
    a missing, unreadable or foreign file is a one-line UserError ending with `hint`."""
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise UserError(f"cannot read {path}: {str(err).splitlines()[0]}") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("model"), dict):
        raise UserError(f"{path} has no 'model' state dict{hint}")
    return payload["model"]


def read_their_checkpoint(path: Path) -> dict[str, Tensor]:
    return read_model_state(path, " (is it a checkpoint of the authors' code?)")

