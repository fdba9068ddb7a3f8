"""The vLLM rollout backend (extra ``cropi[vllm]``, a CUDA GPU): the same trajectory store as the built-in sampler.

What makes its stored log-probs the behaviour log-probs cropi needs:
- the engine runs with ``logprobs_mode="processed_logprobs"`` (an engine argument, ``LLM(...)``, not a
  ``SamplingParams`` field).  vLLM's default ``raw_logprobs`` is log-softmax(logits), the T = 1 distribution;
  the processed ones are log-softmax(logits / T) after temperature and top-k / top-p.  Before vLLM 0.10.2 the
  "processed" log-probs were taken before the temperature was applied, hence the extra's lower bound;
- ``top_p = 1`` and ``top_k`` off, so nothing is renormalised over a nucleus (``top_p < 1`` is refused);
- ``logprobs = 0``: only the sampled token's log-prob comes back;
- one seed per request, ``key_seed(seed, prompt id, sample index)``, the key the built-in sampler draws from,
  so a row's seed does not depend on its batch, shard or resume (its tokens still depend on vLLM's kernels:
  a vLLM store is reproducible with vLLM, not equal to an ``hf`` store).

Prompts go in as token ids from ``policy.encode_prompt`` (the engine never tokenizes: ``skip_tokenizer_init``).
Stopping follows the built-in sampler: at the policy's end-of-sequence ids, passed as ``stop_token_ids`` with
``ignore_eos`` so that the engine's own notion of EOS adds nothing.  vLLM keeps a stop token in
``CompletionOutput.token_ids`` (only its text is dropped), as the built-in sampler keeps it in the response;
finish reasons are read off the tokens ("stop": the response ends with an end-of-sequence id, else "length"), since
vLLM versions disagree on which wins when the last allowed token is an EOS.

The engine samples the policy's *current* weights: they are written (``save_pretrained``) to a temporary folder
that vLLM loads, and the engine is keyed on the weights' fingerprint passed with each ``generate`` (the one the
store records; computed afresh when none is passed), so it is rebuilt when the weights change (training, a
curriculum refresh).  One engine is kept per process; ``close()`` (``close_engine``) shuts it down, which
``collect`` does when it built the backend itself, so scoring and training get the GPU memory back.
``CROPI_VLLM_ENGINE_ARGS`` (a JSON object) adds or overrides ``LLM(...)`` arguments, e.g.
``{"gpu_memory_utilization": 0.3, "enforce_eager": true}``.

``identity()`` (recorded in the store's meta) is the vLLM version and every engine argument, dtype included,
except those in ``CAPACITY_ARGS``: they size memory and batches, so a resumed collection on another GPU may need
other values.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any, Sequence

from cropi.errors import CropiError
from cropi.extras import require
from cropi.policy import Policy, model_fingerprint
from cropi.rollouts.sampler import Generation, SamplingParams, key_seed

LOGPROBS_MODE = "processed_logprobs"
ENGINE_ARGS_ENV = "CROPI_VLLM_ENGINE_ARGS"
# The engine shares the GPU with the policy cropi trains and scores with: leave it room by default.
DEFAULT_ENGINE_ARGS: dict[str, Any] = {"gpu_memory_utilization": 0.5}
# Engine arguments left out of a store's identity: they size memory and batches.  Another size can change which
# requests share a batch (vLLM's kernels are not promised batch-invariant), a difference accepted so that a
# collection can resume on another GPU.
CAPACITY_ARGS = frozenset({"gpu_memory_utilization", "kv_cache_memory_bytes", "swap_space", "cpu_offload_gb",
                           "max_num_seqs", "max_num_batched_tokens", "disable_log_stats"})


def request_seed(key: Sequence) -> int:
    """vLLM's seed for the row keyed (seed, prompt id, sample index): the built-in sampler's per-row key seed."""
    return key_seed(*key)


def sampling_kwargs(params: SamplingParams, key: Sequence, eos_token_ids: Sequence[int]) -> dict[str, Any]:
    """Keyword arguments of ``vllm.SamplingParams`` for one row (see the module docstring for each choice)."""
    if params.greedy:
        raise CropiError("the vllm backend samples; greedy decoding is done by the built-in sampler")
    if params.top_p != 1.0:
        raise CropiError(f"top_p={params.top_p}: the vllm backend needs top_p = 1 (its processed log-probs are "
                         "renormalised over the nucleus, the stored ones must be of the full softmax)")
    if not eos_token_ids:
        raise CropiError("the policy has no end-of-sequence token id to stop at")
    return {
        "n": 1,
        "temperature": float(params.temperature),
        "top_p": 1.0,
        "top_k": -1,  # off ("0 or -1" in every version with processed log-probs)
        "min_p": 0.0,
        "seed": request_seed(key),
        "max_tokens": int(params.max_new_tokens),
        "stop_token_ids": sorted(int(i) for i in eos_token_ids),
        "ignore_eos": True,  # stop only at stop_token_ids: the policy's EOS ids, as the built-in sampler does
        "logprobs": 0,
        "detokenize": False,  # cropi decodes responses itself (policy.decode_response)
    }


def generation_from_values(prompt_ids: Sequence[int], token_ids: Sequence[int], token_logprobs: Sequence[float],
                           finish_reason: str | None, eos_token_ids: Sequence[int],
                           max_new_tokens: int) -> Generation:
    """A ``Generation`` from one finished completion's plain values: its tokens, the sampled tokens' log-probs
    and vLLM's finish reason.  The response is cut after the first end-of-sequence token, as the built-in
    sampler cuts it."""
    if finish_reason not in ("stop", "length"):
        raise CropiError(f"vLLM finished a request with {finish_reason!r}; expected 'stop' or 'length'")
    tokens, logps = [int(t) for t in token_ids], [float(x) for x in token_logprobs]
    if len(tokens) != len(logps):
        raise CropiError(f"vLLM returned {len(logps)} log-probs for {len(tokens)} tokens")
    eos = set(int(i) for i in eos_token_ids)
    end = next((i + 1 for i, t in enumerate(tokens) if t in eos), None)
    if end is not None:
        return Generation(list(prompt_ids), tokens[:end], logps[:end], "stop")
    if len(tokens) < max_new_tokens:
        raise CropiError(f"vLLM stopped a response after {len(tokens)} of {max_new_tokens} tokens without an "
                         "end-of-sequence token: prompt + max_new_tokens exceed the engine's max_model_len")
    return Generation(list(prompt_ids), tokens[:max_new_tokens], logps[:max_new_tokens], "length")


def generation_from_output(prompt_ids: Sequence[int], output, eos_token_ids: Sequence[int],
                           max_new_tokens: int) -> Generation:
    """A ``Generation`` from a ``vllm.RequestOutput`` of one finished request (``n = 1``, ``logprobs = 0``)."""
    if list(output.prompt_token_ids) != list(prompt_ids):
        raise CropiError(f"vLLM request {output.request_id}: its prompt tokens are not the row's")
    (completion,) = output.outputs
    if completion.logprobs is None:
        raise CropiError("vLLM returned no log-probs (the request must ask for logprobs=0)")
    # each position maps token id -> Logprob; with logprobs = 0 it holds just the sampled token
    token_logprobs = [position[token].logprob for token, position in zip(completion.token_ids, completion.logprobs)]
    return generation_from_values(prompt_ids, completion.token_ids, token_logprobs, completion.finish_reason,
                                  eos_token_ids, max_new_tokens)


def engine_args(dtype: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """``LLM(...)`` arguments besides the model folder: the fixed ones cropi's store needs, then the defaults,
    then ``CROPI_VLLM_ENGINE_ARGS``, then ``extra``."""
    args: dict[str, Any] = {**DEFAULT_ENGINE_ARGS}
    env = os.environ.get(ENGINE_ARGS_ENV)
    if env:
        try:
            from_env = json.loads(env)
            assert isinstance(from_env, dict)
        except (ValueError, AssertionError):
            raise CropiError(f"{ENGINE_ARGS_ENV}={env!r}: expected a JSON object of LLM(...) arguments") from None
        args.update(from_env)
    args.update(extra or {})
    for fixed in ("logprobs_mode", "skip_tokenizer_init"):
        if fixed in args:
            raise CropiError(f"vLLM engine argument {fixed!r} is set by cropi and cannot be overridden")
    args.setdefault("dtype", dtype)
    return {**args, "logprobs_mode": LOGPROBS_MODE, "skip_tokenizer_init": True}


@dataclass
class _Engine:
    """The process's one vLLM engine: which weights and arguments it was built with, and their folder."""

    key: tuple
    llm: Any
    folder: str

    def close(self) -> None:
        shutdown = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if shutdown is not None and hasattr(shutdown, "shutdown"):
            shutdown.shutdown()
        self.llm = None
        gc.collect()
        shutil.rmtree(self.folder, ignore_errors=True)
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass


