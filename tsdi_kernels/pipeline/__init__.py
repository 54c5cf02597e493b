"""The TSDI pipeline above the kernels: BiasTable (running statistics and their file), random prompts,
streaming estimation, data-parallel merging. Needs torch (and numpy, safetensors, tqdm where used); no
transformers import: models and tokenizers are passed in."""
