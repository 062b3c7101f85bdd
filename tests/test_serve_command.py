"""`tinystories-serve` before it hands over to Transformers' server: what it adds, and its one-line refusals. The
servers themselves run in test_serve.py."""

import transformers
from transformers.cli.serving.model_manager import ModelLoader

from tinystories_gpt import TinyStoriesGPTForCausalLM
from tinystories_gpt.cli import serve


def test_transformers_serve_finds_our_class_by_the_name_config_json_gives(tiny_model):
    """What Transformers' loader does with a folder (`getattr(transformers, config.architectures[0])`) now loads
    ours, as the server's model process does; without tinystories-serve that getattr is an AttributeError."""
    assert transformers.TinyStoriesGPTForCausalLM is TinyStoriesGPTForCausalLM
    model, tokenizer = ModelLoader(device="cpu").load_model_and_processor(str(tiny_model))
    assert isinstance(model, TinyStoriesGPTForCausalLM)
    assert tokenizer.apply_chat_template([{"role": "user", "content": "Hi."}], tokenize=False) == "Hi."


def test_a_damaged_folder_is_one_line_before_anything_is_served(tiny_model, tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    assert serve.main([str(tmp_path / "notes"), "--port", "1"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"tinystories-serve: error: {tmp_path / 'notes'} has no config.json, so it is not a saved model; pass a "
        "folder written by save_pretrained (train.py's best/, or a convert.py output)"
    )


def test_without_the_serving_extra_it_says_what_to_install(monkeypatch, tiny_model, capsys):
    monkeypatch.setattr(serve, "is_serve_available", lambda: False)
    assert serve.main([str(tiny_model)]) == 2
    assert capsys.readouterr().err.strip() == (
        "tinystories-serve: error: Transformers' server is not installed: pip install 'tinystories-gpt[serve]' (or "
        "'transformers[serving]')"
    )
