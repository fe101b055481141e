"""Model presets: every one loads, every number cites a source, the shapes agree with the published
parameter counts; a user's own YAML is accepted when right and refused in one line when not."""

from pathlib import Path

import pytest
import yaml

from memsim.errors import MemsimError
from memsim.models import ModelSpec, load_model, model_names
from memsim.models.load import PRESET_DIR
from memsim.models.spec import FLAG_FIELDS

PRESETS = ("LLaMA-65B", "Llama-2-7B", "Llama-2-13B", "Llama-2-70B", "Llama-3-8B", "Llama-3-70B", "Llama-3-405B",
           "Mistral-7B", "Mixtral-8x7B", "Qwen2.5-72B")
# The figure each model's page or paper publishes (the preset's `count` reference says where), in parameters.
PUBLISHED = {"LLaMA-65B": 65.2e9, "Llama-2-7B": 6.74e9, "Llama-2-13B": 13.0e9, "Llama-2-70B": 69.0e9,
             "Llama-3-8B": 8.03e9, "Llama-3-70B": 70.6e9, "Llama-3-405B": 406e9, "Mistral-7B": 7.24e9,
             "Mixtral-8x7B": 46.7e9, "Qwen2.5-72B": 72.7e9}
UNCITED_KEYS = {"name", "aliases", "references", "notes"}


def preset_yaml(name: str) -> dict:
    for path in Path(str(PRESET_DIR)).glob("*.yaml"):
        data = yaml.safe_load(path.read_text())
        if data["name"] == name:
            return data
    raise AssertionError(f"no preset file for {name}")


