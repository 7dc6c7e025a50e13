"""fvtrain: function vectors distilled from frozen language models, fine-tuned, composed and
compared with human judgments."""

__version__ = "0.1.0"
