"""The Kandinsky 2.2 decoder path on tiny random pipelines of the production classes, saved and
reloaded through the production loader."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from clipatlas.errors import UserError
from clipatlas.steer import KandinskyDecoder, load_kandinsky_pipeline, zero_image_embedding
from clipatlas.steer.config import GenerateConfig

EMB = 32  # the tiny CLIP's projection size, standing in for ViT-bigG's 1280
CAPTIONS = ("a red cat", "a photo of a dog", "a red dog")
SIZE = 64


def tiny_decoder_pipeline(path):
    """Tiny UNet (image_proj conditioning) + tiny MoVQ + the real decoder's DDPM scheduler settings."""
    from diffusers import DDPMScheduler, KandinskyV22Pipeline, UNet2DConditionModel, VQModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        in_channels=4,
        out_channels=8,
        addition_embed_type="image",
        encoder_hid_dim=EMB,
        encoder_hid_dim_type="image_proj",
        cross_attention_dim=32,
        attention_head_dim=4,
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        block_out_channels=(32, 64),
        layers_per_block=1,
        resnet_time_scale_shift="scale_shift",
        class_embed_type=None,
        norm_num_groups=8,
    )
    movq = VQModel(
        block_out_channels=[32, 64],
        down_block_types=["DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
        up_block_types=["AttnUpDecoderBlock2D", "UpDecoderBlock2D"],
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        norm_type="spatial",
        num_vq_embeddings=12,
        vq_embed_dim=4,
    )
    # kandinsky-community/kandinsky-2-2-decoder scheduler/scheduler_config.json
    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        steps_offset=1,
        prediction_type="epsilon",
        thresholding=False,
        timestep_spacing="leading",
        variance_type="fixed_small",
    )
    KandinskyV22Pipeline(unet=unet, scheduler=scheduler, movq=movq).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def decoder_path(tmp_path_factory):
    return tiny_decoder_pipeline(tmp_path_factory.mktemp("k22") / "decoder")


@pytest.fixture(scope="module")
def clip_encoder(prior_path):
    """The prior's own image encoder, loaded as production loads it: --encoder kandinsky-clip:PATH."""
    from clipatlas.encoders import load_encoder

    return load_encoder(f"kandinsky-clip:{prior_path}")


def test_negative_embedding_is_the_prior_zero_image_embedding(clip_encoder):
    """Kandinsky's prior feeds torch.zeros(1, 3, size, size) to its image encoder."""
    size = clip_encoder.model.config.image_size
    zero = clip_encoder.model(pixel_values=torch.zeros(1, 3, size, size)).image_embeds[0]
    negative = zero_image_embedding(clip_encoder)
    np.testing.assert_allclose(negative, zero.detach().numpy(), rtol=1e-6, atol=1e-6)
    black = clip_encoder.encode_images([Image.new("RGB", (32, 32))])[0]
    assert not np.allclose(negative, black)  # a black picture is not the zero tensor after normalisation


def test_decoder_matches_the_pipeline_and_is_seeded(decoder_path, clip_encoder):
    negative = zero_image_embedding(clip_encoder)
    decoder = KandinskyDecoder(str(decoder_path), negative)
    embeddings = np.random.default_rng(0).normal(size=(2, EMB)).astype(np.float32)
    settings = {"steps": 2, "height": SIZE, "width": SIZE}
    first = decoder.decode(embeddings, seed=7, settings=settings).images
    assert [im.size for im in first] == [(SIZE, SIZE)] * 2
    again = decoder.decode(embeddings[:1], seed=7, settings=settings).images[0]
    # Same seed, same starting noise whether alone or batched (only matmul rounding differs).
    assert np.abs(np.asarray(first[0], np.int16) - np.asarray(again, np.int16)).max() <= 2
    assert np.array_equal(
        np.asarray(decoder.decode(embeddings[:1], seed=7, settings=settings).images[0]), np.asarray(again)
    )
    assert not np.array_equal(np.asarray(first[0]), np.asarray(first[1]))

    pipe = load_kandinsky_pipeline(str(decoder_path))
    reference = pipe(
        image_embeds=torch.from_numpy(embeddings[1:]),
        negative_image_embeds=torch.from_numpy(negative[None]),
        num_inference_steps=2,
        guidance_scale=4.0,
        height=SIZE,
        width=SIZE,
        generator=torch.Generator().manual_seed(7),
    ).images[0]
    assert np.array_equal(
        np.asarray(reference),
        np.asarray(again_second := decoder.decode(embeddings[1:], seed=7, settings=settings).images[0]),
    )
    assert np.abs(np.asarray(again_second, np.int16) - np.asarray(first[1], np.int16)).max() <= 2


