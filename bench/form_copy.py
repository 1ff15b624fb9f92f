"""How often does a syllogism model copy the argument's abstract form correctly, and where are its errors?

    python bench/form_copy.py runs/sft [--n 300]

Greedy completions on the first N held-out items; a form is "wrong" when the think block
differs from the SFT target's (the tiny preset's `form` style). Prints the counts and the
most frequent errors (form, whether the copied form was right).
"""

from __future__ import annotations

import argparse
import collections

from minigrpo.models import load_model
from minigrpo.rollout import generate
from minigrpo.sft_targets import sft_target
from minigrpo.tasks import RewardConfig, build_prompt, load_train_eval, score_completion


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--n", type=int, default=300)
    args = parser.parse_args()
    model, tok = load_model(args.model)
    _, eval_data = load_train_eval("syllogism", 4000, 500, 0)
    items = eval_data.items[:args.n]
    rollout = generate(model, tok, [build_prompt(item, tok) for item in items], 1, 64, 1.0, 1.0, len(items), 200,
                       greedy=True)
    wrong_form, errors, seen = 0, collections.Counter(), collections.Counter()
    for text, item in zip(rollout.completions, items):
        form = sft_target(item, "syllogism").split("</think>")[0]
        copied_right = text.split("</think>")[0] == form
        wrong_form += not copied_right
        seen[form] += 1
        if not score_completion(text, item, eval_data, RewardConfig()).correct:
            errors[(form, copied_right)] += 1
    print(f"wrong form {wrong_form} / {len(items)}  errors {sum(errors.values())}")
    for (form, copied_right), count in errors.most_common(12):
        print(f"{count:3d} of {seen[form]:3d}  copied {'right' if copied_right else 'wrong'}  {form}")


if __name__ == "__main__":
    main()
