import torch

from bench.model.tokenizer import REFERENCE_IDS, VOCAB_SIZE, build_clip_tokenizer, cached_clip_tokenizer


def test_rebuilt_clip_tokenizer_matches_sd_ids(tmp_path):
    tok = build_clip_tokenizer(tmp_path / "tok")
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407] == REFERENCE_IDS
    assert len(tok) == VOCAB_SIZE == 49408
    assert tok.model_max_length == 77
    assert tok.pad_token == "<|endoftext|>"
    # the saved folder reloads to the same ids
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert again("a striped red star").input_ids == tok("a striped red star").input_ids


def test_tiny_pipeline_generates_with_real_tokenizer(tiny_pipe):
    assert tiny_pipe.tokenizer is cached_clip_tokenizer()
    out = tiny_pipe(["a photo of a cat"], num_inference_steps=2, output_type="pt",
                    generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 3, 32, 32)
    assert torch.isfinite(out).all()