def test_img2img_starts_from_the_input_and_needs_it(decoder_path, clip_encoder):
    decoder = KandinskyDecoder(str(decoder_path), zero_image_embedding(clip_encoder), img2img=True)
    embedding = np.ones((1, EMB), np.float32)
    init = Image.new("RGB", (SIZE, SIZE), (255, 0, 0))
    settings = {"steps": 4, "height": SIZE, "width": SIZE, "strength": 0.25}
    out = decoder.decode(embedding, seed=1, settings=settings, init_images=[init]).images[0]
    blue = decoder.decode(
        embedding, seed=1, settings=settings, init_images=[Image.new("RGB", (SIZE, SIZE), (0, 0, 255))]
    ).images[0]
    assert out.size == (SIZE, SIZE) and not np.array_equal(np.asarray(out), np.asarray(blue))
    with pytest.raises(UserError, match="needs the input image"):
        decoder.decode(embedding, seed=1, settings=settings)
    with pytest.raises(UserError, match="strength is in"):
        decoder.decode(embedding, seed=1, settings={**settings, "strength": 1.5}, init_images=[init])


def test_wrong_sizes_and_missing_weights_are_user_errors(decoder_path, tmp_path):
    with pytest.raises(UserError, match="takes 32-dim"):
        KandinskyDecoder(str(decoder_path), np.zeros(EMB + 1, np.float32))
    with pytest.raises(UserError, match="retrieval"):
        KandinskyDecoder(str(tmp_path / "missing"), np.zeros(EMB, np.float32))
    decoder = KandinskyDecoder(str(decoder_path), np.zeros(EMB, np.float32))
    with pytest.raises(UserError, match="positive number"):
        decoder.decode(np.zeros((1, EMB), np.float32), settings={"steps": 0})


# -- through the workspace: recipes and text-to-image rules --------------------------------------------
@pytest.fixture(scope="module")
def clip_workspace(tmp_path_factory, clip_encoder):
    """40 random images embedded by `clipatlas embed` with the prior's encoder, a ReLU SAE 'k' and its atlas:
    the steerer loads the encoder by the id the store records, as it does for the real ViT-bigG."""
    from clipatlas.atlas import AtlasConfig, build_atlas
    from clipatlas.sae import ARCHITECTURES, ReLUConfig
    from clipatlas.store import embed

    root = tmp_path_factory.mktemp("clip_ws")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(images / f"{i:02d}.png")
        (images / f"{i:02d}.txt").write_text(CAPTIONS[i % len(CAPTIONS)])  # words the tiny tokenizer knows
    embed([str(images)], root, encoder=clip_encoder.id, store_dtype="float32", workers=0, progress=False)
    torch.manual_seed(0)
    sae = ARCHITECTURES["relu"](ReLUConfig(d_in=EMB, d_sae=48))
    with torch.no_grad():
        sae.b_enc.fill_(0.05)
    sae.save_pretrained(root / "saes" / "k")
    build_atlas(root, "k", config=AtlasConfig(top_k=4, map_method="pca", thumbnails=False))
    return root


def test_clip_text_labeller_and_judge_use_the_prior_text_tower(clip_workspace, clip_encoder, tmp_path):
    """The prior repo ships text_encoder/ + tokenizer/: the clip-text labeller names each feature by the
    vocabulary entries whose text embedding best separates its labelling images from silent ones
    (AUROC, checked with scikit-learn), and the clip-text judge scores those labels."""
    from sklearn.metrics import roc_auc_score

    from clipatlas.atlas import Atlas
    from clipatlas.interp.config import LabelConfig, ScoreConfig, SplitConfig
    from clipatlas.interp.run import label, open_data, score

    vocab = ["cat", "dog", "red"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab))
    config = LabelConfig(labeller="clip-text", vocab_file=str(tmp_path / "vocab.txt"), classes=2, validation=False)
    assert label(clip_workspace, "k", config).labelled > 0
    atlas, data = open_data(clip_workspace, "k", SplitConfig())
    text = clip_encoder.text_embeddings(vocab)
    checked = 0
    for feature in data.eligible_features(4, None):
        split = data.splitter(feature)
        stored = [lab for lab in atlas.labels(feature) if lab.source == "clip-text"]
        if split is None or not stored:
            continue
        view = data.view(split)
        rows, silent = view.rows, view.background(300)
        x = data.store.rows(np.concatenate([rows, silent]))
        truth = np.arange(len(x)) < len(rows)
        auroc = [roc_auc_score(truth, x @ t / np.linalg.norm(x, axis=1)) for t in text]
        order = sorted(range(len(vocab)), key=lambda j: -auroc[j])[:2]
        assert stored[0].text == ", ".join(vocab[j] for j in order)
        assert stored[0].evidence["auroc"] == pytest.approx([auroc[j] for j in order], abs=1e-3)
        checked += 1
    assert checked > 0
    result = score(clip_workspace, "k", ScoreConfig(judge="clip-text"))
    assert result.scores and {s.judge for s in result.scores} == {"clip-text"}
    assert all(0 <= s.value <= 1 and s.judge_model == clip_encoder.id for s in result.scores)
    assert Atlas.open(clip_workspace, "k").labels(result.scores[0].feature)[0].scores


