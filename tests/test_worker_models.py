"""The worker's model loaders (engine/worker/models.py), on the built-in tiny preset."""
from engine import presets, source

PROMPT = "Why does decoding wait on memory bandwidth?"


def test_baseline_and_sdpa_give_the_same_logits():
    import torch

    from engine.worker import models
    from engine.variants import CATALOG
    tiny = presets.load("tiny")
    eager, tokenizer = models.load_model(tiny, CATALOG["baseline"], "cpu")
    sdpa, _ = models.load_model(tiny, CATALOG["sdpa"], "cpu")
    assert eager.config._attn_implementation == "eager" and sdpa.config._attn_implementation == "sdpa"
    ids = torch.tensor([tokenizer(PROMPT)["input_ids"]])
    with torch.inference_mode():
        a, b = eager(ids).logits, sdpa(ids).logits
    assert a.shape == (1, ids.shape[1], 512)
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_a_half_made_cache_folder_is_rebuilt_on_the_next_load(tmp_path, monkeypatch):
    """A process killed while saving a random-weight model leaves a folder without config.json or
    weights, with cut weights, or a temporary folder: the next load replaces it with a whole one."""
    import torch
    from safetensors.torch import load_file

    from engine.variants import CATALOG
    from engine.worker import models
    monkeypatch.setenv("SIDEBYSIDE_CACHE", str(tmp_path))
    tiny = presets.load("tiny")
    assert tiny.cache_on_disk
    folder = models.saved_random_model(tiny)
    assert folder.parent == tmp_path and source.saved_model_complete(folder)
    weights = load_file(folder / "model.safetensors")
    kept = (folder / "model.safetensors").stat().st_ino
    assert models.saved_random_model(tiny) == folder                 # a whole folder is kept as it is
    assert (folder / "model.safetensors").stat().st_ino == kept

    def damage_weights_missing():
        (folder / "model.safetensors").unlink()

    def damage_config_missing():
        (folder / "config.json").unlink()

    def damage_weights_cut():
        path = folder / "model.safetensors"
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    def damage_config_cut():
        (folder / "config.json").write_text('{"model_type": "lla')

    def damage_emptied():
        for path in folder.iterdir():
            path.unlink()

    for damage in (damage_weights_missing, damage_config_missing, damage_weights_cut, damage_config_cut,
                   damage_emptied):
        damage()
        assert not source.saved_model_complete(folder), damage.__name__
        stale = tmp_path / f".{folder.name}.tmp-killed"               # a killed maker's temporary folder
        stale.mkdir()
        (stale / "config.json").write_text("{}")
        model, tokenizer = models.load_model(tiny, CATALOG["sdpa"], "cpu")
        assert source.saved_model_complete(folder), damage.__name__
        assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == [folder.name]
        rebuilt = load_file(folder / "model.safetensors")
        assert rebuilt.keys() == weights.keys()
        assert all(torch.equal(rebuilt[key], weights[key]) for key in weights), damage.__name__   # same seed
        ids = torch.tensor([tokenizer(PROMPT)["input_ids"]])
        with torch.inference_mode():
            assert model(ids).logits.shape == (1, ids.shape[1], 512)


def test_a_cache_path_taken_by_a_file_is_replaced(tmp_path, monkeypatch):
    from engine.worker import models
    monkeypatch.setenv("SIDEBYSIDE_CACHE", str(tmp_path))
    tiny = presets.load("tiny")
    folder = models.saved_random_model(tiny)
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()
    folder.write_text("not a folder")
    assert models.saved_random_model(tiny) == folder
    assert folder.is_dir() and source.saved_model_complete(folder)


def test_int4_quantizes_every_linear_layer_but_the_head_and_runs_compiled_on_the_cpu():
    """torchao's int4 on the CPU: its packed layout, a group size that divides the layers' widths, the
    weights counted at their packed size, decoded by the compiled static-cache loop (not the fused step,
    which cannot fuse quantized weights), the same number of tokens as asked."""
    import torch
    from engine.events import Request, WorkerSpec
    from engine.worker import models
    from engine.worker.runner import Runner
    tiny = presets.load("tiny")
    never = type("Never", (), {"is_set": lambda self: False})()
    int4 = Runner(WorkerSpec(tiny, "int4", "cpu"), lambda event: None)
    baseline = Runner(WorkerSpec(tiny, "baseline", "cpu"), lambda event: None)
    linears = {name: m for name, m in int4.model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert type(linears.pop("lm_head").weight) is torch.nn.Parameter          # the head stays full precision
    assert {type(m.weight).__name__ for m in linears.values()} == {"Int4OpaqueTensor"}
    assert models.int4_group_size(int4.model) == 64                            # tiny's widths: 64 and 192
    params = sum(m.in_features * m.out_features for m in linears.values())
    # 4 bytes a parameter became half a byte plus a scale and a zero per group
    saved = baseline.weights_bytes - int4.weights_bytes
    assert 0.8 * params * 3.5 < saved < params * 4, (saved, params)
    assert int4.decoder is not None and int4.decoder.step_kind == "transformers forward"
    finished = int4.generate(Request(1, "Why is decoding memory bound?", 12, ignore_eos=True), never)
    assert len(finished.token_ids) == 12 and finished.token_times == tuple(sorted(finished.token_times))
    assert int4.decoder.is_ready_for(torch.zeros(1, 30, dtype=torch.long), 12)      # compiled for that bucket
