"""The authors' checkpoint layout (facebookresearch/adaptive-span) <-> this project's, both ways.

    python -m experiments.convert AUTHORS.pt --config CONFIG.yaml --out OURS.pt
    python -m experiments.convert --to-authors OURS.pt --config CONFIG.yaml --out THEIRS.pt

This module is the pure key mapping (the commands live in experiments/convert.py).
Their file is a dict whose `model` entry is a state dict with keys prefixed
`module.` by DataParallel. Their layout, in their state-dict order (d = d_model,
d_h = d / H, L = span, N persistent vectors, n_c x d_c the adaptive cluster c):

    key_pe                      1 x d_h x L   column j = distance L - j      -> pos_emb d_h x L (column dist-1)
    in_emb.weight               V x d                                        -> embed.weight
    out_emb.weight|bias         V x d | V                                    -> out.weight|bias
  adaptive input/output (tied):
    in_emb.emb_layers.c.weight  n_c x d_c                                    -> adaptive.tables.c
    in_emb.emb_projs.c          d x d_c                                      -> adaptive.projs.c
    out_emb.cluster_proj.weight|bias   S x d | S (row j: tail cluster S - j)  -> adaptive.cluster.weight|bias
    out_emb.out_layers.c.weight the same tensor as in_emb.emb_layers.c.weight (tied copy)
    out_emb.out_layers.c.bias   n_c                                          -> adaptive.biases.c
    out_emb.out_projs.c         the same tensor as in_emb.emb_projs.c (tied copy)
  per layer i (prefix layers.i.):
    attn.attn.adaptive_span._mask.current_val   H x 1 x 1 (z)                -> attn.span.z
    attn.attn.adaptive_span._mask.mask_template L, the constant 1-L .. 0     (buffer, checked)
    attn.attn.persistent_memory.key|val         H x d_h x N | H x N x d_h    -> attn.persistent.keys|values
    attn.attn.persistent_memory.adaptive_span._mask.*   the same two tensors again (shared module)
    attn.proj_query|proj_out|proj_val|proj_key.weight   d x d                -> attn.w_q|w_o|w_v|w_k.weight
    norm1.weight|bias                                                        -> norm1.weight|bias
    ff.fc1|fc2.weight|bias, norm2.weight|bias   (FFN layers)                 -> ffn.fc1|fc2.*, norm2.*

Their code has two of our variants: `transformer` (FFN layers) and `all_attention`
(persistent memory, no FFN), each with or without adaptive span and adaptive I/O.
A tied copy must equal its original exactly; either direction refuses a state
that does not fit the config in one line (a UserError naming the first bad key).
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from model.config import ModelConfig
from model.errors import UserError
from model.transformer import build_model

PREFIX = "module."
"""DataParallel's prefix, on every key of the authors' files."""
AUTHORS_VARIANTS = ("transformer", "all_attention")
"""Our variants that the authors' code can express."""


class Entry(NamedTuple):
    """One key of the authors' state dict: `role` is PARAM (`source` = our parameter name),
    COPY (`source` = the authors' key of the tensor it repeats) or TEMPLATE (a constant buffer)."""

    key: str
    role: str
    source: str


PARAM, COPY, TEMPLATE = "param", "copy", "template"


# ---------------------------------------------------------------- the layout


def authors_layout(cfg: ModelConfig) -> list[Entry]:
    """Every key of the authors' state dict for `cfg` (without the `module.` prefix), in their order."""
    if cfg.variant not in AUTHORS_VARIANTS:
        raise UserError(f"variant {cfg.variant} does not exist in the authors' code "
                        f"(it has {' and '.join(AUTHORS_VARIANTS)})")
    entries = [Entry("key_pe", PARAM, "pos_emb")]
    entries += _adaptive_entries(cfg) if cfg.output == "adaptive" else _softmax_entries()
    for i in range(cfg.num_layers):
        entries += _layer_entries(cfg, f"layers.{i}.")
    return entries


def _softmax_entries() -> list[Entry]:
    return [Entry("in_emb.weight", PARAM, "embed.weight"), Entry("out_emb.weight", PARAM, "out.weight"),
            Entry("out_emb.bias", PARAM, "out.bias")]


