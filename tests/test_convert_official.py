"""Checkpoints of the authors' code <-> ours: their layout written out here by hand from known
tensors, the ties, the refusals, and round trips ours -> theirs -> ours."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import yaml

from experiments import convert
from experiments.config import build
from model import build_model
from model.config import ModelConfig
from tests.conftest import PROJECT_ROOT
from tests.test_config import VALID

ADAPTIVE_IO = dict(output="adaptive", adaptive_cutoffs=[5, 12, 20], adaptive_div_value=2.0)
SPAN = dict(adaptive_span={"enabled": True, "loss_coef": 1e-7, "ramp": 4})
TRANSFORMER = dict(variant="transformer", num_persistent=0, ffn_size=24)
# the variants of the authors' code: FFN transformer, all-attention, adaptive span, adaptive I/O
AUTHORS_MODELS = {"transformer": TRANSFORMER, "all_attention": {}, "transformer_span": {**TRANSFORMER, **SPAN},
                  "all_attention_span": SPAN, "adaptive_io": ADAPTIVE_IO, "adaptive_io_span": {**ADAPTIVE_IO, **SPAN}}


def authors_layout(model, cfg: ModelConfig) -> dict:
    """Our weights written the way the authors' code names, orders and shapes them (an
    independent statement of their layout); tied entries are the very same tensor, as in their files."""
    theirs = {"module.key_pe": model.pos_emb.flip(-1).unsqueeze(0)}  # 1 x d_h x L, column j = distance L - j
    if cfg.output == "adaptive":
        io, clusters = model.adaptive, range(len(cfg.adaptive_cutoffs) + 1)
        theirs.update({f"module.in_emb.emb_layers.{c}.weight": io.tables[c] for c in clusters})
        theirs.update({f"module.in_emb.emb_projs.{c}": io.projs[c] for c in clusters})
        theirs.update({f"module.out_emb.cluster_proj.{t}": getattr(io.cluster, t) for t in ("weight", "bias")})
        for c in clusters:
            theirs[f"module.out_emb.out_layers.{c}.weight"] = io.tables[c]
            theirs[f"module.out_emb.out_layers.{c}.bias"] = io.biases[c]
        theirs.update({f"module.out_emb.out_projs.{c}": io.projs[c] for c in clusters})
    else:
        theirs.update({"module.in_emb.weight": model.embed.weight, "module.out_emb.weight": model.out.weight,
                       "module.out_emb.bias": model.out.bias})
    for i, layer in enumerate(model.layers):
        theirs.update(_authors_layer(layer, cfg, f"module.layers.{i}."))
    detached = {id(v): v.detach().clone() for v in theirs.values()}  # one clone per tensor keeps the ties
    return {k: detached[id(v)] for k, v in theirs.items()}


def _authors_layer(layer, cfg: ModelConfig, p: str) -> dict:
    theirs = {}
    if cfg.adaptive_span.enabled:
        theirs[f"{p}attn.attn.adaptive_span._mask.current_val"] = layer.attn.span.z
        template = torch.linspace(1 - cfg.attn_span, 0, cfg.attn_span)  # their constant buffer
        theirs[f"{p}attn.attn.adaptive_span._mask.mask_template"] = template
    if cfg.variant == "all_attention":
        theirs[f"{p}attn.attn.persistent_memory.key"] = layer.attn.persistent.keys
        theirs[f"{p}attn.attn.persistent_memory.val"] = layer.attn.persistent.values
        if cfg.adaptive_span.enabled:
            theirs[f"{p}attn.attn.persistent_memory.adaptive_span._mask.current_val"] = layer.attn.span.z
            theirs[f"{p}attn.attn.persistent_memory.adaptive_span._mask.mask_template"] = template
    for ours, their in (("w_q", "proj_query"), ("w_o", "proj_out"), ("w_v", "proj_val"), ("w_k", "proj_key")):
        theirs[f"{p}attn.{their}.weight"] = getattr(layer.attn, ours).weight
    theirs[f"{p}norm1.weight"], theirs[f"{p}norm1.bias"] = layer.norm1.weight, layer.norm1.bias
    if cfg.variant == "transformer":
        for fc in ("fc1", "fc2"):
            theirs[f"{p}ff.{fc}.weight"] = getattr(layer.ffn, fc).weight
            theirs[f"{p}ff.{fc}.bias"] = getattr(layer.ffn, fc).bias
        theirs[f"{p}norm2.weight"], theirs[f"{p}norm2.bias"] = layer.norm2.weight, layer.norm2.bias
    return theirs


def write_config(tmp_path, **model) -> tuple:
    raw = yaml.safe_load(VALID)
    raw["model"].update(model)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path, build(ModelConfig, raw["model"])


def random_model(cfg: ModelConfig, seed: int = 0):
    """A model of `cfg` with every span z somewhere inside (0, 1)."""
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for layer in model.layers:
            if layer.attn.span is not None:
                layer.attn.span.z.uniform_(0.2, 0.9)
    return model


def convert_cli(tmp_path, theirs: dict, config) -> subprocess.CompletedProcess:
    torch.save({"model": theirs, "optimizer": {}, "iter_no": -1, "logger": {}}, tmp_path / "theirs.pt")
    return subprocess.run([sys.executable, "-m", "experiments.convert", str(tmp_path / "theirs.pt"),
                           "--config", str(config), "--out", str(tmp_path / "ours.pt")],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)


def assert_refused(proc: subprocess.CompletedProcess, tmp_path, *fragments: str) -> None:
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert all(fragment in proc.stderr for fragment in fragments), proc.stderr
    assert not (tmp_path / "ours.pt").exists()


@pytest.mark.parametrize("name", ["all_attention_span", "adaptive_io_span"])
def test_converted_checkpoint_reproduces_the_outputs(tmp_path, name):
    config, cfg = write_config(tmp_path, dropout=0.0, **AUTHORS_MODELS[name])
    source = random_model(cfg)
    proc = convert_cli(tmp_path, authors_layout(source, cfg), config)
    assert proc.returncode == 0, proc.stderr
    target = build_model(cfg).eval()
    target.load_state_dict(torch.load(tmp_path / "ours.pt", weights_only=True)["model"])
    tokens = torch.randint(0, cfg.vocab_size, (2, 12))
    cache = [torch.randn_like(c) for c in source.init_cache(2)]
    with torch.no_grad():
        expected, _ = source(tokens[:, :-1], cache, tokens[:, 1:])
        got, _ = target(tokens[:, :-1], cache, tokens[:, 1:])
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_checkpoint_that_does_not_fit_is_refused_in_one_line(tmp_path):
    config, cfg = write_config(tmp_path)
    theirs = authors_layout(build_model(cfg), cfg)
    theirs["module.layers.1.attn.attn.persistent_memory.key"] = torch.zeros(2, 8, 5)
    assert_refused(convert_cli(tmp_path, theirs, config), tmp_path, "layers.1.attn.attn.persistent_memory.key", "(2, 8, 5)")


def test_evaluate_and_convert_say_what_is_wrong_with_a_file(tmp_path):
    """torch's own words were bare: 'cannot read text.pt: 101', '[Errno 22] Invalid argument' for a
    truncated file, 'EOFError' for an empty one; an authors' file given to evaluate listed every missing
    key in one very long line. Fresh-user findings. The checkpoint is read before the corpus."""
    config, cfg = write_config(tmp_path)
    whole = tmp_path / "whole.pt"
    torch.save({"model": build_model(cfg).state_dict()}, whole)
    files = {"text.pt": b"epoch 3 notes\n", "empty.pt": b"", "truncated.pt": whole.read_bytes()[:4096]}
    expected = {"text.pt": "not a PyTorch checkpoint, or a truncated one", "empty.pt": "the file is empty",
                "truncated.pt": "not a PyTorch checkpoint, or a truncated one"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        for command in (["experiments.evaluate", str(config), "--checkpoint"], ["experiments.convert"]):
            extra = ["--config", str(config), "--out", str(tmp_path / "o.pt")] if command == ["experiments.convert"] else []
            proc = subprocess.run([sys.executable, "-m", *command, str(tmp_path / name), *extra], cwd=PROJECT_ROOT,
                                  capture_output=True, text=True, timeout=120)
            assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and expected[name] in proc.stderr, proc.stderr
    torch.save({"model": authors_layout(build_model(cfg), cfg)}, tmp_path / "theirs.pt")
    proc = subprocess.run([sys.executable, "-m", "experiments.evaluate", str(config), "--checkpoint",
                           str(tmp_path / "theirs.pt")], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "a checkpoint of the authors' code: convert it first, python -m experiments.convert" in proc.stderr


@pytest.mark.parametrize("damage", ["model-entry", "optimizer", "optimizer-entry"])
def test_export_of_a_damaged_checkpoint_is_one_line(tmp_path, damage):
    """--to-authors on a checkpoint with a model entry that is not a tensor, or an optimizer state that
    is not one, raised AttributeError tracebacks (a fresh-user finding)."""
    config, cfg = write_config(tmp_path)
    model = build_model(cfg)
    optimizer = torch.optim.Adagrad(model.parameters())
    model(torch.zeros(2, 4, dtype=torch.long), model.init_cache(2), torch.zeros(2, 4, dtype=torch.long))[0].sum().backward()
    optimizer.step()
    payload = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "state": {"step": 1}}
    if damage == "model-entry":
        payload["model"]["embed.weight"] = "str"
    elif damage == "optimizer":
        payload["optimizer"] = "x"
    else:
        payload["optimizer"]["state"][0] = "x"
    torch.save(payload, tmp_path / "ours.pt")
    proc = subprocess.run([sys.executable, "-m", "experiments.convert", "--to-authors", str(tmp_path / "ours.pt"),
                           "--config", str(config), "--out", str(tmp_path / "theirs.pt")], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "damaged" in proc.stderr and not (tmp_path / "theirs.pt").exists()


def test_tied_copies_that_disagree_are_refused_in_one_line(tmp_path):
    config, cfg = write_config(tmp_path, **ADAPTIVE_IO)
    theirs = authors_layout(build_model(cfg), cfg)
    theirs["module.out_emb.out_layers.2.weight"] = theirs["module.out_emb.out_layers.2.weight"].clone()
    theirs["module.out_emb.out_layers.2.weight"][3, 1] += 1e-3
    assert_refused(convert_cli(tmp_path, theirs, config), tmp_path, "tied", "out_emb.out_layers.2.weight",
                   "in_emb.emb_layers.2.weight")


def test_untied_copies_that_agree_load_as_one_tensor(tmp_path):
    """A file whose tied copies were saved apart (equal values, separate storage) still imports."""
    config, cfg = write_config(tmp_path, **ADAPTIVE_IO, **SPAN)
    theirs = {k: v.clone() for k, v in authors_layout(random_model(cfg), cfg).items()}
    assert convert_cli(tmp_path, theirs, config).returncode == 0
    ours = torch.load(tmp_path / "ours.pt", weights_only=True)["model"]
    assert torch.equal(ours["adaptive.tables.1"], theirs["module.out_emb.out_layers.1.weight"])


@pytest.mark.parametrize("key, fragment", [("module.out_emb.out_projs.1", "nothing for out_emb.out_projs.1"),
                                           ("module.layers.0.attn.attn.adaptive_span._mask.mask_template", "nothing for")])
def test_a_missing_entry_of_their_layout_is_refused(tmp_path, key, fragment):
    config, cfg = write_config(tmp_path, **ADAPTIVE_IO, **SPAN)
    theirs = authors_layout(build_model(cfg), cfg)
    del theirs[key]
    assert_refused(convert_cli(tmp_path, theirs, config), tmp_path, fragment)


def test_a_variant_their_code_does_not_have_is_refused(tmp_path):
    config, cfg = write_config(tmp_path, variant="attn_split")
    theirs = authors_layout(build_model(cfg), cfg)
    assert_refused(convert_cli(tmp_path, theirs, config), tmp_path, "attn_split does not exist in the authors' code")


@pytest.mark.parametrize("name", list(AUTHORS_MODELS))
def test_round_trip_ours_theirs_ours_gives_identical_tensors(tmp_path, name):
    config, cfg = write_config(tmp_path, **AUTHORS_MODELS[name])
    model = random_model(cfg, seed=5)
    ours = model.state_dict()
    torch.save({"model": ours}, tmp_path / "ours.pt")
    with pytest.raises(SystemExit) as exported:
        convert.run_cli(convert.main, ["--to-authors", str(tmp_path / "ours.pt"), "--config", str(config),
                                       "--out", str(tmp_path / "theirs.pt")])
    assert exported.value.code == 0
    theirs = torch.load(tmp_path / "theirs.pt", weights_only=True)
    expected = authors_layout(model, cfg)
    assert list(theirs["model"]) == list(expected)  # every key, in their order
    for key, value in expected.items():
        assert torch.equal(theirs["model"][key], value), key
    _assert_ties_shared(theirs["model"], expected)
    assert theirs["iter_no"] == -1 and theirs["scheduler_iter"] == 0 and theirs["logger"] == {}
    assert len(theirs["optimizer"]["param_groups"][0]["params"]) == len(list(model.parameters()))
    convert.main([str(tmp_path / "theirs.pt"), "--config", str(config), "--out", str(tmp_path / "back.pt")])
    back = torch.load(tmp_path / "back.pt", weights_only=True)["model"]
    assert list(back) == list(ours)
    for key, value in ours.items():
        assert back[key].dtype == value.dtype and torch.equal(back[key], value), key


def _assert_ties_shared(written: dict, expected: dict) -> None:
    """Entries that are one tensor in the authors' model are one tensor in the written file."""
    groups: dict[int, list[str]] = {}
    for key, value in expected.items():
        groups.setdefault(id(value), []).append(key)
    for keys in groups.values():
        assert len({written[k].untyped_storage().data_ptr() for k in keys}) == 1, keys


