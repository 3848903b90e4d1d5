"""The local training backend: a tiny chat model made on the spot, the demo task, and the glue
that turns Nova-format data and reward functions into what the Hugging Face trainers take.

Every module here imports torch, transformers, peft and tokenizers inside the functions that
need them, so importing the package stays cheap.
"""