def _adaptive_entries(cfg: ModelConfig) -> list[Entry]:
    """Their in_emb (tables, then projections) and out_emb (cluster logits, per-cluster tied
    weight and own bias, tied projections)."""
    clusters = range(len(cfg.adaptive_cutoffs) + 1)
    entries = [Entry(f"in_emb.emb_layers.{c}.weight", PARAM, f"adaptive.tables.{c}") for c in clusters]
    entries += [Entry(f"in_emb.emb_projs.{c}", PARAM, f"adaptive.projs.{c}") for c in clusters]
    entries += [Entry(f"out_emb.cluster_proj.{p}", PARAM, f"adaptive.cluster.{p}") for p in ("weight", "bias")]
    for c in clusters:
        entries += [Entry(f"out_emb.out_layers.{c}.weight", COPY, f"in_emb.emb_layers.{c}.weight"),
                    Entry(f"out_emb.out_layers.{c}.bias", PARAM, f"adaptive.biases.{c}")]
    entries += [Entry(f"out_emb.out_projs.{c}", COPY, f"in_emb.emb_projs.{c}") for c in clusters]
    return entries


def _layer_entries(cfg: ModelConfig, p: str) -> list[Entry]:
    span = cfg.adaptive_span.enabled
    mask = f"{p}attn.attn.adaptive_span._mask."
    entries = []
    if span:
        entries += [Entry(mask + "current_val", PARAM, p + "attn.span.z"), Entry(mask + "mask_template", TEMPLATE, "")]
    if cfg.variant == "all_attention":
        pers = f"{p}attn.attn.persistent_memory."
        entries += [Entry(pers + "key", PARAM, p + "attn.persistent.keys"),
                    Entry(pers + "val", PARAM, p + "attn.persistent.values")]
        if span:  # their persistent memory holds the same AdaptiveSpan module
            entries += [Entry(pers + "adaptive_span._mask.current_val", COPY, mask + "current_val"),
                        Entry(pers + "adaptive_span._mask.mask_template", COPY, mask + "mask_template")]
    for theirs, ours in (("proj_query", "w_q"), ("proj_out", "w_o"), ("proj_val", "w_v"), ("proj_key", "w_k")):
        entries.append(Entry(f"{p}attn.{theirs}.weight", PARAM, f"{p}attn.{ours}.weight"))
    entries += [Entry(f"{p}norm1.{t}", PARAM, f"{p}norm1.{t}") for t in ("weight", "bias")]
    if cfg.variant == "transformer":
        entries += [Entry(f"{p}ff.{fc}.{t}", PARAM, f"{p}ffn.{fc}.{t}") for fc in ("fc1", "fc2") for t in ("weight", "bias")]
        entries += [Entry(f"{p}norm2.{t}", PARAM, f"{p}norm2.{t}") for t in ("weight", "bias")]
    return entries


def authors_parameter_order(cfg: ModelConfig) -> list[tuple[str, str]]:
    """(their key, our name) of each distinct parameter in their `model.parameters()` order,
    which is the index order of their optimizer state (buffers and tied copies skipped)."""
    return [(e.key, e.source) for e in authors_layout(cfg) if e.role == PARAM]


def our_parameter_names(cfg: ModelConfig) -> list[str]:
    """Our parameter names in `model.parameters()` order (the index order of our optimizer state)."""
    with torch.device("meta"):
        return [name for name, _ in build_model(cfg).named_parameters()]


def mask_template(span: int) -> Tensor:
    """Their adaptive-span buffer: 1 - L, ..., 0 (float32, L entries)."""
    return torch.linspace(1 - span, 0, steps=span)


def our_tensor(our_name: str, value: Tensor) -> Tensor:
    """Their tensor in our layout: only the position table differs (1 x d_h x L, reversed)."""
    if our_name == "pos_emb":
        return value.squeeze(0).flip(-1)  # column j = distance L - j  ->  column dist - 1
    return value


