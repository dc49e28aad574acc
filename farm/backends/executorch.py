"""ExecuTorch's ``llama_main`` (examples/models/llama/main.cpp): command line and ``PyTorchObserver`` parser.

llama_main has no prompt-length or repetition flag: farm runs it once per repetition with a prompt of
``n_prompt`` words and reads the JSON of the ``PyTorchObserver`` line (extension/llm/runner/stats.h) by key
name — newer builds put ``prefill_token_per_sec``/``decode_token_per_sec`` first and add
``model_execution_*`` keys. The token counts stored are the ones llama_main reports (its tokenizer decides
how many tokens the prompt is). Definitions, all wall-clock ms:

- prefill = ``prompt_eval_end_ms - inference_start_ms``: it includes tokenising the prompt;
- decode = ``inference_end_ms - prompt_eval_end_ms`` over ``generated_tokens``;
- TTFT = ``first_token_ms - inference_start_ms`` (set at the same point as prompt_eval_end_ms).
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from farm.backends.base import Measured
from farm.backends.prebuilt import PrebuiltBackend, PrebuiltOptions
from farm.errors import JobError
from farm.jobs import Job, Repetition

DEFINITIONS = ("ExecuTorch llama_main (stats.h): prefill = prompt_eval_end - inference_start, which includes "
               "tokenising the prompt; decode = inference_end - prompt_eval_end over generated_tokens; TTFT = "
               "first_token - inference_start; one PyTorchObserver line per generate call, ms wall clock")
MARK = "PyTorchObserver "
_NEED = ("prompt_tokens", "generated_tokens", "inference_start_ms", "inference_end_ms", "prompt_eval_end_ms")


def observer(line: str) -> dict[str, Any]:
    """The JSON object of one PyTorchObserver line, checked for the keys every version prints."""
    try:
        data = json.loads(line[line.index(MARK) + len(MARK):])
    except (ValueError, json.JSONDecodeError) as exc:
        raise JobError(f"PyTorchObserver line is not JSON: {line[:200]!r}") from exc
    missing = [k for k in _NEED if k not in data]
    if missing:
        raise JobError(f"PyTorchObserver line lacks {', '.join(missing)}")
    return data


def repetition(d: dict[str, Any]) -> Repetition:
    scale = float(d.get("SCALING_FACTOR_UNITS_PER_SECOND") or 1000)
    start, pre_end, end = d["inference_start_ms"], d["prompt_eval_end_ms"], d["inference_end_ms"]
    first = d.get("first_token_ms", pre_end)
    return Repetition(rep=0, n_prompt=int(d["prompt_tokens"]), n_gen=int(d["generated_tokens"]),
                      prefill_s=(pre_end - start) / scale, decode_s=(end - pre_end) / scale,
                      ttft_s=(first - start) / scale)


def parse_observer(text: str) -> list[Measured]:
    """One repetition per PyTorchObserver line, grouped by (prompt, generated) tokens in order of appearance."""
    groups: dict[tuple[int, int], Measured] = {}
    for line in text.splitlines():
        if MARK not in line:
            continue
        d = observer(line)
        rep = repetition(d)
        key = (rep.n_prompt, rep.n_gen)
        m = groups.setdefault(key, Measured(key[0], key[1], [], reported={"definitions": DEFINITIONS, "runs": []}))
        m.repetitions.append(rep.model_copy(update={"rep": len(m.repetitions)}))
        m.reported["runs"].append({k: d[k] for k in ("prefill_token_per_sec", "decode_token_per_sec",
                                                     "model_load_start_ms", "model_load_end_ms",
                                                     "aggregate_model_execution_time_ms") if k in d})
    return list(groups.values())


class ExecuTorchOptions(PrebuiltOptions):
    model: str = "model.pte"
    tokenizer: str = "tokenizer.model"
    word: str = "the"  # the prompt is n_prompt copies of this word


class ExecuTorchBackend(PrebuiltBackend):
    """ExecuTorch ``llama_main``. Options: ``binary``, ``model_dir`` (with ``model`` .pte and ``tokenizer``)."""

    name = "executorch"
    engine = "ExecuTorch"
    Options: ClassVar[type[PrebuiltOptions]] = ExecuTorchOptions
    definitions = DEFINITIONS
    has_depth = "llama_main has no KV-depth option (every generate call starts from an empty cache)"
    loop_reps = True

    def engine_argv(self, job: Job, exe: str, model_dir: str) -> list[str]:
        opts: Any = self.options
        prompt = " ".join([opts.word] * max(job.n_prompt, 1))
        return [exe, "--model_path", f"{model_dir}/{opts.model}", "--tokenizer_path", f"{model_dir}/{opts.tokenizer}",
                "--prompt", prompt, "--max_new_tokens", str(job.n_gen), "--temperature", "0", "--ignore_eos",
                "--cpu_threads", str(job.threads)]

    @classmethod
    def parse_text(cls, text: str, cell: tuple[int, int] | None = None) -> list[Measured]:
        tests = parse_observer(text)
        if not tests:
            raise JobError("no PyTorchObserver line in the output")
        return tests

    def repetitions_for(self, tests: list[Measured], job: Job) -> list[Any]:
        # the prompt's token count is the tokenizer's, so every observed run belongs to this job
        return [r.model_copy(update={"rep": i}) for i, r in enumerate(x for t in tests for x in t.repetitions)]
