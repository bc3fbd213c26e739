"""Build the transformers Gemma4Processor from a model directory without torchvision.

The Gemma 4 processor insists on a video processor, which needs torchvision; torchvision has
no release for our pinned torch. Video is out of scope, so we construct the processor with no
video processor and skip only that one type check. Images go through the PIL image processor,
which is the transformers reference path we match.
"""

from pathlib import Path

from transformers import AutoTokenizer, Gemma4AudioFeatureExtractor, Gemma4Processor
from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

_check = Gemma4Processor.check_argument_for_proper_class


def _check_allowing_no_video(self, name, arg):
    if name == "video_processor" and arg is None:
        return None
    return _check(self, name, arg)


Gemma4Processor.check_argument_for_proper_class = _check_allowing_no_video


def load_processor(model_dir: Path) -> Gemma4Processor:
    model_dir = Path(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    image_processor = Gemma4ImageProcessorPil.from_pretrained(model_dir)
    chat_template = (model_dir / "chat_template.jinja").read_text()
    return Gemma4Processor(
        feature_extractor=Gemma4AudioFeatureExtractor(),
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=None,
        chat_template=chat_template,
        image_seq_length=image_processor.max_soft_tokens,
    )
