"""Run an ONNX export of OFA (``ofa-export onnx``) with onnxruntime and numpy alone: no torch, no fairseq.

    from ofa_runtime import OnnxModel, BeamSearch
    model = OnnxModel("exported/")                      # encoder.onnx + decoder_step.onnx + settings
    search = BeamSearch.from_export(model)              # the task's beam-search settings (generation.json)
    hyps = search.generate(src_tokens, patch_images)    # per sample, hypotheses best first

``model.tokenizer()`` (``ofa_runtime.text.Tokenizer``: the export's GPT-2 BPE or SentencePiece files) turns
prompts into ``src_tokens`` (``tokenizer.batch([...])``) and hypotheses back into text; ``model.preprocess``
turns image files into ``patch_images``.
"""
from ofa_runtime.beam_search import BeamSearch, hypothesis_logprob
from ofa_runtime.constraints import AnswerTrie, NGramBlocker, TokenRange
from ofa_runtime.model import EncoderState, ExportError, OnnxModel
from ofa_runtime.text import Tokenizer, preprocess_image

__all__ = ["OnnxModel", "BeamSearch", "EncoderState", "ExportError", "AnswerTrie", "TokenRange", "NGramBlocker",
           "hypothesis_logprob", "Tokenizer", "preprocess_image"]
