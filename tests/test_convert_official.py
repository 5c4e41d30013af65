"""Import of the authors' checkpoints: their layout built here from known tensors."""
from __future__ import annotations

import subprocess
import sys

import torch
import yaml

from experiments.config import build
from model import build_model
from model.config import ModelConfig
from tests.conftest import PROJECT_ROOT
from tests.test_config import VALID


def authors_layout(model, cfg: ModelConfig) -> dict:
    """Our weights written the way the authors' code names and shapes them."""
    theirs = {"module.in_emb.weight": model.embed.weight, "module.out_emb.weight": model.out.weight,
              "module.out_emb.bias": model.out.bias,
              # their key_pe is 1 x d_h x L with column j = distance L - j
              "module.key_pe": model.pos_emb.flip(-1).unsqueeze(0)}
    for i, layer in enumerate(model.layers):
        p = f"module.layers.{i}."
        for ours, their in (("w_q", "proj_query"), ("w_k", "proj_key"), ("w_v", "proj_val"), ("w_o", "proj_out")):
            theirs[f"{p}attn.{their}.weight"] = getattr(layer.attn, ours).weight
        theirs[f"{p}norm1.weight"], theirs[f"{p}norm1.bias"] = layer.norm1.weight, layer.norm1.bias
        if cfg.adaptive_span.enabled:
            z = layer.attn.span.z
            theirs[f"{p}attn.attn.adaptive_span._mask.current_val"] = z
            theirs[f"{p}attn.attn.adaptive_span._mask.mask_template"] = torch.linspace(1 - cfg.attn_span, 0, cfg.attn_span)
            theirs[f"{p}attn.attn.persistent_memory.adaptive_span._mask.current_val"] = z
        theirs[f"{p}attn.attn.persistent_memory.key"] = layer.attn.persistent.keys
        theirs[f"{p}attn.attn.persistent_memory.val"] = layer.attn.persistent.values
    return {k: v.detach().clone() for k, v in theirs.items()}


def write_config(tmp_path, **model) -> tuple:
    raw = yaml.safe_load(VALID)
    raw["model"].update(model)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path, build(ModelConfig, raw["model"])


def convert_cli(tmp_path, theirs: dict, config) -> subprocess.CompletedProcess:
    torch.save({"model": theirs, "optimizer": {}, "nb_batches_per_iter": 1000}, tmp_path / "theirs.pt")
    return subprocess.run([sys.executable, "-m", "experiments.convert", str(tmp_path / "theirs.pt"),
                           "--config", str(config), "--out", str(tmp_path / "ours.pt")],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)


def test_converted_checkpoint_reproduces_the_outputs(tmp_path):
    config, cfg = write_config(tmp_path, dropout=0.0, adaptive_span={"enabled": True, "loss_coef": 1e-7, "ramp": 4})
    torch.manual_seed(0)
    source = build_model(cfg).eval()
    with torch.no_grad():
        for layer in source.layers:
            layer.attn.span.z.uniform_(0.2, 0.9)
    proc = convert_cli(tmp_path, authors_layout(source, cfg), config)
    assert proc.returncode == 0, proc.stderr
    target = build_model(cfg).eval()
    target.load_state_dict(torch.load(tmp_path / "ours.pt", weights_only=True)["model"])
    tokens = torch.randint(0, cfg.vocab_size, (2, 12))
    cache = [torch.randn_like(c) for c in source.init_cache(2)]
    expected, _ = source(tokens[:, :-1], cache, tokens[:, 1:])
    got, _ = target(tokens[:, :-1], cache, tokens[:, 1:])
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_checkpoint_that_does_not_fit_is_refused_in_one_line(tmp_path):
    config, cfg = write_config(tmp_path)
    theirs = authors_layout(build_model(cfg), cfg)
    theirs["module.layers.1.attn.attn.persistent_memory.key"] = torch.zeros(2, 8, 5)
    proc = convert_cli(tmp_path, theirs, config)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "layers.1.attn.attn.persistent_memory.key" in proc.stderr and "(2, 8, 5)" in proc.stderr
    assert not (tmp_path / "ours.pt").exists()
