"""sft.py: conversation ids and label masks against the chat template, per-sample loss against HF's
own forward and independent of batching, the schedule, and a tiny subprocess run whose output
train.py starts from."""
import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoTokenizer

import data
import pixels
import sft
from conftest import ROOT, SHARED
from model import PolicyLogprobs, load_policy, mm_token_types, rope_positions

TINY_MEDIA = pixels.MediaConfig(max_frames=8, video_min_pixels=84 * 84, video_max_pixels=84 * 84,
                                image_max_pixels=84 * 84)
MARK = "<|im_start|>assistant\n"


def cot_samples(builtin):
    paths, _ = builtin
    samples = data.load_samples(paths["train_cot"], require_process=True)
    return {"video": next(s for s in samples if s.data_type == "video"),
            "image": next(s for s in samples if s.data_type == "image"), "all": samples}


def tokenizers(builtin):
    """The tiny tokenizer, and the real Qwen2.5-VL-7B tokenizer when the shared copy is present."""
    toks = [AutoTokenizer.from_pretrained(builtin[1])]
    if (SHARED / "qwen2_5_vl_7b_instruct" / "tokenizer.json").exists():
        toks.append(AutoTokenizer.from_pretrained(SHARED / "qwen2_5_vl_7b_instruct"))
    return toks