def their_tensor(our_name: str, value: Tensor) -> Tensor:
    """Our tensor in their layout (the inverse of `our_tensor`)."""
    if our_name == "pos_emb":
        return value.flip(-1).unsqueeze(0)  # column dist - 1  ->  1 x d_h x L, column j = distance L - j
    return value


def our_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Our state dict's shapes for `cfg` (built on the meta device: no memory, no init)."""
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in build_model(cfg).state_dict().items()}


# ---------------------------------------------------------------- theirs -> ours


def convert(their_state: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """Their state dict -> ours (float32) for `cfg`, every key of their layout checked:
    no key missing or unexpected, shapes, tied copies equal to their originals, constant buffers."""
    layout = authors_layout(cfg)
    state = _strip_prefix(their_state)
    _check_keys(state, layout, cfg)
    shapes = our_shapes(cfg)
    ours: dict[str, Tensor] = {}
    for key, role, source in layout:
        value = state[key]
        if role == PARAM:
            tensor = our_tensor(source, value)
            if tuple(tensor.shape) != shapes[source]:
                raise UserError(f"{key}: shape {tuple(value.shape)} does not fit {source} {shapes[source]} of the config")
            ours[source] = tensor.detach().clone().float()
        elif role == COPY:
            _check_tied(key, value, source, state[source])
        else:
            _check_template(key, value, cfg.attn_span)
    missing = [name for name in shapes if name not in ours]
    if missing:  # a tensor of ours that their layout does not provide
        raise UserError(f"the authors' layout has nothing for our {missing[0]} {shapes[missing[0]]}")
    return {name: ours[name] for name in shapes}  # in our state-dict order


def _strip_prefix(their_state: dict[str, Tensor]) -> dict[str, Tensor]:
    state: dict[str, Tensor] = {}
    for key, value in their_state.items():
        name = key.removeprefix(PREFIX)
        if name in state:
            raise UserError(f"the authors' checkpoint holds {name!r} twice (with and without {PREFIX!r})")
        if not isinstance(value, Tensor):
            raise UserError(f"{key} in the authors' checkpoint is a {type(value).__name__}, not a tensor")
        state[name] = value
    return state


def _check_keys(state: dict[str, Tensor], layout: list[Entry], cfg: ModelConfig) -> None:
    expected = {e.key for e in layout}
    for key, value in state.items():
        if key not in expected:
            raise UserError(f"unexpected key {key!r} {tuple(value.shape)} in the authors' checkpoint: "
                            f"their {_describe(cfg)} has no such tensor")
    for entry in layout:
        if entry.key not in state:
            target = f" (for our {entry.source})" if entry.role == PARAM else ""
            raise UserError(f"the authors' checkpoint has nothing for {entry.key}{target}; "
                            f"their {_describe(cfg)} has it")


def _describe(cfg: ModelConfig) -> str:
    parts = [cfg.variant, f"{cfg.num_layers} layers"]
    if cfg.adaptive_span.enabled:
        parts.append("adaptive span")
    if cfg.output == "adaptive":
        parts.append(f"adaptive I/O with cutoffs {cfg.adaptive_cutoffs}")
    return "model of this config (" + ", ".join(parts) + ")"


def _check_tied(key: str, value: Tensor, original_key: str, original: Tensor) -> None:
    """A tied pair loads as one tensor, so its two copies must agree exactly."""
    if value.shape != original.shape:
        raise UserError(f"tied tensors differ in shape: {key} {tuple(value.shape)} "
                        f"vs {original_key} {tuple(original.shape)}")
    if not torch.equal(value, original):
        gap = (value.double() - original.double()).abs().max().item()
        raise UserError(f"tied tensors disagree: {key} differs from {original_key} (max abs difference {gap:.3g}); "
                        "their code shares one tensor, so this file is not a tied model")


def _check_template(key: str, value: Tensor, span: int) -> None:
    if tuple(value.shape) != (span,):
        raise UserError(f"{key}: shape {tuple(value.shape)} does not fit the config's attn_span={span}")
    if not torch.equal(value.float(), mask_template(span)):
        raise UserError(f"{key} is not the constant 1-L .. 0 of their adaptive span")


# ---------------------------------------------------------------- ours -> theirs


def to_authors(ours: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """Our state dict -> theirs (keys prefixed `module.`, their order), every tied copy the very
    same tensor as its original (so it is saved once, as in their files)."""
    layout = authors_layout(cfg)
    _check_ours(ours, cfg)
    theirs: dict[str, Tensor] = {}
    for key, role, source in layout:
        if role == PARAM:
            tensor = their_tensor(source, ours[source].detach()).clone()
        elif role == COPY:
            tensor = theirs[PREFIX + source]
        else:
            tensor = mask_template(cfg.attn_span)
        theirs[PREFIX + key] = tensor
    return theirs


def _check_ours(ours: dict[str, Tensor], cfg: ModelConfig) -> None:
    shapes = our_shapes(cfg)
    for name, value in ours.items():
        if name not in shapes:
            raise UserError(f"{name} {tuple(value.shape)} has no place in a {cfg.variant} model of this config")
        if tuple(value.shape) != shapes[name]:
            raise UserError(f"{name}: shape {tuple(value.shape)} does not fit the config's {shapes[name]}")
    missing = [name for name in shapes if name not in ours]
    if missing:
        raise UserError(f"the checkpoint has nothing for {missing[0]} {shapes[missing[0]]}")


# ---------------------------------------------------------------- files


def in_their_layout(state: dict) -> bool:
    """Whether a state dict has the authors' keys (their position table `key_pe`, `module.` or not):
    a file to convert before this project's model can load it."""
    return any(isinstance(key, str) and key.removeprefix(PREFIX) == "key_pe" for key in state)


def read_model_state(path: Path, hint: str = "") -> dict[str, Tensor]:
    """The `model` state dict of a {"model": ...} file (loaded with weights_only=True);
    a missing, unreadable or foreign file is a one-line UserError ending with `hint`."""
    return read_checkpoint(path, hint)["model"]


def read_checkpoint(path: Path, hint: str = "") -> dict:
    """A whole {"model": state dict, ...} file (weights_only=True); one short UserError line
    otherwise (missing, empty, not a PyTorch checkpoint, or no 'model' state dict)."""
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise UserError(f"cannot read {path}: the file is empty")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise UserError(f"cannot read {path}: not a PyTorch checkpoint, or a truncated one "
                        f"({load_error_detail(err)})") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("model"), dict):
        raise UserError(f"{path} has no 'model' state dict{hint}")
    return payload


def read_their_checkpoint(path: Path) -> dict[str, Tensor]:
    return read_model_state(path, " (is it a checkpoint of the authors' code?)")


WEIGHTS_ONLY_MARK = "WeightsUnpickler error:"
"""Where torch's weights_only refusal says what it refused, after a paragraph about the
weights_only default (advice to load with weights_only=False, which runs the file's code)."""
MAX_DETAIL = 160
"""Characters of torch's words kept in a one-line error."""


def load_error_detail(err: Exception) -> str:
    """torch.load's reason in a few words: for a weights_only refusal (any file that is not a
    checkpoint, e.g. a YAML, lands there) the refusal itself ('Unsupported operand 100'), not
    the paragraph around it; otherwise the first sentence. At most MAX_DETAIL characters."""
    text = str(err)
    if WEIGHTS_ONLY_MARK in text:
        text = text.split(WEIGHTS_ONLY_MARK, 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    detail = lines[0].split(". ")[0].rstrip(".") if lines else type(err).__name__  # its first sentence
    # torch's own words are often bare ('101', '[Errno 22] Invalid argument'): the caller says what it means
    return detail if len(detail) <= MAX_DETAIL else detail[:MAX_DETAIL - 3] + "..."


if __name__ == "__main__":  # a library module; naming the command needs no import of experiments/ (model/ is below it)
    raise SystemExit("error: model.convert_official is the key mapping only, not a command; convert with "
                     "python -m experiments.convert AUTHORS.pt --config CONFIG.yaml --out OURS.pt "
                     "(or --to-authors OURS --config CONFIG.yaml --out THEIRS.pt)")
