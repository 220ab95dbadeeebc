"""MultiMix inside the loops people already use. Each module imports its framework, so import the one you use:

- :mod:`multimix.integrations.lightning`: PyTorch Lightning (``pip install 'multimix[lightning]'``);
- :mod:`multimix.integrations.hf`: the Hugging Face Transformers ``Trainer`` (``pip install 'multimix[hf]'``).

A timm-style script needs no integration: ``multimix.models.adapt(timm.create_model(...))`` and a method
(``examples/timm_train.py``).
"""