def test_kandinsky_recipe_replays_to_identical_png(clip_workspace, decoder_path, clip_encoder, tmp_path):
    from clipatlas.steer import Recipe, run_recipe, steerer_for

    image = tmp_path / "input.png"
    Image.new("RGB", (32, 32), (30, 160, 90)).save(image)
    alive_feature = int(steerer_for(clip_workspace, "k").atlas.map_points().feature[0])
    recipe = Recipe.from_dict(
        {
            "image": str(image),
            "edits": [f"set:{alive_feature}=7.5x", "ban:5"],
            "decoder": f"kandinsky:{decoder_path}",
            "settings": {"steps": 2, "height": SIZE, "width": SIZE},
            "seed": 3,
        }
    )
    first = run_recipe(clip_workspace, recipe, name="k")
    again = run_recipe(clip_workspace, Recipe.from_dict(recipe.to_dict()), name="k")
    assert first.after_png == again.after_png and first.before_png == again.before_png
    assert first.before_png != first.after_png and first.decoder == f"kandinsky:{decoder_path}"
    np.testing.assert_allclose(first.before, clip_encoder.encode_images([Image.open(image)])[0], atol=1e-6)
    assert first.before_ranking is None


def sae_codes(steerer, embeddings) -> np.ndarray:
    return steerer.sae.encode(torch.from_numpy(np.asarray(embeddings, np.float32))).detach().numpy()


def test_verify_re_embeds_both_generated_images(clip_workspace, decoder_path, clip_encoder):
    """With a generator, the measure encodes the before and after images with the store's encoder."""
    from clipatlas.steer import Recipe, parse_edit, steerer_for

    steerer = steerer_for(clip_workspace, "k")
    feature = int(steerer.atlas.map_points().feature[0])
    image = steerer.store.meta(3)["image_id"]
    recipe = Recipe(
        image=image,
        edits=(parse_edit(f"set:{feature}=5x"),),
        decoder=f"kandinsky:{decoder_path}",
        settings={"steps": 2, "height": SIZE, "width": SIZE},
    )
    result = steerer.run(recipe)
    (check,) = steerer.verify(recipe, result)
    pictures = [Image.open(io.BytesIO(png)).convert("RGB") for png in (result.before_png, result.after_png)]
    before, after = clip_encoder.encode_images(pictures)
    z = sae_codes(steerer, [before, after])
    assert check.feature == feature
    assert check.before_activation == pytest.approx(z[0, feature], abs=1e-5)
    assert check.after_activation == pytest.approx(z[1, feature], abs=1e-5)
    own = z[1, feature]
    assert check.after_rank == (int((z[1] > own).sum()) if own > 0 else z.shape[1])
    cosine = before @ after / np.linalg.norm(before) / np.linalg.norm(after)
    assert check.source_cosine == pytest.approx(cosine, abs=1e-5) and check.differs == (cosine < 0.995)


