"""Built-in catalog of popular decoder-only models.

Each entry is plain data:

* ``name`` -- the short catalog name (lowercase; letters, digits, dots and dashes).
* ``aliases`` -- other names a user may type; they are compared in lowercase.
* ``hf_id`` -- the Hugging Face repository the numbers come from.
* ``url`` -- that repository's ``config.json``.
* ``config`` -- the keys of that ``config.json`` that shape the architecture and the parameter
  count, with the key names and values exactly as the file has them. Keys the file leaves out are
  left out here too; the transformers default they then fall back on is named in a comment.

Every entry was checked by building the model with transformers 5.23.0 on the meta device
(``AutoConfig.for_model(**config)`` then ``AutoModelForCausalLM.from_config``) and counting
``sum(p.numel() for p in model.parameters())``, which counts tied weights once. That total is the
trailing comment of each entry.
"""

MODELS = [
    # ------------------------------------------------------------------------------------------
    # Meta Llama 2 (MHA for 7B/13B, GQA for 70B; untied embeddings; no biases)
    # ------------------------------------------------------------------------------------------
    dict(
        name="llama2-7b",
        aliases=("llama-2-7b", "llama2", "meta-llama/Llama-2-7b-hf",
                 "NousResearch/Llama-2-7b-hf"),  # a re-upload of Meta's files
        hf_id="meta-llama/Llama-2-7b-hf",
        url="https://huggingface.co/meta-llama/Llama-2-7b-hf/blob/main/config.json",
        config=dict(
            model_type="llama", vocab_size=32000, hidden_size=4096, intermediate_size=11008,
            num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
            max_position_embeddings=4096, tie_word_embeddings=False, torch_dtype="float16",
        ),
    ),  # total 6,738,415,616 (meta build, transformers 5.23.0)
    dict(
        name="llama2-13b",
        aliases=("llama-2-13b", "meta-llama/Llama-2-13b-hf"),
        hf_id="meta-llama/Llama-2-13b-hf",
        url="https://huggingface.co/meta-llama/Llama-2-13b-hf/blob/main/config.json",
        config=dict(
            model_type="llama", vocab_size=32000, hidden_size=5120, intermediate_size=13824,
            num_hidden_layers=40, num_attention_heads=40, num_key_value_heads=40,
            max_position_embeddings=4096, tie_word_embeddings=False, torch_dtype="float16",
        ),
    ),  # total 13,015,864,320 (meta build, transformers 5.23.0)
    dict(
        name="llama2-70b",
        aliases=("llama-2-70b", "meta-llama/Llama-2-70b-hf"),
        hf_id="meta-llama/Llama-2-70b-hf",
        url="https://huggingface.co/meta-llama/Llama-2-70b-hf/blob/main/config.json",
        config=dict(
            model_type="llama", vocab_size=32000, hidden_size=8192, intermediate_size=28672,
            num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8,
            max_position_embeddings=4096, tie_word_embeddings=False, torch_dtype="float16",
        ),
    ),  # total 68,976,648,192 (meta build, transformers 5.23.0)
    # ------------------------------------------------------------------------------------------
    # Meta Llama 3 / 3.1 / 3.2 (GQA with 8 KV heads, 128k vocabulary)
    # rope_scaling (rope_type "llama3") of 3.1/3.2 is left out: it does not change any count.
    # ------------------------------------------------------------------------------------------
    dict(
        name="llama3-8b",
        # the Instruct release's config.json differs only in eos_token_id; NousResearch's is a
        # re-upload of Meta's files (axolotl's examples train from it)
        aliases=("llama-3-8b", "meta-llama-3-8b", "llama3", "meta-llama/Meta-Llama-3-8B",
                 "meta-llama/Meta-Llama-3-8B-Instruct", "NousResearch/Meta-Llama-3-8B"),
        hf_id="meta-llama/Meta-Llama-3-8B",
        url="https://huggingface.co/meta-llama/Meta-Llama-3-8B/blob/main/config.json",
        config=dict(
            model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
            num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
            max_position_embeddings=8192, attention_bias=False, tie_word_embeddings=False,
            torch_dtype="bfloat16",
        ),
    ),  # total 8,030,261,248 (meta build, transformers 5.23.0)
    dict(
        name="llama3-70b",
        aliases=("llama-3-70b", "meta-llama-3-70b", "meta-llama/Meta-Llama-3-70B"),
        hf_id="meta-llama/Meta-Llama-3-70B",
        url="https://huggingface.co/meta-llama/Meta-Llama-3-70B/blob/main/config.json",
        config=dict(
            model_type="llama", vocab_size=128256, hidden_size=8192, intermediate_size=28672,
            num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8,
            max_position_embeddings=8192, attention_bias=False, tie_word_embeddings=False,
            torch_dtype="bfloat16",
        ),
    ),  # total 70,553,706,496 (meta build, transformers 5.23.0)
    dict(
        name="llama3.1-8b",
        aliases=("llama-3.1-8b", "meta-llama-3.1-8b", "llama3.1", "meta-llama/Llama-3.1-8B",
                 "meta-llama/Meta-Llama-3.1-8B"),
        hf_id="meta-llama/Llama-3.1-8B",
        url="https://huggingface.co/meta-llama/Llama-3.1-8B/blob/main/config.json",
        config=dict(
            model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
            num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
            max_position_embeddings=131072, attention_bias=False, mlp_bias=False,
            tie_word_embeddings=False, torch_dtype="bfloat16",
        ),
    ),  # total 8,030,261,248 (meta build, transformers 5.23.0)
    dict(
        name="llama3.1-70b",
        aliases=("llama-3.1-70b", "meta-llama-3.1-70b", "meta-llama/Llama-3.1-70B",
                 "meta-llama/Meta-Llama-3.1-70B"),
        hf_id="meta-llama/Llama-3.1-70B",
        url="https://huggingface.co/meta-llama/Llama-3.1-70B/blob/main/config.json",
        config=dict(
            model_type="llama", vocab_size=128256, hidden_size=8192, intermediate_size=28672,
            num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8,
            max_position_embeddings=131072, attention_bias=False, mlp_bias=False,
            tie_word_embeddings=False, torch_dtype="bfloat16",
        ),
    ),  # total 70,553,706,496 (meta build, transformers 5.23.0)
    dict(
        name="llama3.1-405b",
        aliases=("llama-3.1-405b", "meta-llama-3.1-405b", "meta-llama/Llama-3.1-405B",
                 "meta-llama/Meta-Llama-3.1-405B"),
        hf_id="meta-llama/Llama-3.1-405B",
        url="https://huggingface.co/meta-llama/Llama-3.1-405B/blob/main/config.json",
        config=dict(
            model_type="llama", vocab_size=128256, hidden_size=16384, intermediate_size=53248,
            num_hidden_layers=126, num_attention_heads=128, num_key_value_heads=8,
            max_position_embeddings=131072, attention_bias=False, mlp_bias=False,
            tie_word_embeddings=False, torch_dtype="bfloat16",
        ),
    ),  # total 405,853,388,800 (meta build, transformers 5.23.0)
    dict(
        name="llama3.2-1b",
        # NousResearch's is a re-upload of Meta's files; the Instruct release has these shapes
        aliases=("llama-3.2-1b", "meta-llama/Llama-3.2-1B", "NousResearch/Llama-3.2-1B",
                 "meta-llama/Llama-3.2-1B-Instruct"),
        hf_id="meta-llama/Llama-3.2-1B",
        url="https://huggingface.co/meta-llama/Llama-3.2-1B/blob/main/config.json",
        config=dict(
            model_type="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192,
            num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
            max_position_embeddings=131072, attention_bias=False, mlp_bias=False,
            tie_word_embeddings=True, torch_dtype="bfloat16",
        ),
    ),  # total 1,235,814,400 (meta build, transformers 5.23.0)
    dict(
        name="llama3.2-3b",
        aliases=("llama-3.2-3b", "meta-llama/Llama-3.2-3B"),
        hf_id="meta-llama/Llama-3.2-3B",
        url="https://huggingface.co/meta-llama/Llama-3.2-3B/blob/main/config.json",
        config=dict(
            model_type="llama", vocab_size=128256, hidden_size=3072, intermediate_size=8192,
            num_hidden_layers=28, num_attention_heads=24, num_key_value_heads=8, head_dim=128,
            max_position_embeddings=131072, attention_bias=False, mlp_bias=False,
            tie_word_embeddings=True, torch_dtype="bfloat16",
        ),
    ),  # total 3,212,749,824 (meta build, transformers 5.23.0)
    # ------------------------------------------------------------------------------------------
    # Mistral / Mixtral (GQA with 8 KV heads; Mixtral: 8 experts, top-2 routing)
    # ------------------------------------------------------------------------------------------
    dict(
        name="mistral-7b",
        aliases=("mistral-7b-v0.1", "mistral", "mistralai/Mistral-7B-v0.1"),
        hf_id="mistralai/Mistral-7B-v0.1",
        url="https://huggingface.co/mistralai/Mistral-7B-v0.1/blob/main/config.json",
        config=dict(
            model_type="mistral", vocab_size=32000, hidden_size=4096, intermediate_size=14336,
            num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
            max_position_embeddings=32768, tie_word_embeddings=False, torch_dtype="bfloat16",
        ),
    ),  # total 7,241,732,096 (meta build, transformers 5.23.0)
    dict(
        name="mistral-7b-v0.3",
        aliases=("mistralai/Mistral-7B-v0.3",),
        hf_id="mistralai/Mistral-7B-v0.3",
        url="https://huggingface.co/mistralai/Mistral-7B-v0.3/blob/main/config.json",
        config=dict(
            model_type="mistral", vocab_size=32768, hidden_size=4096, intermediate_size=14336,
            num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
            max_position_embeddings=32768, tie_word_embeddings=False, torch_dtype="bfloat16",
        ),
    ),  # total 7,248,023,552 (meta build, transformers 5.23.0)
    dict(
        name="mixtral-8x7b",
        aliases=("mixtral-8x7b-v0.1", "mixtral", "mistralai/Mixtral-8x7B-v0.1"),
        hf_id="mistralai/Mixtral-8x7B-v0.1",
        url="https://huggingface.co/mistralai/Mixtral-8x7B-v0.1/blob/main/config.json",
        config=dict(
            model_type="mixtral", vocab_size=32000, hidden_size=4096, intermediate_size=14336,
            num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
            num_local_experts=8, num_experts_per_tok=2, max_position_embeddings=32768,
            tie_word_embeddings=False, torch_dtype="bfloat16",
        ),
    ),  # total 46,702,792,704 (meta build, transformers 5.23.0)
    # ------------------------------------------------------------------------------------------
    # Qwen2.5 base models (q/k/v biases are fixed in the Qwen2 code, so no bias key;
    # 0.5B-3B tie their embeddings)
    # ------------------------------------------------------------------------------------------
    dict(
        name="qwen2.5-0.5b",
        aliases=("qwen2.5-0.5b-base", "Qwen/Qwen2.5-0.5B"),
        hf_id="Qwen/Qwen2.5-0.5B",
        url="https://huggingface.co/Qwen/Qwen2.5-0.5B/blob/main/config.json",
        config=dict(
            model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
            num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
            max_position_embeddings=32768, tie_word_embeddings=True, torch_dtype="bfloat16",
        ),
    ),  # total 494,032,768 (meta build, transformers 5.23.0)
    dict(
        name="qwen2.5-1.5b",
        aliases=("qwen2.5-1.5b-base", "Qwen/Qwen2.5-1.5B"),
        hf_id="Qwen/Qwen2.5-1.5B",
        url="https://huggingface.co/Qwen/Qwen2.5-1.5B/blob/main/config.json",
        config=dict(
            model_type="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960,
            num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
            max_position_embeddings=131072, tie_word_embeddings=True, torch_dtype="bfloat16",
        ),
    ),  # total 1,543,714,304 (meta build, transformers 5.23.0)
    dict(
        name="qwen2.5-3b",
        aliases=("qwen2.5-3b-base", "Qwen/Qwen2.5-3B"),
        hf_id="Qwen/Qwen2.5-3B",
        url="https://huggingface.co/Qwen/Qwen2.5-3B/blob/main/config.json",
        config=dict(
            model_type="qwen2", vocab_size=151936, hidden_size=2048, intermediate_size=11008,
            num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2,
            max_position_embeddings=32768, tie_word_embeddings=True, torch_dtype="bfloat16",
        ),
    ),  # total 3,085,938,688 (meta build, transformers 5.23.0)
    dict(
        name="qwen2.5-7b",
        aliases=("qwen2.5-7b-base", "qwen2.5", "Qwen/Qwen2.5-7B"),
        hf_id="Qwen/Qwen2.5-7B",
        url="https://huggingface.co/Qwen/Qwen2.5-7B/blob/main/config.json",
        config=dict(
            model_type="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944,
            num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
            max_position_embeddings=131072, tie_word_embeddings=False, torch_dtype="bfloat16",
        ),
    ),  # total 7,615,616,512 (meta build, transformers 5.23.0)
    dict(
        name="qwen2.5-14b",
        aliases=("qwen2.5-14b-base", "Qwen/Qwen2.5-14B"),
        hf_id="Qwen/Qwen2.5-14B",
        url="https://huggingface.co/Qwen/Qwen2.5-14B/blob/main/config.json",
        config=dict(
            model_type="qwen2", vocab_size=152064, hidden_size=5120, intermediate_size=13824,
            num_hidden_layers=48, num_attention_heads=40, num_key_value_heads=8,
            max_position_embeddings=131072, tie_word_embeddings=False, torch_dtype="bfloat16",
        ),
    ),  # total 14,770,033,664 (meta build, transformers 5.23.0)
    dict(
        name="qwen2.5-32b",
        aliases=("qwen2.5-32b-base", "Qwen/Qwen2.5-32B"),
        hf_id="Qwen/Qwen2.5-32B",
        url="https://huggingface.co/Qwen/Qwen2.5-32B/blob/main/config.json",
        config=dict(
            model_type="qwen2", vocab_size=152064, hidden_size=5120, intermediate_size=27648,
            num_hidden_layers=64, num_attention_heads=40, num_key_value_heads=8,
            max_position_embeddings=131072, tie_word_embeddings=False, torch_dtype="bfloat16",
        ),
    ),  # total 32,763,876,352 (meta build, transformers 5.23.0)
    dict(
        name="qwen2.5-72b",
        aliases=("qwen2.5-72b-base", "Qwen/Qwen2.5-72B"),
        hf_id="Qwen/Qwen2.5-72B",
        url="https://huggingface.co/Qwen/Qwen2.5-72B/blob/main/config.json",
        config=dict(
            model_type="qwen2", vocab_size=152064, hidden_size=8192, intermediate_size=29568,
            num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8,
            max_position_embeddings=131072, tie_word_embeddings=False, torch_dtype="bfloat16",
        ),
    ),  # total 72,706,203,648 (meta build, transformers 5.23.0)
    # ------------------------------------------------------------------------------------------
    # Qwen3 (explicit head_dim, per-head q/k RMSNorm, no q/k/v biases)
    # ------------------------------------------------------------------------------------------
    dict(
        name="qwen3-8b",
        aliases=("qwen3", "Qwen/Qwen3-8B"),
        hf_id="Qwen/Qwen3-8B",
        url="https://huggingface.co/Qwen/Qwen3-8B/blob/main/config.json",
        config=dict(
            model_type="qwen3", vocab_size=151936, hidden_size=4096, intermediate_size=12288,
            num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
            max_position_embeddings=40960, attention_bias=False, tie_word_embeddings=False,
            torch_dtype="bfloat16",
        ),
    ),  # total 8,190,735,360 (meta build, transformers 5.23.0)
    # ------------------------------------------------------------------------------------------
    # Google Gemma (head_dim 256 independent of hidden_size; GeGLU MLP). The config.json files
    # have no tie_word_embeddings key: GemmaConfig / Gemma2Config default it to True, and the
    # checkpoints rely on that (they ship no lm_head weight; gemma-7b's published 8,537,680,896
    # only comes out with tying).
    # ------------------------------------------------------------------------------------------
    dict(
        name="gemma-2b",
        aliases=("google/gemma-2b",),
        hf_id="google/gemma-2b",
        url="https://huggingface.co/google/gemma-2b/blob/main/config.json",
        config=dict(
            model_type="gemma", vocab_size=256000, hidden_size=2048, intermediate_size=16384,
            num_hidden_layers=18, num_attention_heads=8, num_key_value_heads=1, head_dim=256,
            max_position_embeddings=8192, attention_bias=False, torch_dtype="bfloat16",
        ),
    ),  # total 2,506,172,416 (meta build, transformers 5.23.0)
    dict(
        name="gemma-7b",
        aliases=("gemma", "google/gemma-7b"),
        hf_id="google/gemma-7b",
        url="https://huggingface.co/google/gemma-7b/blob/main/config.json",
        config=dict(
            model_type="gemma", vocab_size=256000, hidden_size=3072, intermediate_size=24576,
            num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=16, head_dim=256,
            max_position_embeddings=8192, attention_bias=False, torch_dtype="bfloat16",
        ),
    ),  # total 8,537,680,896 (meta build, transformers 5.23.0)
    dict(
        name="gemma2-2b",
        aliases=("gemma-2-2b", "google/gemma-2-2b"),
        hf_id="google/gemma-2-2b",
        url="https://huggingface.co/google/gemma-2-2b/blob/main/config.json",
        config=dict(
            model_type="gemma2", vocab_size=256000, hidden_size=2304, intermediate_size=9216,
            num_hidden_layers=26, num_attention_heads=8, num_key_value_heads=4, head_dim=256,
            max_position_embeddings=8192, attention_bias=False, torch_dtype="float32",
        ),
    ),  # total 2,614,341,888 (meta build, transformers 5.23.0)
    dict(
        name="gemma2-9b",
        aliases=("gemma-2-9b", "gemma2", "google/gemma-2-9b"),
        hf_id="google/gemma-2-9b",
        url="https://huggingface.co/google/gemma-2-9b/blob/main/config.json",
        config=dict(
            model_type="gemma2", vocab_size=256000, hidden_size=3584, intermediate_size=14336,
            num_hidden_layers=42, num_attention_heads=16, num_key_value_heads=8, head_dim=256,
            max_position_embeddings=8192, attention_bias=False, torch_dtype="float32",
        ),
    ),  # total 9,241,705,984 (meta build, transformers 5.23.0)
    dict(
        name="gemma2-27b",
        aliases=("gemma-2-27b", "google/gemma-2-27b"),
        hf_id="google/gemma-2-27b",
        url="https://huggingface.co/google/gemma-2-27b/blob/main/config.json",
        config=dict(
            model_type="gemma2", vocab_size=256000, hidden_size=4608, intermediate_size=36864,
            num_hidden_layers=46, num_attention_heads=32, num_key_value_heads=16, head_dim=128,
            # torch_dtype as remembered for the base 27B release (float32 like the 2B and 9B, whose
            # stored copies say so); no stored copy of this one file was found to confirm it.
            max_position_embeddings=8192, attention_bias=False, torch_dtype="float32",
        ),
    ),  # total 27,227,128,320 (meta build, transformers 5.23.0)
    # ------------------------------------------------------------------------------------------
    # Microsoft Phi (Phi-2: parallel block, LayerNorm, biases everywhere, partial rotary;
    # Phi-3: Llama-like with fused qkv and gate_up projections)
    # ------------------------------------------------------------------------------------------
    dict(
        name="phi-2",
        aliases=("phi2", "microsoft/phi-2"),
        hf_id="microsoft/phi-2",
        url="https://huggingface.co/microsoft/phi-2/blob/main/config.json",
        config=dict(
            model_type="phi", vocab_size=51200, hidden_size=2560, intermediate_size=10240,
            num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
            partial_rotary_factor=0.4, qk_layernorm=False, max_position_embeddings=2048,
            tie_word_embeddings=False, torch_dtype="float16",
        ),
    ),  # total 2,779,683,840 (meta build, transformers 5.23.0)
    dict(
        name="phi-1.5",
        aliases=("phi-1_5", "phi1.5", "microsoft/phi-1_5"),
        hf_id="microsoft/phi-1_5",
        url="https://huggingface.co/microsoft/phi-1_5/blob/main/config.json",
        config=dict(
            model_type="phi", vocab_size=51200, hidden_size=2048, intermediate_size=8192,
            num_hidden_layers=24, num_attention_heads=32, num_key_value_heads=32,
            partial_rotary_factor=0.5, qk_layernorm=False, max_position_embeddings=2048,
            tie_word_embeddings=False, torch_dtype="float16",
        ),
    ),
    dict(
        name="phi3-mini",
        aliases=("phi-3-mini", "phi3-mini-4k", "phi-3-mini-4k-instruct", "phi3",
                 "microsoft/Phi-3-mini-4k-instruct"),
        hf_id="microsoft/Phi-3-mini-4k-instruct",
        url="https://huggingface.co/microsoft/Phi-3-mini-4k-instruct/blob/main/config.json",
        config=dict(
            model_type="phi3", vocab_size=32064, hidden_size=3072, intermediate_size=8192,
            num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
            max_position_embeddings=4096, attention_bias=False, tie_word_embeddings=False,
            torch_dtype="bfloat16", sliding_window=2047,  # config.json's: every layer slides
        ),
    ),  # total 3,821,079,552 (meta build, transformers 5.23.0)
    # ------------------------------------------------------------------------------------------
    # EleutherAI Pythia (GPT-NeoX: parallel residual, LayerNorm, biases on every linear,
    # 25% rotary). The config.json files have no attention_bias key: GPTNeoXConfig defaults it
    # to True, which the checkpoints rely on (they ship q/k/v and dense biases).
    # ------------------------------------------------------------------------------------------
    dict(
        name="stablelm-base-alpha-3b",
        aliases=("stablelm-alpha-3b", "stabilityai/stablelm-base-alpha-3b"),
        hf_id="stabilityai/stablelm-base-alpha-3b",
        url="https://huggingface.co/stabilityai/stablelm-base-alpha-3b/blob/main/config.json",
        config=dict(
            model_type="gpt_neox", vocab_size=50688, hidden_size=4096, intermediate_size=16384,
            num_hidden_layers=16, num_attention_heads=32, max_position_embeddings=4096,
            rotary_pct=0.25, use_parallel_residual=True, tie_word_embeddings=False,
            torch_dtype="float16",
        ),
    ),  # StableLM-Alpha is a GPT-NeoX model (GPTNeoXForCausalLM in its config.json)
    dict(
        name="pythia-160m",
        aliases=("EleutherAI/pythia-160m",),
        hf_id="EleutherAI/pythia-160m",
        url="https://huggingface.co/EleutherAI/pythia-160m/blob/main/config.json",
        config=dict(
            model_type="gpt_neox", vocab_size=50304, hidden_size=768, intermediate_size=3072,
            num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=2048,
            rotary_pct=0.25, use_parallel_residual=True, tie_word_embeddings=False,
            torch_dtype="float16",
        ),
    ),  # total 162,322,944 (meta build, transformers 5.23.0)
    dict(
        name="pythia-410m",
        aliases=("EleutherAI/pythia-410m",),
        hf_id="EleutherAI/pythia-410m",
        url="https://huggingface.co/EleutherAI/pythia-410m/blob/main/config.json",
        config=dict(
            model_type="gpt_neox", vocab_size=50304, hidden_size=1024, intermediate_size=4096,
            num_hidden_layers=24, num_attention_heads=16, max_position_embeddings=2048,
            rotary_pct=0.25, use_parallel_residual=True, tie_word_embeddings=False,
            torch_dtype="float16",
        ),
    ),  # total 405,334,016 (meta build, transformers 5.23.0)
    dict(
        name="pythia-1b",
        aliases=("EleutherAI/pythia-1b",),
        hf_id="EleutherAI/pythia-1b",
        url="https://huggingface.co/EleutherAI/pythia-1b/blob/main/config.json",
        config=dict(
            model_type="gpt_neox", vocab_size=50304, hidden_size=2048, intermediate_size=8192,
            num_hidden_layers=16, num_attention_heads=8, max_position_embeddings=2048,
            rotary_pct=0.25, use_parallel_residual=True, tie_word_embeddings=False,
            torch_dtype="float16",
        ),
    ),  # total 1,011,781,632 (meta build, transformers 5.23.0)
    dict(
        name="pythia-2.8b",
        aliases=("EleutherAI/pythia-2.8b",),
        hf_id="EleutherAI/pythia-2.8b",
        url="https://huggingface.co/EleutherAI/pythia-2.8b/blob/main/config.json",
        config=dict(
            model_type="gpt_neox", vocab_size=50304, hidden_size=2560, intermediate_size=10240,
            num_hidden_layers=32, num_attention_heads=32, max_position_embeddings=2048,
            rotary_pct=0.25, use_parallel_residual=True, tie_word_embeddings=False,
            torch_dtype="float16",
        ),
    ),  # total 2,775,208,960 (meta build, transformers 5.23.0)
    dict(
        name="pythia-6.9b",
        aliases=("EleutherAI/pythia-6.9b",),
        hf_id="EleutherAI/pythia-6.9b",
        url="https://huggingface.co/EleutherAI/pythia-6.9b/blob/main/config.json",
        config=dict(
            model_type="gpt_neox", vocab_size=50432, hidden_size=4096, intermediate_size=16384,
            num_hidden_layers=32, num_attention_heads=32, max_position_embeddings=2048,
            rotary_pct=0.25, use_parallel_residual=True, tie_word_embeddings=False,
            torch_dtype="float16",
        ),
    ),  # total 6,857,302,016 (meta build, transformers 5.23.0)
    dict(
        name="pythia-12b",
        aliases=("EleutherAI/pythia-12b",),
        hf_id="EleutherAI/pythia-12b",
        url="https://huggingface.co/EleutherAI/pythia-12b/blob/main/config.json",
        config=dict(
            model_type="gpt_neox", vocab_size=50688, hidden_size=5120, intermediate_size=20480,
            num_hidden_layers=36, num_attention_heads=40, max_position_embeddings=2048,
            rotary_pct=0.25, use_parallel_residual=True, tie_word_embeddings=False,
            torch_dtype="float16",
        ),
    ),  # total 11,846,072,320 (meta build, transformers 5.23.0)
    # ------------------------------------------------------------------------------------------
    # TII Falcon (multi-query attention, parallel attention/MLP, no biases). The config.json has
    # no tie_word_embeddings or max_position_embeddings key: FalconConfig defaults them to True
    # and 2048; the checkpoint relies on the tying (no separate lm_head weight; the published
    # 6,921,720,704 only comes out tied).
    # ------------------------------------------------------------------------------------------
    dict(
        name="falcon-7b",
        aliases=("falcon", "tiiuae/falcon-7b"),
        hf_id="tiiuae/falcon-7b",
        url="https://huggingface.co/tiiuae/falcon-7b/blob/main/config.json",
        config=dict(
            model_type="falcon", vocab_size=65024, hidden_size=4544, num_hidden_layers=32,
            num_attention_heads=71, multi_query=True, new_decoder_architecture=False,
            parallel_attn=True, bias=False, alibi=False, torch_dtype="bfloat16",
        ),
    ),  # total 6,921,720,704 (meta build, transformers 5.23.0)
    # ------------------------------------------------------------------------------------------
    # TinyLlama (Llama-2 architecture with GQA, 22 layers)
    # ------------------------------------------------------------------------------------------
    dict(
        name="tinyllama-1.1b",
        aliases=("tinyllama", "tinyllama-1.1b-chat", "TinyLlama/TinyLlama-1.1B-Chat-v1.0"),
        hf_id="TinyLlama/TinyLlama-1.1B-Chat-v1.0",
        url="https://huggingface.co/TinyLlama/TinyLlama-1.1B-Chat-v1.0/blob/main/config.json",
        config=dict(
            model_type="llama", vocab_size=32000, hidden_size=2048, intermediate_size=5632,
            num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
            max_position_embeddings=2048, attention_bias=False, tie_word_embeddings=False,
            torch_dtype="bfloat16",
        ),
    ),  # total 1,100,048,384 (meta build, transformers 5.23.0)
    # ------------------------------------------------------------------------------------------
    # Stability AI StableLM (LayerNorm, 25% rotary; StableLM-2 adds q/k/v biases). Neither
    # config.json has use_parallel_residual or qk_layernorm keys: StableLmConfig defaults both to
    # False, which is what these checkpoints use.
    # ------------------------------------------------------------------------------------------
    dict(
        name="stablelm-3b",
        aliases=("stablelm-3b-4e1t", "stabilityai/stablelm-3b-4e1t"),
        hf_id="stabilityai/stablelm-3b-4e1t",
        url="https://huggingface.co/stabilityai/stablelm-3b-4e1t/blob/main/config.json",
        config=dict(
            model_type="stablelm", vocab_size=50304, hidden_size=2560, intermediate_size=6912,
            num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
            partial_rotary_factor=0.25, use_qkv_bias=False, max_position_embeddings=4096,
            tie_word_embeddings=False, torch_dtype="bfloat16",
        ),
    ),  # total 2,795,443,200 (meta build, transformers 5.23.0)
    dict(
        name="stablelm2-1.6b",
        aliases=("stablelm-2-1.6b", "stablelm-2-1_6b", "stabilityai/stablelm-2-1_6b"),
        hf_id="stabilityai/stablelm-2-1_6b",
        url="https://huggingface.co/stabilityai/stablelm-2-1_6b/blob/main/config.json",
        config=dict(
            model_type="stablelm", vocab_size=100352, hidden_size=2048, intermediate_size=5632,
            num_hidden_layers=24, num_attention_heads=32, num_key_value_heads=32,
            partial_rotary_factor=0.25, use_qkv_bias=True, max_position_embeddings=4096,
            tie_word_embeddings=False, torch_dtype="float16",
        ),
    ),  # total 1,644,515,328 (meta build, transformers 5.23.0)
    # ------------------------------------------------------------------------------------------
    # OpenAI GPT-2 (learned positions, LayerNorm, biases, Conv1D layers, MLP of 4 * n_embd).
    # The config.json files have no n_inner, tie_word_embeddings or torch_dtype key: GPT2Config
    # defaults n_inner to None (4 * n_embd) and tie_word_embeddings to True; the checkpoints
    # rely on both (no lm_head weight is stored; the published 124,439,808 only comes out tied).
    # ------------------------------------------------------------------------------------------
    dict(
        name="gpt2",
        aliases=("gpt2-small", "gpt-2", "openai-community/gpt2"),
        hf_id="openai-community/gpt2",
        url="https://huggingface.co/openai-community/gpt2/blob/main/config.json",
        config=dict(
            model_type="gpt2", vocab_size=50257, n_embd=768, n_layer=12, n_head=12,
            n_positions=1024, n_ctx=1024,
        ),
    ),  # total 124,439,808 (meta build, transformers 5.23.0)
    dict(
        name="gpt2-medium",
        aliases=("gpt-2-medium", "openai-community/gpt2-medium"),
        hf_id="openai-community/gpt2-medium",
        url="https://huggingface.co/openai-community/gpt2-medium/blob/main/config.json",
        config=dict(
            model_type="gpt2", vocab_size=50257, n_embd=1024, n_layer=24, n_head=16,
            n_positions=1024, n_ctx=1024,
        ),
    ),  # total 354,823,168 (meta build, transformers 5.23.0)
    dict(
        name="gpt2-large",
        aliases=("gpt-2-large", "openai-community/gpt2-large"),
        hf_id="openai-community/gpt2-large",
        url="https://huggingface.co/openai-community/gpt2-large/blob/main/config.json",
        config=dict(
            model_type="gpt2", vocab_size=50257, n_embd=1280, n_layer=36, n_head=20,
            n_positions=1024, n_ctx=1024,
        ),
    ),  # total 774,030,080 (meta build, transformers 5.23.0)
    dict(
        name="gpt2-xl",
        aliases=("gpt-2-xl", "openai-community/gpt2-xl"),
        hf_id="openai-community/gpt2-xl",
        url="https://huggingface.co/openai-community/gpt2-xl/blob/main/config.json",
        config=dict(
            model_type="gpt2", vocab_size=50257, n_embd=1600, n_layer=48, n_head=25,
            n_positions=1024, n_ctx=1024,
        ),
    ),  # total 1,557,611,200 (meta build, transformers 5.23.0)
]
