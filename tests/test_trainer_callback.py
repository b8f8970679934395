"""The Trainer callback, run inside a real transformers Trainer on a tiny model on the CPU."""

from __future__ import annotations

import json
import logging

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from lorasize.profile.schema import load_profile  # noqa: E402

TINY = dict(model_type="llama", vocab_size=256, hidden_size=64, intermediate_size=160,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
SEQ, BATCH = 24, 2
# The tracker counts every real tensor exactly; the estimate models the same step. The profile
# command's own CPU check (tests/test_profile.py) holds them within 10%: the same tolerance.
REL = 0.10


class _Tokens(torch.utils.data.Dataset):
    """Fixed-length random sequences: every micro-batch is BATCH x SEQ."""

    def __init__(self, n: int, seq: int = SEQ):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, TINY["vocab_size"], (n, seq), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def _model(targets=("q_proj", "v_proj"), r=4):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = dict(TINY)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(config.pop("model_type"), **config))
    return get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets),
                                            lora_dropout=0.0))


def _trainer(model, tmp_path, callback, steps=4, **args):
    from transformers import Trainer, TrainingArguments

    arguments = TrainingArguments(
        output_dir=str(tmp_path / "run"), per_device_train_batch_size=BATCH, max_steps=steps,
        use_cpu=True, report_to=[], save_strategy="no", logging_strategy="no",
        dataloader_num_workers=0, disable_tqdm=True, **args)
    return Trainer(model=model, args=arguments, train_dataset=_Tokens(BATCH * steps * 4),
                   callbacks=[callback])


@pytest.mark.parametrize("targets,accum", [(("q_proj", "v_proj"), 1),
                                           (("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                             "up_proj", "down_proj"), 2)])
def test_a_real_trainer_run_writes_a_profile_that_matches_its_prediction(tmp_path, targets, accum):
    from lorasize.integrations.transformers import LorasizeCallback

    callback = LorasizeCallback(seq_len=SEQ, warmup_steps=1, measure_steps=2,
                                out=str(tmp_path / "profiles"))
    _trainer(_model(targets), tmp_path, callback, gradient_accumulation_steps=accum).train()
    (path,) = (tmp_path / "profiles").glob("*.json")
    assert str(path) == callback.profile_path
    profile = load_profile(path)  # the profile command's schema
    config, measured = profile["config"], profile["measurements"]
    assert config["train"]["batch_size"] == BATCH and config["train"]["seq_len"] == SEQ
    assert config["train"]["grad_accum"] == accum
    assert sorted(config["lora"]["targets"]) == sorted(targets)
    assert config["steps"] == 2 and profile["device"]["kind"] == "cpu"
    assert set(measured["phases"]) == {"forward", "backward", "optimizer"}
    assert measured["tokens_per_s"] > 0 and measured["oom"] is False
    predicted = profile["prediction"]["allocated_bytes"]
    assert predicted == pytest.approx(measured["peak_allocated_bytes"], rel=REL)
    assert profile["source"]["kind"] == "transformers-callback"


def test_the_live_specs_read_what_the_run_built():
    from lorasize.integrations.specs_from_model import specs_from_model

    live = specs_from_model(_model(("q_proj", "v_proj"), r=4), batch_size=2, seq_len=16,
                            mixed_precision=False)
    assert live.lora.r == 4 and set(live.lora.targets) == {"q_proj", "v_proj"}
    assert live.train.method == "lora" and live.train.dtype == "fp32"
    assert live.train.adapter_train_dtype == "fp32" and live.train.grad_checkpointing is False
    assert live.model.num_layers == 2 and live.model.hidden_size == 64


def test_it_stops_before_the_first_step_when_the_run_does_not_fit(tmp_path, monkeypatch):
    from lorasize.integrations import transformers as integration

    model = _model()
    seen = []
    model.register_forward_pre_hook(lambda *a: seen.append(1))
    # a 1 MiB "GPU": the tiny model's step needs more
    monkeypatch.setattr(integration.LorasizeCallback, "_gpu",
                        lambda self, model: _small_gpu())
    callback = integration.LorasizeCallback(seq_len=SEQ, stop_if_not_fits=True,
                                            out=str(tmp_path / "p"))
    with pytest.raises(integration.DoesNotFit, match="run out of memory"):
        _trainer(model, tmp_path, callback).train()
    assert not seen  # no forward ran


def test_it_warns_and_goes_on_when_not_asked_to_stop(tmp_path, monkeypatch, caplog):
    from lorasize.integrations import transformers as integration

    monkeypatch.setattr(integration.LorasizeCallback, "_gpu", lambda self, model: _small_gpu())
    callback = integration.LorasizeCallback(seq_len=SEQ, measure_steps=0, out=str(tmp_path / "p"))
    with caplog.at_level(logging.WARNING, logger="lorasize"):
        _trainer(_model(), tmp_path, callback, steps=1).train()
    assert "will run out of memory" in caplog.text
    assert callback.prediction["fits"] is False and callback.profile_path is None


def _small_gpu():
    from lorasize.gpu import with_memory

    return with_memory(None, "1MiB")


def test_calibrate_reads_a_callback_profile(tmp_path, cli):
    from lorasize.integrations.transformers import LorasizeCallback

    folder = tmp_path / "profiles"
    _trainer(_model(), tmp_path, LorasizeCallback(seq_len=SEQ, out=str(folder))).train()
    code, out, err = cli("calibrate", "--profiles", str(folder), "--summary", "--json")
    assert code == 0, err
    rows = json.loads(out)["profiles"]
    assert len(rows) == 1 and rows[0]["source"] == "transformers-callback"
    assert abs(rows[0]["error_percent"]) < 100 * REL