def test_success_curve_runs_on_generated_images(clip_workspace, decoder_path, clip_encoder):
    from clipatlas.atlas import Atlas
    from clipatlas.steer import steerer_for
    from clipatlas.steer.config import SuccessConfig
    from clipatlas.steer.decoders import KandinskyDecoder
    from clipatlas.steer.edits import set_embeddings
    from clipatlas.steer.success import _sample, measure_success

    settings = (("height", SIZE), ("steps", 2), ("width", SIZE))
    config = SuccessConfig(
        decoder=f"kandinsky:{decoder_path}",
        settings=settings,
        strengths=(3.0,),
        n_features=2,
        sources_per_feature=2,
        min_images=1,
    )
    curve = measure_success(clip_workspace, "k", config)
    atlas = Atlas.open(clip_workspace, "k")
    assert atlas.files.steering_success("kandinsky").is_file() and curve.points[0].n == 4
    # The same edits by hand: decode before and after with seed 1, re-embed, encode with the SAE.
    steerer = steerer_for(clip_workspace, "k")
    features, sources = _sample(atlas, config)
    x = steerer.store.rows(sources)
    steered = set_embeddings(steerer.sae, x, features, 3.0 * atlas.feature_table().max_activation[features])
    decoder = KandinskyDecoder(str(decoder_path), steerer.negative_embedding())
    draw = dict(settings)
    before = clip_encoder.encode_images(decoder.decode(x, seed=1, settings=draw).images)
    after = clip_encoder.encode_images(decoder.decode(steered, seed=1, settings=draw).images)
    z = sae_codes(steerer, after)
    own = z[np.arange(len(features)), features]
    ranks = np.where(own > 0, (z > own[:, None]).sum(axis=1), z.shape[1])
    cosines = np.einsum("ij,ij->i", before, after) / np.linalg.norm(before, axis=1) / np.linalg.norm(after, axis=1)
    assert curve.points[0].shown == pytest.approx(np.mean(ranks < 5))
    assert curve.points[0].source_cosine == pytest.approx(cosines.mean(), abs=1e-4)


def _tiny_tokenizer(path):
    """A CLIP BPE tokenizer over a handful of words (vocab.json + merges.txt written here)."""
    import json

    from transformers import CLIPTokenizer

    path.mkdir(parents=True, exist_ok=True)
    words = ["a</w>", "cat</w>", "dog</w>", "photo</w>", "of</w>", "red</w>"]
    letters = sorted(set("acdefghoprt")) + [c + "</w>" for c in sorted(set("acdefghoprt"))]
    merges = ["c a", "ca t</w>", "d o", "do g</w>", "p h", "ph o", "pho t", "phot o</w>", "o f</w>", "r e", "re d</w>"]
    tokens = dict.fromkeys(
        ["<|startoftext|>", "<|endoftext|>"] + letters + [m.replace(" ", "") for m in merges] + words
    )
    vocab = {token: i for i, token in enumerate(tokens)}
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"), model_max_length=77)


@pytest.fixture(scope="module")
def prior_path(tmp_path_factory):
    """Tiny KandinskyV22PriorPipeline: PriorTransformer, CLIP text + vision towers, UnCLIP scheduler."""
    from diffusers import KandinskyV22PriorPipeline, PriorTransformer, UnCLIPScheduler
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    root = tmp_path_factory.mktemp("prior")
    tokenizer = _tiny_tokenizer(root / "tok")
    torch.manual_seed(0)
    prior = PriorTransformer(num_attention_heads=2, attention_head_dim=12, embedding_dim=EMB, num_layers=1)
    with torch.no_grad():  # the real prior's clip statistics are learned; ones keep the tiny one well scaled
        prior.clip_std.fill_(1.0)
    text = CLIPTextModelWithProjection(
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            hidden_size=32,
            projection_dim=EMB,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=len(tokenizer),
        )
    )
    vision = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=32,
            projection_dim=EMB,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
            image_size=32,
            patch_size=8,
        )
    )
    scheduler = UnCLIPScheduler(
        variance_type="fixed_small_log",
        prediction_type="sample",
        num_train_timesteps=1000,
        clip_sample=True,
        clip_sample_range=10.0,
    )
    processor = CLIPImageProcessor(crop_size=32, size=32)
    KandinskyV22PriorPipeline(
        prior=prior,
        image_encoder=vision,
        text_encoder=text,
        tokenizer=tokenizer,
        scheduler=scheduler,
        image_processor=processor,
    ).save_pretrained(root / "pipe")
    return root / "pipe"


