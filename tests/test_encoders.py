"""Encoders by name: tiny random CLIP checkpoints saved in both layouts the loader understands, and
the real EfficientNet-Lite0 weights recognising a cat."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from clipatlas.encoders import load_encoder
from clipatlas.errors import UserError

PROJECTION = 16
IMAGE_SIZE = 32


def write_tiny_tokenizer(folder):
    """A byte-level BPE vocabulary of our own (every byte, with and without </w>, plus a few merges)."""
    from tokenizers import pre_tokenizers

    folder.mkdir(parents=True, exist_ok=True)
    chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = (
        ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars] + ["ca", "cat</w>", "do", "dog</w>"]
    )
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\nc a\nca t</w>\nd o\ndo g</w>\n")
    return len(vocab)


def save_tiny_clip(root, kandinsky_layout: bool, seed: int = 0):
    """A tiny random CLIP vision tower (+ processor), in a plain folder or the Kandinsky prior layout
    (then with a text tower and tokenizer as well). Returns the vision model."""
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    torch.manual_seed(seed)
    vision = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=IMAGE_SIZE,
            patch_size=8,
            projection_dim=PROJECTION,
        )
    ).eval()
    processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    if not kandinsky_layout:
        vision.save_pretrained(root)
        processor.save_pretrained(root)
        return vision
    vision.save_pretrained(root / "image_encoder")
    processor.save_pretrained(root / "image_processor")
    vocab_size = write_tiny_tokenizer(root / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(root / "tokenizer")
    text = CLIPTextModelWithProjection(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=PROJECTION,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    ).eval()
    text.save_pretrained(root / "text_encoder")
    return vision


@pytest.fixture(scope="module")
def plain_clip(tmp_path_factory):
    root = tmp_path_factory.mktemp("plain_clip")
    return root, save_tiny_clip(root, kandinsky_layout=False, seed=0)


@pytest.fixture(scope="module")
def prior_clip(tmp_path_factory):
    root = tmp_path_factory.mktemp("prior")
    return root, save_tiny_clip(root, kandinsky_layout=True, seed=1)


def sample_images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((40, 50), (64, 32), (32, 32))]


def reference_embeddings(model, path, images, subfolder=""):
    """What the checkpoint itself computes: its own processor's pixels through its own model."""
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor.from_pretrained(path, subfolder=subfolder)
    pixel_values = torch.as_tensor(np.asarray(processor(images=images, return_tensors="np")["pixel_values"]))
    with torch.no_grad():
        return model(pixel_values=pixel_values).image_embeds.numpy()


def test_plain_checkpoint_through_hf(plain_clip):
    path, model = plain_clip
    encoder = load_encoder(f"hf:{path}", device="cpu")
    assert encoder.id == f"hf:{path}" and encoder.dim == PROJECTION
    assert not hasattr(encoder, "text_embeddings")  # no text tower in a vision-only checkpoint
    pixels = encoder.preprocess(sample_images()[0])
    assert pixels.shape == (3, IMAGE_SIZE, IMAGE_SIZE) and pixels.dtype == torch.float32
    images = sample_images()
    embeddings = encoder.encode_images(images, batch_size=2)
    assert embeddings.shape == (3, PROJECTION) and embeddings.dtype == np.float32
    np.testing.assert_allclose(embeddings, reference_embeddings(model, path, images), rtol=1e-5, atol=1e-5)
    assert not np.allclose(embeddings[0], embeddings[1])
    assert encoder.info() == {"id": f"hf:{path}", "dim": PROJECTION, "dtype": "float32", "device": "cpu"}


