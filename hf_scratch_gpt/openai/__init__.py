"""Import of OpenAI's original GPT-2 TensorFlow checkpoints: download, name mapping, conversion, tokenizer.

Importing this package never imports TensorFlow; only `checkpoint.py` does, when a checkpoint is opened.
"""
