"""Third-party architectures built offline at tiny sizes: Hugging Face ``transformers``
families from configs, and classic PyTorch networks nobody in this project wrote.

Each entry builds ``(model, inputs)``; the model is random (no download), the inputs are a
short token sequence, an image or a waveform.
"""

from __future__ import annotations

import torch

TEXT = dict(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
            max_position_embeddings=64)
LLAMA_LIKE = dict(TEXT, num_key_value_heads=1, head_dim=8)
SEQ2SEQ = dict(vocab_size=64, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
               decoder_attention_heads=2, encoder_ffn_dim=24, decoder_ffn_dim=24, max_position_embeddings=64,
               pad_token_id=1, decoder_start_token_id=2, eos_token_id=2, bos_token_id=0)
VISION = dict(image_size=16, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=2,
              num_attention_heads=2, intermediate_size=24)

#: name -> (model_type, config kwargs, input kind)
HF: dict[str, tuple[str, dict, str]] = {
    # decoders
    "gpt2": ("gpt2", dict(vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=64), "lm"),
    "gpt_neo": ("gpt_neo", dict(vocab_size=64, hidden_size=16, num_layers=2, num_heads=2, max_position_embeddings=64,
                                attention_types=[[["global", "local"], 1]], window_size=4), "lm"),
    "gptj": ("gptj", dict(vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=64, rotary_dim=4), "lm"),
    "gpt_neox": ("gpt_neox", dict(TEXT), "lm"),
    "gpt_bigcode": ("gpt_bigcode", dict(vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=64), "lm"),
    "codegen": ("codegen", dict(vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=64, rotary_dim=4,
                                n_ctx=64), "lm"),
    "opt": ("opt", dict(TEXT, ffn_dim=24, word_embed_proj_dim=16), "lm"),
    "opt_project": ("opt", dict(TEXT, ffn_dim=24, word_embed_proj_dim=8), "lm"),
    "bloom": ("bloom", dict(vocab_size=64, hidden_size=16, n_layer=2, n_head=2), "lm"),
    "llama": ("llama", dict(LLAMA_LIKE), "lm"),
    "mistral": ("mistral", dict(LLAMA_LIKE), "lm"),
    "qwen2": ("qwen2", dict(LLAMA_LIKE), "lm"),
    "qwen3": ("qwen3", dict(LLAMA_LIKE), "lm"),
    "gemma": ("gemma", dict(LLAMA_LIKE), "lm"),
    "gemma2": ("gemma2", dict(LLAMA_LIKE), "lm"),
    "phi": ("phi", dict(TEXT), "lm"),
    "phi3": ("phi3", dict(LLAMA_LIKE, pad_token_id=1), "lm"),
    "stablelm": ("stablelm", dict(LLAMA_LIKE), "lm"),
    "persimmon": ("persimmon", dict(TEXT), "lm"),
    "olmo": ("olmo", dict(LLAMA_LIKE), "lm"),
    "olmo2": ("olmo2", dict(LLAMA_LIKE), "lm"),
    "starcoder2": ("starcoder2", dict(LLAMA_LIKE), "lm"),
    "cohere": ("cohere", dict(LLAMA_LIKE), "lm"),
    "granite": ("granite", dict(LLAMA_LIKE), "lm"),
    "falcon": ("falcon", dict(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2), "lm"),
    "biogpt": ("biogpt", dict(TEXT), "lm"),
    "xglm": ("xglm", dict(vocab_size=64, d_model=16, num_layers=2, attention_heads=2, ffn_dim=24,
                          max_position_embeddings=64), "lm"),
    "deepseek_v3": ("deepseek_v3", dict(TEXT, num_key_value_heads=2, n_routed_experts=4, num_experts_per_tok=2,
                                        n_group=1, topk_group=1, moe_intermediate_size=8, first_k_dense_replace=1,
                                        q_lora_rank=8, kv_lora_rank=8, qk_rope_head_dim=4, qk_nope_head_dim=4,
                                        v_head_dim=8, n_shared_experts=1), "lm"),
    "phimoe": ("phimoe", dict(LLAMA_LIKE, num_local_experts=4, num_experts_per_tok=2), "lm"),
    "gpt_oss": ("gpt_oss", dict(LLAMA_LIKE, num_local_experts=4, num_experts_per_tok=2, sliding_window=4,
                                layer_types=["full_attention", "sliding_attention"]), "lm"),
    "jetmoe": ("jetmoe", dict(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_key_value_heads=1, kv_channels=8,
                              intermediate_size=24, num_local_experts=2, num_experts_per_tok=1), "lm"),
    "mixtral": ("mixtral", dict(LLAMA_LIKE, num_local_experts=3, num_experts_per_tok=2), "lm"),
    "qwen2_moe": ("qwen2_moe", dict(LLAMA_LIKE, num_experts=3, num_experts_per_tok=2, moe_intermediate_size=12,
                                    shared_expert_intermediate_size=20), "lm"),
    "qwen3_moe": ("qwen3_moe", dict(LLAMA_LIKE, num_experts=3, num_experts_per_tok=2, moe_intermediate_size=12), "lm"),
    # routing variants (issue 33): top-1, group-limited top-k with shared experts and sigmoid scores
    "qwen3_moe_top1": ("qwen3_moe", dict(LLAMA_LIKE, num_experts=3, num_experts_per_tok=1, moe_intermediate_size=12,
                                         norm_topk_prob=False), "lm"),
    "deepseek_v3_grouped": ("deepseek_v3", dict(TEXT, num_key_value_heads=2, n_routed_experts=4,
                                                num_experts_per_tok=2, n_group=2, topk_group=1,
                                                moe_intermediate_size=8, first_k_dense_replace=1, q_lora_rank=8,
                                                kv_lora_rank=8, qk_rope_head_dim=4, qk_nope_head_dim=4,
                                                v_head_dim=8, n_shared_experts=1), "lm"),
    "olmoe": ("olmoe", dict(LLAMA_LIKE, num_experts=3, num_experts_per_tok=2), "lm"),
    # encoders
    "bert": ("bert", dict(TEXT), "enc"),
    "roberta": ("roberta", dict(TEXT, pad_token_id=1), "enc"),
    "distilbert": ("distilbert", dict(vocab_size=64, dim=16, n_layers=2, n_heads=2, hidden_dim=24,
                                      max_position_embeddings=64), "enc"),
    "albert": ("albert", dict(TEXT, embedding_size=8), "enc"),
    "electra": ("electra", dict(TEXT, embedding_size=8), "enc"),
    "deberta": ("deberta", dict(TEXT), "enc"),
    "deberta_v2": ("deberta-v2", dict(TEXT, relative_attention=True, position_buckets=8,
                                      pos_att_type=["p2c", "c2p"]), "enc"),
    "xlm_roberta": ("xlm-roberta", dict(TEXT, pad_token_id=1), "enc"),
    "mpnet": ("mpnet", dict(TEXT), "enc"),
    "roformer": ("roformer", dict(TEXT, embedding_size=16), "enc"),
    "megatron_bert": ("megatron-bert", dict(TEXT), "enc"),
    "esm": ("esm", dict(TEXT, pad_token_id=1, position_embedding_type="rotary"), "enc"),
    "squeezebert": ("squeezebert", dict(TEXT, embedding_size=16, q_groups=2, k_groups=2, v_groups=2,
                                        post_attention_groups=2, intermediate_groups=2, output_groups=2), "enc"),
    "mobilebert": ("mobilebert", dict(TEXT, embedding_size=16, intra_bottleneck_size=8, true_hidden_size=8,
                                      num_feedforward_networks=2), "enc"),
    "funnel": ("funnel", dict(vocab_size=64, block_sizes=[1, 1], d_model=16, n_head=2, d_head=8, d_inner=24), "enc"),
    "xlnet": ("xlnet", dict(vocab_size=64, d_model=16, n_layer=2, n_head=2, d_inner=24), "enc"),
    "convbert": ("convbert", dict(TEXT, embedding_size=16, head_ratio=1, conv_kernel_size=3), "enc"),
    "layoutlm": ("layoutlm", dict(TEXT), "enc"),
    "fnet": ("fnet", dict(TEXT), "enc"),
    "nystromformer": ("nystromformer", dict(TEXT, num_landmarks=4, segment_means_seq_len=8), "enc"),
    "ernie": ("ernie", dict(TEXT), "enc"),
    # encoder-decoders
    "t5": ("t5", dict(vocab_size=64, d_model=16, d_kv=8, d_ff=24, num_layers=1, num_heads=2,
                      relative_attention_num_buckets=8, decoder_start_token_id=0), "s2s"),
    "bart": ("bart", dict(SEQ2SEQ), "s2s"),
    "mbart": ("mbart", dict(SEQ2SEQ), "s2s"),
    "marian": ("marian", dict(SEQ2SEQ), "s2s"),
    "pegasus": ("pegasus", dict(SEQ2SEQ), "s2s"),
    "blenderbot": ("blenderbot", dict(SEQ2SEQ), "s2s"),
    "m2m_100": ("m2m_100", dict(SEQ2SEQ), "s2s"),
    "switch": ("switch_transformers", dict(vocab_size=64, d_model=16, d_kv=8, d_ff=24, num_layers=2,
                                           num_decoder_layers=2, num_heads=2, num_experts=2,
                                           relative_attention_num_buckets=8, decoder_start_token_id=0,
                                           encoder_sparse_step=2, decoder_sparse_step=2), "s2s_long"),
    # capacity-limited top-1 routing: 4 experts, at most 16 tokens each (none dropped) or 2 (most dropped);
    # a long input reaches every expert, so the eager trace reads every parameter
    "switch_experts4": ("switch_transformers", dict(vocab_size=64, d_model=16, d_kv=8, d_ff=24, num_layers=1,
                                                    num_decoder_layers=1, num_heads=2, num_experts=4,
                                                    expert_capacity=16, relative_attention_num_buckets=8,
                                                    decoder_start_token_id=0, encoder_sparse_step=1,
                                                    decoder_sparse_step=1), "s2s_long"),
    "switch_dropping": ("switch_transformers", dict(vocab_size=64, d_model=16, d_kv=8, d_ff=24, num_layers=1,
                                                    num_decoder_layers=1, num_heads=2, num_experts=4,
                                                    expert_capacity=2, relative_attention_num_buckets=8,
                                                    decoder_start_token_id=0, encoder_sparse_step=1,
                                                    decoder_sparse_step=1), "s2s_long"),
    # vision
    "vit": ("vit", dict(VISION), "image"),
    "deit": ("deit", dict(VISION), "image"),
    "beit": ("beit", dict(VISION, use_relative_position_bias=True), "image"),
    "dinov2": ("dinov2", dict(VISION), "image"),
    "swin": ("swin", dict(image_size=16, patch_size=2, embed_dim=8, depths=[1, 1], num_heads=[2, 2],
                          window_size=2), "image"),
    "swinv2": ("swinv2", dict(image_size=16, patch_size=2, embed_dim=8, depths=[1, 1], num_heads=[2, 2],
                              window_size=2), "image"),
    "convnext": ("convnext", dict(num_channels=3, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2), "image"),
    "convnextv2": ("convnextv2", dict(num_channels=3, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2), "image"),
    "resnet": ("resnet", dict(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1]), "image"),
    "regnet": ("regnet", dict(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                              groups_width=4), "image"),
    "mobilenet_v1": ("mobilenet_v1", dict(num_channels=3, image_size=32, depth_multiplier=0.25), "image32"),
    "mobilenet_v2": ("mobilenet_v2", dict(num_channels=3, image_size=32, depth_multiplier=0.25), "image32"),
    "efficientnet": ("efficientnet", dict(num_channels=3, image_size=32, width_coefficient=0.1,
                                          depth_coefficient=0.1, hidden_dim=32), "image32"),
    "poolformer": ("poolformer", dict(num_channels=3, hidden_sizes=[8, 16], depths=[1, 1], num_encoder_blocks=2,
                                      patch_sizes=[3, 3], strides=[2, 2], padding=[1, 1], pool_size=3), "image"),
    "segformer": ("segformer", dict(num_channels=3, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1],
                                    hidden_sizes=[8, 16], patch_sizes=[3, 3], strides=[2, 2],
                                    num_attention_heads=[1, 2], mlp_ratios=[2, 2]), "image"),
    "mobilevit": ("mobilevit", dict(num_channels=3, image_size=32, hidden_sizes=[16, 20, 24],
                                    neck_hidden_sizes=[8, 8, 16, 16, 16, 24, 32]), "image32"),
    "levit": ("levit", dict(image_size=32, hidden_sizes=[16, 24, 32], num_attention_heads=[1, 2, 2],
                            depths=[1, 1, 1], key_dim=[8, 8, 8]), "image32"),
    "cvt": ("cvt", dict(embed_dim=[8, 16, 16], num_heads=[1, 2, 2], depth=[1, 1, 1]), "image32"),
    "bit": ("bit", dict(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_groups=2), "image"),
    "focalnet": ("focalnet", dict(image_size=16, patch_size=2, embed_dim=8, depths=[1, 1]), "image"),
    "yolos": ("yolos", dict(VISION, image_size=[16, 16], num_detection_tokens=2), "image"),
    "siglip_vision": ("siglip_vision_model", dict(VISION), "image"),
    "dpt": ("dpt", dict(VISION, neck_hidden_sizes=[8, 8, 8, 8], fusion_hidden_size=8,
                        backbone_out_indices=[0, 1, 1, 1], reassemble_factors=[4, 2, 1, 0.5]), "image"),
    "pvt": ("pvt", dict(image_size=32, num_encoder_blocks=2, depths=[1, 1], sequence_reduction_ratios=[2, 1],
                        hidden_sizes=[8, 16], patch_sizes=[4, 2], strides=[4, 2], num_attention_heads=[1, 2],
                        mlp_ratios=[2, 2]), "image32"),
    # audio
    "wav2vec2": ("wav2vec2", dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24,
                                  conv_dim=(8, 8), conv_stride=(5, 4), conv_kernel=(10, 8),
                                  num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2), "audio"),
    "hubert": ("hubert", dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24,
                              conv_dim=(8, 8), conv_stride=(5, 4), conv_kernel=(10, 8),
                              num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2), "audio"),
    "wavlm": ("wavlm", dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24,
                            conv_dim=(8, 8), conv_stride=(5, 4), conv_kernel=(10, 8), num_buckets=8,
                            num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2), "audio"),
    "data2vec_audio": ("data2vec-audio", dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                              intermediate_size=24, conv_dim=(8, 8), conv_stride=(5, 4),
                                              conv_kernel=(10, 8), num_conv_pos_embeddings=4,
                                              num_conv_pos_embedding_groups=2), "audio"),
    "sew": ("sew", dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24,
                        conv_dim=(8, 8), conv_stride=(5, 4), conv_kernel=(10, 8), squeeze_factor=1,
                        num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2), "audio"),
    "speech_to_text": ("speech_to_text", dict(SEQ2SEQ, input_feat_per_channel=8, input_channels=1, conv_channels=8,
                                              max_source_positions=32, max_target_positions=16), "s2t"),
    "whisper": ("whisper", dict(vocab_size=64, d_model=16, encoder_layers=1, decoder_layers=1,
                                encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=24,
                                decoder_ffn_dim=24, num_mel_bins=8, max_source_positions=8,
                                max_target_positions=16, decoder_start_token_id=1, pad_token_id=1), "whisper"),
    # state space / recurrent
    "mamba": ("mamba", dict(vocab_size=64, hidden_size=16, state_size=4, num_hidden_layers=2, expand=2,
                            conv_kernel=3, time_step_rank=4), "lm"),
    "mamba2": ("mamba2", dict(vocab_size=64, hidden_size=16, state_size=4, num_hidden_layers=2, expand=2, num_heads=4,
                              head_dim=8, n_groups=1, conv_kernel=3, chunk_size=4), "lm"),
    "recurrent_gemma": ("recurrent_gemma", dict(vocab_size=64, hidden_size=16, num_hidden_layers=2,
                                                num_attention_heads=2, num_key_value_heads=1, intermediate_size=24,
                                                lru_width=16, attention_window_size=8, conv1d_width=3, head_dim=8,
                                                block_types=["recurrent", "attention"]), "lm"),
    "rwkv": ("rwkv", dict(vocab_size=64, hidden_size=16, num_hidden_layers=2, attention_hidden_size=16,
                          intermediate_size=24, context_length=16), "lm"),
}