def test_generate_bans_a_feature_of_the_prompt_embedding(clip_workspace, decoder_path, prior_path):
    from clipatlas.steer import Edit, steer_embedding, steerer_for
    from clipatlas.steer.generate import generate, load_prior_pipeline, prompt_embedding

    settings = {"steps": 2, "height": SIZE, "width": SIZE, "prior_steps": 2}
    prior = load_prior_pipeline(str(prior_path))
    x, negative = prompt_embedding(prior, "a photo of a cat", seed=5, steps=2, guidance=4.0)
    zero = prior.image_encoder(torch.zeros(1, 3, 32, 32)).image_embeds[0].detach().numpy()
    np.testing.assert_allclose(negative, zero, atol=1e-5)  # the prior's negative is the zero-image embedding
    steerer = steerer_for(clip_workspace, "k")
    z = steerer.sae.encode(torch.from_numpy(x)[None])[0]
    strongest = int(z.argmax())
    assert z[strongest] > 0
    edits = [Edit("ban", feature=strongest)]
    result = generate(
        clip_workspace,
        "a photo of a cat",
        edits,
        "k",
        GenerateConfig(
            decoder=f"kandinsky:{decoder_path}",
            prior=str(prior_path),
            seed=5,
            settings=tuple(sorted(dict(settings).items())),
        ),
    )
    np.testing.assert_array_equal(result.before, x)
    np.testing.assert_allclose(result.after, steer_embedding(steerer.sae, x, edits, steerer.context()), atol=1e-6)
    assert result.before_png != result.after_png
    again = generate(
        clip_workspace,
        "a photo of a cat",
        edits,
        "k",
        GenerateConfig(
            decoder=f"kandinsky:{decoder_path}",
            prior=str(prior_path),
            seed=5,
            settings=tuple(sorted(dict(settings).items())),
        ),
    )
    assert again.after_png == result.after_png
    with pytest.raises(UserError, match="Kandinsky decoder"):
        generate(clip_workspace, "a cat", edits, "k", GenerateConfig(decoder="retrieval", prior=str(prior_path)))
    with pytest.raises(UserError, match="non-empty prompt"):
        generate(
            clip_workspace,
            "  ",
            edits,
            "k",
            GenerateConfig(
                decoder=f"kandinsky:{decoder_path}",
                prior=str(prior_path),
                settings=tuple(sorted(dict(settings).items())),
            ),
        )


def test_cli_generate_writes_the_ruled_image(clip_workspace, decoder_path, prior_path, tmp_path):
    from clipatlas.cli import main
    from clipatlas.steer import parse_edit
    from clipatlas.steer.generate import generate

    out, before = tmp_path / "out.png", tmp_path / "before.png"
    assert (
        main(
            [
                "generate",
                "a red dog",
                "-w",
                str(clip_workspace),
                "--name",
                "k",
                "--edit",
                "ban:3",
                "--decoder",
                f"kandinsky:{decoder_path}",
                "--prior",
                str(prior_path),
                "--set",
                "steps=2",
                "--set",
                f"height={SIZE}",
                "--set",
                f"width={SIZE}",
                "--set",
                "prior_steps=2",
                "--seed",
                "2",
                "-o",
                str(out),
                "--before",
                str(before),
            ]
        )
        == 0
    )
    expected = generate(
        clip_workspace,
        "a red dog",
        [parse_edit("ban:3")],
        "k",
        GenerateConfig(
            decoder=f"kandinsky:{decoder_path}",
            prior=str(prior_path),
            seed=2,
            settings=tuple(sorted({"steps": 2, "height": SIZE, "width": SIZE, "prior_steps": 2}.items())),
        ),
    )
    assert out.read_bytes() == expected.after_png and before.read_bytes() == expected.before_png


def test_verify_re_embeds_the_generated_image(clip_workspace, decoder_path, clip_encoder):
    import io

    from clipatlas.steer import Recipe, steerer_for

    steerer = steerer_for(clip_workspace, "k")
    image_id = steerer.store.meta(2)["image_id"]
    recipe = Recipe.from_dict(
        {
            "image": image_id,
            "edits": ["set:7=7.5x"],
            "decoder": f"kandinsky:{decoder_path}",
            "settings": {"steps": 2, "height": SIZE, "width": SIZE},
        }
    )
    result = steerer.run(recipe)
    (check,) = steerer.verify(recipe, result)
    produced = clip_encoder.encode_images([Image.open(io.BytesIO(result.after_png)).convert("RGB")])
    z = steerer.sae.encode(torch.from_numpy(produced))[0].detach()
    assert check.feature == 7 and check.after_activation == pytest.approx(float(z[7]), rel=1e-5, abs=1e-6)
    assert check.after_rank == (int((z > z[7]).sum()) if z[7] > 0 else z.shape[0])