_ENGINE: list[_Engine] = []  # at most one


def close_engine() -> None:
    """Shut the process's vLLM engine down and delete its weights folder (a later collection rebuilds it)."""
    while _ENGINE:
        _ENGINE.pop().close()


def _engine_for(policy: Policy, fingerprint: str, args: dict[str, Any]):
    key = (fingerprint, json.dumps(args, sort_keys=True, default=str))
    if _ENGINE and _ENGINE[0].key == key:
        return _ENGINE[0].llm
    vllm = require("vllm", "vllm", "rollout.backend=vllm")
    close_engine()
    folder = tempfile.mkdtemp(prefix="cropi-vllm-")
    policy.model.save_pretrained(folder)  # the current weights (and config, generation config): what vLLM loads
    try:
        llm = vllm.LLM(model=folder, **args)
    except Exception:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    _ENGINE.append(_Engine(key, llm, folder))
    return llm


@dataclass
class VllmBackend:
    """Samples with vLLM from ``policy``'s weights as they are at each ``generate``; the engine starts at the first,
    so a collection whose chunks are all stored starts none."""

    policy: Policy
    engine_overrides: dict[str, Any] = field(default_factory=dict)
    name: str = "vllm"

    def engine_args(self) -> dict[str, Any]:
        dtype = str(next(self.policy.model.parameters()).dtype).removeprefix("torch.")
        return engine_args(dtype, self.engine_overrides)

    def identity(self) -> dict:
        vllm = require("vllm", "vllm", "rollout.backend=vllm")
        args = {k: v for k, v in self.engine_args().items() if k not in CAPACITY_ARGS}
        # a JSON round trip: the identity is compared with the one read back from meta.json
        return json.loads(json.dumps({"name": self.name, "vllm_version": str(vllm.__version__),
                                      "engine_args": args}, sort_keys=True, default=str))

    def generate(self, prompts: Sequence[Sequence[int]], keys: Sequence[tuple], params: SamplingParams,
                 weights: str | None = None) -> list[Generation]:
        if len(keys) != len(prompts):
            raise ValueError("sampling needs one key per prompt row")
        eos = self.policy.eos_token_ids
        requests = [sampling_kwargs(params, k, eos) for k in keys]  # refuse bad parameters before starting
        vllm = require("vllm", "vllm", "rollout.backend=vllm")
        llm = _engine_for(self.policy, weights or model_fingerprint(self.policy.model), self.engine_args())
        outputs = llm.generate([{"prompt_token_ids": list(p)} for p in prompts],
                               [vllm.SamplingParams(**r) for r in requests], use_tqdm=False)
        return [generation_from_output(p, o, eos, params.max_new_tokens) for p, o in zip(prompts, outputs)]

    def close(self) -> None:
        close_engine()


def vllm_backend(policy: Policy, **engine_overrides: Any) -> VllmBackend:
    """The vLLM backend on ``policy`` (``LLM(...)`` arguments in ``engine_overrides``, e.g. ``dtype``)."""
    require("vllm", "vllm", "rollout.backend=vllm")
    return VllmBackend(policy, dict(engine_overrides))
