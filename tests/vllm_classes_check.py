"""Run by tests/test_vllm_backend.py inside a Python that has vLLM (``CROPI_VLLM_PYTHON``): builds vLLM's own
request and output objects and passes them through cropi's vLLM backend.  Prints one JSON object.

No engine runs here: the objects are vLLM's real classes (``SamplingParams``, ``EngineArgs``,
``RequestOutput`` / ``CompletionOutput``, ``Logprob``, ``FlatLogprobs``), filled as the engine fills them."""

from __future__ import annotations

import json
import typing

import vllm
from vllm.engine.arg_utils import EngineArgs
from vllm.logprobs import FlatLogprobs, Logprob
from vllm.outputs import CompletionOutput, RequestOutput

from cropi.rollouts import vllm_backend as vb
from cropi.rollouts.sampler import SamplingParams, key_seed

out: dict = {"vllm_version": vllm.__version__}

# the request: every keyword is a real SamplingParams field, and vLLM keeps the values cropi relies on
kw = vb.sampling_kwargs(SamplingParams(temperature=0.7, max_new_tokens=12), (0, "p", 1), [2])
sp = vllm.SamplingParams(**kw)
out["request"] = {"temperature": sp.temperature, "top_p": sp.top_p, "top_k": sp.top_k, "min_p": sp.min_p,
                  "seed": sp.seed, "seed_expected": key_seed(0, "p", 1), "max_tokens": sp.max_tokens,
                  "stop_token_ids": list(sp.stop_token_ids), "ignore_eos": sp.ignore_eos, "logprobs": sp.logprobs,
                  "detokenize": sp.detokenize, "n": sp.n}

# the engine arguments: real EngineArgs fields, and processed_logprobs one of vLLM's log-prob modes
args = vb.engine_args("bfloat16", {"enforce_eager": True})
ea = EngineArgs(model="unused-folder", **args)
from vllm.config.model import LogprobsMode  # noqa: E402

out["engine"] = {"logprobs_mode": str(ea.logprobs_mode), "skip_tokenizer_init": ea.skip_tokenizer_init,
                 "dtype": ea.dtype, "modes": sorted(typing.get_args(LogprobsMode))}


def request_output(token_ids, positions, finish_reason, prompt=(1, 9, 4)):
    completion = CompletionOutput(index=0, text="", token_ids=list(token_ids),
                                  cumulative_logprob=sum(p[t].logprob for t, p in zip(token_ids, positions)),
                                  logprobs=positions, finish_reason=finish_reason,
                                  stop_reason=token_ids[-1] if finish_reason == "stop" else None)
    return RequestOutput(request_id="0", prompt=None, prompt_token_ids=list(prompt), prompt_logprobs=None,
                         outputs=[completion], finished=True)


def as_dict(g):
    return {"prompt_ids": g.prompt_ids, "response_ids": g.response_ids, "behavior_logprobs": g.behavior_logprobs,
            "finish_reason": g.finish_reason}


# logprobs = 0: one entry per position, the sampled token's
stopped = request_output([5, 6, 2], [{5: Logprob(-0.25, rank=1)}, {6: Logprob(-1.5, rank=3)}, {2: Logprob(-0.125)}],
                         "stop")
out["stopped"] = as_dict(vb.generation_from_output([1, 9, 4], stopped, [2], max_new_tokens=12))
# logprobs = k > 0 puts the top-k beside the sampled token: the sampled one is read
with_top = request_output([7, 8], [{7: Logprob(-2.0, rank=4), 3: Logprob(-0.5, rank=1)},
                                   {3: Logprob(-0.1, rank=1), 8: Logprob(-3.0, rank=9)}], "length")
out["length_with_top"] = as_dict(vb.generation_from_output([1, 9, 4], with_top, [2], max_new_tokens=2))
# FlatLogprobs (flat_logprobs=True) reads the same
flat = FlatLogprobs()
for pos in [{5: Logprob(-0.25)}, {2: Logprob(-0.75)}]:
    flat.append(pos)
out["flat"] = as_dict(vb.generation_from_output([1, 9, 4], request_output([5, 2], flat, "stop"), [2], 12))
# vLLM's own finish-reason strings are the ones the mapping reads
try:
    from vllm.v1.engine import FinishReason

    out["finish_reasons"] = [str(FinishReason.STOP), str(FinishReason.LENGTH)]
except ImportError as exc:
    out["finish_reasons"] = f"not importable: {exc}"
# a mismatched prompt is refused
try:
    vb.generation_from_output([1, 2], stopped, [2], 12)
    out["mismatch_refused"] = False
except Exception as exc:  # noqa: BLE001
    out["mismatch_refused"] = type(exc).__name__

print(json.dumps(out))