@pytest.mark.parametrize("data_type", ["video", "image"])
@pytest.mark.parametrize("system", ["default", "official"])
def test_ids_and_labels_match_the_chat_template(builtin, data_type, system):
    sample = cot_samples(builtin)[data_type]
    for tok in tokenizers(builtin):
        prep = pixels.prepare(sample, tok, TINY_MEDIA)
        t, h, w = prep.visual.grid_thw.tolist()
        pad = {"video": "<|video_pad|>", "image": "<|image_pad|>"}[data_type]
        # independent construction: the chat template's text of [system?, user, assistant], split at
        # the assistant header
        messages = [{"role": "user",
                     "content": [{"type": data_type},
                                 {"type": "text",
                                  "text": data.build_prompt_text(sample, "train")}]},
                    {"role": "assistant", "content": sample.process + "\n" + sample.solution}]
        if system == "official":
            messages.insert(0, {"role": "system", "content": "You are a helpful assistant"})
        text = (tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
                .replace(pad, pad * (t * h * w // 4)))
        head = "<|im_start|>system\n" + ("You are a helpful assistant<|im_end|>"
                                         if system == "official"
                                         else "You are a helpful assistant.<|im_end|>")
        assert text.startswith(head)
        cut = text.index(MARK) + len(MARK)
        assert text[cut:] == sample.process + "\n" + sample.solution + "<|im_end|>\n"
        enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]
        prefix, answer = enc(text[:cut]), enc(text[cut:-1])
        assert prefix + answer + enc("\n") == enc(text)                 # no merge across the cut

        for loss_on in ("assistant", "all"):
            ex = sft.build_example(prep, tok, loss_on, sft.SYSTEM_PROMPTS[system])
            assert ex.ids.tolist() == enc(text)
            assert torch.equal(ex.ids, sft.template_ids(tok, sample, prep.visual.grid_thw,
                                                        sft.SYSTEM_PROMPTS[system]))
            assert ex.prompt_len == len(prefix)
            if loss_on == "assistant":
                expected = [False] * len(prefix) + [True] * len(answer) + [False]
                assert (tok.decode(ex.ids[ex.labels])
                        == sample.process + "\n" + sample.solution + "<|im_end|>")
            else:
                image_pad = tok.convert_tokens_to_ids("<|image_pad|>")
                expected = [False] + [i != image_pad for i in enc(text)[1:]]
                video_pad = tok.convert_tokens_to_ids("<|video_pad|>")
                trained_video_pads = int((ex.labels & (ex.ids == video_pad)).sum())
                assert trained_video_pads == (t * h * w // 4 if data_type == "video" else 0)
                assert int(ex.labels.sum()) == (len(enc(text)) - 1
                                                - (t * h * w // 4 if data_type == "image" else 0))
            assert ex.labels.tolist() == expected


def test_build_example_rejects_unknown_loss_on(builtin):
    tok = AutoTokenizer.from_pretrained(builtin[1])
    prep = pixels.prepare(cot_samples(builtin)["image"], tok, TINY_MEDIA)
    with pytest.raises(ValueError, match="loss_on must be one of"):
        sft.build_example(prep, tok, "prompt")


@pytest.fixture(scope="module")
def policy(builtin):
    hf, tok = load_policy(builtin[1])
    return hf.eval(), tok


def test_logprobs_equal_hf_forward(builtin, policy):
    """PolicyLogprobs on right-padded conversations (media anywhere) gives the HF model's own
    forward's log-probs."""
    hf, tok = policy
    module = PolicyLogprobs(hf, chunk=50)                             # several lm_head chunks
    for kind in ("video", "image"):
        ex = sft.build_example(pixels.prepare(cot_samples(builtin)[kind], tok, TINY_MEDIA), tok,
                               "all")
        with torch.no_grad():
            lp, lab = sft.batch_logprobs(module, [ex], tok.pad_token_id, "cpu", "all")   # (1, T-1)
            ids = ex.ids[None]
            pix = {"video": dict(pixel_values_videos=ex.visual.pixel_values,
                                 video_grid_thw=ex.visual.grid_thw[None],
                                 second_per_grid_ts=torch.tensor([ex.visual.second_per_grid])),
                   "image": dict(pixel_values=ex.visual.pixel_values,
                                 image_grid_thw=ex.visual.grid_thw[None])}[kind]
            # our positions (Qwen2.5-VL's 4.49 rule, test_mrope.py): the pinned 5.x get_rope_index
            # follows another rule after a long clip, which would test the rule difference rather
            # than this path
            pos, _ = rope_positions(hf, ids, torch.ones_like(ids), [ex.visual], [0])   # (3, 1, T)
            logits = hf(input_ids=ids, mm_token_type_ids=mm_token_types(ids, hf.config),
                        position_ids=pos, **pix).logits[0, :-1].float()
            ref = torch.log_softmax(logits, -1).gather(1, ids[0, 1:, None])[:, 0]       # (T-1,)
        torch.testing.assert_close(lp[0], ref, atol=1e-5, rtol=0)
        expected_loss = -(ref * ex.labels[1:].float()).sum() / ex.labels[1:].sum()
        torch.testing.assert_close(sft.per_sample_losses(lp, lab)[0], expected_loss, atol=1e-5,
                                   rtol=0)


@pytest.mark.parametrize("loss_on", ["assistant", "all"])
def test_batched_loss_equals_each_sample_alone(builtin, policy, loss_on):
    """Two videos of different frame counts and sizes (plus an image) in one right-padded batch:
    each row's loss is the loss of that sample alone, so every row uses its own visual and
    positions."""
    hf, tok = policy
    module = PolicyLogprobs(hf)
    s = cot_samples(builtin)
    videos = [v for v in s["all"] if v.data_type == "video"]
    small = pixels.MediaConfig(max_frames=4, video_min_pixels=56 * 56, video_max_pixels=56 * 56)
    preps = [pixels.prepare(videos[0], tok, TINY_MEDIA), pixels.prepare(videos[1], tok, small),
             pixels.prepare(s["image"], tok, TINY_MEDIA)]
    assert preps[0].visual.grid_thw.tolist() != preps[1].visual.grid_thw.tolist()
    exs = [sft.build_example(p, tok, loss_on) for p in preps]
    assert len({e.ids.numel() for e in exs}) > 1                        # real padding happens
    with torch.no_grad():
        batched = sft.per_sample_losses(*sft.batch_logprobs(module, exs, tok.pad_token_id, "cpu",
                                                            loss_on))
        alone = torch.cat([sft.per_sample_losses(*sft.batch_logprobs(module, [e], tok.pad_token_id,
                                                                     "cpu", loss_on))
                           for e in exs])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)
    assert batched[0] != batched[1]


def test_linear_schedule_with_warmup():
    cfg = sft.Config(lr=1e-3, warmup_steps=2)
    got = [sft.lr_at(k, 6, cfg) for k in range(6)]
    # warm-up 0.5e-3, 1e-3; then (6 - k) / (6 - 2) * 1e-3 for k = 2..5
    assert got == pytest.approx([5e-4, 1e-3, 1e-3, 7.5e-4, 5e-4, 2.5e-4])
    assert ([sft.lr_at(k, 4, sft.Config(lr=1.0)) for k in range(4)]
            == pytest.approx([1.0, 0.75, 0.5, 0.25]))


def test_config_presets_and_checks():
    paper = sft.finish_config(sft.Config(model="some/folder"), set())
    assert ((paper.preset, paper.lr, paper.epochs, paper.batch_size, paper.grad_accum,
             paper.weight_decay, paper.max_grad_norm, paper.loss_on, paper.system_prompt)
            == ("paper", 1e-6, 1.0, 1, 2, 0.0, 5.0, "assistant", "default"))
    tiny = sft.finish_config(sft.Config(lr=5e-4), {"lr"})
    assert (tiny.preset == "tiny" and tiny.lr == 5e-4 and tiny.batch_size == 8
            and tiny.max_frames == 8)
    with pytest.raises(ValueError, match="--loss-on must be one of assistant, all"):
        sft.finish_config(sft.Config(loss_on="prompt"), set())
    with pytest.raises(ValueError, match="--system-prompt must be one of default, official"):
        sft.finish_config(sft.Config(system_prompt="none"), set())


def test_sft_run_lowers_loss_and_train_starts_from_it(builtin, tmp_path):
    paths, tiny = builtin
    out = tmp_path / "sft"
    cmd = [sys.executable, "sft.py", "--model", str(tiny), "--data", str(paths["train_cot"]),
           "--preset", "tiny", "--eval-data", str(paths["test"]), "--steps", "6", "--batch-size",
           "2", "--grad-accum", "2", "--warmup-steps", "0", "--lr", "3e-3", "--eval-samples", "2",
           "--eval-max-new-tokens", "8", "--out-dir", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in rows if "loss" in x]
    evals = [x for x in rows if "eval_format" in x]
    assert [x["step"] for x in steps] == list(range(1, 7))
    assert [x["step"] for x in evals] == [0, 6] and all(x["eval_n"] == 2 for x in evals)
    assert all(x["tokens"] > 0 and x["grad_norm"] > 0 and {"lr", "loss"} <= set(x) for x in steps)
    # linear decay, last step
    assert [x["lr"] for x in steps] == pytest.approx([3e-3 * (6 - k) / 6 for k in range(6)])
    assert sum(x["loss"] for x in steps[-2:]) < sum(x["loss"] for x in steps[:2]) - 0.5
    assert ((out / "final" / "model.safetensors").exists()
            and (out / "final" / "tokenizer.json").exists())
    rl = [sys.executable, "train.py", "--model", str(out / "final"), "--preset", "tiny", "--data",
          str(paths["train"]), "--steps", "1", "--G", "2", "--max-completion-length", "8",
          "--out-dir", str(tmp_path / "rl")]
    r = subprocess.run(rl, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len((tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()) == 1
