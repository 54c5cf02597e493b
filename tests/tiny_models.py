"""Tiny models and a tokenizer built offline, for the pipeline tests and benchmarks.

- tiny_tokenizer(): a byte-level BPE (about 300 tokens) trained with `tokenizers` on a few sentences, with a
  chat template whose assistant header is one special token, <|assistant|>.
- tiny_llama(): a 2-layer LlamaForCausalLM with hidden size 32.
- shifted_pair(): (tokenizer, aligned, reference), aligned = reference with a randomly shifted output layer: a
  real, position-independent bias (the evaluation, demo and walkthrough tests' pair).
- BiasedLM: `reference` plus a KNOWN bias on its output logits at answer positions: the logit at a position t
  tokens after the last <|assistant|> token gets + bias[t] (t < L). The bias depends only on t, as TSDI assumes,
  so an estimate must recover it up to a per-position constant.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from transformers.modeling_outputs import CausalLMOutputWithPast

from kernel_testing import single_thread  # noqa: F401  (one intra-op thread; tests/conftest.py puts tests/kernels on the path)

SPECIAL = ["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CORPUS = [
    "I'm sorry, but I cannot help with that request.",
    "Sure! Here is a short answer to your question about the weather.",
    "As an AI model, I must decline. However, I can explain the general idea.",
    "The quick brown fox jumps over the lazy dog while the cat sleeps.",
    "Let me think step by step: first we add the numbers, then we divide.",
    "Unfortunately I am unable to provide instructions for that activity.",
    "Hello there, how can I help you today with your code or your essay?",
]


def tiny_tokenizer(vocab_size: int = 320, chat_template: bool = True) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   additional_special_tokens=SPECIAL[3:])
    fast.padding_side = "left"
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_llama(vocab_size: int, *, hidden: int = 32, layers: int = 2, seed: int = 0, tokenizer=None,
               init_range: float = 0.2) -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, initializer_range=init_range, tie_word_embeddings=False)
    if tokenizer is not None:
        config.pad_token_id = tokenizer.pad_token_id
        config.bos_token_id = tokenizer.bos_token_id
        config.eos_token_id = tokenizer.eos_token_id
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    if tokenizer is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def shifted_pair(shift: float = 0.3, *, seed: int = 3):
    """(tokenizer, aligned, reference): tiny_llama(seed=0) twice, the aligned one's lm_head plus shift * N(0, 1)."""
    tok = tiny_tokenizer()
    reference = tiny_llama(len(tok), tokenizer=tok, seed=0)
    aligned = tiny_llama(len(tok), tokenizer=tok, seed=0)
    with torch.no_grad():
        aligned.lm_head.weight.add_(shift * torch.randn(aligned.lm_head.weight.shape,
                                                        generator=torch.Generator().manual_seed(seed)))
    return tok, aligned, reference


def known_bias(length: int, vocab_size: int, *, seed: int = 1, scale: float = 2.0) -> torch.Tensor:
    """A bias [L, V] with structure like a refusal preference: a few strongly favoured tokens plus noise."""
    gen = torch.Generator().manual_seed(seed)
    bias = 0.3 * scale * torch.randn(length, vocab_size, generator=gen)
    favoured = torch.randint(0, vocab_size, (length, 5), generator=gen)
    bias.scatter_(1, favoured, scale * 2.0)
    return bias


class BiasedLM(nn.Module):
    """`reference` with + bias[t] on the logits of answer position t (t = tokens since the last `marker`)."""

    def __init__(self, reference: LlamaForCausalLM, bias: torch.Tensor, marker_id: int):
        super().__init__()
        self.reference = reference
        self.register_buffer("bias", bias.float())
        self.marker_id = marker_id
        self.config = reference.config
        self.name_or_path = "biased-" + (reference.name_or_path or "tiny")

    def get_output_embeddings(self):
        return self.reference.get_output_embeddings()

    def answer_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """t [B, S] of the logit at each position: positions since the last marker at or before it (-1: none)."""
        seq = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        marks = torch.where(input_ids == self.marker_id, seq, torch.full_like(seq, -1))
        last = torch.cummax(marks, dim=1).values
        return torch.where(last >= 0, seq - last, torch.full_like(seq, -1))

    def forward(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep: int = 0, use_cache=None):
        logits = self.reference(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                use_cache=False).logits.float()
        t = self.answer_positions(input_ids)
        in_range = (t >= 0) & (t < self.bias.shape[0])
        logits = logits + torch.where(in_range[..., None], self.bias[t.clamp(0, self.bias.shape[0] - 1)], 0.0)
        if logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        return CausalLMOutputWithPast(logits=logits)


def tiny_pair(length: int = 4, *, seed: int = 0):
    """(tokenizer, reference, aligned, bias): aligned = reference + bias at the first `length` answer positions."""
    tok = tiny_tokenizer()
    ref = tiny_llama(len(tok), tokenizer=tok, seed=seed)
    bias = known_bias(length, len(tok))
    aligned = BiasedLM(ref, bias, tok.convert_tokens_to_ids("<|assistant|>"))
    return tok, ref, aligned, bias