def test_export_refuses_a_checkpoint_that_does_not_fit(tmp_path, capsys):
    config, cfg = write_config(tmp_path)
    state = build_model(cfg).state_dict()
    state["layers.0.attn.w_q.weight"] = torch.zeros(3, 3)
    torch.save({"model": state}, tmp_path / "ours.pt")
    with pytest.raises(SystemExit) as refused:
        convert.run_cli(convert.main, ["--to-authors", str(tmp_path / "ours.pt"), "--config", str(config),
                                       "--out", str(tmp_path / "theirs.pt")])
    err = capsys.readouterr().err
    assert refused.value.code == 2 and err.count("\n") == 1 and "layers.0.attn.w_q.weight" in err
    assert not (tmp_path / "theirs.pt").exists()


def test_convert_never_writes_over_an_input_and_replaces_a_file_only_with_force(tmp_path, capsys):
    """`--out` equal to the file being converted replaced it (the authors' checkpoint was gone), and
    any existing --out was overwritten without a word (a fresh-user finding)."""
    config, cfg = write_config(tmp_path)
    torch.save({"model": build_model(cfg).state_dict()}, tmp_path / "ours.pt")
    folder = tmp_path / "step_000000010"
    folder.mkdir()
    torch.save({"model": build_model(cfg).state_dict()}, folder / "shared.pt")
    originals = {path: path.read_bytes() for path in (tmp_path / "ours.pt", folder / "shared.pt", config)}
    refusals = [
        (["--to-authors", tmp_path / "ours.pt", "--out", tmp_path / "ours.pt"], "is an input of this command"),
        (["--to-authors", folder, "--out", folder / "shared.pt"], "is inside an input of this command"),
        (["--to-authors", tmp_path / "ours.pt", "--out", config], "is an input of this command"),
        ([tmp_path / "ours.pt", "--out", tmp_path / "ours.pt", "--force"], "is an input of this command"),
        (["--to-authors", tmp_path / "ours.pt", "--out", folder / "shared.pt"], "exists; pass --force"),
    ]
    for args, said in refusals:
        with pytest.raises(SystemExit) as refused:
            convert.run_cli(convert.main, [*map(str, args), "--config", str(config)])
        err = capsys.readouterr().err
        assert refused.value.code == 2 and err.count("\n") == 1 and said in err, (args, err)
    assert all(path.read_bytes() == data for path, data in originals.items())
    (tmp_path / "theirs.pt").write_bytes(b"an old export")
    convert.main(["--to-authors", str(tmp_path / "ours.pt"), "--config", str(config), "--out",
                  str(tmp_path / "theirs.pt"), "--force"])
    assert "module.key_pe" in torch.load(tmp_path / "theirs.pt", weights_only=True)["model"]


def test_benchmark_csv_and_convert_out_never_write_over_the_config_or_its_bases(tmp_path, capsys):
    """The file a config inherits from (`base:`) is read too: --csv and --out rewrote it (a fresh-user finding)."""
    config, cfg = write_config(tmp_path)
    child = tmp_path / "child.yaml"
    child.write_text(f"base: {config.name}\nname: child\n")
    before = config.read_bytes()
    for target in (config, child):
        proc = subprocess.run([sys.executable, "-m", "experiments.benchmark", str(child), "--csv", str(target)],
                              cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "is an input" in proc.stderr, proc.stderr
    torch.save({"model": build_model(cfg).state_dict()}, tmp_path / "ours.pt")
    with pytest.raises(SystemExit) as refused:
        convert.run_cli(convert.main, ["--to-authors", str(tmp_path / "ours.pt"), "--config", str(child),
                                       "--out", str(config), "--force"])
    assert refused.value.code == 2 and "is an input of this command" in capsys.readouterr().err
    assert config.read_bytes() == before