def test_kandinsky_layout_with_text_tower(prior_clip):
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    path, model = prior_clip
    encoder = load_encoder(f"kandinsky-clip:{path}", device="cpu")
    assert encoder.id == f"kandinsky-clip:{path}" and encoder.dim == PROJECTION
    images = sample_images()
    embeddings = encoder.encode_images(images)
    np.testing.assert_allclose(
        embeddings, reference_embeddings(model, path, images, "image_processor"), rtol=1e-5, atol=1e-5
    )

    texts = ["a cat", "dog", "a dog and a cat", "CAT!"]
    text_embeddings = encoder.text_embeddings(texts, batch_size=3)
    assert text_embeddings.shape == (4, PROJECTION) and text_embeddings.dtype == np.float32
    tokenizer = CLIPTokenizer.from_pretrained(path / "tokenizer")
    assert tokenizer.convert_ids_to_tokens(tokenizer("a cat")["input_ids"]) == [
        "<|startoftext|>",
        "a</w>",
        "cat</w>",
        "<|endoftext|>",
    ]
    text_model = CLIPTextModelWithProjection.from_pretrained(path / "text_encoder").eval()
    with torch.no_grad():
        expected = np.concatenate(
            [text_model(**tokenizer([t], return_tensors="pt")).text_embeds.numpy() for t in texts]
        )
    np.testing.assert_allclose(text_embeddings, expected, rtol=1e-4, atol=1e-5)
    assert not np.allclose(text_embeddings[0], text_embeddings[1])
    # the same folder through hf: is the same model
    again = load_encoder(f"hf:{path}", device="cpu")
    np.testing.assert_allclose(again.encode_images(images), embeddings, rtol=1e-6, atol=1e-6)


def test_relative_path_is_recorded_absolute(plain_clip, tmp_path, monkeypatch):
    path, _ = plain_clip
    shutil.copytree(path, tmp_path / "model")
    monkeypatch.chdir(tmp_path)
    encoder = load_encoder("hf:model", device="cpu")
    assert encoder.id == f"hf:{(tmp_path / 'model').resolve()}"
    monkeypatch.chdir("/")
    assert load_encoder(encoder.id, device="cpu").dim == PROJECTION  # the store's record reloads anywhere


def test_missing_processor_falls_back_to_clip_defaults(plain_clip, tmp_path):
    path, model = plain_clip
    bare = tmp_path / "bare"
    model.save_pretrained(bare)  # weights and config only
    encoder = load_encoder(f"hf:{bare}", device="cpu")
    assert encoder.preprocess(sample_images()[1]).shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    images = sample_images()
    np.testing.assert_allclose(
        encoder.encode_images(images), reference_embeddings(model, path, images), rtol=1e-5, atol=1e-5
    )


def test_bad_encoder_names_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="unknown encoder 'clip-xl'.*efficientnet-lite0"):
        load_encoder("clip-xl")
    with pytest.raises(UserError, match="hf: needs a model"):
        load_encoder("hf:")
    with pytest.raises(UserError, match="cannot load a CLIP vision model.*image_encoder/"):
        load_encoder(f"hf:{tmp_path / 'no_such_model'}", device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="cannot load a CLIP vision model"):
        load_encoder(f"hf:{tmp_path / 'empty'}", device="cpu")
    with pytest.raises(UserError, match="takes no argument"):
        load_encoder("efficientnet-lite0:big")
    with pytest.raises(UserError, match="dtype"):
        load_encoder("efficientnet-lite0", device="cpu", dtype="float64")


def test_efficientnet_recognises_chelsea_the_cat():
    skimage_data = pytest.importorskip("skimage.data")
    encoder = load_encoder("efficientnet-lite0", device="cpu")
    assert encoder.id == "efficientnet-lite0" and encoder.dim == 1280
    weight, bias, names = encoder.imagenet_head()
    assert weight.shape == (1000, 1280) and bias.shape == (1000,) and len(names) == 1000
    cat = Image.fromarray(skimage_data.chelsea())
    embeddings = encoder.encode_images([cat, Image.new("RGB", (300, 200), (255, 255, 255))])
    assert embeddings.shape == (2, 1280) and np.isfinite(embeddings).all()
    top5 = encoder.classify(embeddings[:1])[0].topk(5).indices.tolist()
    cats = [i for i in top5 if 281 <= i <= 285 and "cat" in names[i]]
    assert cats, f"no cat class in the top 5: {[names[i] for i in top5]}"
    assert not np.allclose(embeddings[0], embeddings[1])