def hf_inputs(kind: str, config) -> tuple:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 60, (1, 8), generator=gen)
    if kind in ("lm", "enc"):
        return (ids,)
    if kind == "s2s":
        return (ids, None, ids[:, :5])  # input_ids, attention_mask, decoder_input_ids
    if kind == "s2s_long":
        long = torch.randint(3, 60, (1, 32), generator=gen)
        return (long, None, long[:, :16])
    if kind in ("image", "image32"):
        side = 16 if kind == "image" else 32
        return (torch.randn(1, 3, side, side, generator=gen, dtype=torch.float64),)
    if kind == "audio":
        return (torch.randn(1, 400, generator=gen, dtype=torch.float64),)
    if kind == "s2t":  # filterbank features (batch, time, features), then decoder tokens
        return (torch.randn(1, 16, 8, generator=gen, dtype=torch.float64), None, ids[:, :4])
    if kind == "whisper":
        return (torch.randn(1, 8, 16, generator=gen, dtype=torch.float64), None, ids[:, :4])
    raise ValueError(kind)


def build_hf(name: str):
    import transformers

    model_type, kwargs, kind = HF[name]
    config = transformers.AutoConfig.for_model(model_type, **kwargs)
    config._attn_implementation = "eager"
    if hasattr(config, "experts_implementation"):
        config.experts_implementation = "batched_mm"
    torch.manual_seed(0)
    model = transformers.AutoModel.from_config(config, attn_implementation="eager")
    model.config.use_cache = False
    return model, hf_inputs(kind, config)


#: PEFT LoRA adapters around transformers models: name -> (base model, target modules)
PEFT = {
    "peft_lora_gpt2": ("gpt2", ["c_attn", "c_fc"]),
    "peft_lora_bert": ("bert", ["query", "value", "intermediate.dense"]),
    "peft_lora_llama": ("llama", ["q_proj", "v_proj", "gate_proj"]),
}


def build_peft(name: str):
    import peft

    base, targets = PEFT[name]
    model, inputs = build_hf(base)
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=targets, lora_dropout=0.0)
    return peft.get_peft_model(model, config), inputs