def test_the_ten_presets_are_there():
    assert sorted(model_names()) == sorted(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_every_number_cites_a_source(name):
    data = preset_yaml(name)
    references = data.get("references", {})
    for key, entry in data.items():
        if key in UNCITED_KEYS:
            continue
        assert isinstance(entry, dict) and entry.get("source"), f"{name}: {key} has no source"
        source = str(entry["source"])
        cited = references.get(source.split(":")[0], source)
        assert len(cited) > 10, f"{name}: {key} cites {source!r}, which says nothing"
    spec = load_model(name)
    assert set(spec.sources) == set(data) - UNCITED_KEYS


@pytest.mark.parametrize("name", PRESETS)
def test_parameter_count_is_the_sum_of_the_weight_shapes(name):
    m = load_model(name)
    print(f"\n{name}: {m.params:,} parameters, published {PUBLISHED[name] / 1e9:g}B")
    assert m.params == m.params_from_shapes()
    # Published figures are rounded to 3 significant digits (LLaMA-65B's paper truncates 65.29 to 65.2).
    assert abs(m.params - PUBLISHED[name]) / PUBLISHED[name] < 0.002


@pytest.mark.parametrize("name", PRESETS)
def test_head_dim_times_q_heads_is_the_hidden_size(name):
    """True of every preset: none of them has a head width other than hidden / heads."""
    m = load_model(name)
    assert m.head_dim * m.q_heads == m.hidden_size


def test_attention_kinds_and_groups():
    kinds = {n: (load_model(n).attention, load_model(n).group_size) for n in PRESETS}
    assert kinds["LLaMA-65B"] == kinds["Llama-2-7B"] == kinds["Llama-2-13B"] == ("MHA", 1)
    assert kinds["Llama-2-70B"] == kinds["Llama-3-70B"] == kinds["Qwen2.5-72B"] == ("GQA", 8)
    assert kinds["Llama-3-405B"] == ("GQA", 16)
    assert kinds["Mistral-7B"] == kinds["Llama-3-8B"] == kinds["Mixtral-8x7B"] == ("GQA", 4)


def test_mixtral_active_parameters():
    m = load_model("Mixtral-8x7B")
    assert m.is_moe and (m.experts, m.experts_per_token) == (8, 2)
    assert m.active_params == m.active_params_from_shapes() == 12_879_925_248
    assert round(m.active_params / 1e9, 1) == 12.9  # Mistral AI's announcement
    assert m.params_per_token == m.active_params


def test_dense_models_use_every_parameter_per_token():
    m = load_model("Llama-3-8B")
    assert not m.is_moe and m.params_per_token == m.params


@pytest.mark.parametrize("alias, name", [("llama-3.1-70b", "Llama-3-70B"), ("LLAMA-2-7B", "Llama-2-7B"),
                                         ("mixtral", "Mixtral-8x7B"), ("Qwen/Qwen2.5-72B", "Qwen2.5-72B"),
                                         ("mistralai/mistral-7b-v0.1", "Mistral-7B"), ("llama-65b", "LLaMA-65B")])
def test_aliases_and_case(alias, name):
    assert load_model(alias).name == name


def test_unknown_model_suggests_close_names():
    with pytest.raises(MemsimError) as err:
        load_model("llama-3-71b")
    message = str(err.value)
    assert "unknown model 'llama-3-71b'" in message and "Llama-3-70B" in message and "\n" not in message


def test_unknown_model_without_close_names_lists_presets():
    with pytest.raises(MemsimError, match="presets are .*Qwen2.5-72B"):
        load_model("zzzzzz")


MY_MODEL = """
name: Tiny-GQA
layers: 4
hidden_size: 512
q_heads: 8
kv_heads: 2
head_dim: 64
vocab_size: 1000
ffn_size: "1.5e3"
params: {value: "2.1e7", source: my notes}
max_context: 2048
tied_embeddings: true
"""


def write(tmp_path, text: str) -> str:
    path = tmp_path / "my-model.yaml"
    path.write_text(text)
    return str(path)


def test_a_user_file_with_plain_numbers_loads(tmp_path):
    m = load_model(write(tmp_path, MY_MODEL))
    assert (m.name, m.layers, m.kv_heads, m.ffn_size, m.params, m.tied_embeddings) == \
        ("Tiny-GQA", 4, 2, 1500, 21_000_000, True)
    assert m.sources == {"params": "my notes"}
    assert m.attention == "GQA" and m.group_size == 4


@pytest.mark.parametrize("change, words", [
    (lambda t: t.replace("layers: 4", "layer: 4"), ["unknown key 'layer'", "layers"]),
    (lambda t: t.replace("head_dim: 64\n", ""), ["missing key 'head_dim'"]),
    (lambda t: t.replace("kv_heads: 2", "kv_heads: 3"), ["q_heads = 8", "kv_heads = 3"]),
    (lambda t: t.replace("layers: 4", "layers: 4.5"), ["layers = 4.5", "whole number"]),
    (lambda t: t.replace("layers: 4", "layers: lots"), ["layers = 'lots'"]),
    (lambda t: t.replace("layers: 4", "layers: -4"), ["layers = -4"]),
    (lambda t: t.replace("layers: 4", "layers: 0"), ["layers = 0"]),
    (lambda t: t.replace("tied_embeddings: true", "tied_embeddings: 3"), ["tied_embeddings = 3", "true or false"]),
    (lambda t: t.replace("layers: 4", "layers: {value: 4, cite: x}"), ["layers"]),
    (lambda t: t + "active_params: 9.0e+9\n", ["active_params = 9000000000 exceeds params"]),
    (lambda t: "just text", ["must be a mapping"]),
    (lambda t: "name: [unclosed", ["not valid YAML"]),
])
def test_bad_user_files_are_refused_on_one_line(tmp_path, change, words):
    path = write(tmp_path, change(MY_MODEL))
    with pytest.raises(MemsimError) as err:
        load_model(path)
    message = str(err.value)
    assert "\n" not in message and "my-model.yaml" in message
    for word in words:
        assert word in message


def test_missing_file_is_named(tmp_path):
    with pytest.raises(MemsimError, match="cannot read model file"):
        load_model(str(tmp_path / "none.yaml"))


def test_spec_refuses_nonsense_directly():
    with pytest.raises(MemsimError, match="experts_per_token = 3 exceeds experts = 2"):
        ModelSpec(name="x", layers=1, hidden_size=8, q_heads=2, kv_heads=1, head_dim=4, vocab_size=10, ffn_size=8,
                  params=100, max_context=16, experts=2, experts_per_token=3)


def test_flags_default_false_and_are_in_as_dict():
    d = load_model("Qwen2.5-72B").as_dict()
    assert d["qkv_bias"] is True and d["tied_embeddings"] is False and d["attention"] == "GQA"
    assert set(FLAG_FIELDS) <= set(d)
